"""The estimate path's caches (issue 10) never change an answer and never let a bad setting through.

Each cache is keyed by object identity or by the values a term depends on; these tests check the two ways a
cache could go wrong: a hit that skips a check a new object needs, and a hit that returns another input's
answer. Fresh objects (equal but not identical) must give the same numbers as cached ones.
"""

from __future__ import annotations

import dataclasses

import pytest

from vramfit import Settings, estimate, load_model
from vramfit.errors import InvalidSetting
from vramfit.estimate import resolve_settings
from vramfit.settings import Workload


def test_a_replaced_part_is_validated_again_after_its_original_passed() -> None:
    base = Settings().validate()
    with pytest.raises(InvalidSetting, match="batch_size"):
        base.replace(batch_size=0).validate()


def test_a_wrong_type_is_refused_after_an_equal_valid_part_passed() -> None:
    Settings(workload=Workload(batch_size=8)).validate()
    with pytest.raises(InvalidSetting, match="batch_size: got True"):
        Settings(workload=Workload(batch_size=True)).validate()
    with pytest.raises(InvalidSetting, match="seq_len: got '8'"):
        Settings(workload=Workload(seq_len="8")).validate()  # type: ignore[arg-type]


def test_a_training_part_is_validated_when_the_mode_becomes_training() -> None:
    bad_rank = Settings().replace(finetune="lora", lora=dataclasses.replace(Settings().training.lora, rank=0))
    bad_rank.validate()  # inference: the LoRA rank is not read
    with pytest.raises(InvalidSetting, match="lora_rank"):
        bad_rank.replace(mode="training").validate()


def test_nested_type_errors_keep_their_user_facing_names() -> None:
    lora = dataclasses.replace(Settings().training.lora, targets=["q_proj"])  # type: ignore[arg-type]
    with pytest.raises(InvalidSetting, match="lora_targets: got \\['q_proj'\\]; pass a list of strings"):
        Settings().replace(lora=lora).validate()


def test_the_resolved_precision_is_one_object_per_precision_and_dtype() -> None:
    model = load_model("meta-llama/Llama-3.1-8B")
    settings = Settings()
    first, second = resolve_settings(settings, model), resolve_settings(settings, model)
    assert first.precision is second.precision
    assert first.precision.dtype == "bf16"
    assert resolve_settings(Settings().replace(dtype="fp32"), model).precision.dtype == "fp32"


@pytest.mark.parametrize("changes", [
    {"mode": "inference", "batch_size": 3, "seq_len": 1000, "new_tokens": 10},
    {"mode": "inference", "gpus": 2, "tensor": 2, "name": "vllm", "gpu": "h100-80gb"},
    {"mode": "training", "batch_size": 2, "seq_len": 512},
    {"mode": "training", "finetune": "lora", "grad_ckpt": "full", "gpus": 4, "pipeline": 2, "tensor": 2},
    {"mode": "training", "gpus": 8, "zero_stage": 3, "grad_accum": 2},
])
def test_cached_and_fresh_objects_give_the_same_estimate(changes: dict[str, object]) -> None:
    """The second estimate hits every cache; a fresh model object (equal, not identical) misses the identity
    keyed ones. All three agree component by component."""
    model = load_model("Qwen/Qwen3-0.6B")
    settings = Settings().replace(**changes)
    first = estimate(model, settings).to_dict()
    again = estimate(model, settings).to_dict()
    fresh_model = dataclasses.replace(model, architecture=dataclasses.replace(model.architecture))
    fresh = estimate(fresh_model, Settings().replace(**changes)).to_dict()
    assert again == first
    assert fresh == first


def test_a_sweep_gives_each_point_its_own_answer() -> None:
    """Distinct settings in a row (as a sweep makes them) never return a neighbour's answer."""
    model = load_model("Qwen/Qwen3-0.6B")
    base = Settings()
    for mode in ("inference", "training"):
        totals = [estimate(model, base.replace(mode=mode, batch_size=b)).memory.total for b in (1, 2, 4, 8)]
        assert totals == sorted(totals)
        assert len(set(totals)) == 4


def test_a_settings_part_where_a_number_belongs_is_refused_by_name() -> None:
    """The type check follows the annotations: a dataclass in a number's field is a type error, not a part."""
    with pytest.raises(InvalidSetting, match="batch_size: got Workload"):
        Settings().replace(batch_size=Workload()).validate()
    with pytest.raises(InvalidSetting, match="workload: got 'x'"):
        Settings(workload="x").validate()  # type: ignore[arg-type]


# --- training: the phase totals a run of equal blocks at a time equal the walk block by block ----------------

def _every_phase(step: object) -> dict[str, dict[str, int]]:
    """Every phase's live set, walking the blocks one at a time as the planner did before issue 10: the
    specification the run-at-a-time totals (_block_totals) and the peak's live set (_phase) must match."""
    from vramfit.memory import training as T

    saved = T._saved(step)
    outer = T._outer_phases(step, saved)
    phases = {"forward": outer["forward"], "backward_start": outer["backward_start"]}
    resident, walk = T._block_resident(step), T._walk_start(step, saved)
    for index in range(len(step.blocks) - 1, -1, -1):
        mlp, attention = T._halves(step, step.blocks[index], walk)
        phases[f"backward_block_{index}_mlp"] = {**resident, **mlp}
        phases[f"backward_block_{index}_attention"] = {**resident, **attention}
        walk = T._walk_past(step, step.blocks[index], walk, 1)
    phases["optimizer_step"] = outer["optimizer_step"]
    return phases


def _steps(model_id: str, changes: dict[str, object]) -> list[object]:
    """The planner's steps (each candidate pipeline stage) for a model and settings, as training.plan makes them."""
    from vramfit.memory import training as T
    from vramfit.memory.parallel import layout

    model = load_model(model_id)
    settings = resolve_settings(Settings().replace(mode="training", **changes), model).validate()
    profile = T.framework(settings.training.framework)
    lay = layout(settings.parallelism, settings.workload)
    setup = T._setup(model, settings, profile, lay)
    return [T._step(setup, settings, stage) for stage in T._candidate_stages(lay.pipeline)]


@pytest.mark.parametrize(("model_id", "changes"), [
    ("Qwen/Qwen3-0.6B", {}),                                             # one run of 28 equal blocks
    ("Qwen/Qwen3-0.6B", {"frozen_layers": 5, "amp": "bf16", "dtype": "fp32"}),   # two runs, AMP copies
    ("Qwen/Qwen3-0.6B", {"grad_accum": 4, "grad_ckpt": "full"}),         # accumulating: no new gradients
    ("Qwen/Qwen3-0.6B", {"activation_offload": True, "framework": "torchtune", "grad_ckpt": "full"}),
    ("Qwen/Qwen3-0.6B", {"gpus": 4, "pipeline": 4, "grad_accum": 8}),   # first and last stage
    ("google/gemma-2-2b", {"finetune": "lora"}),                         # sliding and global blocks alternate
    ("deepseek-ai/DeepSeek-V2-Lite", {"gpus": 8, "zero_stage": 3}),      # a dense block, then MoE blocks
])
def test_phase_totals_by_runs_equal_the_walk_block_by_block(model_id: str, changes: dict[str, object]) -> None:
    from vramfit.memory import training as T

    for step in _steps(model_id, changes):
        phases = _every_phase(step)
        assert T._phase_totals(step) == {name: sum(live.values()) for name, live in phases.items()}
        assert list(T._phase_totals(step)) == list(phases)   # the same order: extra["phases"] keeps it
        totals = list(T._phase_totals(step).values())
        assert T._phase_table(step)[3] == (max(totals), totals.index(max(totals)))   # the first on a tie
        for name in phases:
            assert T._phase(step, name) == phases[name]


def test_an_inference_estimate_never_imports_the_training_planner() -> None:
    """`vramfit estimate` from the shell stays under 3x a bare interpreter partly because inference never
    loads memory.training and its modules (bench/bench_cli.py, docs/BENCHMARKS.md)."""
    import subprocess
    import sys

    code = ("import sys, vramfit; vramfit.estimate('Qwen/Qwen3-0.6B'); "
            "print(sorted(m for m in sys.modules if m.startswith('vramfit.memory.training')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.strip() == "[]"


def test_in_asks_whether_a_component_is_in_the_breakdown() -> None:
    """MemoryBreakdown looks components up by name; `in` must answer rather than iterate over integer keys
    forever (its __getitem__ never raises IndexError)."""
    memory = estimate(load_model("Qwen/Qwen3-0.6B"), Settings()).memory
    assert "weights" in memory
    assert "fsdp_root_gradients" not in memory


def test_components_made_once_per_setup_follow_their_settings() -> None:
    """Setup.described keeps the components whose bytes and description read no workload; a change of what they
    do read (here DeepSpeed's bucket size, the optimizer, the precision) must not find a stale one, and the
    workload-dependent ones (gradients: their inputs name grad_accum) are made at each call."""
    from vramfit import Settings, estimate, load_model
    from vramfit.result import Component

    model = load_model("meta-llama/Llama-3.1-8B")
    base = Settings().replace(mode="training", dtype="bf16", gpus=2, zero_stage=3, grad_accum=2)

    def component(settings: Settings, name: str) -> Component:
        return next(c for c in estimate(model, settings).memory.components if c.name == name)

    small, large = component(base.replace(zero_bucket=1000), "zero_reduce_bucket"), component(
        base.replace(zero_bucket=2000), "zero_reduce_bucket")
    assert (small.bytes, small.inputs) == (2048, {"zero_bucket": 1000})
    assert (large.bytes, large.inputs) == (4096, {"zero_bucket": 2000})
    sgd = component(base.replace(optimizer="sgd-momentum"), "optimizer_states")
    assert sgd.source == "torch/optim/sgd.py _multi_tensor_sgd"
    assert component(base, "optimizer_states").source == "torch/optim/adam.py _multi_tensor_adam"
    four = component(base.replace(grad_accum=4), "gradients")
    assert four.inputs["grad_accum"] == 4 and component(base, "gradients").inputs["grad_accum"] == 2


def test_held_caches_make_again_for_another_holder_and_clear_when_full() -> None:
    """vramfit.held: an entry serves only the object it was made from (an id reused by another object is made
    again), and a full store starts afresh."""
    from vramfit.held import held, put

    store: dict[object, tuple[object, object]] = {}
    first, second = object(), object()
    made: list[str] = []
    assert held(store, "k", first, lambda: made.append("a") or "a", 4) == "a"
    assert held(store, "k", first, lambda: made.append("b") or "b", 4) == "a"
    assert held(store, "k", second, lambda: made.append("c") or "c", 4) == "c"
    assert made == ["a", "c"]
    for key in range(3):
        put(store, key, (first, key), 4)
    assert len(store) == 4
    put(store, "new", (first, 0), 4)
    assert list(store) == ["new"]
