"""Score vramfit's estimates against truth rows: predicted vs truth per row, error statistics per group.

Torch-free: it only calls `vramfit.estimate`. The error of a row is (predicted - truth) / truth, where both
are the quantity the row measured (allocated, reserved or device); summaries use its absolute value.
An OOM row has no truth number: it counts as caught when the predicted peak exceeds the GPU's capacity
(settings.gpu_memory, else the catalog's usable bytes of settings.gpu), and as missed otherwise; OOM rows
are reported apart from the error statistics.
Rows that cannot be estimated (model not in the catalog, a setting vramfit does not model) are listed as
unmapped with the reason, never silently dropped.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vramfit.errors import InvalidConfig, VramfitError
from vramfit.model.loaded import Model
from vramfit.settings import settings_from_dict
from vramfit.truth.rows import TruthRow, drop_torn_tail, read_rows

ModelLoader = Callable[[str], Model]


@dataclass(frozen=True, kw_only=True, slots=True)
class Scored:
    """One row's estimate next to its truth. error: (predicted - truth) / truth, None for OOM rows."""

    row: TruthRow
    predicted: int
    truth: int | None
    error: float | None
    oom_caught: bool | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Unmapped:
    id: str
    reason: str
    kind: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class Report:
    scored: tuple[Scored, ...]
    unmapped: tuple[Unmapped, ...]
    failures: tuple[str, ...] = field(default=())   # thresholds exceeded, one line each

    @property
    def errors(self) -> list[Scored]:
        return [s for s in self.scored if s.error is not None]

    @property
    def ooms(self) -> list[Scored]:
        return [s for s in self.scored if s.error is None]


def error_stats(errors: Sequence[float]) -> dict[str, Any]:
    """rows, median / p90 / max of |error| and the mean signed error (negative: vramfit underestimates).
    p90 is the nearest-rank percentile: the smallest |error| with at least 90% of rows at or below it."""
    magnitudes = sorted(abs(e) for e in errors)
    if not magnitudes:
        return {"rows": 0, "median_abs_error": 0.0, "p90_abs_error": 0.0, "max_abs_error": 0.0,
                "mean_error": 0.0}
    p90 = magnitudes[math.ceil(0.9 * len(magnitudes)) - 1]
    return {"rows": len(magnitudes), "median_abs_error": statistics.median(magnitudes), "p90_abs_error": p90,
            "max_abs_error": magnitudes[-1], "mean_error": statistics.fmean(errors)}


def default_loader() -> ModelLoader:
    """vramfit's own model loading (catalog, paths, local cache; never the network), memoised per name."""
    cache: dict[str, Model] = {}

    def load(name: str) -> Model:
        if name not in cache:
            from vramfit.model.sources import load_model

            cache[name] = load_model(name)
        return cache[name]

    return load


def model_name(row: TruthRow, base: Path | None) -> str:
    """A relative config path in a row is relative to its file's folder; ids pass through."""
    if base is not None and row.model.endswith(".json") and not Path(row.model).is_absolute():
        return str((base / row.model).resolve())
    return row.model


def score_row(row: TruthRow, load: ModelLoader, base: Path | None = None) -> Scored | Unmapped:
    """Estimate one row and compare it with its truth."""
    if row.unmapped:
        return Unmapped(id=row.id, reason=row.unmapped, kind=row.kind)
    try:
        settings = settings_from_dict(row.settings)
        from vramfit.estimate import estimate

        result = estimate(load(model_name(row, base)), settings)
    except (VramfitError, ImportError) as error:
        return Unmapped(id=row.id, reason=f"{type(error).__name__}: {error}", kind=row.kind)
    predicted = int(getattr(result.peak, row.measure))
    if row.oom:
        from vramfit.gpus import capacity_bytes

        return _score_oom(row, predicted, capacity_bytes(settings.gpu, settings.gpu_memory))
    truth = int(row.truth[row.measure])
    return Scored(row=row, predicted=predicted, truth=truth, error=(predicted - truth) / truth)


def _score_oom(row: TruthRow, predicted: int, capacity_bytes: int | None) -> Scored | Unmapped:
    if capacity_bytes is None:
        return Unmapped(id=row.id, reason="OOM row without settings.gpu or gpu_memory: nothing to compare against",
                        kind=row.kind)
    return Scored(row=row, predicted=predicted, truth=None, error=None, oom_caught=predicted > capacity_bytes)


def validate_rows(rows: Iterable[tuple[TruthRow, Path | None]], load: ModelLoader | None = None, *,
                  results: Path | None = None) -> Report:
    """Score every row. With `results`, each row's outcome is appended there (flushed) as it finishes, and
    rows whose outcome the file already holds are not scored again: an interrupted run resumes."""
    load = load or default_loader()
    done = _finished_results(results) if results is not None else {}
    outcomes = []
    for row, base in rows:
        key = _result_key(row, base)
        outcome = _outcome_from(done[key], row) if key in done else score_row(row, load, base)
        if results is not None and key not in done:
            _append_result(results, key, outcome)
            done[key] = _outcome_dict(outcome)
        outcomes.append(outcome)
    return Report(scored=tuple(o for o in outcomes if isinstance(o, Scored)),
                  unmapped=tuple(o for o in outcomes if isinstance(o, Unmapped)))


def validate_files(paths: Sequence[str | Path], load: ModelLoader | None = None, *,
                   results: Path | None = None) -> Report:
    """Every row of every file; ids must be unique within a file."""
    rows: list[tuple[TruthRow, Path | None]] = []
    for path in paths:
        base = Path(path).resolve().parent
        rows.extend((row, base) for row in read_rows(path))
    return validate_rows(rows, load, results=results)


def _result_key(row: TruthRow, base: Path | None) -> str:
    """The row's id and a digest of everything in it: an edited row is scored again, not read back."""
    content = json.dumps([row.to_dict(), str(base)], sort_keys=True).encode()
    return f"{row.id}#{hashlib.sha256(content).hexdigest()[:16]}"


def _outcome_dict(outcome: Scored | Unmapped) -> dict[str, Any]:
    if isinstance(outcome, Unmapped):
        return {"reason": outcome.reason}
    return {"predicted": outcome.predicted, "truth": outcome.truth, "error": outcome.error,
            "oom_caught": outcome.oom_caught}


def _outcome_from(data: dict[str, Any], row: TruthRow) -> Scored | Unmapped:
    if "reason" in data:
        return Unmapped(id=row.id, reason=data["reason"], kind=row.kind)
    return Scored(row=row, predicted=data["predicted"], truth=data["truth"], error=data["error"],
                  oom_caught=data["oom_caught"])


def _finished_results(path: Path) -> dict[str, dict[str, Any]]:
    """Outcomes already in a results file; a torn last line (a killed run) is cut off and redone."""
    if not path.is_file():
        return {}
    drop_torn_tail(path)
    done = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            data = json.loads(line)
            done[data["key"]] = data["outcome"]
        except (ValueError, KeyError, TypeError):
            raise InvalidConfig(f"{path}:{number}: not a validate result line; delete the file to start "
                                "over") from None
    return done


def _append_result(path: Path, key: str, outcome: Scored | Unmapped) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"key": key, "outcome": _outcome_dict(outcome)}, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def summary(report: Report) -> dict[str, Any]:
    """The `--json` contract: overall statistics, per group and per kind, unmapped rows, OOM rows, rows."""
    overall = error_stats([s.error for s in report.errors if s.error is not None])
    return {
        "rows": overall["rows"],
        "median_abs_error": overall["median_abs_error"],
        "p90_abs_error": overall["p90_abs_error"],
        "max_abs_error": overall["max_abs_error"],
        "mean_error": overall["mean_error"],
        "by_group": _by(report, lambda s: s.row.group or "(none)"),
        "by_kind": _by(report, lambda s: s.row.kind),
        "oom": {"rows": len(report.ooms), "missed": [s.row.id for s in report.ooms if not s.oom_caught]},
        "unmapped": [{"id": u.id, "reason": u.reason} for u in report.unmapped],
        "per_row": [_row_dict(s) for s in report.scored],
        "failures": list(report.failures),
    }


def _by(report: Report, key: Callable[[Scored], str]) -> dict[str, Any]:
    groups: dict[str, list[float]] = {}
    for s in report.errors:
        groups.setdefault(key(s), []).append(s.error if s.error is not None else 0.0)
    return {name: error_stats(errors) for name, errors in sorted(groups.items())}


def _row_dict(s: Scored) -> dict[str, Any]:
    return {"id": s.row.id, "kind": s.row.kind, "group": s.row.group, "measure": s.row.measure,
            "predicted": s.predicted, "truth": s.truth, "error": s.error, "oom": s.row.oom,
            "oom_caught": s.oom_caught}


# Threshold names as they appear in a thresholds file or on the command line.
THRESHOLD_KEYS = ("median_abs_error", "p90_abs_error", "max_abs_error", "oom_missed", "unmapped")


def check_thresholds(report: Report, limits: dict[str, Any]) -> Report:
    """Failures for every statistic above its limit. `limits` holds flat limits (THRESHOLD_KEYS) that
    apply to all rows, and/or per-kind limits under "traced", "measured", "published"."""
    failures = list(_exceeded("all rows", report, _flat(limits)))
    for kind in ("traced", "measured", "published"):
        if isinstance(limits.get(kind), dict):
            subset = Report(scored=tuple(s for s in report.scored if s.row.kind == kind),
                            unmapped=tuple(u for u in report.unmapped if u.kind == kind))
            failures.extend(_exceeded(f"{kind} rows", subset, _flat(limits[kind])))
    return Report(scored=report.scored, unmapped=report.unmapped, failures=tuple(failures))


def _flat(limits: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in limits.items() if k in THRESHOLD_KEYS and v is not None}


def _exceeded(scope: str, report: Report, limits: dict[str, float]) -> Iterable[str]:
    stats = error_stats([s.error for s in report.errors if s.error is not None])
    stats["oom_missed"] = sum(1 for s in report.ooms if not s.oom_caught)
    stats["unmapped"] = len(report.unmapped)
    for key, limit in limits.items():
        if stats[key] > limit:
            yield f"{scope}: {key} {stats[key]:.4g} exceeds the threshold {limit:.4g}"
