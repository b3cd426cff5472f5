"""Published measurements -> truth rows: units, quantities and settings mapped, the rest listed with reasons."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vramfit.settings import settings_from_dict
from vramfit.truth.published import catalog_gpu, convert_file, convert_row, gpu_capacity_bytes
from vramfit.truth.rows import read_rows
from vramfit.units import GiB, MiB

SHARED = Path("/work/shared/truth/published-measurements.jsonl")
COMMITTED = Path(__file__).parent.parent / "data" / "truth" / "published.jsonl"


def _src(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": "x", "source": {"repo": "r"}, "model": "meta-llama/Llama-2-7b-hf", "method": "lora",
        "dtype_quant": "bf16-true", "optimizer": "torch AdamW", "batch_per_device": 2, "grad_accum": None,
        "seq_len": 512, "seq_len_note": None, "grad_ckpt": False, "flash_attn": "PyTorch SDPA",
        "lora_rank": 8, "lora_targets": "query,value", "gpus": {"count": 1, "type": "A100-SXM4 40GB"},
        "parallelism": "single GPU", "framework": "litgpt", "oom": False,
        "what_measured": "torch.cuda.max_memory_allocated()/1e9 (decimal GB)", "measured_gb": 14.5}
    row.update(changes)
    return row


def test_a_litgpt_lora_row_maps_to_settings_and_decimal_gigabytes() -> None:
    row = convert_row(_src())
    settings = settings_from_dict(row.settings)
    assert row.unmapped is None
    assert (row.measure, row.truth) == ("allocated", {"allocated": 14_500_000_000})
    assert settings.workload.mode == "training"
    assert settings.training.finetune == "lora"
    assert settings.training.lora.targets == ("q_proj", "v_proj")
    assert (settings.workload.batch_size, settings.workload.seq_len) == (2, 512)
    assert settings.runtime.attention == "sdpa"
    assert row.group == "published/training-lora"


def test_units_and_quantities() -> None:
    nvml = convert_row(_src(measured_gb=None, measured_mib=2631,
                            what_measured="pynvml nvmlDeviceGetMemoryInfo(...).used // 1024**2"))
    assert (nvml.measure, nvml.truth) == ("device", {"device": 2631 * MiB})
    gib = convert_row(_src(measured_gb=None, measured_gib=3.5, what_measured="peak VRAM from AutoAWQ benchmark"))
    assert (gib.measure, gib.truth) == ("allocated", {"allocated": int(3.5 * GiB)})


def test_precision_and_inference_tokens() -> None:
    mixed = settings_from_dict(convert_row(_src(dtype_quant="fp16 mixed (AMP)")).settings).precision
    assert (mixed.dtype, mixed.amp, mixed.quant) == ("fp32", "fp16", None)
    awq = convert_row(_src(method="inference", dtype_quant="AWQ 4-bit (GEMM, group 128), fp16 activations",
                           seq_len=64, seq_len_note="prefill 32 + decode 32"))
    settings = settings_from_dict(awq.settings)
    assert (settings.precision.dtype, settings.precision.quant) == ("fp16", "awq-4bit-g128")
    assert settings.runtime.name == "litgpt"       # the framework of _src() is litgpt
    dq = settings_from_dict(convert_row(_src(dtype_quant="bf16-true + NF4 double-quant",
                                             framework="transformers")).settings)
    assert (dq.precision.quant, dq.runtime.name, dq.training.framework) == ("bnb-nf4-dq", "transformers",
                                                                            "transformers")
    assert (settings.workload.seq_len, settings.workload.new_tokens) == (64, 32)


def test_peft_docs_fsdp_lora_run_keeps_fp32_weights_and_its_qlora_runs_an_early_bitsandbytes() -> None:
    """peft aa2ca83ca's examples/sft/utils.py loads without torch_dtype (fp32) under FSDP MixedPrecision(bf16);
    the QLoRA sections need bnb_4bit_quant_storage (0.43.0) and predate 0.43.1."""
    fsdp = {"repo": "huggingface/peft", "path": "docs/source/accelerate/fsdp.md"}
    lora = settings_from_dict(convert_row(_src(source=fsdp, framework="HF TRL SFTTrainer + PEFT",
                                               dtype_quant="bf16 (mixed_precision bf16, bf16 weights)")).settings)
    assert (lora.precision.dtype, lora.precision.amp) == ("fp32", "bf16")
    qlora = settings_from_dict(convert_row(_src(source=fsdp, method="qlora", framework="HF TRL SFTTrainer + PEFT",
                                                dtype_quant="nf4 + double quant, quant_storage bf16")).settings)
    assert (qlora.precision.dtype, qlora.precision.amp) == ("bf16", None)
    assert qlora.training.bitsandbytes == "0.43.0"
    ds = {"repo": "huggingface/peft", "path": "docs/source/accelerate/deepspeed.md"}
    ds_lora = settings_from_dict(convert_row(_src(source=ds, framework="HF TRL SFTTrainer + PEFT",
                                                  dtype_quant="bf16")).settings)
    assert (ds_lora.precision.dtype, ds_lora.precision.amp) == ("bf16", None)   # ZeRO-3 bf16 partitions in bf16


def test_lora_dropout_as_the_notes_state_it() -> None:
    """The PEFT docs' launch scripts pass --lora_dropout 0.1; the rows say so in their notes."""
    peft = _src(framework="HF TRL SFTTrainer + PEFT", notes="lora_alpha 16, dropout 0.1, target all-linear")
    assert settings_from_dict(convert_row(peft).settings).training.lora.dropout == 0.1
    assert settings_from_dict(convert_row({**peft, "notes": "lora_alpha 16"}).settings).training.lora.dropout == 0.0
    assert settings_from_dict(convert_row(_src()).settings).training.lora.dropout == 0.05   # lit-gpt's module default


def test_oom_rows_carry_the_gpu_capacity() -> None:
    row = convert_row(_src(oom=True, what_measured="OOM", measured_gb=None))
    assert (row.oom, row.measure, row.truth) == (True, "device", {})
    settings = settings_from_dict(row.settings)
    assert (settings.gpu, settings.gpu_memory) == ("a100-40gb", None)   # the catalog knows the card
    unknown = settings_from_dict(convert_row(_src(oom=True, what_measured="OOM", measured_gb=None,
                                                  gpus={"count": 2, "type": "40GB GPUs (stated '2X40GB')"}),
                                             ).settings)
    assert (unknown.gpu, unknown.gpu_memory) == (None, 40 * GiB)       # only a size: nominal GiB
    assert gpu_capacity_bytes("A100 (runpod)") is None
    assert catalog_gpu("A10G 24GB") == "a10g"
    assert catalog_gpu("A100 (runpod)") is None


def test_paged_adamw_rows_map_to_paged_adamw() -> None:
    """bitsandbytes PagedAdamW (32-bit states in unified memory) is vramfit's paged-adamw."""
    row = convert_row(_src(optimizer="bnb PagedAdamW"))
    assert row.unmapped is None
    assert settings_from_dict(row.settings).training.optimizer == "paged-adamw"


@pytest.mark.parametrize(("change", "reason"), [
    ({"seq_len": None}, "seq_len not stated"),
    ({"what_measured": "peak GPU memory 'GRAM' (method unstated)"}, "method is not stated"),
    ({"model": "LLaMA-7B (qlora.py example)"}, "not a hub id"),
    ({"oom": True, "what_measured": "OOM", "gpus": {"count": 1, "type": "A100"}}, "no capacity"),
])
def test_unmappable_rows_say_why(change: dict[str, Any], reason: str) -> None:
    row = convert_row(_src(**change))
    assert row.unmapped is not None
    assert reason in row.unmapped


@pytest.mark.skipif(not SHARED.is_file(), reason="the shared published measurements are not on this machine")
def test_committed_conversion_is_up_to_date() -> None:
    assert read_rows(COMMITTED) == convert_file(SHARED)
