"""The stored tensors of an architecture, each with the role that decides how a quantizer treats it.

Quantizers decide per tensor: bitsandbytes replaces `nn.Linear` modules, GPTQ/AWQ quantize the linears inside
decoder blocks, llama.cpp picks a type per GGUF tensor name (`attn_v`, `ffn_down`, `output`, ...). A role
named by position in the architecture (never by a family name) is what all of them need. Roles follow
llama.cpp's tensor names (gguf-py/gguf/constants.py, MODEL_TENSOR) where one exists.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from vramfit.held import held
from vramfit.model.architecture import (
    Architecture,
    Attention,
    FeedForward,
    GatedMLP,
    LatentAttention,
    Layer,
    Linear,
    MixtureOfExperts,
    Norm,
)

_LATENT_ROLES = {"q_proj": "attn_q", "q_a_proj": "attn_q_a", "q_b_proj": "attn_q_b",
                 "kv_a_proj_with_mqa": "attn_kv_a_mqa", "kv_b_proj": "attn_kv_b", "o_proj": "attn_output"}


@dataclass(frozen=True, kw_only=True, slots=True)
class WeightTensor:
    """One stored tensor (times `count` identical copies, e.g. routed experts).

    2-D matrices have `rows` = out_features and `cols` = in_features (the row is what block formats split);
    1-D tensors (norm weights, biases) have cols = 1. `layer` is the block index, None outside blocks.
    `expert` marks routed-expert matrices, which transformers 5 stores as fused 3-D parameters.
    """

    role: str
    rows: int
    cols: int
    count: int = 1
    layer: int | None = None
    expert: bool = False
    parent: str = ""      # biases: the role of the matrix they belong to
    kv_heads: int = 0     # k, v and fused qkv projections: key/value heads in the rows
    head_dim: int = 0

    @property
    def elements(self) -> int:
        return self.rows * self.cols * self.count

    @property
    def matrix(self) -> bool:
        return self.cols > 1


def weight_tensors(arch: Architecture) -> Iterator[WeightTensor]:
    """Every stored tensor of the model, in the order of a state dict: embeddings, blocks, head.

    Listed once per Architecture object and shared: an Architecture and its WeightTensors are frozen, so
    the list cannot change, and an estimate walks it several times (bench/bench_estimate.py)."""
    return iter(_listed(arch))


# id(arch) -> (arch, its tensors). Keyed by identity, not by value: hashing an Architecture walks every
# layer and costs more than listing the tensors once. The entry holds the architecture, so its id is not
# reused while the entry lives; the cache starts afresh beyond _LISTED_SIZE.
_LISTED: dict[int, tuple[Architecture, tuple[WeightTensor, ...]]] = {}
_LISTED_SIZE = 64


def _listed(arch: Architecture) -> tuple[WeightTensor, ...]:
    return held(_LISTED, id(arch), arch, lambda: tuple(_all_tensors(arch)), _LISTED_SIZE)


def _all_tensors(arch: Architecture) -> Iterator[WeightTensor]:
    yield from _embedding_tensors(arch)
    index = 0
    for stack in arch.stacks():
        for layer in stack.layers:
            yield from _layer_tensors(layer, index)
            index += 1
        if stack.final_norm is not None:
            yield from _norm_tensors(stack.final_norm, None)
    yield from _head_tensors(arch)


def _embedding_tensors(arch: Architecture) -> Iterator[WeightTensor]:
    emb = arch.embedding
    yield WeightTensor(role="token_embd", rows=emb.tokens.rows, cols=emb.tokens.dim)
    for table in (emb.positions, emb.token_types):
        if table is not None:
            yield WeightTensor(role="embedding_other", rows=table.rows, cols=table.dim)
    if emb.norm is not None:
        yield from _norm_tensors(emb.norm, None)
    for linear in emb.projections:
        yield from _linear_tensors(linear, "embedding_proj", None)


def _head_tensors(arch: Architecture) -> Iterator[WeightTensor]:
    head = arch.head
    for part in head.transform:
        if isinstance(part, Norm):
            yield from _norm_tensors(part, None)
        elif isinstance(part, Linear):
            yield from _linear_tensors(part, "head_transform", None)
        else:  # a lone learned vector (BERT's untied MLM bias): 1-D, kept as stored
            yield WeightTensor(role="bias", rows=part.rows * part.dim, cols=1, parent="output")
    if head.output is None:
        return
    if head.tied:
        if head.output.bias:
            yield WeightTensor(role="bias", rows=head.output.out_features, cols=1, parent="output")
        return
    yield from _linear_tensors(head.output, "output", None)


def _layer_tensors(layer: Layer, index: int) -> Iterator[WeightTensor]:
    yield from _attention_tensors(layer.attention, index, prefix="attn")
    if layer.cross_attention is not None:
        yield from _attention_tensors(layer.cross_attention, index, prefix="cross_attn")
    for norm in layer.norms:
        yield from _norm_tensors(norm, index)
    if isinstance(layer.mlp, MixtureOfExperts):
        yield from _moe_tensors(layer.mlp, index)
    else:
        yield from _feed_forward_tensors(layer.mlp, index, suffix="")


def _attention_tensors(attn: Attention | LatentAttention, index: int, *, prefix: str) -> Iterator[WeightTensor]:
    linears = attn.linears()
    if isinstance(attn, LatentAttention):
        roles = [_LATENT_ROLES[linear.name] for linear in linears]
    elif attn.fused:
        roles = ["attn_qkv", "attn_output"]
    else:
        roles = ["attn_q", "attn_k", "attn_v", "attn_output"]
    kv_heads, head_dim = (0, 0) if isinstance(attn, LatentAttention) else (attn.kv_heads, attn.head_dim)
    for linear, role in zip(linears, roles):
        split = role in ("attn_k", "attn_v", "attn_qkv")
        yield from _linear_tensors(linear, role.replace("attn", prefix, 1), index, kv_heads=kv_heads if split else 0,
                                   head_dim=head_dim if split else 0)
    for norm in attn.norms():
        yield from _norm_tensors(norm, index)
    for table in attn.tables():
        yield WeightTensor(role="embedding_other", rows=table.rows, cols=table.dim, layer=index)


def _feed_forward_tensors(mlp: FeedForward, index: int, *, suffix: str, count: int = 1,
                          expert: bool = False) -> Iterator[WeightTensor]:
    if isinstance(mlp, GatedMLP):
        roles = ["ffn_gate_up", "ffn_down"] if mlp.fused else ["ffn_gate", "ffn_up", "ffn_down"]
    else:
        roles = ["ffn_up", "ffn_down"]
    for linear, role in zip(mlp.linears(), roles):
        yield from _linear_tensors(linear, role + suffix, index, count=count, expert=expert)


def _moe_tensors(moe: MixtureOfExperts, index: int) -> Iterator[WeightTensor]:
    yield from _linear_tensors(moe.router(), "router", index)
    yield from _feed_forward_tensors(moe.expert, index, suffix="_exps", count=moe.experts, expert=True)
    if moe.shared is not None:
        yield from _feed_forward_tensors(moe.shared, index, suffix="_shexp")
    if moe.shared_gate:
        yield WeightTensor(role="router", rows=1, cols=moe.hidden_size, layer=index)


def _linear_tensors(linear: Linear, role: str, index: int | None, *, count: int = 1, expert: bool = False,
                    kv_heads: int = 0, head_dim: int = 0) -> Iterator[WeightTensor]:
    yield WeightTensor(role=role, rows=linear.out_features, cols=linear.in_features, count=count, layer=index,
                       expert=expert, kv_heads=kv_heads, head_dim=head_dim)
    if linear.bias:
        yield WeightTensor(role="bias", rows=linear.out_features, cols=1, count=count, layer=index, expert=expert,
                           parent=role, kv_heads=kv_heads, head_dim=head_dim)


def _norm_tensors(norm: Norm, index: int | None) -> Iterator[WeightTensor]:
    yield WeightTensor(role="norm", rows=norm.size, cols=1, count=2 if norm.bias else 1, layer=index)
