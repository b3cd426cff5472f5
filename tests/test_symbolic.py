"""The compiled byte formulas (memory/symbolic.py) equal the direct evaluation for every batch and length.

The training planner traces its per-operator functions once with the batch and the per-GPU length as symbols
and evaluates the compiled arithmetic afterwards; these tests check that the symbols follow Python's integer
arithmetic exactly (the caching allocator's per-tensor rounding included) and that a value-dependent branch
refuses to compile instead of picking one side.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from vramfit import Settings, load_model
from vramfit.estimate import resolve_settings
from vramfit.memory import training as T
from vramfit.memory.gradients import allocation_bytes
from vramfit.memory.parallel import layout
from vramfit.memory.symbolic import SEQ, NotTraceable, compile_sizes

POINTS = list(itertools.product((1, 2, 3, 7, 64), (1, 5, 511, 512, 2048, 4097, 32768)))


def test_rounding_and_floors_are_exact_at_every_point() -> None:
    def trace(b: Any, s: Any) -> dict[str, Any]:
        t = b * s
        return {"rsqrt": allocation_bytes(t * 4), "hidden": allocation_bytes(t * 4096 * 2),
                "rows": allocation_bytes((t // 3) * 10 * 2), "scores": allocation_bytes(b * 32 * s * s * 4),
                "piece": -(-t // 7) * 5 - 3, "constant": 17, "label": "T x 4"}

    compiled = compile_sizes(trace)
    assert compiled is not None
    for b, s in POINTS:
        assert compiled(b, s) == trace(b, s)


def test_a_multiple_of_the_granule_needs_no_rounding_in_the_compiled_form() -> None:
    compiled = compile_sizes(lambda b, s: {"hidden": allocation_bytes(b * s * 4096 * 2)})
    assert compiled is not None
    assert "//" not in compiled.source   # 8192 x T is always a multiple of 512


@pytest.mark.parametrize("operation", [lambda s: 1 if s else 2, lambda s: s == 4096, lambda s: float(s),
                                       lambda s: f"{s}", lambda s: s / 2, lambda s: s % 7])
def test_a_value_dependent_operation_does_not_compile(operation: Any) -> None:
    with pytest.raises(NotTraceable):
        operation(SEQ)
    assert compile_sizes(lambda b, s: {"x": operation(s)}) is None


def test_a_comparison_is_a_guard_with_both_outcomes_compiled() -> None:
    """`seq < window` (the sliding-window mask) and max/min: each outcome traced, the guard tested at each call,
    with the same integers; exact on both sides of every threshold."""
    def trace(b: Any, s: Any) -> dict[str, Any]:
        mask = allocation_bytes(b * s * s * 2) if not s < 4096 else 0
        return {"mask": mask, "wider": max(b * 3, s // 2), "capped": min(s, 1000) * b}

    compiled = compile_sizes(trace)
    assert compiled is not None
    assert "if" in compiled.source
    for b, s in [*POINTS, (1, 4095), (1, 4096), (3, 999), (3, 1000), (3, 1001), (700, 1400), (700, 1401)]:
        assert compiled(b, s) == trace(b, s)
    with pytest.raises(NotTraceable):   # a comparison outside compile_sizes has no outcome to take
        trace(SEQ, SEQ)


@pytest.mark.parametrize(("model_id", "changes"), [
    ("meta-llama/Llama-3.1-8B", {}),
    ("meta-llama/Llama-3.1-8B", {"finetune": "lora", "grad_ckpt": "full"}),
    ("Qwen/Qwen3-0.6B", {"amp": "bf16", "dtype": "fp32", "grad_ckpt": "selective", "frozen_layers": 3}),
    ("Qwen/Qwen3-0.6B", {"finetune": "qlora", "quant": "bnb-nf4", "bitsandbytes": "0.42.0"}),
    ("Qwen/Qwen3-0.6B", {"framework": "litgpt", "finetune": "lora", "gpus": 4, "tensor": 2, "pipeline": 2}),
    ("deepseek-ai/DeepSeek-V2-Lite", {"gpus": 8, "zero_stage": 3, "attention": "eager", "dropout": 0.1}),
    ("openai-community/gpt2", {"framework": "torchtune", "gpus": 2, "context": 2}),
    # torch < 1.11: softmax's and log_softmax's kept inputs (Runtime.torch)
    ("google-bert/bert-large-uncased", {"attention": "eager", "dtype": "fp32", "torch": "1.10.1"}),
    ("meta-llama/Llama-3.1-8B", {"attention": "eager", "amp": "bf16", "dtype": "fp32", "torch": "1.10.1"}),
])
def test_the_compiled_step_sizes_equal_the_direct_ones(model_id: str, changes: dict[str, Any]) -> None:
    model = load_model(model_id)
    settings = resolve_settings(Settings().replace(mode="training", **changes), model).validate()
    profile = T.framework(settings.training.framework)
    lay = layout(settings.parallelism, settings.workload)
    widths = T._bytes(settings, profile)
    for stage in T._candidate_stages(lay.pipeline):
        terms = T._terms(model.architecture, settings.training, lay, widths, stage, profile, True)

        def direct(b: Any, s: Any, stage: int = stage, terms: Any = terms) -> dict[Any, Any]:
            return T._shape_sizes(model, settings.training, settings.runtime, profile, lay, widths,
                                  stage, terms, b, s)

        compiled = compile_sizes(direct)
        assert compiled is not None
        for b, s in POINTS:
            assert compiled(b, s) == direct(b, s)


@pytest.mark.parametrize("model_id", ["google/gemma-2-2b", "mistralai/Mistral-7B-v0.1"])
def test_a_sliding_window_stage_compiles_with_a_guard_on_the_length(model_id: str) -> None:
    """The sliding-window mask exists only from `seq >= window` on (activations._sliding_mask): compiled with a
    guard on the length, equal to the direct sizes on both sides of the window."""
    model = load_model(model_id)
    settings = resolve_settings(Settings().replace(mode="training"), model).validate()
    profile = T.framework(settings.training.framework)
    lay = layout(settings.parallelism, settings.workload)
    widths = T._bytes(settings, profile)
    terms = T._terms(model.architecture, settings.training, lay, widths, 0, profile, True)
    window = next(layer.attention.sliding_window for layer in model.architecture.layers()
                  if layer.attention.sliding_window)

    def direct(b: Any, s: Any) -> dict[Any, Any]:
        return T._shape_sizes(model, settings.training, settings.runtime, profile, lay, widths, 0, terms, b, s)

    compiled = compile_sizes(direct)
    assert compiled is not None
    assert ">= 0:" in compiled.source
    for b, s in [*POINTS, (1, window - 1), (2, window), (3, window + 1)]:
        assert compiled(b, s) == direct(b, s)


def test_a_sweep_across_the_compile_gives_each_point_the_direct_answer() -> None:
    """A key's first estimates evaluate the sizes directly and the _COMPILE_AT-th compiles them: every point of
    a sweep across that change equals the first (direct) estimate of a freshly loaded model."""
    from vramfit import estimate
    from vramfit.memory.symbolic import Compiled

    model = load_model("Qwen/Qwen3-0.6B")
    base = Settings().replace(mode="training", seq_len=1000)
    for batch in range(1, T._COMPILE_AT + 3):
        swept = estimate(model, base.replace(batch_size=batch)).to_dict()
        fresh = estimate(load_model("Qwen/Qwen3-0.6B"), base.replace(batch_size=batch)).to_dict()
        assert swept == fresh
    assert any(isinstance(entry.compiled, Compiled) for holder, entry in T._COMPILED.values() if holder is model)
