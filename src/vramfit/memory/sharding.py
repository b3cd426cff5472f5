"""Which tensors, and which slice of each, one GPU holds under tensor, pipeline and expert parallelism.

Tensor parallelism as Megatron-LM and vLLM lay it out (vllm/model_executor/layers/linear.py and
vocab_parallel_embedding.py): column-parallel q, k, v, gate, up (and MLA's q_b, kv_b) split their output
rows; row-parallel o and down split their input columns; k and v split by kv heads but never below one head
per rank (replicated beyond); MLA's q_a and kv_a are `ReplicatedLinear`; norms and the MoE router are
replicated; the token embedding and lm_head are vocab-parallel, the vocabulary padded to a multiple of 64
(`DEFAULT_VOCAB_PADDING_SIZE`) and split. Routed experts split their intermediate size over the tensor
ranks, or, with expert parallelism, whole experts over the expert ranks (`FusedMoE`).

Pipeline parallelism splits the blocks into contiguous stages (vllm/distributed/utils.py `get_pp_indices`:
L // pp each, the remainder going one each to the stages before the last); the first stage holds the
embedding, the last the final norm and the head (a tied head becomes its own copy there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from vramfit.errors import InvalidSetting
from vramfit.held import held, put
from vramfit.memory.kv_cache import kv_heads_per_rank
from vramfit.memory.tensors import WeightTensor, weight_tensors
from vramfit.model.architecture import Architecture, Attention, Layer, MixtureOfExperts, distinct_layers
from vramfit.settings import Settings

_COLUMN = ("attn_q", "attn_q_b", "attn_kv_b", "ffn_gate", "ffn_up", "ffn_gate_up")
_ROW = ("attn_output", "ffn_down")
_VOCAB_PADDING = 64


def stage_layer_counts(layers: int, stages: int) -> list[int]:
    """get_pp_indices: layers // stages each; the remainder adds one to each stage before the last."""
    if stages > layers:
        raise InvalidSetting(f"pp: {stages} pipeline stages exceed the model's {layers} layers; lower --pp")
    counts = [layers // stages] * stages
    for i in range(2, layers % stages + 2):
        counts[-i] += 1
    return counts


def stage_layers(arch: Architecture, stage: int, stages: int) -> tuple[Layer, ...]:
    layers = tuple(arch.layers())
    counts = stage_layer_counts(len(layers), stages)
    start = sum(counts[:stage])
    return layers[start:start + counts[stage]]


def validate_tensor_parallel(arch: Architecture, tensor: int) -> None:
    """Heads and MLP widths must split evenly (kv heads are checked by `kv_heads_per_rank`). A degree that
    passed is not checked again for the same architecture object (kept with the layouts that passed)."""
    _check_once((id(arch), tensor), arch, lambda: _validate_tensor_parallel(arch, tensor))


def _validate_tensor_parallel(arch: Architecture, tensor: int) -> None:
    for layer in distinct_layers(tuple(arch.layers())):
        attn = layer.attention
        if attn.heads % tensor:
            raise InvalidSetting(f"tp: {attn.heads} attention heads cannot be split over {tensor} GPUs; "
                                 "choose --tp dividing the number of heads")
        if isinstance(attn, Attention):
            kv_heads_per_rank(attn.kv_heads, tensor)
        mlp = layer.mlp.expert if isinstance(layer.mlp, MixtureOfExperts) else layer.mlp
        if mlp.intermediate_size % tensor:
            raise InvalidSetting(f"tp: MLP width {mlp.intermediate_size} cannot be split over {tensor} GPUs; "
                                 "choose --tp dividing it")


def validate_layout(arch: Architecture, settings: Settings) -> None:
    """What the model's shape allows of settings.parallelism, for both planners: tensor parallelism splits
    heads and MLP widths evenly, pipeline stages have a layer each, expert parallelism needs experts and splits
    them (and, in training, the data-parallel ranks) evenly; frozen layers are layers the model has.
    A layout that passed is not checked again for the same architecture object (see _LAYOUTS_PASSED)."""
    key = (id(arch), settings.parallelism, settings.mode, settings.training.frozen_layers)
    _check_once(key, arch, lambda: _validate_layout(arch, settings))


# (id(arch), parallelism, mode, frozen layers) -> (arch,): layouts that passed validate_layout, which reads
# nothing else, and (id(arch), tensor) -> (arch,): degrees that passed validate_tensor_parallel; each entry
# holds its architecture, so the id is not reused while it lives.
_LAYOUTS_PASSED: dict[tuple[Any, ...], tuple[Architecture]] = {}


def _check_once(key: tuple[Any, ...], arch: Architecture, check: Callable[[], None]) -> None:
    """check() unless `key` passed before for this architecture object; a check that raises is not kept."""
    if _LAYOUTS_PASSED.get(key, (None,))[0] is arch:
        return
    check()
    put(_LAYOUTS_PASSED, key, (arch,), _SLICED_SIZE)


def _validate_layout(arch: Architecture, settings: Settings) -> None:
    par = settings.parallelism
    validate_tensor_parallel(arch, par.tensor)
    stage_layer_counts(arch.num_layers, par.pipeline)
    if par.expert > 1:
        counts = sorted({layer.mlp.experts for layer in arch.layers() if isinstance(layer.mlp, MixtureOfExperts)})
        if not counts:
            raise InvalidSetting(f"ep: this model has no experts to split over {par.expert} ranks; pass --ep 1")
        if any(count % par.expert for count in counts):
            raise InvalidSetting(f"ep: {counts[0]} experts cannot be split over {par.expert} ranks; choose --ep "
                                 "dividing the number of experts")
        if settings.mode == "training" and par.data % par.expert:
            raise InvalidSetting(f"ep: expert parallelism splits the experts over the {par.data} data-parallel "
                                 f"ranks; choose --ep dividing {par.data}")
    if settings.mode == "training" and settings.training.frozen_layers > arch.num_layers:
        raise InvalidSetting(f"frozen_layers: {settings.training.frozen_layers} exceeds the model's "
                             f"{arch.num_layers} layers; pass at most {arch.num_layers}")


def rank_tensors(arch: Architecture, *, tensor: int = 1, stage: int = 0, stages: int = 1,
                 expert: int = 1, vocab_parallel: bool = True, head_parallel: bool | None = None) -> list[WeightTensor]:
    """The tensors (sliced) one GPU holds: pipeline stage `stage` of `stages`, one tensor-parallel rank.
    `head_parallel` (default: as `vocab_parallel`) splits an untied lm_head when the embedding stays whole.

    Sliced once per architecture object and split (searches and sweeps ask again and again); a fresh list
    of the same frozen tensors is returned each time."""
    split = _Split(vocab=vocab_parallel, head=vocab_parallel if head_parallel is None else head_parallel)
    key = (id(arch), tensor, stage, stages, expert, split)
    return list(held(_SLICED, key, arch, lambda: tuple(_rank_tensors(arch, tensor, stage, stages, expert, split)),
                     _SLICED_SIZE))


# (id(arch), split) -> (arch, its tensors): the entry holds the architecture, so its id is not reused while
# the entry lives; the cache starts afresh beyond _SLICED_SIZE.
_SLICED: dict[tuple[int, int, int, int, int, _Split], tuple[Architecture, tuple[WeightTensor, ...]]] = {}
_SLICED_SIZE = 256


def _rank_tensors(arch: Architecture, tensor: int, stage: int, stages: int, expert: int,
                  split: _Split) -> list[WeightTensor]:
    counts = stage_layer_counts(arch.num_layers, stages)
    first, last = sum(counts[:stage]), sum(counts[:stage + 1])
    out, seen_block = [], False
    for t in weight_tensors(arch):
        seen_block = seen_block or t.layer is not None
        if t.layer is None:
            keep = stage == (stages - 1 if seen_block else 0)   # head side after the blocks, embedding before
        else:
            keep = first <= t.layer < last
        if keep:
            out.append(shard(t, tensor, expert, vocab_parallel=split.vocab, head_parallel=split.head))
    if stages > 1 and arch.head.tied and arch.head.output is not None and stage == stages - 1:
        emb = arch.embedding.tokens
        out.append(shard(WeightTensor(role="output", rows=emb.rows, cols=emb.dim), tensor, expert,
                         vocab_parallel=split.vocab, head_parallel=split.head))
    return out


@dataclass(frozen=True, slots=True)
class _Split:
    """Which vocabulary-sized tensors tensor parallelism splits: the embedding (and head), or the head only."""

    vocab: bool
    head: bool


def _vocab_shard(t: WeightTensor, tensor: int, *, vocab_parallel: bool, head_parallel: bool) -> WeightTensor:
    if vocab_parallel:
        padded = -(-t.rows // _VOCAB_PADDING) * _VOCAB_PADDING
        return replace(t, rows=padded // tensor)
    if head_parallel and t.role != "token_embd":
        return replace(t, rows=-(-t.rows // tensor))
    return t


def shard(t: WeightTensor, tensor: int, expert: int = 1, *, vocab_parallel: bool = True,
          head_parallel: bool | None = None) -> WeightTensor:
    """One rank's slice of a tensor (embedding and head whole on every rank unless vocab_parallel).

    vocab_parallel: vLLM's VocabParallelEmbedding / ParallelLMHead, the vocabulary padded to 64 and split.
    head_parallel alone (transformers' `_tp_plan = {"lm_head": "colwise_gather_output"}` with no entry for
    `embed_tokens` in base_model_tp_plan, models/llama/modeling_llama.py and configuration_llama.py): the
    embedding stays whole and an untied head is a DTensor Shard(0) of its rows, ceil(rows / tp) on rank 0."""
    if t.expert and expert > 1:
        return replace(t, count=-(-t.count // expert))
    role = t.parent or t.role
    if tensor == 1:
        return t
    if t.role in ("token_embd", "output") or role == "output" and t.role == "bias":
        return _vocab_shard(t, tensor, vocab_parallel=vocab_parallel,
                            head_parallel=vocab_parallel if head_parallel is None else head_parallel)
    base = role.split("_exps")[0].split("_shexp")[0]
    if base in ("attn_k", "attn_v"):
        return replace(t, rows=t.rows // min(tensor, t.kv_heads))
    if base == "attn_qkv":
        kv_rows = 2 * t.kv_heads * t.head_dim
        per_rank_kv = 2 * kv_heads_per_rank(t.kv_heads, tensor) * t.head_dim
        return replace(t, rows=(t.rows - kv_rows) // tensor + per_rank_kv)
    if base in _COLUMN:
        return replace(t, rows=t.rows // tensor)
    if base in _ROW and t.matrix:
        return replace(t, cols=t.cols // tensor)
    return t
