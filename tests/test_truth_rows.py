"""Truth rows: one JSON-lines format for traced, measured and published truth, read back exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vramfit.errors import InvalidConfig, InvalidSetting
from vramfit.settings import LoRA, Settings, settings_from_dict
from vramfit.truth.rows import TruthRow, append_row, finished_ids, read_rows, row_from_dict, write_rows


def _row(id: str = "a", **changes: object) -> TruthRow:
    fields: dict[str, object] = {"id": id, "kind": "traced", "model": "Qwen/Qwen3-0.6B",
                                 "settings": Settings().to_dict(), "truth": {"allocated": 1024},
                                 "measure": "allocated", "group": "inference/dense"}
    fields.update(changes)
    return TruthRow(**fields)  # type: ignore[arg-type]


def test_settings_round_trip_through_json() -> None:
    settings = Settings().replace(mode="training", batch_size=4, tensor=2, gpus=4,
                                  lora=LoRA(rank=16, targets=("q_proj", "k_proj")), finetune="lora")
    rebuilt = settings_from_dict(json.loads(json.dumps(settings.to_dict())))
    assert rebuilt == settings


def test_settings_from_dict_names_the_unknown_key() -> None:
    with pytest.raises(InvalidSetting, match="settings.workload: unknown key.*batchsize"):
        settings_from_dict({"workload": {"batchsize": 2}})
    with pytest.raises(InvalidSetting, match="settings.training.lora: unknown key.*rnk"):
        settings_from_dict({"training": {"lora": {"rnk": 2}}})


def test_append_then_read_gives_the_same_rows_and_ids(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "rows.jsonl"
    append_row(path, _row("a"))
    append_row(path, _row("b", oom=True, truth={}, measure="device"))
    assert read_rows(path) == [_row("a"), _row("b", oom=True, truth={}, measure="device")]
    assert finished_ids(path) == {"a", "b"}
    assert finished_ids(tmp_path / "missing.jsonl") == set()


def test_write_rows_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    write_rows(path, [_row("a"), _row("b")])
    write_rows(path, [_row("c")])
    assert [row.id for row in read_rows(path)] == ["c"]


def test_a_malformed_line_is_reported_with_its_number(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(_row().to_dict()) + "\n{not json\n")
    with pytest.raises(InvalidConfig, match=r"rows.jsonl:2: not JSON"):
        read_rows(path)


def test_rows_are_checked() -> None:
    with pytest.raises(InvalidConfig, match="unknown key.*colour"):
        row_from_dict({**_row().to_dict(), "colour": "red"})
    with pytest.raises(InvalidConfig, match="missing key.*settings"):
        row_from_dict({"id": "x", "kind": "traced", "model": "m"})
    with pytest.raises(InvalidConfig, match="measure is 'reserved' but truth has no such value"):
        _row(measure="reserved").check()
    with pytest.raises(InvalidConfig, match="kind 'guessed'"):
        _row(kind="guessed").check()
