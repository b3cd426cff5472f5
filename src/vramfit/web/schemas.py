"""Request and response types of the HTTP API, built from the Python API's own dataclasses (one source of truth).

A request names its model by catalog id (`model`) or carries a pasted config.json (`config`), plus the same
`vramfit.settings.Settings` the Python API takes; pydantic validates the dataclass fields' types and Literal
choices, `Settings.validate()` then applies the same rules as the CLI. Keys a dataclass does not have are
rejected (pydantic would otherwise drop them silently, and a typo would give a silently wrong number).
Responses are `vramfit.result.Estimate` itself, and for the searches `vramfit.search`'s result dataclasses
with their derived properties (fits, headroom, relative step cost) written out as fields, since JSON has no
properties: `CheckOut.of(check)` and friends copy them, nothing is recomputed here.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import TYPE_CHECKING, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from vramfit.gpus import GPU
from vramfit.result import Estimate
from vramfit.settings import LoRA, Parallelism, Precision, Runtime, Settings, Training, Workload

if TYPE_CHECKING:
    from vramfit import search

_PARTS: dict[str, type] = {"workload": Workload, "precision": Precision, "training": Training,
                           "parallelism": Parallelism, "runtime": Runtime}


def unknown_keys(cls: type, data: Any, where: str) -> list[str]:
    """Dotted paths of keys in `data` that the dataclass `cls` (and its nested parts) does not have."""
    if not isinstance(data, dict):
        return []
    names = {f.name for f in dataclasses.fields(cls)}
    found = [f"{where}{key}" for key in data if key not in names]
    for key, value in data.items():
        nested = _PARTS.get(key) if cls is Settings else (LoRA if cls is Training and key == "lora" else None)
        if nested is not None:
            found += unknown_keys(nested, value, f"{where}{key}.")
    return found


class ModelRequest(BaseModel):
    """Which model: a catalog id (or, when the server allows the network, a hub id), or a pasted config.json."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, max_length=200,
                              description="catalog id or alias, e.g. meta-llama/Llama-3.1-8B")
    config: dict[str, Any] | None = Field(default=None, description="a pasted config.json object")

    @model_validator(mode="after")
    def _one_model(self) -> ModelRequest:
        if (self.model is None) == (self.config is None):
            raise ValueError("give exactly one of 'model' (a catalog id) or 'config' (a config.json object)")
        return self


class EstimateRequest(ModelRequest):
    """A model and the settings to estimate it under (defaults: bf16 inference, batch 1, 2048 tokens)."""

    settings: Settings = Field(default_factory=Settings)

    @field_validator("settings", mode="before")
    @classmethod
    def _no_unknown_keys(cls, value: Any) -> Any:
        unknown = unknown_keys(Settings, value, "settings.")
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(unknown)}; see the Settings schema for known keys")
        return _strict_settings(value) if isinstance(value, dict) else value


_SETTINGS = TypeAdapter(Settings)


def _strict_settings(value: dict[str, Any]) -> Settings:
    """Settings read in pydantic's strict JSON mode: a JSON true, "4" or 4.0 is not the integer 4 (lax mode
    would coerce them, and a boolean batch size would pass as 1); JSON arrays still become tuples."""
    try:
        return _SETTINGS.validate_json(json.dumps(value), strict=True)
    except ValidationError as error:
        raise ValueError("; ".join(f"settings.{'.'.join(map(str, e['loc']))}: {e['msg']}, got {e['input']!r}"
                                   for e in error.errors())) from None


# A sweep's bounds: a plot or a table, not a search (each point is a whole Estimate in the response).
MAX_SWEEP_AXES = 4
MAX_SWEEP_POINTS = 1024


class SweepRequest(EstimateRequest):
    """A model, base settings, and the values of each swept setting (vramfit.sweep): the estimates at every
    combination, the last axis varying fastest. Values are JSON integers or strings, read strictly (a JSON true
    or "4" is not the integer 4), as the settings are."""

    axes: dict[str, list[StrictInt | StrictStr]] = Field(
        min_length=1, max_length=MAX_SWEEP_AXES,
        description='setting -> its values, e.g. {"batch_size": [1, 4, 16], "seq_len": [2048, 8192]}; names as '
                    f"the Python API's (Settings.replace); at most {MAX_SWEEP_AXES} axes and {MAX_SWEEP_POINTS} points")

    @field_validator("axes")
    @classmethod
    def _bounded(cls, axes: dict[str, list[StrictInt | StrictStr]]) -> dict[str, list[StrictInt | StrictStr]]:
        points = math.prod(len(values) for values in axes.values())
        if points > MAX_SWEEP_POINTS:
            raise ValueError(f"{points} points is more than {MAX_SWEEP_POINTS}; send fewer values")
        return axes


class CatalogModel(BaseModel):
    """One catalog entry, as the search route lists it."""

    id: str
    source: str
    upstream: str
    aliases: list[str]
    notes: str


class GPUCapacity(BaseModel):
    """A GPU from vramfit.gpus: the datasheet capacity and what the driver lets programs use, in bytes."""

    id: str
    name: str
    memory_bytes: int
    usable_bytes: int


class FitRequest(EstimateRequest):
    """fit: for each GPU, the fewest (1, 2, 4, ... max_gpus) that run the workload, and how."""

    gpus: list[str] | None = Field(default=None, max_length=64,
                                   description="GPU names from the catalog (default: every GPU in it)")
    max_gpus: int = Field(default=8, ge=1, le=1024, description="largest GPU count tried")


class LargestRequest(EstimateRequest):
    """max-batch / max-context on the GPU that settings.gpu or settings.gpu_memory names."""

    limit: int | None = Field(default=None, ge=1, description="search bound (default: vramfit.search's)")


class PlanRequest(EstimateRequest):
    """plan: the parallel layouts of `gpus` GPUs that fit, best first."""

    gpus: int = Field(ge=1, le=4096, description="GPUs in all")
    gpu: str | None = Field(default=None, max_length=100, description="GPU name (default: settings.gpu)")
    global_batch: int | None = Field(default=None, ge=1, description="training: sequences per optimizer step")
    top: int = Field(default=5, ge=1, le=50, description="layouts returned")


class CheckOut(BaseModel):
    """vramfit.search.Check: one estimate against one GPU's usable memory."""

    fits: bool
    total_bytes: int
    capacity_bytes: int
    headroom_bytes: int
    estimate: Estimate

    @classmethod
    def of(cls, check: search.Check) -> CheckOut:
        return cls(fits=check.fits, total_bytes=check.total_bytes, capacity_bytes=check.capacity_bytes,
                   headroom_bytes=check.headroom_bytes, estimate=check.estimate)


class LargestOut(BaseModel):
    """vramfit.search.Largest: the largest batch or context that fits, and what stopped the search."""

    name: str
    value: int
    limited_by: str
    capacity_bytes: int
    at_value: CheckOut | None
    above: CheckOut | None
    calls: int

    @classmethod
    def of(cls, found: search.Largest) -> LargestOut:
        return cls(name=found.name, value=found.value, limited_by=found.limited_by,
                   capacity_bytes=found.capacity_bytes, calls=found.calls,
                   at_value=CheckOut.of(found.at_value) if found.at_value else None,
                   above=CheckOut.of(found.above) if found.above else None)


class RankedOut(BaseModel):
    """vramfit.search.Ranked: a layout that fits, its memory, and its step cost relative to the ideal."""

    layout: dict[str, Any]
    description: str
    check: CheckOut
    step_relative: float
    step_parts_s: dict[str, float]
    step_ideal_s: float

    @classmethod
    def of(cls, ranked: search.Ranked) -> RankedOut:
        return cls(layout=dataclasses.asdict(ranked.layout), description=ranked.layout.describe(),
                   check=CheckOut.of(ranked.check), step_relative=ranked.cost.relative,
                   step_parts_s=dict(ranked.cost.parts_s), step_ideal_s=ranked.cost.ideal_s)


class PlanOut(BaseModel):
    """vramfit.search.PlanResult."""

    gpus: int
    gpu: str
    capacity_bytes: int
    layouts: list[RankedOut]
    considered: int
    estimated: int
    notes: list[str]

    @classmethod
    def of(cls, result: search.PlanResult) -> PlanOut:
        return cls(gpus=result.gpus, gpu=result.gpu, capacity_bytes=result.capacity_bytes,
                   layouts=[RankedOut.of(r) for r in result.layouts], considered=result.considered,
                   estimated=result.estimated, notes=list(result.notes))


class GpuFitOut(BaseModel):
    """vramfit.search.GpuFit: the fewest GPUs of one kind that run the workload (count 0: none up to max)."""

    gpu: GPU
    count: int
    best: RankedOut | None

    @classmethod
    def of(cls, found: search.GpuFit) -> GpuFitOut:
        return cls(gpu=found.gpu, count=found.count, best=RankedOut.of(found.best) if found.best else None)
