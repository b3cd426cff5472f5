"""The KV cache: 2 * layers * sequences * tokens * kv_heads * head_dim * bytes, layer by layer.

What a layer caches depends on the runtime:
- standard attention: K and V, `kv_heads x head_dim` each per token (`Attention.kv_elements_per_token`);
  under tensor parallelism each rank holds kv_heads / tp heads, but never fewer than one (vLLM
  `get_num_kv_heads`: max(1, kv_heads // tp), the heads are replicated when tp > kv_heads);
- MLA (`LatentAttention`): vLLM and SGLang (and llama.cpp since its MLA cache) store the compressed latent
  plus the shared rope key, kv_lora_rank + qk_rope_head_dim per token, replicated on every TP rank
  (vLLM attention/backends/mla); transformers decompresses and caches full K and V per head
  (modeling_deepseek_v3.py: the cache is updated with key_states/value_states after kv_b_proj);
- sliding-window layers hold at most the window where the runtime caps them (transformers
  `DynamicSlidingWindowLayer.update` keeps the last window-1 tokens after concatenating the new one, so a
  window's worth at the moment of the update; vLLM's sliding-window KV manager frees blocks outside it);
- paged runtimes (vLLM, SGLang with page size > 1) allocate whole blocks: tokens round up to block_size.

Bytes per element: fp32 4, fp16/bf16 2, fp8 1, int8 1, int4 1/2; llama.cpp's q8_0 and q4_0 cache types carry
an fp16 scale per 32 values (34/32 and 18/32 bytes, ggml-common.h block_q8_0 / block_q4_0).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

from vramfit.errors import InvalidSetting
from vramfit.model.architecture import Attention, LatentAttention, Layer, layer_counts

_ELEMENT_BYTES = {"fp32": Fraction(4), "fp16": Fraction(2), "bf16": Fraction(2), "fp8": Fraction(1),
                  "fp8_e4m3": Fraction(1), "fp8_e5m2": Fraction(1), "int8": Fraction(1), "int4": Fraction(1, 2)}
_GGML_CACHE_BYTES = {"int8": Fraction(34, 32), "int4": Fraction(18, 32)}


@dataclass(frozen=True, kw_only=True, slots=True)
class CacheLayout:
    """How a runtime lays the cache out. latent: MLA keeps the compressed latent; cap_window: sliding
    layers hold at most the window; block: paged allocation in blocks of this many tokens (1: none)."""

    element_bytes: Fraction
    latent: bool
    cap_window: bool
    block: int = 1
    tensor: int = 1


def element_bytes(kv_dtype: str, compute_dtype: str, *, ggml: bool = False) -> Fraction:
    """Bytes per cached value; "auto" follows the compute dtype; llama.cpp's int8/int4 are q8_0/q4_0."""
    name = compute_dtype if kv_dtype == "auto" else kv_dtype
    if ggml and name in _GGML_CACHE_BYTES:
        return _GGML_CACHE_BYTES[name]
    return _ELEMENT_BYTES[name]


def elements_per_token(attn: Attention | LatentAttention, layout: CacheLayout) -> int:
    """Cached values per token in one layer on one tensor-parallel rank."""
    if not attn.causal:
        return 0
    if isinstance(attn, LatentAttention):
        if layout.latent:
            return attn.latent_elements_per_token()
        return attn.kv_elements_per_token() // layout.tensor
    return 2 * kv_heads_per_rank(attn.kv_heads, layout.tensor) * attn.head_dim


def kv_heads_per_rank(kv_heads: int, tensor: int) -> int:
    """kv_heads / tp, or one replicated head per rank when tp > kv_heads (vLLM get_num_kv_heads)."""
    if tensor <= kv_heads:
        if kv_heads % tensor:
            raise InvalidSetting(f"tp: {kv_heads} key/value heads cannot be split over {tensor} GPUs; "
                                 "choose --tp dividing the kv heads")
        return kv_heads // tensor
    if tensor % kv_heads:
        raise InvalidSetting(f"tp: {tensor} GPUs cannot replicate {kv_heads} key/value heads evenly; "
                             "choose --tp a multiple of the kv heads")
    return 1


def cached_tokens(attn: Attention | LatentAttention, tokens: int, layout: CacheLayout) -> int:
    """Tokens one sequence holds in this layer: capped at the window where the runtime caps it, rounded up
    to whole blocks."""
    held = min(tokens, attn.sliding_window) if (layout.cap_window and attn.sliding_window) else tokens
    return -(-held // layout.block) * layout.block


def layer_bytes(layer: Layer, *, sequences: int, tokens: int, layout: CacheLayout) -> int:
    """K and V (or the latent) of one layer for `sequences` sequences of `tokens` tokens."""
    per_token = elements_per_token(layer.attention, layout)
    held = cached_tokens(layer.attention, tokens, layout)
    return _bytes(sequences * held * per_token, layout.element_bytes)


def _bytes(elements: int, element_bytes: Fraction) -> int:
    """Whole bytes of `elements` cached values (rounded up: sub-byte types pack two per byte): the ceiling of
    elements x numerator / denominator, in integers."""
    return -(-(elements * element_bytes.numerator) // element_bytes.denominator)


def layer_sizes(groups: Iterable[tuple[Layer, int]], *, sequences: int, tokens: int,
                layout: CacheLayout) -> dict[int, int]:
    """layer_bytes -> how many layers cache that much, from (distinct layer, count) groups
    (architecture.layer_counts): equal layers cache equal bytes, so each distinct layer is priced once."""
    out: dict[int, int] = {}
    for layer, count in groups:
        size = layer_bytes(layer, sequences=sequences, tokens=tokens, layout=layout)
        out[size] = out.get(size, 0) + count
    return out


def cache_bytes(layers: tuple[Layer, ...], *, sequences: int, tokens: int, layout: CacheLayout) -> int:
    """The whole cache of `layers` (one pipeline stage's, or all)."""
    return total_bytes(layer_sizes(layer_counts(layers), sequences=sequences, tokens=tokens, layout=layout))


def total_bytes(sizes: dict[int, int]) -> int:
    """The whole cache from layer_sizes' layer bytes -> how many layers."""
    return sum(size * count for size, count in sizes.items())


def bytes_per_token(layers: tuple[Layer, ...], layout: CacheLayout) -> Fraction:
    """Cache bytes one token adds across `layers` (sliding caps ignored): what vLLM divides its pool by."""
    return sum((elements_per_token(layer.attention, layout) * layout.element_bytes for layer in layers),
               Fraction(0))


def sequences_in_cache(batch_size: int, num_beams: int, num_return_sequences: int) -> int:
    """transformers generate expands the batch to batch x num_beams (beam search) or batch x
    num_return_sequences (sampling): generation/utils.py `_expand_inputs_for_generation`."""
    return batch_size * max(num_beams, num_return_sequences)
