"""What an estimate returns: one breakdown that adds up, and the three peaks people compare against.

Each `Component` is bytes on the most-loaded GPU, with the formula that produced it, the numbers put into
that formula and where the formula or constant comes from (`--explain` prints these). Its `level` says
which counter would see it:

- "allocated": tensors the PyTorch caching allocator hands out (torch.cuda.max_memory_allocated);
- "reserved":  what the allocator holds beyond that (max_memory_reserved - max_memory_allocated);
- "device":    memory outside PyTorch's allocator: the CUDA context, NCCL, a runtime's own pools (nvidia-smi).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Level = Literal["allocated", "reserved", "device"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Component:
    """Bytes of one named part of memory, with its derivation."""

    name: str
    bytes: int
    level: Level = "allocated"
    formula: str = ""
    inputs: dict[str, Any] = field(default_factory=dict, hash=False)
    source: str = ""
    textbook: str = ""   # the seeds' formula for the same term, where they give one, and why they differ


@dataclass(frozen=True, kw_only=True, slots=True)
class MemoryBreakdown:
    """Components of one GPU's memory; `total` is their sum and nothing else."""

    components: tuple[Component, ...]

    @property
    def total(self) -> int:
        return sum(c.bytes for c in self.components)

    def at_level(self, *levels: Level) -> int:
        return sum(c.bytes for c in self.components if c.level in levels)

    def as_dict(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.components:
            out[c.name] = out.get(c.name, 0) + c.bytes
        out["total"] = self.total
        return out

    def __getitem__(self, name: str) -> int:
        return sum(c.bytes for c in self.components if c.name == name)

    def __contains__(self, name: object) -> bool:
        """`name in memory`: a component of that name is in the breakdown. (Without it, `in` would fall back
        to __getitem__(0), __getitem__(1), ... and never stop: a name lookup never raises IndexError.)"""
        return any(c.name == name for c in self.components)


@dataclass(frozen=True, kw_only=True, slots=True)
class Peak:
    """What torch.cuda.max_memory_allocated, torch.cuda.max_memory_reserved and nvidia-smi would show."""

    allocated: int
    reserved: int
    device: int

    @classmethod
    def of(cls, memory: MemoryBreakdown) -> Peak:
        """Each counter sees its own level and the levels below it: reserved includes allocated, the device
        (nvidia-smi) includes reserved."""
        by_level = {"allocated": 0, "reserved": 0, "device": 0}
        for c in memory.components:   # at_level for each level, in one pass
            by_level[c.level] += c.bytes
        allocated = by_level["allocated"]
        reserved = allocated + by_level["reserved"]
        return cls(allocated=allocated, reserved=reserved, device=reserved + by_level["device"])


@dataclass(frozen=True, kw_only=True, slots=True)
class Parameters:
    """Exact counts for the model as set up: total, trainable under the fine-tuning method, active per token."""

    total: int
    trainable: int
    active: int
    by_part: dict[str, int] = field(default_factory=dict, hash=False)


@dataclass(frozen=True, kw_only=True, slots=True)
class Estimate:
    """The answer for one model and one set of settings, on the most-loaded GPU."""

    model: str
    parameters: Parameters
    memory: MemoryBreakdown
    peak: Peak
    settings: Any  # vramfit.settings.Settings (Any keeps this module free of import cycles)
    notes: tuple[str, ...] = ()   # assumptions and caveats the reader must see
    extra: dict[str, Any] = field(default_factory=dict, hash=False)  # runtime-specific answers (vLLM tokens)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "parameters": {"total": self.parameters.total, "trainable": self.parameters.trainable,
                           "active": self.parameters.active, "by_part": dict(self.parameters.by_part)},
            "memory": self.memory.as_dict(),
            "peak": {"allocated": self.peak.allocated, "reserved": self.peak.reserved,
                     "device": self.peak.device},
            "settings": self.settings.to_dict(),
            "notes": list(self.notes),
            **({"extra": self.extra} if self.extra else {}),
        }

    def _repr_markdown_(self) -> str:
        """How Jupyter shows an Estimate: the components table, peaks and notes (vramfit.report)."""
        from vramfit.report import render_markdown

        return render_markdown(self)


@dataclass(frozen=True, kw_only=True, slots=True)
class Plan:
    """What a mode's planner (vramfit.memory.inference / .training) hands to `estimate`."""

    components: tuple[Component, ...]
    parameters: Parameters
    notes: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, hash=False)
