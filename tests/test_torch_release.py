"""--torch VERSION (Runtime.torch): what older PyTorch releases allocate that the current one does not.

Each expected figure is derived by hand from the mechanism's source (settings.TORCH_*), never read off an
estimate: BERT-large (24 layers, 16 heads, hidden 1024, vocab 30522) trained in fp32 with eager attention at
batch 4 x 512 tokens.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from by_hand import round512

from vramfit import Settings, estimate, load_model
from vramfit.errors import InvalidSetting
from vramfit.memory.lora import ParamTensor
from vramfit.memory.optimizer import optimizer_memory
from vramfit.memory.overhead import CUDA_CONTEXT_BYTES, CUDA_CONTEXT_EAGER_BYTES
from vramfit.settings import Runtime, torch_version
from vramfit.truth.published import torch_of
from vramfit.units import MiB

BERT = "google-bert/bert-large-uncased"
LAYERS, HEADS, SEQ, BATCH, VOCAB = 24, 16, 512, 4, 30522


def _bert(torch: str, **changes: object) -> dict[str, int]:
    fields: dict[str, object] = {"mode": "training", "batch_size": BATCH, "seq_len": SEQ, "dtype": "fp32",
                                 "attention": "eager", "torch": torch}
    settings = Settings().replace(**(fields | changes))
    return estimate(load_model(BERT), settings).memory.as_dict()


@pytest.mark.parametrize(("text", "release"), [("1.10.1", (1, 10, 1)), ("2.1.0+cu121", (2, 1, 0)),
                                               ("1.13", (1, 13, 0)), ("2.5.0rc1", (2, 5, 0)), ("latest", None)])
def test_versions_parse(text: str, release: tuple[int, int, int] | None) -> None:
    assert torch_version(text) == release


@pytest.mark.parametrize("text", ["1.x", "", "torch 2", "2"])
def test_bad_version_names_the_field_and_the_fix(text: str) -> None:
    with pytest.raises(InvalidSetting, match=r"torch: .* pass --torch .* e\.g\. 1\.10\.1, or latest"):
        Runtime(torch=text).validate()


def test_latest_is_never_older() -> None:
    assert not Runtime().torch_before((99, 0, 0))
    assert Runtime(torch="1.12.1").torch_before((1, 13, 0))
    assert not Runtime(torch="1.13.0").torch_before((1, 13, 0))


@pytest.mark.parametrize(("torch", "context"), [("1.12.1", CUDA_CONTEXT_EAGER_BYTES), ("1.13.0", CUDA_CONTEXT_BYTES),
                                                ("latest", CUDA_CONTEXT_BYTES)])
def test_context_loads_every_kernel_before_1_13(torch: str, context: int) -> None:
    inference = estimate(load_model(BERT), Settings().replace(torch=torch)).memory
    assert inference["cuda_context"] == context
    assert _bert(torch)["cuda_context"] == context
    assert CUDA_CONTEXT_EAGER_BYTES == 1343 * MiB   # the transformers docs' measurement (overhead.py)


def test_softmax_keeps_its_input_before_1_11() -> None:
    """Per layer the fp32 B x heads x S x S scores softmax read; and the loss's log_softmax keeps the fp32 logits
    (masked LM in fp32: T x V x 4) it read. 1.10.1 and 1.11.0 differ in nothing else."""
    scores = LAYERS * round512(BATCH * HEADS * SEQ * SEQ * 4)
    logits = round512(BATCH * SEQ * VOCAB * 4)
    old, new = _bert("1.10.1"), _bert("1.11.0")
    assert old["activations"] - new["activations"] == scores + logits == 1_860_648_960
    assert {k: v for k, v in old.items() if k not in ("activations", "total")} == \
           {k: v for k, v in new.items() if k not in ("activations", "total")}


def test_softmax_input_is_eager_only() -> None:
    """sdpa has no softmax of its own to save an input: only the loss's log_softmax changes."""
    old = _bert("1.10.1", attention="sdpa")
    new = _bert("1.11.0", attention="sdpa")
    assert old["activations"] - new["activations"] == round512(BATCH * SEQ * VOCAB * 4)


def test_gradients_stay_between_steps_before_2_0() -> None:
    """zero_grad(set_to_none=False): at the start of backward, the previous step's gradients (the fp32 parameters'
    size, as under accumulation) are still allocated."""
    old, new = _bert("1.13.0"), _bert("2.0.0")
    assert "gradients" not in new
    accumulating = _bert("2.0.0", grad_accum=2)
    assert old["gradients"] == accumulating["gradients"] > 0
    # ZeRO keeps its own gradient partitions: the torch default does not apply there
    zero = _bert("1.13.0", gpus=2, zero_stage=2)
    assert zero == _bert("2.0.0", gpus=2, zero_stage=2) | {"cuda_context": zero["cuda_context"]}


def test_single_tensor_adam_before_2_0() -> None:
    """torch < 2.0's default Adam loops over parameters: sqrt and its quotient of the largest parameter (BERT's
    word embeddings, 30522 x 1024 fp32), instead of foreach's copy of every parameter."""
    sizes = [VOCAB * 1024, 1024 * 1024, 1024]
    tensors = [ParamTensor(elements=n, trainable=True) for n in sizes]
    loop, foreach = optimizer_memory("adamw", tensors, 4, foreach=False), optimizer_memory("adamw", tensors, 4)
    assert loop.step_temporaries == 2 * round512(VOCAB * 1024 * 4)
    assert foreach.step_temporaries == sum(round512(n * 4) for n in sizes)
    assert loop.states == foreach.states
    # checkpointed batch 1: the optimizer step is the peak, with the loop's two embedding-sized temporaries
    old = _bert("1.13.0", grad_ckpt="full", batch_size=1, grad_accum=4)
    assert old["optimizer_step_temporaries"] == 2 * round512(VOCAB * 1024 * 4)
    assert _bert("2.0.0", grad_ckpt="full", batch_size=1, grad_accum=4)["optimizer_step_temporaries"] == \
           old["weights"]   # foreach: one copy of every (fp32, trainable) parameter, as the weights


def test_converter_carries_the_release() -> None:
    assert torch_of({"trust": "lit-gpt 8641822 on torch 2.1.0, bitsandbytes 0.41.1"}) == "2.1.0"
    assert torch_of({"framework": "transformers Trainer (early 2022)", "source": {
        "repo": "huggingface/transformers", "path": "docs/source/en/perf_train_gpu_one.mdx"}}) == "1.10.1"
    assert torch_of({"framework": "transformers", "source": {"repo": "x/y", "path": "z"}}) == "latest"


def test_cli_flag() -> None:
    run = subprocess.run([sys.executable, "-m", "vramfit", "estimate", BERT, "--torch", "1.12.1", "--json"],
                         capture_output=True, text=True, check=True)
    assert json.loads(run.stdout)["memory"]["cuda_context"] == CUDA_CONTEXT_EAGER_BYTES
    bad = subprocess.run([sys.executable, "-m", "vramfit", "estimate", BERT, "--torch", "one"],
                         capture_output=True, text=True, check=False)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "--torch" in bad.stderr
