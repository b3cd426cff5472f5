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
