"""Predicted vs truth as a log-log scatter, one colour per group (needs matplotlib: the `plot` extra)."""

from __future__ import annotations

from pathlib import Path

from vramfit.errors import MissingExtra
from vramfit.truth.validate import Report
from vramfit.units import GiB


def scatter(report: Report, path: str | Path) -> None:
    """Save predicted (y) against truth (x) in GiB, with the y = x line; OOM rows are left out."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingExtra("--plot needs matplotlib: pip install 'vramfit[plot]'") from None
    figure, axes = plt.subplots(figsize=(6, 6))
    groups: dict[str, list[tuple[float, float]]] = {}
    for s in report.errors:
        groups.setdefault(s.row.group or "(none)", []).append(((s.truth or 0) / GiB, s.predicted / GiB))
    for name, points in sorted(groups.items()):
        axes.scatter([p[0] for p in points], [p[1] for p in points], label=name, s=14)
    values = [v for points in groups.values() for p in points for v in p if v > 0] or [1.0]
    low, high = min(values) / 1.2, max(values) * 1.2
    axes.plot([low, high], [low, high], color="grey", linewidth=0.8)
    axes.set(xscale="log", yscale="log", xlabel="truth (GiB)", ylabel="vramfit estimate (GiB)",
             title="vramfit: predicted vs truth")
    axes.legend(fontsize=7)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
