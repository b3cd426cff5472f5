"""Non-reentrant checkpointing with bitsandbytes < 0.43.2 (Training.use_reentrant=False, --non-reentrant).

bitsandbytes MatMul4Bit.forward before 0.43.2 keeps `ctx.tensors = (A, B)`, an attribute of the autograd node.
torch.utils.checkpoint with use_reentrant=False runs the forward with grad on under saved_tensors_hooks, which only
see what save_for_backward saves: the ctx attribute escapes them, so every block's 4-bit inputs stay alive from the
forward through backward (memory/lora.py checkpointed_4bit_inputs). The reentrant checkpoint (transformers' default)
runs its forward under no_grad and keeps none. GLM-4's remote modeling_chatglm.py asks for the non-reentrant one
itself (GLMTransformer.forward: `torch.utils.checkpoint.checkpoint(layer, ..., use_reentrant=False)`; copy read in
XuRui314/GLM4v-Finetune modeling_chatglm.py at 513b75de).
"""

from __future__ import annotations

from typing import Any

import pytest

from vramfit import estimate
from vramfit.cli import main
from vramfit.errors import InvalidSetting
from vramfit.model.sources import load_model
from vramfit.settings import LoRA, Precision, Settings, Training, Workload

LAYERS, T, H, I = 40, 10240, 4096, 13696   # THUDM/glm-4-9b-chat (catalog config.json); LLaMA-Factory #4772's cutoff
E = 2                                       # bf16


def _glm4_qlora(*, bitsandbytes: str, use_reentrant: bool) -> Settings:
    return Settings(workload=Workload(mode="training", seq_len=T, grad_accum=16), precision=Precision(dtype="bf16"),
                    training=Training(finetune="qlora", grad_ckpt="full", lora=LoRA(rank=8, targets=("all-linear",)),
                                      bitsandbytes=bitsandbytes, use_reentrant=use_reentrant))


def _held(settings: Settings) -> int:
    components = {c.name: c for c in estimate(load_model("THUDM/glm-4-9b-chat"), settings).memory.components}
    term = components.get("bitsandbytes_saved_inputs")
    return term.bytes if term is not None else 0


def test_glm4_keeps_every_blocks_four_inputs_by_hand() -> None:
    """Per block: the qkv input (T x h), dense's input (the attention output, T x 32 x 128 = T x h), the
    dense_h_to_4h input (T x h) and the dense_4h_to_h input (T x I), bf16, all multiples of 512 bytes:
    40 x 10,240 x (3 x 4,096 + 13,696) x 2 = 21,286,092,800 bytes (19.82 GiB)."""
    by_hand = LAYERS * T * (3 * H + I) * E
    assert by_hand == 21_286_092_800
    assert _held(_glm4_qlora(bitsandbytes="0.43.1", use_reentrant=False)) == by_hand


@pytest.mark.parametrize(("bitsandbytes", "use_reentrant"), [("0.43.1", True), ("0.43.2", False),
                                                              ("latest", False)])
def test_reentrant_or_fixed_bitsandbytes_keeps_none(bitsandbytes: str, use_reentrant: bool) -> None:
    assert _held(_glm4_qlora(bitsandbytes=bitsandbytes, use_reentrant=use_reentrant)) == 0


def test_non_reentrant_needs_full_checkpointing(capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(workload=Workload(mode="training"),
                        training=Training(finetune="qlora", grad_ckpt="none", use_reentrant=False))
    with pytest.raises(InvalidSetting, match="use_reentrant.*--grad-ckpt full"):
        settings.validate()
    assert main(["estimate", "THUDM/glm-4-9b-chat", "--mode", "training", "--finetune", "qlora",
                 "--lora-targets", "all-linear", "--non-reentrant"]) == 2
    assert "use_reentrant: false applies to full checkpointing" in capsys.readouterr().err


def test_cli_flag_reaches_the_estimate(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["estimate", "THUDM/glm-4-9b-chat", "--mode", "training", "--finetune", "qlora", "--grad-ckpt", "full",
            "--lora-targets", "all-linear", "--seq-len", "1024", "--bitsandbytes", "0.43.1", "--json"]
    assert main(args) == 0
    reentrant = capsys.readouterr().out
    assert main([*args, "--non-reentrant"]) == 0
    non_reentrant = capsys.readouterr().out
    assert "bitsandbytes_saved_inputs" not in reentrant
    assert "bitsandbytes_saved_inputs" in non_reentrant


def test_torch_keeps_ctx_attributes_only_under_non_reentrant_checkpointing() -> None:
    """The mechanism itself, on the CPU (torch 2.13): a Function that keeps its input on ctx as bitsandbytes
    < 0.43.2 did, three checkpointed blocks; after the forward every block's kept input is still alive under
    use_reentrant=False and none is under use_reentrant=True (whose forward runs under no_grad). ~0.05 s."""
    torch = pytest.importorskip("torch")
    import gc
    import weakref

    from torch.utils.checkpoint import checkpoint

    kept: list[Any] = []

    class KeepsInput(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, a: Any, b: Any) -> Any:
            ctx.tensors = (a, b)
            kept.append(weakref.ref(a))
            return a @ b

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            return grad @ ctx.tensors[1].t(), None

    def block(x: Any, w: Any) -> Any:
        return KeepsInput.apply(x * 2.0, w)   # x * 2.0: a fresh input, as a norm output is

    def alive_after_forward(use_reentrant: bool) -> list[bool]:
        kept.clear()
        w = torch.randn(64, 64)
        x = torch.randn(128, 64, requires_grad=True)
        for _ in range(3):
            x = checkpoint(block, x, w, use_reentrant=use_reentrant)
        gc.collect()
        alive = [ref() is not None for ref in kept]
        x.sum().backward()
        return alive

    assert alive_after_forward(use_reentrant=False) == [True, True, True]
    assert alive_after_forward(use_reentrant=True) == [False, False, False]
