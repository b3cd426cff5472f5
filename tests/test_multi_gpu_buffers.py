"""Buffers of multi-GPU training that no tensor of the model explains, and the PEFT release's adapter dtype.

- DeepSpeed ZeRO-3's reduce bucket (deepspeed v0.14.0 runtime/zero/stage3.py 489-492: `torch.empty(reduce_bucket_size,
  dtype=self.dtype)` with contiguous_gradients, freed only in destroy());
- NCCL's communicator buffers (NVIDIA/nccl #964: 544 MB for 2 ranks, 688 MB for more);
- PEFT < 0.12.0: adapters in the base weight's dtype (peft 0.11.0 LoraLayer.update_layer).
Expected figures come from those sources by hand, not from an estimate.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from by_hand import round512

from vramfit import Settings, estimate, load_model
from vramfit.errors import InvalidSetting
from vramfit.memory.overhead import nccl_buffers
from vramfit.settings import Parallelism, Training
from vramfit.truth.published import peft_of
from vramfit.units import MiB

LLAMA = "meta-llama/Llama-3.1-8B"   # hidden 4096


def _memory(**changes: object) -> dict[str, int]:
    fields: dict[str, object] = {"mode": "training", "dtype": "bf16", "seq_len": 1024, "grad_ckpt": "full"}
    return estimate(load_model(LLAMA), Settings().replace(**(fields | changes))).memory.as_dict()


def test_zero3_reduce_bucket_is_deepspeeds_default_in_the_gradient_dtype() -> None:
    memory = _memory(gpus=2, zero_stage=3)
    assert memory["zero_reduce_bucket"] == 500_000_000 * 2   # 5e8 bf16 elements, a multiple of 512 bytes


def test_zero3_reduce_bucket_auto_is_hidden_squared() -> None:
    assert _memory(gpus=2, zero_stage=3, zero_bucket="auto")["zero_reduce_bucket"] == 4096 * 4096 * 2
    assert _memory(gpus=2, zero_stage=3, zero_bucket=1000)["zero_reduce_bucket"] == 2048   # 2000 B -> 512 B blocks


def test_zero3_reduce_bucket_follows_the_trainable_dtype() -> None:
    """LoRA with the current PEFT: fp32 adapters, so the optimizer's first parameter and the bucket are fp32."""
    assert _memory(gpus=2, zero_stage=3, finetune="lora")["zero_reduce_bucket"] == 500_000_000 * 4
    assert _memory(gpus=2, zero_stage=3, finetune="lora", peft="0.11.0")["zero_reduce_bucket"] == 500_000_000 * 2


@pytest.mark.parametrize("changes", [{"gpus": 2, "fsdp": "full"}, {"gpus": 2}, {"gpus": 1}])
def test_no_reduce_bucket_without_deepspeed(changes: dict[str, object]) -> None:
    assert "zero_reduce_bucket" not in _memory(**changes)


def test_zero12_bucket_lives_in_backward_only() -> None:
    """ZeRO-1/2 allocate the bucket at backward() and release it after the reduction: the backward's phases carry
    it, the forward and the optimizer step do not (compared with a 1-element bucket, one 512-byte block)."""
    est = estimate(load_model(LLAMA), Settings().replace(mode="training", dtype="bf16", seq_len=1024, gpus=2,
                                                         zero_stage=2))
    phases = est.extra["phases"]
    without = estimate(load_model(LLAMA), Settings().replace(mode="training", dtype="bf16", seq_len=1024, gpus=2,
                                                             zero_stage=2, zero_bucket=1)).extra["phases"]
    bucket = 500_000_000 * 2 - 512
    assert phases["forward"] == without["forward"]
    assert phases["optimizer_step"] == without["optimizer_step"]
    assert phases["backward_start"] - without["backward_start"] == bucket


@pytest.mark.parametrize("bad", [0, -5])
def test_bad_bucket_names_the_field(bad: int) -> None:
    with pytest.raises(InvalidSetting, match="zero_bucket: .*--zero-bucket"):
        Parallelism(zero_bucket=bad).validate()


def test_cli_bucket_counts_and_auto() -> None:
    def run(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vramfit", "estimate", LLAMA, "--mode", "training", "--gpus", "2",
                               "--zero", "3", "--json", *flags], capture_output=True, text=True, check=False)

    def bucket(*flags: str) -> int:
        return json.loads(run(*flags, "--dtype", "bf16").stdout)["memory"]["zero_reduce_bucket"]

    assert bucket("--zero-bucket", "2M") == 4_000_256   # 4,000,000 bytes in 512-byte blocks
    assert bucket("--zero-bucket", "auto") == 4096 * 4096 * 2
    bad = run("--zero-bucket", "lots")
    assert bad.returncode != 0 and "--zero-bucket" in bad.stderr and "Traceback" not in bad.stderr


def test_nccl_one_communicator_per_parallel_dimension() -> None:
    assert nccl_buffers([1, 1]) is None
    assert nccl_buffers([2]).bytes == 544 * MiB
    assert nccl_buffers([8, 2]).bytes == 688 * MiB + 544 * MiB
    assert _memory(gpus=8, fsdp="full")["nccl"] == 688 * MiB
    assert _memory(gpus=4, tensor=2)["nccl"] == 2 * 544 * MiB    # data 2 and tensor 2
    assert "nccl" not in _memory()


def test_nccl_is_device_level() -> None:
    est = estimate(load_model(LLAMA), Settings().replace(mode="training", dtype="bf16", gpus=2, fsdp="full"))
    assert est.peak.device - est.peak.reserved == est.memory["nccl"] + est.memory["cuda_context"]


@pytest.mark.parametrize(("peft", "finetune", "changes", "adapter_bytes"), [
    ("latest", "lora", {}, 4),                          # autocast_adapter_dtype=True (peft >= 0.12.0)
    ("0.11.0", "lora", {}, 2),                          # the bf16 base weight's dtype
    ("0.11.0", "qlora", {"quant": "bnb-nf4"}, 4),       # uint8-stored 4-bit data is not a float: stays fp32
    ("0.11.0", "qlora", {"quant": "bnb-nf4", "gpus": 2, "fsdp": "full"}, 2),   # quant_storage = bf16 to shard
])
def test_peft_release_sets_the_adapter_dtype(peft: str, finetune: str, changes: dict[str, object],
                                             adapter_bytes: int) -> None:
    """Llama-3.1-8B LoRA on q_proj, v_proj, rank 8: 32 layers x (4096 x 8 + 8 x 4096 + 4096 x 8 + 8 x 1024)
    adapter elements; their weights are part of `weights` in the adapter dtype, so two releases differ by the
    adapters' elements x (4 - 2) bytes exactly when the dtype changes."""
    def weights(version: str) -> int:
        return _memory(finetune=finetune, peft=version, **changes)["weights"]

    per_layer = [4096 * 8, 8 * 4096, 4096 * 8, 8 * 1024]
    block = sum(round512(n * 2) for n in per_layer)   # bf16 blocks of 512 bytes
    shard = 2 if changes.get("fsdp") else 1
    difference = weights("latest") - weights(peft)
    assert difference == (0 if adapter_bytes == 4 else 32 * block // shard)


def test_peft_bad_version() -> None:
    with pytest.raises(InvalidSetting, match=r"peft: .* pass --peft"):
        Training(peft="zero").validate()


def test_converter_pins_the_peft_docs_release() -> None:
    assert peft_of({"source": {"repo": "huggingface/peft", "path": "docs/source/accelerate/fsdp.md"}}) == "0.9.0"
    assert peft_of({"source": {"repo": "huggingface/transformers", "path": "x"}}) == "latest"


@pytest.mark.parametrize(("changes", "message"), [
    ({"mode": "training", "finetune": "full", "peft": "0.10.0"}, "peft: full fine-tuning adds no adapters"),
    ({"mode": "training", "finetune": "lora", "framework": "litgpt", "peft": "0.10.0"}, "peft: framework litgpt"),
    ({"mode": "training", "zero_bucket": "auto"}, "zero_bucket: .* --zero 1, 2 or 3"),
    ({"mode": "inference", "zero_bucket": 1000}, "zero_bucket: "),
])
def test_settings_that_change_nothing_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidSetting, match=message):
        Settings().replace(**changes).validate()


def test_nccl_in_tensor_parallel_inference_only() -> None:
    """transformers' tp_plan all-reduces over NCCL; a device-map pipeline copies without it; vLLM's measured
    non-torch memory already holds its NCCL (overhead.vllm_non_torch)."""
    model = load_model(LLAMA)
    tp = estimate(model, Settings().replace(gpus=4, tensor=4)).memory
    assert tp["nccl"] == 688 * MiB
    assert "nccl" not in estimate(model, Settings().replace(gpus=2, pipeline=2)).memory
    assert "nccl" not in estimate(model, Settings().replace(gpus=2, tensor=2, name="vllm")).memory


def test_transformers_fsdp_accumulation_keeps_gradients_unsharded() -> None:
    """Trainer (transformers 5.23 trainer.py 1896-1907) runs every micro-batch but the last in no_sync: under FSDP the
    gradients of the accumulation window are whole on every rank, as on one GPU; without accumulation, sharded."""
    whole = _memory(gpus=1, grad_accum=2)["gradients"]
    assert _memory(gpus=2, fsdp="full", grad_accum=2)["gradients"] == whole
    assert _memory(gpus=2, fsdp="full", grad_accum=1).get("gradients", 0) < whole


def test_fsdp_param_offload_copies_pool() -> None:
    """Llama-2-70B QLoRA, FSDP on 2 GPUs with parameter offload: the root unit (embedding and head, 32000 x 8192 each,
    and the final norm, bf16) is the largest shard copy: (2 x 524,288,000 + 16,384) / 2 = 524,296,192 bytes, a
    segment rounded to 2 MiB: 526,385,152 bytes, reserved (never allocated at the peak)."""
    model = load_model("meta-llama/Llama-2-70b-hf")
    settings = Settings().replace(mode="training", finetune="qlora", quant="bnb-nf4-dq", dtype="bf16", gpus=2,
                                  fsdp="full", offload="params", grad_ckpt="full")
    est = estimate(model, settings)
    copies = next(c for c in est.memory.components if c.name == "fsdp_offload_copies")
    assert (copies.bytes, copies.level) == (526_385_152, "reserved")
    assert est.peak.reserved - est.peak.allocated == 526_385_152
    assert "fsdp_offload_copies" not in estimate(model, settings.replace(offload="none")).memory
    zero = settings.replace(fsdp="none", zero_stage=3)
    assert "fsdp_offload_copies" not in estimate(model, zero).memory


def test_old_peft_is_named_in_the_notes() -> None:
    est = estimate(load_model(LLAMA), Settings().replace(mode="training", finetune="lora", dtype="bf16", peft="0.10.0"))
    assert any(note.startswith("peft 0.10.0: adapters take the base weight's dtype") for note in est.notes)
    latest = estimate(load_model(LLAMA), Settings().replace(mode="training", finetune="lora", dtype="bf16"))
    assert not any(note.startswith("peft ") for note in latest.notes)
