"""The suite runner: one row per planned case, appended as it goes; a rerun skips finished ids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

import vramfit.truth.trace as trace_module
from vramfit.truth.rows import read_rows
from vramfit.truth.suite import cases, run
from vramfit.truth.trace import TraceResult


def test_cases_are_unique_and_at_least_60() -> None:
    ids = [case.id for case in cases()]
    assert len(ids) == len(set(ids)) >= 60


def test_run_appends_then_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    traced: list[str] = []

    def fake_trace(model: str, settings: Any) -> TraceResult:
        traced.append(model)
        return TraceResult(model=model, peak_bytes=1024, breakdown={"parameters": 1024}, settings=settings,
                           seconds=0.0)

    monkeypatch.setattr(trace_module, "trace", fake_trace)
    planned = [case.id for case in cases("bert-large")]
    assert run(only="bert-large", out=tmp_path) == 0
    rows = read_rows(tmp_path / "encoder.jsonl")
    assert [row.id for row in rows] == planned
    assert all(row.group.endswith("/encoder") and row.truth == {"allocated": 1024} for row in rows)
    assert run(only="bert-large", out=tmp_path) == 0
    assert len(traced) == len(planned)            # nothing traced twice
