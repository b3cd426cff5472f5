"""A model as vramfit knows it: its architecture plus where it came from and what was assumed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vramfit.model.architecture import Architecture


@dataclass(frozen=True, kw_only=True, slots=True)
class StoredTensors:
    """What safetensors headers say: element counts per stored dtype (e.g. {"BF16": 8030261248}) and the
    number of tensors. Read from headers only, never from tensor data."""

    elements_by_dtype: dict[str, int] = field(hash=False)
    tensors: int
    bytes: int

    @property
    def elements(self) -> int:
        return sum(self.elements_by_dtype.values())


@dataclass(frozen=True, kw_only=True, slots=True)
class Model:
    """name: how the user named it; source: catalog, config, folder, cache, hub or numbers;
    config: the config.json as read (empty for a model described by numbers);
    stored: safetensors header summary where the files were at hand;
    assumed: dimensions vramfit filled in because nobody stated them."""

    name: str
    architecture: Architecture
    source: str
    config: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    stored: StoredTensors | None = None
    assumed: tuple[str, ...] = ()

    @property
    def quantization_config(self) -> dict[str, Any] | None:
        value = self.config.get("quantization_config")
        return value if isinstance(value, dict) else None
