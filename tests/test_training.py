"""The training planner: peak over phases, breakdown that adds up, properties, the seeds' rule, the CLI."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vramfit import estimate
from vramfit.cli import main
from vramfit.model.hf_config import read_architecture
from vramfit.model.loaded import Model
from vramfit.settings import LoRA, Settings

LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 1024,
         "intermediate_size": 2816, "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 4,
         "vocab_size": 32000, "max_position_embeddings": 4096, "tie_word_embeddings": False}
MODEL = Model(name="llama-tiny", architecture=read_architecture(LLAMA), source="config", config=LLAMA)
TRAIN = Settings().replace(mode="training", batch_size=2, seq_len=512, dtype="bf16")


def test_peak_is_the_largest_phase_and_the_breakdown_adds_up() -> None:
    result = estimate(MODEL, TRAIN)
    phases = result.extra["phases"]
    assert result.extra["peak_phase"] == max(phases, key=phases.get)
    assert result.peak.allocated == phases[result.extra["peak_phase"]] + result.memory["workspace"]
    assert result.memory.total == sum(c.bytes for c in result.memory.components)


def test_logits_and_optimizer_temporaries_never_add_up() -> None:
    names = set(estimate(MODEL, TRAIN).memory.as_dict())
    assert not {"logits_and_loss", "optimizer_step_temporaries"} <= names


def test_fp32_adamw_full_finetuning_is_sixteen_bytes_per_parameter_plus_temporaries() -> None:
    """[S0]/[S4]: weights 4 + gradients 4 + Adam 8 = 16 bytes per parameter; the foreach step adds 4 more."""
    result = estimate(MODEL, TRAIN.replace(dtype="fp32", batch_size=1, seq_len=16))
    assert result.extra["peak_phase"] == "optimizer_step"
    n = MODEL.architecture.parameter_count().total
    states = sum(result.memory[name] for name in ("weights", "gradients", "optimizer_states"))
    assert states == pytest.approx(16 * n, rel=0.001)
    assert result.memory["optimizer_step_temporaries"] == pytest.approx(4 * n, rel=0.001)


def test_lora_trains_only_adapters_and_keeps_no_base_gradients() -> None:
    result = estimate(MODEL, TRAIN.replace(finetune="lora", lora=LoRA(rank=8, targets=("q_proj", "v_proj"))))
    assert result.parameters.trainable == 8 * (8 * 1024 + 1024 * 8 + 8 * 1024 + 512 * 8)
    assert result.memory["gradients"] < 0.01 * result.memory["weights"]


def test_qlora_stores_block_linears_in_four_bits_with_an_absmax_per_64() -> None:
    lora = estimate(MODEL, TRAIN.replace(finetune="lora")).memory["weights"]
    qlora = estimate(MODEL, TRAIN.replace(finetune="qlora")).memory["weights"]
    block_linears = sum(linear.in_features * linear.out_features for layer in MODEL.architecture.layers()
                        for linear in (*layer.attention.linears(), *layer.mlp.linears()))  # type: ignore[union-attr]
    assert lora - qlora == pytest.approx(block_linears * (2 - 0.5 - 4 / 64), rel=0.001)


def test_checkpointing_lowers_the_peak_and_eager_attention_raises_it() -> None:
    base = estimate(MODEL, TRAIN.replace(optimizer="sgd")).peak.allocated
    assert estimate(MODEL, TRAIN.replace(optimizer="sgd", grad_ckpt="full")).peak.allocated < base
    assert estimate(MODEL, TRAIN.replace(optimizer="sgd", grad_ckpt="selective")).peak.allocated < base
    assert estimate(MODEL, TRAIN.replace(optimizer="sgd", attention="eager")).peak.allocated > base


def test_gradient_accumulation_keeps_gradients_through_the_forward() -> None:
    one = estimate(MODEL, TRAIN.replace(optimizer="sgd"))
    four = estimate(MODEL, TRAIN.replace(optimizer="sgd", grad_accum=4))
    assert four.extra["phases"]["forward"] > one.extra["phases"]["forward"]


def test_torchtune_chunked_loss_lowers_the_loss_peak() -> None:
    hf = estimate(MODEL, TRAIN.replace(optimizer="sgd", batch_size=8)).extra["phases"]["backward_start"]
    tune = estimate(MODEL, TRAIN.replace(optimizer="sgd", batch_size=8, framework="torchtune"))
    assert tune.extra["phases"]["backward_start"] < hf
    assert "chunked cross-entropy" in " ".join(tune.extra["framework"]["behaviours"])


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 8), seq=st.integers(16, 2048), ckpt=st.sampled_from(["none", "full", "selective"]),
       optimizer=st.sampled_from(["adamw", "sgd", "adafactor", "adamw-8bit"]))
def test_memory_grows_with_batch_and_sequence(batch: int, seq: int, ckpt: str, optimizer: str) -> None:
    def peak(b: int, s: int) -> int:
        return estimate(MODEL, TRAIN.replace(batch_size=b, seq_len=s, grad_ckpt=ckpt,
                                             optimizer=optimizer)).peak.allocated
    assert peak(batch + 1, seq) >= peak(batch, seq)
    assert peak(batch, seq + 64) >= peak(batch, seq)


def test_every_component_explains_itself() -> None:
    for component in estimate(MODEL, TRAIN).memory.components:
        assert component.formula, component.name
        assert component.source, component.name


def test_cli_training_json(capsys: pytest.CaptureFixture[str], tmp_path: object) -> None:
    path = f"{tmp_path}/config.json"
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(LLAMA, handle)
    code = main(["estimate", path, "--mode", "training", "--finetune", "lora", "--lora-targets", "all-linear",
                 "--optimizer", "adamw", "--grad-ckpt", "full", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["parameters"]["trainable"] < out["parameters"]["total"] // 10
    assert out["peak"]["allocated"] == sum(v for k, v in out["memory"].items()
                                           if k not in ("total", "cuda_context"))


def test_activation_offload_moves_saved_activations_to_the_host() -> None:
    kept = estimate(MODEL, TRAIN.replace(optimizer="sgd", batch_size=8))
    offloaded = estimate(MODEL, TRAIN.replace(optimizer="sgd", batch_size=8, activation_offload=True))
    assert offloaded.peak.allocated < kept.peak.allocated
    assert offloaded.extra["host_memory"]["activations"] > 0
