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
  all heads (`repeat_kv`), and the additive mask B x 1 x T x C in the compute dtype. sdpa (with
  enable_gqa, mask None for plain causal batches) and flash attention never materialize scores: their
  workspace is the B*heads*T fp32 log-sum-exp, counted here.
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


def resident_bytes(hidden_size: int, p: Pass) -> int:
    """What lives across layers: embedding output, residual and the block's normalized input."""
    return 3 * p.sequences * p.tokens * hidden_size * p.element_bytes


def mlp_bytes(layer: Layer, p: Pass) -> int:
    """The MLP's largest moment (see the module docstring)."""
    rows = p.sequences * p.tokens
    mlp = layer.mlp
    if isinstance(mlp, MixtureOfExperts):
        routed = rows * mlp.experts_per_token
        expert = _ffn_width_bytes(mlp.expert, routed, p.element_bytes)
        return expert + rows * mlp.experts * 4 + 2 * routed * mlp.hidden_size * p.element_bytes
    return _ffn_width_bytes(mlp, rows, p.element_bytes)


def _ffn_width_bytes(mlp: FeedForward, rows: int, element_bytes: int) -> int:
    tensors = 3 if isinstance(mlp, GatedMLP) else 2
    return tensors * rows * mlp.intermediate_size * element_bytes


def attention_bytes(layer: Layer, p: Pass) -> int:
    """The attention's largest moment: projections, rotary copies, output, and eager scores."""
    attn = layer.attention
    heads, q_dim, kv_width = _shape(attn)
    rows = p.sequences * p.tokens
    projections = 2 * rows * (heads * q_dim + kv_width) * p.element_bytes + rows * heads * q_dim * p.element_bytes
    if p.attention != "eager":
        return projections + p.sequences * heads * p.tokens * 4
    scores = p.sequences * heads * p.tokens * p.context
    score_bytes = 8 if p.element_bytes == 4 else 2 * p.element_bytes + 4
    mask = p.sequences * p.tokens * p.context * p.element_bytes
    repeated = 2 * p.sequences * p.context * heads * q_dim * p.element_bytes
    return projections + scores * score_bytes + mask + repeated


def _shape(attn: Attention | LatentAttention) -> tuple[int, int, int]:
    """(heads, per-head query width, K+V width per token) of one layer."""
    if isinstance(attn, LatentAttention):
        return attn.heads, attn.qk_head_dim, attn.heads * (attn.qk_head_dim + attn.v_head_dim)
    return attn.heads, attn.head_dim, 2 * attn.kv_heads * attn.head_dim


def layer_peak_bytes(layer: Layer, p: Pass) -> int:
    """The larger of the layer's attention and MLP moments (they run one after the other)."""
    return max(attention_bytes(layer, p), mlp_bytes(layer, p))


def prefill_bytes(arch: Architecture, layers: tuple[Layer, ...], p: Pass) -> int:
    """Peak transient of a forward over `layers`: resident tensors plus the worst layer's moment."""
    if not layers:
        return 0
    return resident_bytes(arch.hidden_size, p) + max(layer_peak_bytes(layer, p) for layer in distinct_layers(layers))


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
