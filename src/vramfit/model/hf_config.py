"""config.json -> Architecture: an alias table for old key names and one reader per model_type.

`read_architecture(config)` never guesses from ratios or names: every reader states, from the transformers
modeling file of its type, which projections, biases, norms and tables the class named in `architectures`
instantiates, so `Architecture.parameter_count().total` equals `sum(p.numel() for p in model.parameters())`
of that class built from the same config (tests/test_parameters.py builds every catalog entry on the meta
device and compares). An unknown model_type raises UnsupportedArchitecture listing the supported ones; a
missing or contradictory field raises InvalidConfig naming it; a multimodal config (vision or audio tower)
is refused rather than counted in part.

Two deliberate departures, both documented where they are read: chatglm (THUDM's remote-code GLM-4 and
ChatGLM2/3) is counted from its published modeling file and checked against published totals, since
transformers cannot build it; and T5/mT5 heads are tied even when config.json says false, because
T5Config.__post_init__ in transformers 5.23 forces it: the model it builds holds one shared table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from vramfit.errors import InvalidConfig, UnsupportedArchitecture
from vramfit.model.architecture import Architecture
from vramfit.model.readers import chatglm, classic, decoders, encoders, moe
from vramfit.model.readers.fields import ALIASES, Fields

Reader = Callable[[Fields], Architecture]

_FAMILIES = (decoders, moe, classic, encoders, chatglm)
READERS: dict[str, Reader] = {name: reader for family in _FAMILIES for name, reader in family.READERS.items()}
DEFAULTS: dict[str, dict[str, Any]] = {name: family.DEFAULTS[name] for family in _FAMILIES
                                       for name in family.READERS}
SUPPORTED: tuple[str, ...] = tuple(sorted(READERS))

__all__ = ["ALIASES", "SUPPORTED", "read_architecture"]


def read_architecture(config: Mapping[str, Any]) -> Architecture:
    """The architecture config.json describes, for the class named in its `architectures` field."""
    if not isinstance(config, Mapping):
        raise InvalidConfig(f"config.json must be a JSON object, not {type(config).__name__}")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise InvalidConfig("config.json has no model_type; add the model_type of its transformers config "
                            f"(one of: {', '.join(SUPPORTED)})")
    _refuse_multimodal(config, model_type)
    reader = READERS.get(model_type)
    if reader is None:
        raise UnsupportedArchitecture(f"model_type {model_type!r} is not supported yet; supported model_types: "
                                      f"{', '.join(SUPPORTED)}")
    return reader(Fields(config, model_type=model_type, defaults=DEFAULTS[model_type]))


def _refuse_multimodal(config: Mapping[str, Any], model_type: str) -> None:
    """A config with a nested text_config and a vision (or audio) tower: counting the text model alone would be
    a silently wrong total, and vramfit has no vision-tower parts yet, so it says so and how to proceed."""
    towers = [key for key in ("vision_config", "audio_config") if key in config]
    if "text_config" not in config and not towers:
        return
    text = config.get("text_config")
    text_type = text.get("model_type") if isinstance(text, Mapping) else None
    hint = (f"; to estimate the language model alone, pass its text_config as a config.json of its own "
            f"(model_type {text_type!r}, architectures naming its *ForCausalLM class)" if text_type in READERS else "")
    raise UnsupportedArchitecture(f"model_type {model_type!r} is multimodal ({', '.join(towers) or 'text_config'} "
                                  f"nested in config.json) and vramfit does not count vision or audio towers "
                                  f"yet{hint}")
