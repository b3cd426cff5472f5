"""vramfit: will this model, with these settings, fit on these GPUs? Exact, explained per-GPU memory.

    >>> import vramfit
    >>> result = vramfit.estimate("meta-llama/Llama-3.1-8B", batch_size=4, seq_len=8192)
    >>> result.memory.total, result.peak.allocated

In a notebook an `Estimate` shows itself as a Markdown table. The searches take a loaded model and settings
that name a GPU:

    >>> model = vramfit.load_model("meta-llama/Llama-3.1-8B")
    >>> vramfit.max_batch(model, vramfit.Settings(gpu="h100-80gb")).value

Importing vramfit and estimating never imports torch or transformers (only `vramfit.truth` does).
docs/API.md lists every public name.
"""

import importlib
from typing import TYPE_CHECKING, Any

from vramfit.errors import (
    InvalidConfig,
    InvalidSetting,
    MissingExtra,
    ModelNotFound,
    UnsupportedArchitecture,
    VramfitError,
)
from vramfit.estimate import estimate, sweep
from vramfit.model.architecture import Architecture
from vramfit.model.loaded import Model
from vramfit.model.sources import load_model
from vramfit.result import Component, Estimate, MemoryBreakdown, Parameters, Peak
from vramfit.settings import LoRA, Parallelism, Precision, Runtime, Settings, Training, Workload

if TYPE_CHECKING:
    from vramfit.search import check, fit, max_batch, max_context, plan, what_to_change

__all__ = [
    "Architecture",
    "Component",
    "Estimate",
    "InvalidConfig",
    "InvalidSetting",
    "LoRA",
    "MemoryBreakdown",
    "MissingExtra",
    "Model",
    "ModelNotFound",
    "Parallelism",
    "Parameters",
    "Peak",
    "Precision",
    "Runtime",
    "Settings",
    "Training",
    "UnsupportedArchitecture",
    "VramfitError",
    "Workload",
    "check",
    "estimate",
    "fit",
    "load_model",
    "max_batch",
    "max_context",
    "plan",
    "sweep",
    "what_to_change",
]

# The searches load at first use (PEP 562): `vramfit estimate` never needs them, and importing vramfit.search
# adds about 15% to its start from the shell (bench/bench_cli.py).
_SEARCHES = frozenset({"check", "fit", "max_batch", "max_context", "plan", "what_to_change"})


def __getattr__(name: str) -> Any:
    if name in _SEARCHES or name == "search":   # `vramfit.search` was bound by the import it replaces
        search = importlib.import_module("vramfit.search")   # (`from vramfit import search` would recurse here)
        value = search if name == "search" else getattr(search, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vramfit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _SEARCHES)
