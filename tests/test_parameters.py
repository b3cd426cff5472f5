"""Exact parameter counts: every catalog config against transformers built on the meta device, and a few
totals a reader can check by hand.

The transformers count is `sum(p.numel() for p in model.parameters())` of the class named in config.json's
`architectures` (AutoModel when none is named), built from the same config (tests/conftest.py). Building on
the meta device allocates nothing, so even DeepSeek-V3 (671B) builds in about a second.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from strategies import small_hf_configs

from vramfit.model.architecture import Architecture
from vramfit.model.hf_config import read_architecture

CATALOG = Path(__file__).parents[1] / "src" / "vramfit" / "model" / "catalog" / "configs"
OWN = Path(__file__).parent / "data" / "configs"
CONFIGS = sorted(CATALOG.glob("*.json")) + sorted(OWN.glob("*.json"))
REMOTE_CODE = {"chatglm"}


def _config(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _catalog(name: str) -> Architecture:
    return read_architecture(_config(CATALOG / f"{name}.json"))


@pytest.mark.parametrize("path", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_total_equals_transformers(path: Path, transformers_parameters: Any) -> None:
    config = _config(path)
    if config["model_type"] in REMOTE_CODE:
        pytest.skip("transformers has no class for this remote-code model; see test_chatglm_published_counts")
    assert read_architecture(config).parameter_count().total == transformers_parameters(config)


@pytest.mark.parametrize("path", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_parts_add_up_to_the_total(path: Path) -> None:
    count = read_architecture(_config(path)).parameter_count()
    assert sum(count.by_part.values()) == count.total
    assert 0 < count.active <= count.total


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=small_hf_configs())
def test_random_small_configs_equal_transformers(config: dict[str, Any], transformers_parameters: Any) -> None:
    """Random switches of every family (biases, tying, GQA, MoE and Falcon layouts, heads by class)."""
    assert read_architecture(config).parameter_count().total == transformers_parameters(config)


def test_llama_3_1_8b_by_hand() -> None:
    """32 layers of GQA attention (32 query, 8 kv heads of 128) and a SwiGLU MLP of 14336, untied
    embedding and head over 128256 tokens: the 8,030,261,248 of the model card's safetensors index."""
    hidden, vocab, layers, kv_width, mlp = 4096, 128256, 32, 8 * 128, 14336
    attention = 2 * hidden * hidden + 2 * hidden * kv_width
    layer = attention + 3 * hidden * mlp + 2 * hidden
    by_hand = layers * layer + 2 * vocab * hidden + hidden
    assert by_hand == 8_030_261_248
    assert _catalog("meta-llama--Llama-3.1-8B").parameter_count().total == by_hand


def test_llama_2_7b_by_hand() -> None:
    """Multi-head attention (32 heads of 128), SwiGLU MLP of 11008, 32000 tokens, untied: 6,738,415,616."""
    hidden, vocab, layers, mlp = 4096, 32000, 32, 11008
    by_hand = layers * (4 * hidden * hidden + 3 * hidden * mlp + 2 * hidden) + 2 * vocab * hidden + hidden
    assert by_hand == 6_738_415_616
    assert _catalog("meta-llama--Llama-2-7b-hf").parameter_count().total == by_hand


def test_mixtral_8x7b_active_by_hand() -> None:
    """Each token runs 2 of the 8 SwiGLU experts (3 x 4096 x 14336 each) plus attention, norms, router,
    embedding and head: about 12.9B of the 46.7B (Mistral AI's Mixtral announcement: 12.9B active)."""
    hidden, vocab, layers, kv_width, expert = 4096, 32000, 32, 8 * 128, 3 * 4096 * 14336
    attention = 2 * hidden * hidden + 2 * hidden * kv_width
    layer = attention + 2 * expert + 8 * hidden + 2 * hidden
    by_hand = layers * layer + 2 * vocab * hidden + hidden
    count = _catalog("mistralai--Mixtral-8x7B-v0.1").parameter_count()
    assert count.active == by_hand
    assert round(count.active / 1e9, 1) == 12.9
    assert round(count.total / 1e9, 1) == 46.7


def test_deepseek_v3_active_by_hand() -> None:
    """61 MLA layers; 3 dense (SwiGLU 18432), 58 MoE with 8 of 256 routed experts plus 1 shared
    (SwiGLU 2048 each) and a 256-way router: about 37B active (DeepSeek-V3 report, arXiv:2412.19437)."""
    hidden, vocab, heads = 7168, 129280, 128
    q = hidden * 1536 + 1536 + 1536 * heads * 192
    kv = hidden * (512 + 64) + 512 + 512 * heads * (128 + 128)
    attention = q + kv + heads * 128 * hidden
    norms = 2 * hidden
    dense = attention + 3 * hidden * 18432 + norms
    sparse = attention + (8 + 1) * 3 * hidden * 2048 + 256 * hidden + norms
    by_hand = 3 * dense + 58 * sparse + 2 * vocab * hidden + hidden
    count = _catalog("deepseek-ai--DeepSeek-V3").parameter_count()
    assert count.active == by_hand
    assert round(count.active / 1e9) == 38  # 37.6B with embedding and head; 37B in the report's rounding


def test_mtp_layers_are_not_counted() -> None:
    """DeepSeek-V3's num_nextn_predict_layers=1 MTP module is in the checkpoint (685B) but transformers does
    not build it; the count is the 671B of the main model."""
    count = _catalog("deepseek-ai--DeepSeek-V3").parameter_count()
    assert round(count.total / 1e9) == 671


# THUDM/glm-4-9b-chat's config.json, as transformers printed it when loading the model (LLaMA-Factory log);
# only the fields modeling_chatglm.py reads for shapes.
GLM_4_9B_CHAT = {
    "model_type": "chatglm", "architectures": ["ChatGLMModel"], "add_bias_linear": False, "add_qkv_bias": True,
    "ffn_hidden_size": 13696, "hidden_size": 4096, "kv_channels": 128, "multi_query_attention": True,
    "multi_query_group_num": 2, "num_attention_heads": 32, "num_hidden_layers": 40, "num_layers": 40,
    "padded_vocab_size": 151552, "post_layer_norm": True, "rmsnorm": True, "seq_length": 131072,
    "tie_word_embeddings": False,
}


@pytest.mark.parametrize(("changes", "published"), [
    # chatglm.cpp README: "You are served by GLM-4, with 9399951360 (9.4B) parameters."
    ({}, 9_399_951_360),
    # ChatGLM2/3-6B: 28 layers, 65024 tokens; model.num_parameters() = 6243584000 in several published logs
    # (e.g. PEFT's "all params: 6243584000" for ChatGLM2-6B).
    ({"num_layers": 28, "num_hidden_layers": 28, "padded_vocab_size": 65024, "seq_length": 8192}, 6_243_584_000),
])
def test_chatglm_published_counts(changes: dict[str, Any], published: int) -> None:
    assert read_architecture({**GLM_4_9B_CHAT, **changes}).parameter_count().total == published


def test_shipped_glm_4_9b_chat_gives_the_published_count() -> None:
    """The catalog's THUDM/glm-4-9b-chat config is remote code (no transformers class to build), so its total is
    checked against chatglm.cpp's published "9399951360 (9.4B) parameters" instead."""
    assert _catalog("THUDM--glm-4-9b-chat").parameter_count().total == 9_399_951_360
