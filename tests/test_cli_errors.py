"""`vramfit estimate MODEL`: every model source end to end, and bad input as one error line, never a traceback.

The network is off: opening a socket fails the test, and the hub is replaced at huggingface_hub's boundary.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_safetensors import write_safetensors
from test_sources import LLAMA_3_1_8B, TINY, TINY_PARAMETERS, tiny_tensors

from vramfit.cli import main


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a test tried to open a network socket")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    (tmp_path / "hf-cache").mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def one_error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == ""
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("vramfit: error: ")
    assert "Traceback" not in captured.err
    return lines[0]


def estimate_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, object]:
    assert main(["estimate", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_catalog_model_json_has_exact_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    result = estimate_json(capsys, ["meta-llama/Llama-3.1-8B"])
    assert result["parameters"] == {"total": LLAMA_3_1_8B, "trainable": LLAMA_3_1_8B, "active": LLAMA_3_1_8B,
                                    "by_part": result["parameters"]["by_part"]}  # type: ignore[index]


def test_table_output_is_readable(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", "meta-llama/Llama-3.1-8B"]) == 0
    out = capsys.readouterr().out
    assert "8,030,261,248" in out
    assert "weights" in out


def test_config_path_and_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY))
    write_safetensors(folder / "model.safetensors", tiny_tensors("F32"))
    for spec in (str(folder / "config.json"), str(folder)):
        assert estimate_json(capsys, [spec])["parameters"]["total"] == TINY_PARAMETERS  # type: ignore[index]
    # Without --dtype the folder's weights take their stored dtype, as transformers' dtype="auto" does.
    assert estimate_json(capsys, [str(folder)])["memory"]["weights"] == 4 * TINY_PARAMETERS  # type: ignore[index]


def test_model_by_numbers_lists_what_was_assumed(capsys: pytest.CaptureFixture[str]) -> None:
    result = estimate_json(capsys, ["--params", "7B"])
    assert abs(result["parameters"]["total"] - 7_000_000_000) < 10**6  # type: ignore[index]
    notes = " | ".join(result["notes"])  # type: ignore[arg-type]
    assert "assumed layers=32 and hidden_size=4096" in notes
    assert "assumed vocab_size=32000" in notes


def test_unknown_model_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "wormhole", "hidden_size": 8}))
    line = one_error_line(capsys, ["estimate", str(path)])
    assert "'wormhole' is not supported" in line
    assert "llama" in line  # the supported ones are listed


def test_malformed_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.json"
    path.write_text('{\n  "model_type": "llama"\n  "hidden_size": 8\n}')
    line = one_error_line(capsys, ["estimate", str(path)])
    assert f"{path}: malformed JSON at line 3" in line


def test_missing_path(capsys: pytest.CaptureFixture[str]) -> None:
    line = one_error_line(capsys, ["estimate", "./no/such/model/config.json"])
    assert "./no/such/model/config.json: no such file or folder" in line


def test_unknown_hub_id_with_the_network_off(capsys: pytest.CaptureFixture[str]) -> None:
    line = one_error_line(capsys, ["estimate", "acme/not-a-model"])
    assert "--allow-network" in line


def test_gated_hub_model(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    huggingface_hub = pytest.importorskip("huggingface_hub")
    response = SimpleNamespace(headers={}, request=None, status_code=403)

    def gated(*args: object, **kwargs: object) -> None:
        raise huggingface_hub.errors.GatedRepoError("403 Client Error: Cannot access gated repo", response=response)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", gated)
    line = one_error_line(capsys, ["estimate", "acme/gated-model", "--allow-network"])
    assert "acme/gated-model: is gated" in line
    assert "pass a local config.json" in line


def test_params_and_model_together(capsys: pytest.CaptureFixture[str]) -> None:
    line = one_error_line(capsys, ["estimate", "meta-llama/Llama-3.1-8B", "--params", "7B"])
    assert "--params" in line


def test_installed_command_offline_reports_llama_3_1_8b(tmp_path: Path) -> None:
    # The acceptance check, as a user runs it: the console script in a subprocess, HF_HUB_OFFLINE=1.
    script = Path(sys.executable).parent / "vramfit"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "vramfit"]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path)}
    done = subprocess.run([*command, "estimate", "meta-llama/Llama-3.1-8B", "--json"], capture_output=True,
                          text=True, env=env, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["parameters"]["total"] == 8_030_261_248
