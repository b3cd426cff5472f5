"""bench/qlora_reserved.py's stand-ins, checked by hand on tiny shapes: the emulated bitsandbytes 4-bit linear (what it
holds, what each forward and backward allocates and frees) and the one-process FSDP1 gathering under reentrant
checkpointing. Real or fake CPU tensors; no network."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from bench_scripts import load_bench


def bench() -> Any:
    return load_bench("qlora_reserved")


def events(tracker: Any) -> list[tuple[str, int]]:
    from vramfit.truth.allocator import tracker_events

    return [("malloc" if e.allocate else "free", e.nbytes) for e in tracker_events(tracker)]


def test_the_fake_4bit_linear_holds_nf4_bytes() -> None:
    """out=64, in=128: 8192 weights -> 4096 packed bytes, 128 absmax bytes (one per 64) and one fp32 scale (one per
    256 absmax); no bf16 weight."""
    pytest.importorskip("torch")
    layer = bench().make_fake_4bit_linear(64, 128)
    held = {name: buffer.numel() * buffer.element_size() for name, buffer in layer.named_buffers()}
    assert held == {"weight_packed": 4096, "absmax": 128, "absmax_scale": 4}
    assert list(layer.parameters()) == []
    assert bench().absmax_bytes(64, 128) == 128 + 4


@pytest.mark.parametrize("keep_input", [True, False])
def test_forward_and_backward_each_dequantize_into_a_temporary(keep_input: bool) -> None:
    """By hand, out=64, in=128, A (4, 128) bf16 (1024 B, an activation), every size rounded to 512 B:
    forward: fp32 absmax 128 x 4 = 512 B, bf16 weight 64 x 128 x 2 = 16384 B, the absmax freed on return from
    dequantize; the (4, 64) bf16 output (512 B); the weight freed.
    backward (grad_output 512 B given): absmax 512, weight 16384, absmax freed, grad_A (4, 128) bf16 1024 B, weight
    freed. With bitsandbytes 0.43.0 (keep_input) A outlives `del A` until backward; with 0.43.2 it dies at `del`."""
    torch = pytest.importorskip("torch")
    from vramfit.truth.tracker import LiveTensorTracker

    layer = bench().make_fake_4bit_linear(64, 128, keep_input=keep_input)
    leaf = torch.zeros(4, 128, dtype=torch.bfloat16, requires_grad=True)
    with LiveTensorTracker() as tracker:
        A = leaf * 2
        output = layer(A)
        before = tracker.current_bytes
        del A
        freed_at_del = before - tracker.current_bytes
        grad_output = torch.zeros(4, 64, dtype=torch.bfloat16)
        output.backward(grad_output)
    forward = [("malloc", 1024), ("malloc", 512), ("malloc", 16384), ("free", 512), ("malloc", 512), ("free", 16384)]
    backward = [("malloc", 512), ("malloc", 512), ("malloc", 16384), ("free", 512), ("malloc", 1024),
                ("free", 16384)]
    assert events(tracker)[:len(forward)] == forward
    assert events(tracker)[len(forward):len(forward) + (0 if keep_input else 1)] == ([] if keep_input else [("free", 1024)])
    start = len(forward) + (0 if keep_input else 1)
    assert events(tracker)[start:start + len(backward)] == backward
    assert freed_at_del == (0 if keep_input else 1024)


def tiny_run(dequant: bool, micro_steps: int = 2, prefetch: bool = False) -> tuple[Any, Any, dict[str, int]]:
    """Two tiny Llama layers through the bench's trace_run, counting dequantizations and unit gathers."""
    q = bench()
    settings = q.row_settings()
    settings = dataclasses.replace(settings, workload=dataclasses.replace(settings.workload, batch_size=1, seq_len=16))
    config = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
              "vocab_size": 128, "max_position_embeddings": 64, "rms_norm_eps": 1e-5}
    counts = {"dequantize": 0, "gather": 0, "most_gathered": 0}
    original_pre = q.Gathering._pre_forward

    def pre(self: Any, layer: Any, norm: Any, args: Any, kwargs: Any) -> None:
        counts["gather"] += id(layer) not in self.gathered
        original_pre(self, layer, norm, args, kwargs)
        counts["most_gathered"] = max(counts["most_gathered"], len(self.gathered))

    q.Gathering._pre_forward = pre
    build = q.build

    def counting_build(*args: Any, **kwargs: Any) -> Any:
        module, shared = build(*args, **kwargs)
        for layer in q.lora_layers(module):
            base = layer.base_layer
            original = base.dequantize

            def dequantize(original: Any = original) -> Any:
                counts["dequantize"] += 1
                return original()

            base.dequantize = dequantize
        return module, shared

    q.build = counting_build
    tracker, _ends, shared, _unshard = q.trace_run(q.llama_config(config, 2), settings, dequant=dequant,
                                                   micro_steps=micro_steps, prefetch=prefetch)
    return tracker, shared, counts


def test_each_unit_is_gathered_for_forward_and_for_its_recompute() -> None:
    """Reentrant checkpointing runs every block twice (forward without grad, recompute in backward): 2 gathers per
    layer per micro-step, and 3 dequantizations per 4-bit linear (forward, recompute, backward): 2 layers x 7 linears
    x 3 x 2 micro-steps = 84. The gathered buffers are all freed by the end of each micro-step."""
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    _, shared, counts = tiny_run(dequant=True)
    assert counts == {"dequantize": 84, "gather": 2 * 2 * 2, "most_gathered": 1}
    assert shared == 0


def test_backward_prefetch_gathers_the_next_unit_while_one_runs() -> None:
    """With BACKWARD_PRE the last layer's backward gathers layer 0's unit early (layer 0's own recompute then finds it
    gathered): the same 8 gathers counted by whoever allocates them, two units at once."""
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    _, _, counts = tiny_run(dequant=True, prefetch=True)
    assert (counts["gather"] + 2, counts["most_gathered"]) == (2 * 2 * 2, 2)


def test_dequant_off_uses_one_resident_weight_per_shape() -> None:
    """q/o (64 x 64), k/v (32 x 64), gate/up (128 x 64), down (64 x 128): four shapes, (4096 + 2048 + 8192 + 8192)
    x 2 B = 45056 B, and no temporaries (the dequantize calls return them)."""
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    _, shared, counts = tiny_run(dequant=False)
    assert shared == 45056
    assert counts["dequantize"] == 84


def test_two_streams_do_not_share_free_blocks() -> None:
    """A 30 MiB activation is freed, then a 30 MiB all-gather output is allocated (each >= 10 MiB, a multiple of 2
    MiB: a segment of exactly its size). On one stream the second reuses the first's block: 30 MiB reserved; with the
    all-gather on its own stream it needs its own segment: 60 MiB, while 30 MiB is allocated at any time."""
    from vramfit.truth.tracker import _Life

    MiB = 1 << 20
    tracker = type("Lives", (), {})()
    tracker._lives = {0: _Life(bytes=30 * MiB, born=1, died=2), 1: _Life(bytes=30 * MiB, born=3, died=4)}
    one = bench().replay_marks(tracker, [4])[-1]
    two = bench().replay_marks(tracker, [4], unshard={1})[-1]
    assert (one["allocated"], one["reserved"]) == (30 * MiB, 30 * MiB)
    assert (two["allocated"], two["reserved"], two["unshard_reserved"]) == (30 * MiB, 60 * MiB, 30 * MiB)
