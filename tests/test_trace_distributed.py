"""Multi-GPU layouts traced over a fake process group, each checked against the single-GPU trace of the
same tiny model: what sharding divides, what replication keeps and what DDP's gradient buckets add."""

from __future__ import annotations

import json
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from vramfit.model.sources import load_model
from vramfit.settings import Settings
from vramfit.truth.trace import Untraceable, trace

TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "vocab_size": 256, "max_position_embeddings": 512, "tie_word_embeddings": False, "torch_dtype": "float32"}
TRAIN = {"dtype": "fp32", "mode": "training", "seq_len": 64}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("tiny") / "config.json"
    path.write_text(json.dumps(TINY))
    return load_model(str(path))


@pytest.fixture(scope="module")
def single(tiny: Any) -> Any:
    return trace(tiny, Settings().replace(**TRAIN))


def test_fsdp_full_shards_parameters_and_optimizer_state(tiny: Any, single: Any) -> None:
    result = trace(tiny, Settings().replace(**TRAIN, gpus=4, fsdp="full"))
    assert len(result.ranks) == 2                       # rank 0 and the last rank
    full = single.breakdown["parameters"]
    # a quarter of every parameter, each shard padded to equal size and rounded to 512-byte blocks
    assert full / 4 <= result.breakdown["parameters"] <= full / 4 + 13 * 512
    assert result.breakdown["optimizer_state"] <= single.breakdown["optimizer_state"] / 4 + 2 * 13 * 512
    assert result.peak_bytes < single.peak_bytes


def test_ddp_adds_gradient_buckets_to_the_single_gpu_step(tiny: Any, single: Any) -> None:
    result = trace(tiny, Settings().replace(**TRAIN, gpus=2))
    buckets = result.peak_bytes - single.peak_bytes
    # DDP copies every gradient into its flat buckets (gradient_as_bucket_view=False, the default): one more
    # set of gradients, flat, so with fewer 512-byte roundings than the per-parameter gradients
    assert single.breakdown["gradients"] - 13 * 512 <= buckets <= single.breakdown["gradients"]


def test_tensor_parallel_halves_the_split_projections(tiny: Any, single: Any) -> None:
    result = trace(tiny, Settings().replace(**TRAIN, gpus=2, tensor=2))
    replicated = 256 * 64 * 4 + (2 * 2 + 1) * 512        # the embedding; 5 norms of 64 fp32 (512-byte blocks)
    split = single.breakdown["parameters"] - replicated    # q/k/v/o, gate/up/down, and the (untied) head
    assert result.breakdown["parameters"] == pytest.approx(replicated + split / 2, rel=0.01)


def test_deepspeed_zero_is_refused_with_the_alternative(tiny: Any) -> None:
    with pytest.raises(Untraceable, match="ZeRO.*--fsdp.*vramfit measure"):
        trace(tiny, Settings().replace(**TRAIN, gpus=2, zero_stage=3))
