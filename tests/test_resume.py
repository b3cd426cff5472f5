"""Long work survives faults: an interrupted trace sweep (the truth suite), or an interrupted validate run with
--results, resumes without losing or duplicating a finished row, and a torn last line (a process killed
while writing it) is cut off and redone, not a crash. Rows are appended whole and fsynced as they finish
(vramfit.truth.rows.append_row).

The tracer is replaced by a fake that needs no torch (the resume logic is what is under test); faults are
a KeyboardInterrupt after N rows in-process, and a SIGKILL of a subprocess mid-sweep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from vramfit.settings import Settings
from vramfit.truth import suite
from vramfit.truth.rows import TruthRow, append_row, finished_ids, read_rows
from vramfit.truth.validate import summary, validate_files

ONLY = "dense-mha"   # a family of 14 cases: quick with the fake tracer


class FakeTrace:
    """Stands in for vramfit.truth.trace.trace / trace_row; raises `fault` on call number `fail_at`."""

    def __init__(self, fail_at: int | None = None, fault: type[BaseException] = KeyboardInterrupt) -> None:
        self.calls: list[str] = []
        self.fail_at, self.fault = fail_at, fault

    def trace(self, model: str, settings: Settings) -> Any:
        self.calls.append(model)
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise self.fault()
        return type("Result", (), {"peak_bytes": 1000 * len(self.calls), "settings": settings})()

    @staticmethod
    def trace_row(result: Any, *, model_id: str, row_id: str, group: str) -> TruthRow:
        return TruthRow(id=row_id, kind="traced", model=model_id, settings=result.settings.to_dict(),
                        truth={"allocated": result.peak_bytes}, group=group)


def _sweep(monkeypatch: pytest.MonkeyPatch, out: Path, fake: FakeTrace) -> None:
    import vramfit.truth.trace as tracing

    monkeypatch.setattr(tracing, "trace", fake.trace)
    monkeypatch.setattr(tracing, "trace_row", fake.trace_row)
    suite.run(only=ONLY, out=out)


def _ids_in(out: Path) -> list[str]:
    return [row.id for path in sorted(out.glob("*.jsonl")) for row in read_rows(path)]


def _expected_ids() -> list[str]:
    return [case.id for case in suite.cases(ONLY)]


def test_an_interrupted_sweep_resumes_without_losing_or_duplicating_rows(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path) -> None:
    expected = _expected_ids()
    with pytest.raises(KeyboardInterrupt):
        _sweep(monkeypatch, tmp_path, FakeTrace(fail_at=6))
    assert _ids_in(tmp_path) == expected[:5], "the five rows finished before the fault are kept"
    second = FakeTrace()
    _sweep(monkeypatch, tmp_path, second)
    assert len(second.calls) == len(expected) - 5, "only the unfinished cases are traced again"
    assert _ids_in(tmp_path) == expected


def test_a_killed_sweep_with_a_torn_last_line_resumes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A real SIGKILL of a sweeping process, then a partial row at the end of the file, as a kill during the
    write leaves it: the resumed sweep cuts the partial line off, redoes that row, and ends with every id once."""
    script = textwrap.dedent(f"""
        import time, vramfit.truth.trace as tracing
        from pathlib import Path
        from vramfit.truth import suite
        from vramfit.truth.rows import TruthRow

        def trace(model, settings):
            time.sleep(0.2)
            return type("R", (), {{"peak_bytes": 1, "settings": settings}})()

        def trace_row(result, *, model_id, row_id, group):
            return TruthRow(id=row_id, kind="traced", model=model_id, settings=result.settings.to_dict(),
                            truth={{"allocated": 1}}, group=group)

        tracing.trace, tracing.trace_row = trace, trace_row
        suite.run(only={ONLY!r}, out=Path({str(tmp_path)!r}))
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL)
    rows = tmp_path / "dense-mha.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not rows.is_file() or rows.read_text().count("\n") < 3):
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished = finished_ids(rows)
    assert 3 <= len(finished) < len(_expected_ids())
    with rows.open("a", encoding="utf-8") as handle:   # the row being written when the kill came
        handle.write('{"id": "' + _expected_ids()[len(finished)] + '", "kind": "tra')
    _sweep(monkeypatch, tmp_path, FakeTrace())
    assert _ids_in(tmp_path) == _expected_ids()
    assert all(json.loads(line) for line in rows.read_text().splitlines())


def test_appending_a_finished_id_again_is_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    row = TruthRow(id="a", kind="measured", model="m", settings={}, truth={"allocated": 1})
    assert append_row(path, row) is True
    assert append_row(path, row) is False
    assert [r.id for r in read_rows(path)] == ["a"]


def test_a_complete_last_row_without_its_newline_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    first = TruthRow(id="a", kind="measured", model="m", settings={}, truth={"allocated": 1})
    path.write_text(json.dumps(first.to_dict()), encoding="utf-8")   # no trailing newline
    append_row(path, TruthRow(id="b", kind="measured", model="m", settings={}, truth={"allocated": 2}))
    assert [r.id for r in read_rows(path)] == ["a", "b"]


def _truth_file(tmp_path: Path) -> Path:
    path = tmp_path / "truth.jsonl"
    for batch in range(1, 7):
        settings = Settings().replace(batch_size=batch, seq_len=512, dtype="bf16").to_dict()
        append_row(path, TruthRow(id=f"qwen-b{batch}", kind="measured", model="Qwen/Qwen3-0.6B",
                                  settings=settings, truth={"allocated": 1_300_000_000 + batch}))
    append_row(path, TruthRow(id="unknown-model", kind="measured", model="nobody/nothing", settings={},
                              truth={"allocated": 1}))
    return path


def test_an_interrupted_validate_resumes_from_its_results(tmp_path: Path) -> None:
    truth = _truth_file(tmp_path)
    results = tmp_path / "results.jsonl"
    from vramfit.model.sources import load_model

    calls: list[str] = []

    def failing_load(name: str) -> Any:
        calls.append(name)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return load_model(name)

    with pytest.raises(KeyboardInterrupt):
        validate_files([truth], failing_load, results=results)
    assert len(results.read_text().splitlines()) == 3
    with results.open("a", encoding="utf-8") as handle:
        handle.write('{"key": "qwen-b4#')               # torn: killed while writing row 4's outcome
    calls.clear()
    resumed = validate_files([truth], lambda name: (calls.append(name), load_model(name))[1], results=results)
    assert len(calls) == 4, "rows 1-3 are read back, rows 4-7 scored"
    keys = [json.loads(line)["key"].split("#")[0] for line in results.read_text().splitlines()]
    assert keys == [f"qwen-b{b}" for b in range(1, 7)] + ["unknown-model"]
    assert summary(resumed) == summary(validate_files([truth]))


def test_cli_validate_results_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vramfit.cli import main

    truth, results = _truth_file(tmp_path), tmp_path / "out" / "results.jsonl"
    assert main(["validate", str(truth), "--results", str(results), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["validate", str(truth), "--results", str(results), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == first
    assert len(results.read_text().splitlines()) == 7
