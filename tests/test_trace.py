"""trace: the real step on fake tensors. Checked against the same step on real CPU tensors (tiny models, so
the real run takes well under a second) and against storages counted by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from vramfit.cli import main
from vramfit.model.sources import load_model
from vramfit.settings import Settings
from vramfit.truth.trace import Untraceable, trace
from vramfit.truth.tracker import LiveTensorTracker, rounded_bytes

TINY_LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
              "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 256, "max_position_embeddings": 512,
              "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": "float32"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("tiny") / "config.json"
    path.write_text(json.dumps(TINY_LLAMA))
    return load_model(str(path))


def test_tracker_counts_each_storage_once_rounded_to_512_bytes() -> None:
    with LiveTensorTracker() as tracker:
        a = torch.empty(1000)                 # 4000 bytes -> 4096
        view = a[10:20]                       # same storage: not counted again
        b = torch.empty(10, dtype=torch.int8)   # 10 bytes -> 512
        del b
        c = torch.empty(128)                  # 512 bytes exactly
    assert view.untyped_storage().data_ptr() == a.untyped_storage().data_ptr()
    assert rounded_bytes(4000) == 4096
    assert tracker.peak_bytes == 4096 + 512
    assert tracker.current_bytes == 4096 + 512
    del c


SETTINGS = [
    {"mode": "inference", "seq_len": 32},
    {"mode": "inference", "seq_len": 40, "new_tokens": 12, "batch_size": 2},
    {"mode": "training", "seq_len": 32, "batch_size": 2},
    {"mode": "training", "seq_len": 32, "finetune": "lora"},
    {"mode": "training", "seq_len": 32, "grad_ckpt": "full", "optimizer": "sgd-momentum", "grad_accum": 2},
]


@pytest.mark.parametrize("changes", SETTINGS, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_fake_trace_equals_the_real_cpu_step(tiny: Any, changes: dict[str, Any]) -> None:
    settings = Settings().replace(dtype="fp32", **changes)
    faked, real = trace(tiny, settings), trace(tiny, settings, fake=False)
    assert faked.peak_bytes == real.peak_bytes
    assert faked.breakdown == real.breakdown
    assert sum(faked.breakdown.values()) == faked.peak_bytes


def test_breakdown_names_parameters_optimizer_state_and_cache(tiny: Any) -> None:
    parameters = sum(rounded_bytes(p.numel() * 4) for p in
                     torch.nn.Module.parameters(_real(tiny)))
    training = trace(tiny, Settings().replace(dtype="fp32", mode="training", seq_len=32))
    assert training.breakdown["parameters"] == parameters
    assert training.breakdown["optimizer_state"] >= 2 * parameters   # AdamW: exp_avg and exp_avg_sq
    inference = trace(tiny, Settings().replace(dtype="fp32", seq_len=40))
    # The cache is complete before the logits (the last and largest tensor) are made, so the peak holds it:
    # K and V for 2 layers, each batch 1 x 2 kv heads x 40 tokens x head_dim 16 x 4 bytes.
    assert inference.breakdown["kv_cache"] == 2 * 2 * rounded_bytes(1 * 2 * 40 * 16 * 4)


def _real(model: Any) -> Any:
    import transformers

    config = transformers.LlamaConfig(**{k: v for k, v in TINY_LLAMA.items() if k != "model_type"})
    return transformers.LlamaForCausalLM(config)


@pytest.mark.parametrize(("changes", "message"), [
    ({"quant": "bnb-nf4"}, "quantized kernels"),
    ({"mode": "training", "finetune": "qlora"}, "bitsandbytes 4-bit"),
    ({"mode": "training", "optimizer": "adamw-8bit"}, "not a torch optimizer"),
])
def test_untraceable_settings_name_measure(tiny: Any, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(Untraceable, match=f"{message}.*vramfit measure"):
        trace(tiny, Settings().replace(**changes))


def test_cli_json_contract(tiny: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY_LLAMA))
    record = tmp_path / "rows.jsonl"
    assert main(["trace", str(config), "--seq-len", "16", "--json", "--record", str(record)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) >= {"peak", "breakdown", "settings"}
    assert data["peak"]["allocated"] == sum(data["breakdown"].values())
    assert data["settings"]["workload"]["seq_len"] == 16
    row = json.loads(record.read_text())
    assert row["truth"] == {"allocated": data["peak"]["allocated"]}
