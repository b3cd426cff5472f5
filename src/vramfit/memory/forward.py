"""Transient memory of one inference forward pass (no autograd: each layer's temporaries die with it).

The peak of a forward is one layer's largest moment on top of what stays alive across layers. With B
sequences of T new tokens (attending to C cached plus new tokens), element size e:

- across layers: the embedding output (transformers keeps `inputs_embeds` referenced in the model's forward),
  the residual and the normalized input of the current block: 3 x B*T*hidden x e;
- the MLP moment, `down(act(gate(x)) * up(x))` (transformers LlamaMLP; vLLM's fused gate_up + SiluAndMul
  holds the same 3 intermediate-wide tensors: [gate|up] and the product): 3 x B*T*I x e; 2 x B*T*I x e for a
  plain MLP (fc1 output and its activation); a MoE layer runs its experts one after another on the tokens
  routed to them (at most all B*T x experts_per_token), plus the router's B*T x experts fp32 scores;
- the attention moment: q, k, v and their rotary copies (2 x B*T*(heads + 2 kv_heads)*head_dim x e) and
  the output, plus, for eager attention, the score matrix B*heads*T*C: eager_attention_forward
  (models/llama/modeling_llama.py) computes matmul*scaling (+mask) in the compute dtype, softmax in fp32
  then `.to(dtype)` while the input is still referenced: 2 x e + 4 bytes per score, K and V repeated to
  all heads (`repeat_kv`);
  `softmax(x, dtype=torch.float32)` first converts x to fp32 (aten/src/ATen/native/SoftMax.cpp `softmax`:
  `input_.toType(dtype)`; only a CUDA fp16 input takes the half-to-float kernel without a copy), so a
  bf16 score moment holds the input (e), its fp32 copy (4) and the fp32 result (4): 2 + 4 + 4 = 10 bytes,
  more than the 8 of the `.to(dtype)` that follows (seen at the peak of a traced gemma-2-2b prefill:
  aten._softmax with both fp32 tensors and the bf16 input live). sdpa (with
  enable_gqa, mask None for plain causal batches) and flash attention never materialize scores: their
  workspace is the B*heads*T fp32 log-sum-exp, counted here.
- the masks, built once before the first block and kept for the whole forward (transformers
  masking_utils; `causal_mask_mapping` in models/gemma2/modeling_gemma2.py, gemma3 likewise): eager gets
  an additive B x 1 x T x C mask in the compute dtype per attention kind the stack has (full, sliding);
  sdpa gets None for a plain causal batch, but a bool B x 1 x T x C mask for sliding layers once the
  context reaches the window (`_ignore_causal_mask_sdpa`: `local_attention_size is not None and
  kv_length >= local_attention_size` cannot skip); flash attention takes no mask.

Tensor parallelism (column-parallel q/k/v and gate/up, row-parallel o and down) leaves each rank its
heads / tp query heads, kv_heads / tp key/value heads (never below one) and intermediate / tp MLP
columns; the hidden states between blocks stay whole on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass

from vramfit.model.architecture import (
    Architecture,
    Attention,
    FeedForward,
    GatedMLP,
    LatentAttention,
    Layer,
    MixtureOfExperts,
    distinct_layers,
)


@dataclass(frozen=True, kw_only=True, slots=True)
class Pass:
    """One forward: `sequences` x `tokens` new tokens attending to `context` tokens (cached + new)."""

    sequences: int
    tokens: int
    context: int
    element_bytes: int
    attention: str = "sdpa"   # eager, sdpa or flash
    dtype: str = ""           # the compute dtype's name: fp16 softmax skips the fp32 copy on CUDA
    tensor: int = 1           # tensor-parallel ranks: heads and MLP width per rank


def resident_bytes(hidden_size: int, p: Pass) -> int:
    """What lives across layers: embedding output, residual and the block's normalized input."""
    return 3 * p.sequences * p.tokens * hidden_size * p.element_bytes


def mlp_bytes(layer: Layer, p: Pass) -> int:
    """The MLP's largest moment (see the module docstring)."""
    rows = p.sequences * p.tokens
    mlp = layer.mlp
    if isinstance(mlp, MixtureOfExperts):
        routed = rows * mlp.experts_per_token
        expert = _ffn_width_bytes(mlp.expert, routed, p)
        return expert + rows * mlp.experts * 4 + 2 * routed * mlp.hidden_size * p.element_bytes
    return _ffn_width_bytes(mlp, rows, p)


def _ffn_width_bytes(mlp: FeedForward, rows: int, p: Pass) -> int:
    tensors = 3 if isinstance(mlp, GatedMLP) else 2
    return tensors * rows * -(-mlp.intermediate_size // p.tensor) * p.element_bytes


def attention_bytes(layer: Layer, p: Pass) -> int:
    """The attention's largest moment: projections with their rotary copies and the output, or, for eager
    attention, the score moment: the rotated q, k, v (the unrotated ones are gone: `apply_rotary_pos_emb`'s
    results replace them), K and V repeated to all heads and the scores (the output comes after softmax;
    seen at the traced gemma-2-2b softmax peak: q, k, v, the repeated K/V and the scores)."""
    attn = layer.attention
    heads, q_dim, kv_width = _shape(attn, p.tensor)
    rows = p.sequences * p.tokens
    qkv = rows * (heads * q_dim + kv_width) * p.element_bytes
    projections = 2 * qkv + rows * heads * q_dim * p.element_bytes
    if p.attention != "eager":
        return projections + p.sequences * heads * p.tokens * 4
    scores = p.sequences * heads * p.tokens * p.context
    repeated = 2 * p.sequences * p.context * heads * q_dim * p.element_bytes
    return max(projections, qkv + repeated + scores * softmax_bytes_per_score(p))


def softmax_bytes_per_score(p: Pass) -> int:
    """Bytes per eager attention score at its largest moment (module docstring): fp32 8 (input and
    result), fp16 on CUDA 2 + 4 + 2 (softmax, then `.to(dtype)` beside its input), bf16 2 + 4 + 4."""
    if p.element_bytes == 4:
        return 8
    if p.dtype == "fp16":
        return 2 * p.element_bytes + 4
    return p.element_bytes + 4 + 4


def mask_bytes(layers: tuple[Layer, ...], p: Pass) -> int:
    """The masks a forward keeps for all its blocks (module docstring): eager one additive mask per
    attention kind, sdpa one bool mask when a sliding window is no longer than the context."""
    elements = p.sequences * p.tokens * p.context
    windows = {getattr(layer.attention, "sliding_window", None) for layer in layers}
    if p.attention == "eager":
        return len({window is not None for window in windows}) * elements * p.element_bytes
    if p.attention == "sdpa" and any(window is not None and p.context >= window for window in windows):
        return elements
    return 0


def _shape(attn: Attention | LatentAttention, tensor: int = 1) -> tuple[int, int, int]:
    """(heads, per-head query width, K+V width per token) of one layer on one tensor-parallel rank."""
    heads = -(-attn.heads // tensor)
    if isinstance(attn, LatentAttention):
        return heads, attn.qk_head_dim, heads * (attn.qk_head_dim + attn.v_head_dim)
    kv_heads = attn.kv_heads // tensor if tensor <= attn.kv_heads else 1
    return heads, attn.head_dim, 2 * kv_heads * attn.head_dim


def layer_peak_bytes(layer: Layer, p: Pass) -> int:
    """The larger of the layer's attention and MLP moments (they run one after the other)."""
    return max(attention_bytes(layer, p), mlp_bytes(layer, p))


def prefill_bytes(arch: Architecture, layers: tuple[Layer, ...], p: Pass) -> int:
    """Peak transient of a forward over `layers`: resident tensors plus the worst layer's moment."""
    if not layers:
        return 0
    resident = resident_bytes(arch.hidden_size, p) + mask_bytes(layers, p)
    return resident + max(layer_peak_bytes(layer, p) for layer in distinct_layers(layers))


def logits_bytes(vocab: int, *, rows: int, element_bytes: int, fp32_copies: int) -> int:
    """Logits for `rows` positions in the compute dtype plus `fp32_copies` fp32 copies (sampling).

    transformers generate: `logits_to_keep=1` (generation/utils.py, "avoid computing the whole logit
    matrix") so rows = sequences; then `outputs.logits[:, -1].to(copy=True, dtype=torch.float32)`: one fp32
    copy, and sampling's softmax one more. A plain forward (no generation) returns all B*T positions."""
    return rows * vocab * (element_bytes + 4 * fp32_copies)


def sampler_bytes(vocab: int, *, rows: int, element_bytes: int) -> int:
    """vLLM's top-k/top-p sampler on `rows` x vocab logits (vllm/v1/sample/ops/topk_topp_sampler.py
    `apply_top_k_top_p`): the model-dtype logits, their fp32 copy, `logits.sort` values (fp32) and indices
    (int64), the softmax of the sorted values (cumsum in place) and the bool top-p mask, all alive at once:
    e + 4 + 4 + 8 + 4 + 1 bytes per element. (vLLM V0's sampler kept the cumsum and an inverse index as
    well: 12 bytes more per element.)"""
    return rows * vocab * (element_bytes + 4 + 4 + 8 + 4 + 1)
