"""What every bench script shares: the machine it ran on, robust timing, and writing bench/results/<name>.json.

Timings are taken with time.perf_counter (wall) and time.process_time (this process's CPU). On a shared
machine the wall time also counts other processes' turns, so each script records the load average at its
start and end next to its figures; the CPU time is the fairer measure of the code itself.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """nproc, CPU model, Python and library versions, and the load average (1, 5, 15 minutes)."""
    return {"nproc": os.cpu_count(), "cpu": _cpu_model(), "python": platform.python_version(),
            "platform": platform.platform(), "versions": _versions(), "load_average": list(os.getloadavg()),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _versions() -> dict[str, str]:
    """Installed versions, read from package metadata without importing the packages (no torch import)."""
    from importlib import metadata

    out = {}
    for name in ("vramfit", "torch", "transformers", "peft"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["git"] = _git_head()
    return out


def _git_head() -> str:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False,
                              cwd=Path(__file__).resolve().parent)
        return done.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def samples(call: Callable[[], Any], *, repeat: int, warmup: int = 5) -> list[float]:
    """Wall seconds of `repeat` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out


def summary(seconds: list[float]) -> dict[str, float]:
    """median, p10, p90, min in microseconds."""
    ordered = sorted(seconds)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]
    return {"median_us": statistics.median(ordered) * 1e6, "p10_us": pick(0.1) * 1e6, "p90_us": pick(0.9) * 1e6,
            "min_us": ordered[0] * 1e6, "n": len(ordered)}


def pin_one_core() -> str:
    """Run on one core where the OS allows it, so 'per core' figures mean one core."""
    try:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        return f"pinned to CPU {min(os.sched_getaffinity(0))}"
    except (AttributeError, OSError):
        return "not pinned (sched_setaffinity unavailable)"


def write(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2) + "\n", encoding="utf-8")
    return path


def table(header: list[str], rows: list[list[str]]) -> str:
    """A plain-text table, columns padded to their widest cell."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def published_row(row_id: str) -> dict[str, Any]:
    """One converted published row (data/truth/published.jsonl) by its id: its settings, truth and source."""
    path = Path(__file__).resolve().parents[1] / "data" / "truth" / "published.jsonl"
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row["id"] == row_id:
            return row
    raise KeyError(row_id)
