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

    @property
    def floating_dtype(self) -> str | None:
        """The floating-point dtype holding the most elements ("BF16", "F16", "F32"), None if there is none."""
        floats = {k: v for k, v in self.elements_by_dtype.items() if k in _SAFETENSORS_DTYPES}
        return max(floats, key=lambda k: floats[k]) if floats else None


# safetensors dtype names and config.json dtype names -> vramfit's (settings.DTYPES)
_SAFETENSORS_DTYPES = {"F32": "fp32", "F16": "fp16", "BF16": "bf16"}
_CONFIG_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "fp32": "fp32", "fp16": "fp16",
                  "bf16": "bf16", "float": "fp32", "half": "fp16"}


@dataclass(frozen=True, kw_only=True, slots=True)
class Model:
    """name: how the user named it; source: catalog, config, folder, cache, hub or numbers;
    config: the config.json as read (empty for a model described by numbers);
    stored: safetensors header summary where the files were at hand;
    assumed: dimensions vramfit filled in because nobody stated them;
    notes: what the reader should know about the source (e.g. stored elements that differ from the count)."""

    name: str
    architecture: Architecture
    source: str
    config: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    stored: StoredTensors | None = None
    assumed: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def weight_dtype(self) -> str | None:
        """The dtype the weights load in by default, as transformers 5 does with its default dtype="auto"
        (modeling_utils._get_dtype): config.json's dtype / torch_dtype first, else the checkpoint's floating
        dtype. In vramfit's names (fp32, fp16, bf16); None when neither says."""
        named = self.architecture.dtype or self.config.get("dtype") or self.config.get("torch_dtype")
        declared = _CONFIG_DTYPES.get(str(named).lower()) if named else None
        if declared:
            return declared
        stored = self.stored.floating_dtype if self.stored else None
        return _SAFETENSORS_DTYPES.get(stored) if stored else None

    @property
    def quantization_config(self) -> dict[str, Any] | None:
        value = self.config.get("quantization_config")
        return value if isinstance(value, dict) else None
