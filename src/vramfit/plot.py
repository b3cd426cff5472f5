"""Pictures of estimates: a stacked bar of one estimate's components, memory against batch size or context
length with the GPU's capacity as a line, and validate's predicted-against-measured scatter.

matplotlib is the optional extra `plot` (`pip install 'vramfit[plot]'`); without it these raise MissingExtra
with that line. Figures are drawn with matplotlib's object API on the Agg/SVG canvases (no pyplot, no window),
and the file's suffix (.png or .svg) picks the format. Sizes are labelled GiB or GB, as everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from vramfit.errors import InvalidSetting, MissingExtra
from vramfit.report import size
from vramfit.result import Estimate

if TYPE_CHECKING:
    from vramfit.model.loaded import Model
    from vramfit.settings import Settings

Axis = Literal["batch", "context"]
_SUFFIXES = (".png", ".svg")
# One colour per counter level, shades within it, so the bar reads as allocated / reserved / device.
_LEVEL_COLOURS = {"allocated": ("#1f4e79", "#2e75b6", "#5b9bd5", "#9dc3e6", "#bdd7ee", "#deebf7"),
                  "reserved": ("#c55a11", "#f4b183"), "device": ("#7f7f7f", "#bfbfbf")}


@dataclass(frozen=True, kw_only=True, slots=True)
class SweepPoint:
    """One estimate in a sweep: the swept value (batch size or tokens) and the three peaks in bytes."""

    value: int
    allocated: int
    reserved: int
    device: int


def _figure(width: float = 7.0, height: float = 4.5) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise MissingExtra("plots need matplotlib; install it with: pip install 'vramfit[plot]'") from error
    return Figure(figsize=(width, height), layout="constrained")


def _checked_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in _SUFFIXES:
        raise InvalidSetting(f"--plot: {str(path)!r} must end in .png or .svg, which picks the image format")
    return path


def _save(figure: Any, path: Path) -> Path:
    try:
        figure.savefig(path, format=path.suffix.lower().lstrip("."), dpi=120)
    except OSError as error:
        raise InvalidSetting(f"--plot: cannot write {str(path)!r} ({error.strerror or error}); "
                             "pass a path in a folder that exists and that you can write to") from error
    return path


def plot_breakdown(result: Estimate, path: str | Path, *, units: str = "GiB",
                   capacity_bytes: int | None = None) -> Path:
    """One stacked bar: each component a segment (bottom: allocated, then reserved, then device)."""
    path = _checked_path(path)
    figure = _figure(5.5, 6.0)
    axes = figure.add_subplot()
    bottom = 0.0
    for component, colour in zip(result.memory.components, _colours(result)):
        height = size(component.bytes, units)
        axes.bar([0], [height], bottom=bottom, color=colour, width=0.5,
                 label=f"{component.name} {height:.2f} {units}")
        bottom += height
    if capacity_bytes:
        axes.axhline(size(capacity_bytes, units), color="#c00000", linestyle="--",
                     label=f"GPU capacity {size(capacity_bytes, units):.2f} {units}")
    axes.set_xticks([0], [result.model])
    axes.set_xlim(-0.6, 1.8)
    axes.set_ylabel(f"memory per GPU ({units})")
    axes.set_title(f"total {size(result.memory.total, units):.2f} {units}")
    axes.legend(loc="upper right", fontsize="small")
    return _save(figure, path)


def _colours(result: Estimate) -> list[str]:
    used = {"allocated": 0, "reserved": 0, "device": 0}
    out = []
    for component in result.memory.components:
        shades = _LEVEL_COLOURS[component.level]
        out.append(shades[used[component.level] % len(shades)])
        used[component.level] += 1
    return out


def sweep(model: Model, settings: Settings, axis: Axis, values: Iterable[int]) -> list[SweepPoint]:
    """Estimates at each batch size or context length (seq_len), other settings unchanged (vramfit.sweep)."""
    from vramfit.estimate import sweep as estimates

    field = {"batch": "batch_size", "context": "seq_len"}.get(axis)
    if field is None:
        raise InvalidSetting(f"--plot-sweep: unknown axis {axis!r}; choose batch or context")
    values = list(values)
    return [SweepPoint(value=value, allocated=result.peak.allocated, reserved=result.peak.reserved,
                       device=result.peak.device)
            for value, result in zip(values, estimates(model, settings, **{field: values}))]


def default_values(axis: Axis, settings: Settings) -> list[int]:
    """Powers of two around the current setting: batch 1..256, context 512..the longer of 128k and seq_len."""
    if axis == "batch":
        return [2**i for i in range(9)]
    top = max(131072, settings.workload.seq_len)
    values, value = [], 512
    while value <= top:
        values.append(value)
        value *= 2
    return values


def plot_sweep(points: Sequence[SweepPoint], axis: Axis, path: str | Path, *, units: str = "GiB",
               capacity_bytes: int | None = None, title: str = "") -> Path:
    """Peak allocated, reserved and device memory against the swept value, with the capacity as a line."""
    path = _checked_path(path)
    figure = _figure()
    axes = figure.add_subplot()
    xs = [p.value for p in points]
    for level, colour in (("device", "#7f7f7f"), ("reserved", "#c55a11"), ("allocated", "#2e75b6")):
        axes.plot(xs, [size(getattr(p, level), units) for p in points], marker="o", color=colour,
                  label=f"peak {level}")
    if capacity_bytes:
        axes.axhline(size(capacity_bytes, units), color="#c00000", linestyle="--",
                     label=f"GPU capacity {size(capacity_bytes, units):.2f} {units}")
    axes.set_xscale("log", base=2)
    axes.set_xlabel("batch size (sequences per GPU)" if axis == "batch" else "context length (tokens)")
    axes.set_ylabel(f"memory per GPU ({units})")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    return _save(figure, path)


def plot_validation(cases: Sequence[tuple[str, int, int]], path: str | Path, *, units: str = "GiB") -> Path:
    """validate's scatter: (label, predicted_bytes, measured_bytes) per case, with the y = x line."""
    path = _checked_path(path)
    figure = _figure(6.0, 6.0)
    axes = figure.add_subplot()
    predicted = [size(p, units) for _, p, _ in cases]
    measured = [size(m, units) for _, _, m in cases]
    axes.scatter(measured, predicted, color="#2e75b6")
    for (label, _, _), x, y in zip(cases, measured, predicted):
        axes.annotate(label, (x, y), fontsize="x-small", xytext=(3, 3), textcoords="offset points")
    top = max(predicted + measured + [1e-9]) * 1.05
    axes.plot([0, top], [0, top], color="#7f7f7f", linestyle="--", label="predicted = measured")
    axes.set_xlim(0, top)
    axes.set_ylim(0, top)
    axes.set_xlabel(f"measured ({units})")
    axes.set_ylabel(f"predicted ({units})")
    axes.legend(fontsize="small")
    return _save(figure, path)
