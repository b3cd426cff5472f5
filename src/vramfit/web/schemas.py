"""Request and response types of the HTTP API, built from the Python API's own dataclasses (one source of truth).

A request names its model by catalog id (`model`) or carries a pasted config.json (`config`), plus the same
`vramfit.settings.Settings` the Python API takes; pydantic validates the dataclass fields' types and Literal
choices, `Settings.validate()` then applies the same rules as the CLI. Keys a dataclass does not have are
rejected (pydantic would otherwise drop them silently, and a typo would give a silently wrong number).
Responses are `vramfit.result.Estimate` itself; searches add their own small result types.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vramfit.settings import LoRA, Parallelism, Precision, Runtime, Settings, Training, Workload

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
        return value


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
