"""validate: predicted vs truth per row, error statistics by group, thresholds, unmapped rows, OOM rows.

The estimate is replaced by a stub with known peaks, so these tests check validate's arithmetic and
bookkeeping, not the memory model (tests/test_validate_suite.py checks that against the committed truth).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import vramfit.estimate  # noqa: F401  (loads the module whose estimate() the fixture replaces)
from vramfit.cli import main
from vramfit.errors import ModelNotFound
from vramfit.settings import Settings
from vramfit.truth.rows import TruthRow, write_rows
from vramfit.truth.validate import check_thresholds, error_stats, summary, validate_files

GB = 10**9


def _row(id: str, allocated: int, group: str = "g", **changes: Any) -> TruthRow:
    fields: dict[str, Any] = {"id": id, "kind": "traced", "model": "m", "settings": Settings().to_dict(),
                              "truth": {"allocated": allocated}, "measure": "allocated", "group": group}
    fields.update(changes)
    return TruthRow(**fields)


@pytest.fixture
def predicted(monkeypatch: pytest.MonkeyPatch) -> dict[int, int]:
    """Estimates answer 10 GB allocated, 11 GB reserved, 12 GB device, or the batch size's entry here."""
    by_batch: dict[int, int] = {}

    def fake_estimate(model: Any, settings: Settings) -> Any:
        allocated = by_batch.get(settings.workload.batch_size, 10 * GB)
        return SimpleNamespace(peak=SimpleNamespace(allocated=allocated, reserved=allocated + GB,
                                                    device=allocated + 2 * GB))

    monkeypatch.setattr(sys.modules["vramfit.estimate"], "estimate", fake_estimate)
    return by_batch


def _load(name: str) -> Any:
    if name == "missing/model":
        raise ModelNotFound("missing/model: not in the catalog")
    return SimpleNamespace(name=name)


def test_error_stats_use_nearest_rank_p90() -> None:
    stats = error_stats([0.01 * k for k in range(1, 11)] + [-0.5])
    assert stats["rows"] == 11
    assert stats["median_abs_error"] == pytest.approx(0.06)
    assert stats["p90_abs_error"] == pytest.approx(0.10)   # ceil(0.9 * 11) = 10th of 11 sorted
    assert stats["max_abs_error"] == pytest.approx(0.5)


def test_rows_are_scored_against_their_own_quantity(tmp_path: Path, predicted: dict[int, int]) -> None:
    path = tmp_path / "t.jsonl"
    write_rows(path, [
        _row("exact", 10 * GB),
        _row("under", 8 * GB, group="h"),                                   # +25%
        _row("reserved", 10 * GB, measure="reserved", truth={"reserved": 10 * GB}, group="h"),   # +10%
        _row("device", 12 * GB, measure="device", truth={"device": 12 * GB, "allocated": 1}),    # 0%
    ])
    data = summary(validate_files([path], _load))
    errors = {row["id"]: row["error"] for row in data["per_row"]}
    assert errors == pytest.approx({"exact": 0.0, "under": 0.25, "reserved": 0.10, "device": 0.0})
    assert data["rows"] == 4
    assert data["max_abs_error"] == pytest.approx(0.25)
    assert data["by_group"]["h"]["median_abs_error"] == pytest.approx(0.175)
    assert data["by_group"]["g"]["max_abs_error"] == pytest.approx(0.0)


def test_unmapped_rows_are_listed_with_their_reason(tmp_path: Path, predicted: dict[int, int]) -> None:
    path = tmp_path / "t.jsonl"
    write_rows(path, [_row("ok", 10 * GB), _row("gone", GB, model="missing/model"),
                      _row("said", GB, unmapped="seq_len not stated")])
    data = summary(validate_files([path], _load))
    assert data["rows"] == 1
    assert data["unmapped"] == [{"id": "gone", "reason": "ModelNotFound: missing/model: not in the catalog"},
                                {"id": "said", "reason": "seq_len not stated"}]


def test_oom_rows_count_as_caught_only_above_capacity(tmp_path: Path, predicted: dict[int, int]) -> None:
    capacity = Settings().replace(gpu_memory=11 * GB).to_dict()
    small = Settings().replace(gpu_memory=13 * GB).to_dict()
    path = tmp_path / "t.jsonl"
    write_rows(path, [_row("caught", 0, oom=True, truth={}, measure="device", settings=capacity),
                      _row("missed", 0, oom=True, truth={}, measure="device", settings=small)])
    data = summary(validate_files([path], _load))
    assert data["rows"] == 0
    assert data["oom"] == {"rows": 2, "missed": ["missed"]}


def test_thresholds_fail_only_when_exceeded(tmp_path: Path, predicted: dict[int, int]) -> None:
    path = tmp_path / "t.jsonl"
    write_rows(path, [_row("a", 10 * GB), _row("b", 9 * GB, kind="measured")])   # 0% and +11.1%
    report = validate_files([path], _load)
    assert check_thresholds(report, {"max_abs_error": 0.12}).failures == ()
    failed = check_thresholds(report, {"measured": {"max_abs_error": 0.1}, "traced": {"max_abs_error": 0.0}})
    assert failed.failures == ("measured rows: max_abs_error 0.1111 exceeds the threshold 0.1",)


def test_cli_json_contract_and_exit_status(tmp_path: Path, predicted: dict[int, int],
                                           capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("vramfit.truth.validate.default_loader", lambda: _load)
    path = tmp_path / "t.jsonl"
    write_rows(path, [_row("a", 10 * GB), _row("b", 8 * GB)])
    assert main(["validate", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"rows", "median_abs_error", "p90_abs_error", "max_abs_error", "by_group", "unmapped"} <= set(data)
    assert data["max_abs_error"] == pytest.approx(0.25)
    assert main(["validate", str(path), "--max-error", "0.2"]) == 1
    assert "FAILED all rows: max_abs_error 0.25 exceeds the threshold 0.2" in capsys.readouterr().out


def test_cli_reports_a_missing_file_as_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "no/such/file.jsonl"]) == 2
    assert "no such truth file" in capsys.readouterr().err


def test_plot_is_written_or_names_its_extra(tmp_path: Path, predicted: dict[int, int],
                                            capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("vramfit.truth.validate.default_loader", lambda: _load)
    path = tmp_path / "t.jsonl"
    write_rows(path, [_row("a", 10 * GB), _row("b", 8 * GB, group="h")])
    png = tmp_path / "scatter.png"
    pytest.importorskip("matplotlib")
    assert main(["validate", str(path), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["validate", str(path), "--plot", str(png)]) == 2
    assert "pip install 'vramfit[plot]'" in capsys.readouterr().err


def test_unmapped_rows_count_against_their_kind(tmp_path: Path, predicted: dict[int, int]) -> None:
    path = tmp_path / "t.jsonl"
    write_rows(path, [_row("a", 10 * GB), _row("gone", GB, model="missing/model", kind="measured")])
    report = validate_files([path], _load)
    assert check_thresholds(report, {"traced": {"unmapped": 0}}).failures == ()
    assert check_thresholds(report, {"measured": {"unmapped": 0}}).failures == (
        "measured rows: unmapped 1 exceeds the threshold 0",)


def test_oom_capacity_comes_from_the_gpu_catalog(tmp_path: Path, predicted: dict[int, int]) -> None:
    predicted[8] = 30 * GB                              # batch 8 predicts more than an A10G's 22.49 GiB usable
    a10g = Settings().replace(gpu="a10g")
    path = tmp_path / "t.jsonl"
    write_rows(path, [_row("small", 0, oom=True, truth={}, measure="device", settings=a10g.to_dict()),
                      _row("large", 0, oom=True, truth={}, measure="device",
                           settings=a10g.replace(batch_size=8).to_dict())])
    assert summary(validate_files([path], _load))["oom"] == {"rows": 2, "missed": ["small"]}
