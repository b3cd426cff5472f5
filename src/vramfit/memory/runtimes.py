"""What each inference runtime allocates, as data, and the runtime-specific arithmetic (vLLM's pool,
llama.cpp's offload and compute buffer). Formulas for the parts themselves live in weights, kv_cache,
forward and overhead.

- transformers (generate, default DynamicCache): tensors on demand from PyTorch's caching allocator; the
  cache grows by `torch.cat` (cache_utils.py `DynamicLayer.update`), MLA caches decompressed K/V, sliding
  layers cap at the window during decode but after prefill keep a view of the whole prompt's K/V
  (`DynamicSlidingWindowLayer.update` slices `full_key_states`, which holds the storage alive).
- vLLM: pre-allocates `gpu_memory_utilization x total memory`; after loading weights and a profiling
  forward of `max_num_batched_tokens`, the rest becomes KV blocks (vllm/v1/worker/gpu_worker.py
  `determine_available_memory`, vllm/v1/core/kv_cache_utils.py `get_num_blocks`: available //
  (block_size x page bytes per token x layers)).
- SGLang: the same pre-allocation (`mem_fraction_static`), MLA latent cache, page size 1 by default.
- litgpt: like transformers, but its KV cache is allocated for prompt + new tokens before the prefill,
  the prefill returns logits for every prompt position, its tensor parallelism (generate/tp.py) leaves
  the embedding and lm_head whole on every rank, and with bitsandbytes (Lightning's BitsandbytesPrecision)
  every nn.Linear is quantized, the lm_head included, from the checkpoint's tensors as stored (the plugin's
  `_quantize_on_load_hook` hands the state-dict weight to quantize), so a float16 checkpoint run in bfloat16
  dequantizes to float16 and then copies to bfloat16.
- llama.cpp: weights of the offloaded layers (`-ngl N` puts the last N blocks on the GPU; the output layer
  too when N exceeds the block count; the token embedding stays on the host: llama-model.cpp
  `i_gpu_start = n_layer - n_gpu_layers`), a KV cache for the full context allocated up front, padded to
  256 tokens, and a compute buffer sized by the ggml graph allocator for one micro-batch of n_ubatch=512.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from vramfit.errors import InvalidSetting

LLAMA_CPP_UBATCH = 512      # common/common.h n_ubatch default
LLAMA_CPP_CTX_PADDING = 256  # llama-context.cpp pads n_ctx to 256
VLLM_MAX_NUM_SEQS = 256      # vllm/config: max_num_seqs default
VLLM_MAX_BATCHED_TOKENS = 8192  # vllm engine/arg_utils.py default max_num_batched_tokens (chunked prefill)


@dataclass(frozen=True, kw_only=True, slots=True)
class Profile:
    """What a runtime does with the cache and the logits."""

    name: str
    latent_mla: bool          # caches MLA's compressed latent
    cap_window: bool          # sliding layers hold at most the window
    paged: bool               # whole blocks of block_size tokens
    preallocates: bool        # a fixed fraction of the GPU becomes the KV pool
    prefill_keeps_prompt: bool  # sliding layers keep the whole prompt after prefill (transformers' view)
    source: str
    vocab_parallel: bool = True   # tensor parallelism splits the embedding and lm_head
    head_parallel: bool = True    # ... or, with vocab_parallel False, the (untied) lm_head alone
    cache_before_prefill: bool = False  # the whole cache (prompt + new tokens) exists before the prefill
    all_position_logits: bool = False   # the forward returns logits for every prompt position
    quantizes_every_linear: bool = False  # bitsandbytes replaces the lm_head too (Lightning's plugin)
    quantizes_stored_dtype: bool = False  # quantizes the checkpoint's tensors as stored, before any cast


PROFILES = {
    "transformers": Profile(name="transformers", latent_mla=False, cap_window=True, paged=False,
                            preallocates=False, prefill_keeps_prompt=True, vocab_parallel=False,
                            source="transformers 5.23 generation/utils.py, cache_utils.py DynamicCache; tensor "
                                   "parallelism: base_model_tp_plan leaves embed_tokens whole, _tp_plan splits "
                                   "lm_head colwise_gather_output"),
    "vllm": Profile(name="vllm", latent_mla=True, cap_window=True, paged=True, preallocates=True,
                    prefill_keeps_prompt=False,
                    source="vLLM v1 gpu_worker.determine_available_memory, kv_cache_utils.get_num_blocks"),
    "sglang": Profile(name="sglang", latent_mla=True, cap_window=True, paged=False, preallocates=True,
                      prefill_keeps_prompt=False,
                      source="SGLang model_runner.init_memory_pool (mem_fraction_static), MLATokenToKVPool"),
    "llama.cpp": Profile(name="llama.cpp", latent_mla=True, cap_window=False, paged=False, preallocates=False,
                         prefill_keeps_prompt=False,
                         source="llama.cpp llama-kv-cache.cpp, llama-context.cpp, ggml-alloc.c"),
    "litgpt": Profile(name="litgpt", latent_mla=False, cap_window=False, paged=False, preallocates=False,
                      prefill_keeps_prompt=False, vocab_parallel=False, head_parallel=False, cache_before_prefill=True,
                      all_position_logits=True, quantizes_every_linear=True, quantizes_stored_dtype=True,
                      source="litgpt generate/base.py (model.set_kv_cache(max_seq_length=prompt + new tokens) "
                             "before the prefill; GPT.forward returns logits for all positions), generate/tp.py "
                             "(shards attention qkv/proj and MLP only: wte and lm_head are replicated)"),
}


def profile(name: str) -> Profile:
    if name not in PROFILES:
        raise InvalidSetting(f"runtime: unknown {name!r}; choose one of {', '.join(PROFILES)}")
    return PROFILES[name]


@dataclass(frozen=True, kw_only=True, slots=True)
class Pool:
    """vLLM's KV pool: bytes, blocks, the tokens they hold and how many full-length sequences fit."""

    bytes: int
    blocks: int
    tokens: int
    full_length_sequences: int
    bytes_per_token: int


def vllm_pool(available: int, *, bytes_per_token: Fraction, block_size: int, seq_len: int) -> Pool:
    """get_num_blocks: available // (block_size x bytes per token over all layers); a full-length
    sequence needs ceil(seq_len / block_size) blocks."""
    block_bytes = bytes_per_token * block_size
    blocks = int(max(available, 0) // block_bytes) if block_bytes else 0
    per_sequence = -(-seq_len // block_size)
    return Pool(bytes=int(blocks * block_bytes), blocks=blocks, tokens=blocks * block_size,
                full_length_sequences=blocks // per_sequence, bytes_per_token=int(-(-bytes_per_token // 1)))


def llama_cpp_context(tokens: int) -> int:
    """n_ctx padded up to a multiple of 256."""
    return -(-tokens // LLAMA_CPP_CTX_PADDING) * LLAMA_CPP_CTX_PADDING


def llama_cpp_gpu_layers(n_layers: int, n_gpu_layers: int | None) -> tuple[int, bool]:
    """(blocks on the GPU, whether the output layer is there too): -ngl counts blocks, then the output."""
    if n_gpu_layers is None or n_gpu_layers > n_layers:
        return n_layers, True
    return n_gpu_layers, False


def llama_cpp_compute_bytes(*, context: int, heads: int, hidden: int, vocab: int, flash: bool,
                            logits_on_gpu: bool) -> int:
    """The CUDA compute buffer for one micro-batch (ggml-alloc reuses memory between graph nodes, so the
    buffer is its largest moment, all in f32): without flash attention the KQ scores n_ubatch x n_ctx x
    heads plus the f16 mask n_ubatch x n_ctx; the output moment: logits n_ubatch x vocab and the hidden
    state n_ubatch x hidden."""
    ubatch = min(LLAMA_CPP_UBATCH, context)
    scores = 0 if flash else ubatch * context * heads * 4 + ubatch * context * 2
    output = (ubatch * vocab * 4 if logits_on_gpu else 0) + ubatch * hidden * 4
    return max(scores, output)
