"""measure on the CPU, with the GPU replaced at its boundary: torch.cuda's counters and NVML.

The step itself runs for real (tiny model on the CPU); what the tests check is the protocol: warm-up, peak
reset, the counters read after the measured step, one row appended per run, and OOM recorded as a row.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import vramfit.truth.measure as measure_module
from vramfit.cli import main
from vramfit.model.sources import load_model
from vramfit.settings import Settings
from vramfit.truth.measure import measure, record
from vramfit.truth.rows import read_rows

TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
        "vocab_size": 128, "max_position_embeddings": 256, "tie_word_embeddings": False, "torch_dtype": "float32"}
GIB = 1024**3


class FakeCuda:
    """torch.cuda as a GPU would answer: counters that grow per step, reset on request."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.steps = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "is_available", lambda: True)
        monkeypatch.setattr(cuda, "get_device_name", lambda index=0: "NVIDIA Test 80GB")
        monkeypatch.setattr(cuda, "get_device_properties", lambda index=0: types.SimpleNamespace(total_memory=80 * GIB))
        monkeypatch.setattr(cuda, "synchronize", lambda: self.events.append("sync"))
        monkeypatch.setattr(cuda, "reset_peak_memory_stats", lambda: self.events.append("reset"))
        monkeypatch.setattr(cuda, "max_memory_allocated", lambda: 3 * GIB)
        monkeypatch.setattr(cuda, "max_memory_reserved", lambda: 4 * GIB)
        monkeypatch.setattr(cuda, "empty_cache", lambda: self.events.append("empty_cache"))
        monkeypatch.setattr(torch.version, "cuda", "12.8")
        nvml = types.ModuleType("pynvml")
        nvml.nvmlInit = lambda: None  # type: ignore[attr-defined]
        nvml.nvmlShutdown = lambda: None  # type: ignore[attr-defined]
        nvml.nvmlDeviceGetHandleByIndex = lambda index: "handle"  # type: ignore[attr-defined]
        nvml.nvmlDeviceGetMemoryInfo = lambda handle: types.SimpleNamespace(used=5 * GIB)  # type: ignore
        nvml.nvmlSystemGetDriverVersion = lambda: b"570.86"  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "pynvml", nvml)


@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
    fake = FakeCuda()
    fake.install(monkeypatch)
    return fake


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("tiny") / "config.json"
    path.write_text(json.dumps(TINY))
    return load_model(str(path))


@pytest.mark.parametrize("changes", [{"seq_len": 16, "new_tokens": 4}, {"mode": "training", "seq_len": 16}])
def test_warm_up_then_reset_then_measured_step(tiny: Any, gpu: FakeCuda, changes: dict[str, Any]) -> None:
    result = measure(tiny, Settings().replace(dtype="fp32", **changes), device="cpu")
    assert gpu.events[:2] == ["sync", "reset"]          # the warm-up step ends before the peak is reset
    assert gpu.events[-1] == "sync"
    assert (result.allocated_bytes, result.reserved_bytes, result.device_bytes) == (3 * GIB, 4 * GIB, 5 * GIB)
    assert result.env["gpu"] == "NVIDIA Test 80GB"
    assert result.env["driver"] == "570.86"
    assert {"torch", "transformers", "cuda"} <= set(result.env)


def test_rows_are_appended_one_per_run(tiny: Any, gpu: FakeCuda, tmp_path: Path) -> None:
    path = tmp_path / "measured.jsonl"
    settings = Settings().replace(dtype="fp32", seq_len=16)
    for _ in range(2):
        record(measure(tiny, settings, device="cpu"), path, model_id="tiny/config.json")
    rows = read_rows(path)
    assert len(rows) == 2
    assert rows[0].kind == "measured"
    assert rows[0].truth == {"allocated": 3 * GIB, "reserved": 4 * GIB, "device": 5 * GIB}
    assert rows[0].settings["workload"]["seq_len"] == 16


def test_out_of_memory_is_a_row_not_a_crash(tiny: Any, gpu: FakeCuda, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def step(*args: Any) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(measure_module, "run_step", step)
    result = measure(tiny, Settings().replace(dtype="fp32", seq_len=16), device="cpu")
    row = record(result, tmp_path / "m.jsonl", model_id="tiny")
    assert (row.oom, row.truth, row.measure) == (True, {}, "device")
    assert row.settings["gpu_memory"] == 80 * GIB
    assert "Tried to allocate" in row.source["error"]
    assert "empty_cache" in gpu.events


def test_without_nvml_the_device_figure_is_left_out(tiny: Any, gpu: FakeCuda,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)   # import fails as if not installed
    result = measure(tiny, Settings().replace(dtype="fp32", seq_len=16), device="cpu")
    assert result.device_bytes is None
    assert "device" not in result.truth()


def test_no_gpu_is_a_clear_error(tiny: Any, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY))
    assert main(["measure", str(config), "--seq-len", "16", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "no CUDA GPU is visible" in capsys.readouterr().err
