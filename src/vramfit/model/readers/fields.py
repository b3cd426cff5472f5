"""Reading one config.json: old key names, the model type's own defaults, and errors that name the field.

Hugging Face config classes rename old keys through `attribute_map` (GPT2Config: n_embd -> hidden_size,
T5Config: d_model -> hidden_size, d_kv -> head_dim, ...). `ALIASES` is that table for every type vramfit
reads: a canonical name and the older or family-specific names that mean exactly the same thing. Where a
config states two of them with different values, that is a contradiction and an error, not a guess.

Defaults are the values of the transformers config class for that model type (configuration_<type>.py in
transformers 5.23), used only for switches and optional sizes; the dimensions that make a model (hidden
size, layers, heads, vocabulary) must be stated. tests/test_hf_config.py checks every default against the
installed transformers config class.

The MLP width has no alias: its keys (n_inner, ffn_dim, d_ff, ffn_hidden_size, intermediate_size) are each
the field of one family's config class, which ignores the others, so each reader asks for its own. Old
names for the other sizes are read for every type, even where the installed config class ignores them
(transformers 5.23's FalconConfig no longer maps n_head / n_layer): they are what the config's author meant.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vramfit.errors import InvalidConfig

ALIASES: dict[str, tuple[str, ...]] = {
    "hidden_size": ("n_embd", "n_embed", "d_model"),
    "num_hidden_layers": ("n_layer", "num_layers"),
    "num_attention_heads": ("n_head", "num_heads"),
    "num_key_value_heads": ("num_kv_heads", "n_head_kv"),
    "max_position_embeddings": ("n_positions",),
    "head_dim": ("d_kv",),
    "num_local_experts": ("n_routed_experts", "num_experts"),
}

_UNSET = object()

# A bound on layer counts, so an absurd config cannot make a reader build billions of layers (minutes of CPU
# and all the memory): twice the deepest published Transformer, DeepNet's 1,000 layers (Wang et al. 2022,
# "DeepNet: Scaling Transformers to 1,000 Layers", arXiv:2203.00555). Other sizes need no bound: they are
# multiplied, never iterated, in exact integer arithmetic.
MAX_LAYERS = 2048
_LAYER_COUNTS = ("num_hidden_layers", "num_decoder_layers", "num_encoder_layers")


class Fields:
    """The fields of one config.json, read under their canonical names."""

    def __init__(self, config: Mapping[str, Any], *, model_type: str, defaults: Mapping[str, Any]) -> None:
        self.config = config
        self.model_type = model_type
        self.defaults = defaults

    def stated(self, name: str) -> Any:
        """The value under `name` or one of its aliases, or _UNSET; two different values is an error."""
        found = [(key, self.config[key]) for key in (name, *ALIASES.get(name, ())) if key in self.config]
        values = {repr(value) for _, value in found}
        if len(values) > 1:
            stated = ", ".join(f"{key}={value!r}" for key, value in found)
            raise InvalidConfig(f"config.json ({self.model_type}) states {name} twice with different values "
                                f"({stated}); keep one of them")
        return found[0][1] if found else _UNSET

    def has(self, name: str) -> bool:
        return self.get(name) is not None

    def get(self, name: str) -> Any:
        """The stated value, else the model type's default, else None."""
        value = self.stated(name)
        return self.defaults.get(name) if value is _UNSET else value

    def integer(self, name: str) -> int:
        """A required positive integer."""
        value = self.get(name)
        if value is None:
            names = " / ".join((name, *ALIASES.get(name, ())))
            raise InvalidConfig(f"config.json ({self.model_type}) has no {names}; add it (an integer)")
        return self._positive(name, value)

    def optional_integer(self, name: str) -> int | None:
        value = self.get(name)
        return None if value is None else self._positive(name, value)

    def count(self, name: str, *, default: int = 0) -> int:
        """A non-negative integer that may be 0 (max_window_layers, first_k_dense_replace); unset is `default`."""
        value = self.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidConfig(f"config.json ({self.model_type}) field {name} is {value!r}; "
                                f"it must be an integer >= 0")
        return value

    def indices(self, name: str) -> frozenset[int]:
        """A list of layer indices (mlp_only_layers); unset is empty."""
        value = self.get(name)
        if value is None:
            return frozenset()
        if not isinstance(value, list) or not all(isinstance(item, int) and not isinstance(item, bool)
                                                  for item in value):
            raise InvalidConfig(f"config.json ({self.model_type}) field {name} is {value!r}; "
                                f"it must be a list of layer indices")
        return frozenset(value)

    def flag(self, name: str) -> bool:
        """A switch, stated or defaulted; a stated null is false, as the modeling code reads it
        (nn.Linear(bias=None) has no bias)."""
        if self.stated(name) is _UNSET and name not in self.defaults:
            raise InvalidConfig(f"config.json ({self.model_type}) has no {name}; add it (true or false)")
        value = self.get(name)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise InvalidConfig(f"config.json ({self.model_type}) field {name} is {value!r}; "
                                f"it must be true or false")
        return value

    def text(self, name: str) -> str:
        value = self.get(name)
        if not isinstance(value, str):
            raise InvalidConfig(f"config.json ({self.model_type}) field {name} is {value!r}; it must be a string")
        return value

    def _positive(self, name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InvalidConfig(f"config.json ({self.model_type}) field {name} is {value!r}; "
                                f"it must be a positive integer")
        if name in _LAYER_COUNTS and value > MAX_LAYERS:
            raise InvalidConfig(f"config.json ({self.model_type}) field {name} is {value:,}; more than {MAX_LAYERS:,} "
                                "layers is beyond any published model, fix the layer count")
        return value
