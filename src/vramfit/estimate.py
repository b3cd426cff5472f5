"""estimate(model, settings) -> Estimate: composition only, no formulas (those live in vramfit.memory)."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any, TypeVar, cast

from vramfit.held import held
from vramfit.memory import sharding
from vramfit.model.loaded import Model
from vramfit.result import Estimate, MemoryBreakdown, Peak
from vramfit.settings import DType, Precision, Settings


def estimate(model: Model | str, settings: Settings | None = None, **changes: Any) -> Estimate:
    """Per-GPU memory of the most-loaded GPU for `model` under `settings` (defaults: inference in the
    model's own dtype, batch 1, 2048 tokens). Keyword changes override single fields: estimate(m, batch_size=8, mode="training").
    """
    model = _loaded(model)
    return _estimate(model, resolve_settings((settings or Settings()).replace(**changes), model).validate())


def sweep(model: Model | str, settings: Settings | None = None, **axes: Iterable[Any]) -> list[Estimate]:
    """Estimates at every combination of the axes' values, the last axis varying fastest:
    sweep(m, s, batch_size=[1, 8], seq_len=[2048, 8192]) equals [estimate(m, s, batch_size=b, seq_len=t) for b in
    (1, 8) for t in (2048, 8192)], made faster when the axes are the workload's counts (Settings.points: the
    settings are validated once, each point checks only its Workload)."""
    model = _loaded(model)
    base = resolve_settings(settings or Settings(), model)
    return [_estimate(model, point) for point in base.points(axes)]


def _loaded(model: Model | str) -> Model:
    if isinstance(model, str):
        from vramfit.model.sources import load_model

        return load_model(model)
    return model


def _estimate(model: Model, settings: Settings) -> Estimate:
    """The estimate for validated settings whose dtype is resolved (resolve_settings)."""
    sharding.validate_layout(model.architecture, settings)
    plan = _planner(settings.mode).plan(model, settings)
    memory = MemoryBreakdown(components=plan.components)
    return Estimate(model=model.name, parameters=plan.parameters, memory=memory, peak=Peak.of(memory),
                    settings=settings, notes=tuple(model.assumed) + tuple(model.notes) + plan.notes,
                    extra=plan.extra)


def _planner(mode: str) -> ModuleType:
    """vramfit.memory.inference or vramfit.memory.training, imported at its first estimate: an inference
    estimate never loads the training modules (about a tenth of `vramfit estimate`'s start from the shell,
    bench/bench_cli.py)."""
    if mode not in _PLANNERS:
        _PLANNERS[mode] = importlib.import_module(f"vramfit.memory.{mode}")
    return _PLANNERS[mode]


_PLANNERS: dict[str, ModuleType] = {}


def resolve_settings(settings: Settings, model: Model) -> Settings:
    """Settings with the model-dependent defaults filled in: dtype "auto" becomes the model's own dtype
    (as transformers' dtype="auto" loads it), bf16 when neither config.json nor the checkpoint says."""
    if settings.precision.dtype != "auto":
        return settings
    dtype = model.weight_dtype or "bf16"
    return _once(_RESOLVED_SETTINGS, settings, dtype,
                 lambda: dataclasses.replace(settings, precision=_resolved(settings.precision, dtype)))


def _resolved(precision: Precision, dtype: str) -> Precision:
    """`precision` with dtype "auto" made `dtype` (the model's: fp32/fp16/bf16)."""
    return _once(_RESOLVED, precision, dtype, lambda: dataclasses.replace(precision, dtype=cast(DType, dtype)))


_T = TypeVar("_T")


def _once(cache: dict[tuple[int, str], tuple[_T, _T]], original: _T, dtype: str, make: Callable[[], _T]) -> _T:
    """make() once per (original object, dtype): the same resolved object each time, so a settings part that
    stays the same object is validated once (settings._validated)."""
    return held(cache, (id(original), dtype), original, make, 256)


# (id(original), dtype) -> (original, resolved): each entry holds the original, so its id is not reused.
_RESOLVED: dict[tuple[int, str], tuple[Precision, Precision]] = {}
_RESOLVED_SETTINGS: dict[tuple[int, str], tuple[Settings, Settings]] = {}
