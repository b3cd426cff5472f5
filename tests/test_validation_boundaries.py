"""Bad input at every boundary: the same VramfitError, naming the field and the fix, from the Python API, the
CLI (one line, exit 2) and the HTTP API (422 with the message; 404 for an unknown model).

Table-driven: each row is one mistake, written once as CLI flags and once as the settings JSON the Python API
(`settings_from_dict`) and the HTTP API take, with the field its message must name. The Python API's
message is the reference; the CLI must print exactly it, the HTTP API must return exactly it.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

import vramfit
from vramfit.cli import main
from vramfit.errors import InvalidConfig, InvalidSetting, UnsupportedArchitecture, VramfitError
from vramfit.model.catalog import catalog_config
from vramfit.model.sources import load_model
from vramfit.settings import settings_from_dict

pytest.importorskip("fastapi", reason="the web extra is not installed: pip install 'vramfit[web]'")
from fastapi.testclient import TestClient

from vramfit.web.app import create_app

DENSE = "Qwen/Qwen3-0.6B"       # 16 heads, 8 kv heads, 28 layers, no experts
MOE = "Qwen/Qwen3-30B-A3B"      # 128 experts
GQA4 = "Qwen/Qwen2-7B"          # 28 heads, 4 kv heads
TRAIN = {"mode": "training"}

# (case id, model, CLI flags, settings JSON, the field its message names)
SETTINGS_CASES: list[tuple[str, str, list[str], dict[str, Any], str]] = [
    ("zero-batch", DENSE, ["--batch-size", "0"], {"workload": {"batch_size": 0}}, "batch_size"),
    ("negative-batch", DENSE, ["--batch-size", "-3"], {"workload": {"batch_size": -3}}, "batch_size"),
    ("absurd-seq-len", DENSE, ["--seq-len", str(10**12)], {"workload": {"seq_len": 10**12}}, "seq_len"),
    ("absurd-batch", DENSE, ["--batch-size", str(10**15)], {"workload": {"batch_size": 10**15}}, "batch_size"),
    ("zero-grad-accum", DENSE, ["--mode", "training", "--grad-accum", "0"],
     {"workload": {**TRAIN, "grad_accum": 0}}, "grad_accum"),
    ("new-tokens-fill-seq", DENSE, ["--seq-len", "512", "--new-tokens", "512"],
     {"workload": {"seq_len": 512, "new_tokens": 512}}, "new_tokens"),
    ("tp-not-dividing-heads", DENSE, ["--tp", "3", "--gpus", "3"], {"parallelism": {"tensor": 3, "gpus": 3}}, "tp"),
    ("tp-not-dividing-heads-training", DENSE, ["--mode", "training", "--tp", "3", "--gpus", "3"],
     {"workload": TRAIN, "parallelism": {"tensor": 3, "gpus": 3}}, "tp"),
    ("tp-not-dividing-kv-heads", GQA4, ["--tp", "7", "--gpus", "7"], {"parallelism": {"tensor": 7, "gpus": 7}},
     "key/value heads"),
    ("pp-over-layers", DENSE, ["--pp", "29", "--gpus", "29"], {"parallelism": {"pipeline": 29, "gpus": 29}}, "pp"),
    ("gpus-not-multiple-of-tp", DENSE, ["--tp", "2", "--gpus", "3"], {"parallelism": {"tensor": 2, "gpus": 3}},
     "gpus"),
    ("ep-on-dense-model", DENSE, ["--mode", "training", "--ep", "2", "--gpus", "2"],
     {"workload": TRAIN, "parallelism": {"expert": 2, "gpus": 2}}, "ep"),
    ("ep-not-dividing-experts", MOE, ["--mode", "training", "--ep", "3", "--gpus", "3"],
     {"workload": TRAIN, "parallelism": {"expert": 3, "gpus": 3}}, "ep"),
    ("ep-over-data-ranks", MOE, ["--mode", "training", "--ep", "4", "--gpus", "2"],
     {"workload": TRAIN, "parallelism": {"expert": 4, "gpus": 2}}, "ep"),
    ("cp-over-tokens", DENSE, ["--mode", "training", "--cp", "4", "--gpus", "4", "--seq-len", "2"],
     {"workload": {**TRAIN, "seq_len": 2}, "parallelism": {"context": 4, "gpus": 4}}, "cp"),
    ("unknown-gpu", DENSE, ["--gpu", "gtx-9999"], {"gpu": "gtx-9999"}, "gpu"),
    ("unknown-quant", DENSE, ["--quant", "int3-magic"], {"precision": {"quant": "int3-magic"}}, "quant"),
    ("qlora-with-awq", DENSE, ["--mode", "training", "--finetune", "qlora", "--quant", "awq-4bit-g128"],
     {"workload": TRAIN, "training": {"finetune": "qlora"}, "precision": {"quant": "awq-4bit-g128"}}, "quant"),
    ("quant-in-full-training", DENSE, ["--mode", "training", "--quant", "bnb-nf4"],
     {"workload": TRAIN, "precision": {"quant": "bnb-nf4"}}, "quant"),
    ("zero-with-fsdp", DENSE, ["--mode", "training", "--zero", "3", "--fsdp", "full", "--gpus", "2"],
     {"workload": TRAIN, "parallelism": {"zero_stage": 3, "fsdp": "full", "gpus": 2}}, "zero_stage"),
    ("amp-in-inference", DENSE, ["--amp", "bf16", "--dtype", "fp32"],
     {"precision": {"amp": "bf16", "dtype": "fp32"}}, "amp"),
    ("zero-in-inference", DENSE, ["--zero", "3", "--gpus", "2"], {"parallelism": {"zero_stage": 3, "gpus": 2}},
     "zero_stage"),
    ("cp-in-inference", DENSE, ["--cp", "2", "--gpus", "2"], {"parallelism": {"context": 2, "gpus": 2}}, "cp"),
    ("frozen-layers-over-model", DENSE, ["--mode", "training", "--frozen-layers", "99"],
     {"workload": TRAIN, "training": {"frozen_layers": 99}}, "frozen_layers"),
    ("utilization-over-one", DENSE, ["--runtime", "vllm", "--gpu-memory-utilization", "2"],
     {"runtime": {"name": "vllm", "gpu_memory_utilization": 2.0}}, "gpu_memory_utilization"),
    ("zero-max-num-seqs", DENSE, ["--runtime", "vllm", "--max-num-seqs", "0"],
     {"runtime": {"name": "vllm", "max_num_seqs": 0}}, "max_num_seqs"),
    ("zero-lora-rank", DENSE, ["--mode", "training", "--finetune", "lora", "--lora-rank", "0"],
     {"workload": TRAIN, "training": {"finetune": "lora", "lora": {"rank": 0}}}, "lora_rank"),
    ("unknown-lora-target", DENSE, ["--mode", "training", "--finetune", "lora", "--lora-targets", "nope"],
     {"workload": TRAIN, "training": {"finetune": "lora", "lora": {"targets": ["nope"]}}}, "lora_targets"),
    ("zero-gpu-memory", DENSE, ["--gpu-memory", "0GB"], {"gpu_memory": 0}, "gpu_memory"),
]


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a test tried to open a network socket")

    monkeypatch.setattr(socket.socket, "connect", refuse)   # the test client's in-process socketpair stays
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(), raise_server_exceptions=False)


def api_error(model: Any, settings: dict[str, Any]) -> VramfitError:
    with pytest.raises(VramfitError) as caught:
        vramfit.estimate(model, settings_from_dict(settings))
    return caught.value


def cli_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("vramfit: error: "), lines[0]
    return lines[0].removeprefix("vramfit: error: ")


def http_error(client: TestClient, body: dict[str, Any]) -> str:
    response = client.post("/api/estimate", content=json.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code in (404, 422), (response.status_code, response.text)
    return str(response.json()["detail"])


def names_the_field(message: str, field: str) -> None:
    assert field in message, f"{field!r} not named in: {message}"
    assert ";" in message or "pass" in message or "choose" in message, f"no fix given in: {message}"


@pytest.mark.parametrize(("model", "argv", "settings", "field"), [c[1:] for c in SETTINGS_CASES],
                         ids=[c[0] for c in SETTINGS_CASES])
def test_bad_settings_get_one_message_everywhere(capsys: pytest.CaptureFixture[str], client: TestClient,
                                                 model: str, argv: list[str], settings: dict[str, Any],
                                                 field: str) -> None:
    message = str(api_error(model, settings))
    names_the_field(message, field)
    assert cli_error(capsys, ["estimate", model, *argv]) == message
    assert http_error(client, {"model": model, "settings": settings}) == message


def _config(**changes: Any) -> dict[str, Any]:
    config = dict(catalog_config(DENSE))
    config.update(changes)
    return {k: v for k, v in config.items() if v is not _DROP}


_DROP = object()

# (case id, config.json, the exception type, the field its message names)
CONFIG_CASES: list[tuple[str, dict[str, Any], type[VramfitError], str]] = [
    ("unknown-model-type", _config(model_type="not_a_model"), UnsupportedArchitecture, "model_type"),
    ("no-model-type", _config(model_type=_DROP), InvalidConfig, "model_type"),
    ("negative-layers", _config(num_hidden_layers=-1), InvalidConfig, "num_hidden_layers"),
    ("absurd-layers", _config(num_hidden_layers=10**30), InvalidConfig, "num_hidden_layers"),
    ("string-size", _config(hidden_size="1024"), InvalidConfig, "hidden_size"),
    ("boolean-size", _config(num_attention_heads=True), InvalidConfig, "num_attention_heads"),
    ("nan-size", _config(vocab_size=float("nan")), InvalidConfig, "vocab_size"),
    ("float-size", _config(intermediate_size=3072.5), InvalidConfig, "intermediate_size"),
    ("kv-heads-over-heads", _config(num_key_value_heads=32), InvalidConfig, "num_key_value_heads"),
    ("contradicting-aliases", _config(n_embd=2048), InvalidConfig, "hidden_size"),
    ("null-layers", _config(num_hidden_layers=None), InvalidConfig, "num_hidden_layers"),
]


@pytest.mark.parametrize(("config", "kind", "field"), [c[1:] for c in CONFIG_CASES],
                         ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_json_gets_one_message_everywhere(capsys: pytest.CaptureFixture[str], client: TestClient,
                                                     tmp_path: Path, config: dict[str, Any],
                                                     kind: type[VramfitError], field: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(kind) as caught:
        vramfit.estimate(load_model(str(path)))
    message = str(caught.value)
    names_the_field(message, field)
    assert cli_error(capsys, ["estimate", str(path)]) == message
    pasted = http_error(client, {"config": config})
    assert pasted == message.removeprefix(f"{path}: "), "the pasted config gets the reader's own message"


def test_json_nested_too_deep_is_a_config_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"model_type": "llama", "x": ' + "[" * 100_000 + "]" * 100_000 + "}", encoding="utf-8")
    with pytest.raises(InvalidConfig, match="nested too deeply"):
        load_model(str(path))
    assert "nested too deeply" in cli_error(capsys, ["estimate", str(path)])


def test_http_rejects_booleans_and_strings_where_integers_belong(client: TestClient) -> None:
    """Lax pydantic would turn true into 1 and "8" into 8; the HTTP API reads settings strictly."""
    for value in (True, "8", 8.0):
        response = client.post("/api/estimate", json={"model": DENSE, "settings": {"workload": {"batch_size": value}}})
        assert response.status_code == 422, (value, response.text)
        assert "batch_size" in response.text


@pytest.mark.parametrize(("change", "field"), [
    ({"batch_size": True}, "batch_size"), ({"seq_len": 2048.0}, "seq_len"), ({"new_tokens": "5"}, "new_tokens"),
    ({"gpu_memory_utilization": float("nan")}, "gpu_memory_utilization"), ({"mode": "serve"}, "mode"),
    ({"quant": 4}, "quant"), ({"cuda_graphs": 1}, "cuda_graphs"), ({"gpu_memory": -5}, "gpu_memory"),
])
def test_python_api_checks_types_before_arithmetic(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSetting, match=field):
        vramfit.estimate(DENSE, **change)


def test_cli_numbers_are_bounded(capsys: pytest.CaptureFixture[str]) -> None:
    """A layer count of 10^8 would build 10^8 layers (minutes and all the memory): refused at once."""
    message = cli_error(capsys, ["estimate", "--params", "1000T", "--hidden-size", "1024", "--layers", "100000000"])
    assert message.startswith("--layers:")


def test_integer_arithmetic_stays_exact_at_the_limits() -> None:
    """10^15 parameters and 10^9 tokens: every component an int; weights exactly 2 bytes x parameters (bf16);
    the KV cache exactly linear in tokens (no float rounding on the way)."""
    from vramfit.model.numbers import model_from_numbers

    model = model_from_numbers(10**15)
    big = vramfit.estimate(model, dtype="bf16", seq_len=10**9)
    small = vramfit.estimate(model, dtype="bf16", seq_len=10**3)
    assert all(type(c.bytes) is int for c in big.memory.components)
    weights = {c.name: c.bytes for c in big.memory.components}["weights"]
    assert weights == 2 * big.parameters.total
    kv = ({c.name: c.bytes for c in e.memory.components}["kv_cache"] for e in (big, small))
    assert next(kv) == 10**6 * next(kv)
