"""KV cache: exact bytes for cases a reader can check by hand."""

from __future__ import annotations

from fractions import Fraction

import pytest

from vramfit.errors import InvalidSetting
from vramfit.memory import kv_cache
from vramfit.memory.kv_cache import CacheLayout
from vramfit.model.architecture import Attention, GatedMLP, Layer, Norm
from vramfit.model.sources import load_model
from vramfit.units import GiB

BF16 = CacheLayout(element_bytes=Fraction(2), latent=False, cap_window=True)


def layers(name: str) -> tuple[Layer, ...]:
    return tuple(load_model(name).architecture.layers())


def test_llama3_8b_bf16_cache_for_8192_tokens_is_one_gib() -> None:
    # 2 (K, V) x 32 layers x 1 sequence x 8192 tokens x 8 kv heads x 128 x 2 bytes = 2^30
    assert kv_cache.cache_bytes(layers("meta-llama/Meta-Llama-3-8B"), sequences=1, tokens=8192, layout=BF16) == GiB


def test_kv_dtypes_scale_the_cache() -> None:
    llama = layers("meta-llama/Meta-Llama-3-8B")
    fp8 = CacheLayout(element_bytes=kv_cache.element_bytes("fp8", "bf16"), latent=False, cap_window=True)
    int4 = CacheLayout(element_bytes=kv_cache.element_bytes("int4", "bf16"), latent=False, cap_window=True)
    q8_0 = CacheLayout(element_bytes=kv_cache.element_bytes("int8", "fp16", ggml=True), latent=False, cap_window=True)
    assert kv_cache.cache_bytes(llama, sequences=1, tokens=8192, layout=fp8) == GiB // 2
    assert kv_cache.cache_bytes(llama, sequences=1, tokens=8192, layout=int4) == GiB // 4
    assert kv_cache.cache_bytes(llama, sequences=1, tokens=8192, layout=q8_0) == GiB // 2 * 34 // 32


def test_mla_caches_the_latent_in_vllm_and_decompressed_k_v_in_transformers() -> None:
    deepseek = layers("deepseek-ai/DeepSeek-V3")
    assert len(deepseek) == 61
    latent = CacheLayout(element_bytes=Fraction(2), latent=True, cap_window=True)
    full = CacheLayout(element_bytes=Fraction(2), latent=False, cap_window=True)
    # latent: kv_lora_rank 512 + rope 64 per token per layer
    assert kv_cache.cache_bytes(deepseek, sequences=1, tokens=1000, layout=latent) == 61 * 1000 * 576 * 2
    # decompressed: 128 heads x (K: 128 nope + 64 rope, V: 128)
    assert kv_cache.cache_bytes(deepseek, sequences=1, tokens=1000, layout=full) == 61 * 1000 * 128 * 320 * 2


def _sliding_layer(window: int | None) -> Layer:
    attn = Attention(hidden_size=1024, heads=8, kv_heads=2, head_dim=128, sliding_window=window)
    return Layer(attention=attn, mlp=GatedMLP(hidden_size=1024, intermediate_size=4096),
                 norms=(Norm(name="n", size=1024),))


def test_sliding_window_layers_hold_at_most_the_window_where_capped() -> None:
    stack = (_sliding_layer(4096), _sliding_layer(None))
    per_token = 2 * 2 * 128 * 2
    assert kv_cache.cache_bytes(stack, sequences=1, tokens=10_000, layout=BF16) == (4096 + 10_000) * per_token
    uncapped = CacheLayout(element_bytes=Fraction(2), latent=False, cap_window=False)
    assert kv_cache.cache_bytes(stack, sequences=1, tokens=10_000, layout=uncapped) == 20_000 * per_token


def test_paged_allocation_rounds_up_to_whole_blocks() -> None:
    paged = CacheLayout(element_bytes=Fraction(2), latent=False, cap_window=True, block=16)
    layer = _sliding_layer(None)
    assert kv_cache.cached_tokens(layer.attention, 17, paged) == 32
    assert kv_cache.layer_bytes(layer, sequences=3, tokens=17, layout=paged) == 3 * 32 * 2 * 2 * 128 * 2


def test_beams_and_returned_sequences_multiply_the_sequences() -> None:
    assert kv_cache.sequences_in_cache(2, num_beams=4, num_return_sequences=1) == 8
    assert kv_cache.sequences_in_cache(2, num_beams=1, num_return_sequences=3) == 6


def test_tensor_parallel_splits_kv_heads_and_replicates_beyond_them() -> None:
    llama = layers("meta-llama/Meta-Llama-3-8B")  # 8 kv heads
    one = kv_cache.cache_bytes(llama, sequences=1, tokens=8192, layout=BF16)
    for tp, share in ((2, 2), (8, 8), (16, 8), (32, 8)):
        layout = CacheLayout(element_bytes=Fraction(2), latent=False, cap_window=True, tensor=tp)
        assert kv_cache.cache_bytes(llama, sequences=1, tokens=8192, layout=layout) == one // share
    with pytest.raises(InvalidSetting, match="tp"):
        kv_cache.kv_heads_per_rank(8, 3)


def test_mla_latent_is_replicated_on_every_tensor_rank() -> None:
    deepseek = layers("deepseek-ai/DeepSeek-V3")
    tp1 = CacheLayout(element_bytes=Fraction(2), latent=True, cap_window=True)
    tp8 = CacheLayout(element_bytes=Fraction(2), latent=True, cap_window=True, tensor=8)
    assert kv_cache.cache_bytes(deepseek, sequences=1, tokens=100, layout=tp8) == kv_cache.cache_bytes(
        deepseek, sequences=1, tokens=100, layout=tp1)
