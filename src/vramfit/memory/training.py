"""Planner for --mode training: the peak of one real training step on the most-loaded GPU.

Composition only; the formulas live in lora (which tensors train), gradients, optimizer, activations,
frameworks and parallel. A step is a sequence of phases, and each phase has its own set of live tensors:

1. forward, at the loss: weights, optimizer states (steady state: they exist from the first step on),
   gradients of earlier micro-batches (accumulation only), AMP's low-precision weight copies, the batch, every
   saved activation, and the logits with their fp32 copy;
2. start of backward: the same, with the two fp32 log-softmax gradients instead of the logits;
3. inside each block's backward (MLP half, then attention half): gradients made so far, the activations of
   the blocks not yet processed (all of this block's, recomputed under checkpointing), the gradient flowing
   through, and the MLP's or attention's gradient temporaries;
4. optimizer step: weights, gradients, states and the step's temporaries.

The estimate is the largest phase, and the breakdown lists the components alive in it: terms that never
coexist (the logits and the optimizer temporaries) are never added. Every pipeline stage that could be the
most loaded (the first holds the embedding and the most micro-batches, the last the head and the loss) is
planned and the larger taken.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from itertools import groupby
from operator import itemgetter
from typing import Any, NamedTuple, TypeVar

from vramfit.held import held, put
from vramfit.memory import activations as act
from vramfit.memory import overhead
from vramfit.memory.frameworks import Framework, framework
from vramfit.memory.gradients import allocation_bytes, gradient_bytes, tensors_bytes
from vramfit.memory.lora import (
    ParamTensor,
    checkpointed_4bit_inputs,
    head_held_input,
    held_4bit_inputs,
    nf4_storages,
    parameter_tensors,
    targeted_linears,
    trainable_parameters,
)
from vramfit.memory.optimizer import OptimizerMemory, optimizer_memory
from vramfit.memory.parallel import Layout, ddp_bucket_bytes, layout
from vramfit.memory.sharding import rank_tensors, stage_layer_counts, validate_tensor_parallel
from vramfit.model.architecture import Architecture, GatedMLP, Layer, MixtureOfExperts
from vramfit.model.loaded import Model
from vramfit.result import Component, Parameters, Plan
from vramfit.settings import (
    DEEPSPEED_PERSISTENCE_THRESHOLD,
    DTYPE_BYTES,
    PEFT_ADAPTER_FP32,
    TORCH_FOREACH_DEFAULT,
    TORCH_LAZY_MODULES,
    TORCH_SOFTMAX_INPUT_FREED,
    TORCH_ZERO_GRAD_TO_NONE,
    Precision,
    Runtime,
    Settings,
    Training,
    peft_version,
)

_EMBEDDING_ROLES = ("token_embd", "embedding_other")
_HIDDEN_DROPOUT_KEYS = ("resid_pdrop", "hidden_dropout_prob", "hidden_dropout", "dropout")
_ATTENTION_DROPOUT_KEYS = ("attn_pdrop", "attention_probs_dropout_prob", "attention_dropout")


@dataclass(frozen=True, kw_only=True, slots=True)
class Bytes:
    """Byte widths of one run: stored parameters, compute (activations), adapters, gradients of what trains."""

    param: int
    compute: int
    adapter: int
    amp: bool
    double_quant: bool = False   # QLoRA base with double quantization (--quant bnb-nf4-dq)


@dataclass(kw_only=True, slots=True)
class BlockStep:
    """One block's share: saved activations (as kept), saved if recomputed, gradients (unsharded and as
    kept), AMP weight copies, and the backward temporaries of its MLP and attention halves."""

    saved: int
    recomputed: int
    mlp_saved: int
    product: int
    grads: int
    grads_kept: int
    mlp_grads: int
    amp_copies: int
    mlp_temporaries: int
    attention_temporaries: int
    held: int = 0   # bitsandbytes < 0.43.2: the 4-bit linears' kept inputs (lora.held_4bit_inputs)


@dataclass(kw_only=True, slots=True)
class Step:
    """Everything the phases are made of, for one GPU. Not frozen, nor BlockStep: a frozen dataclass's __init__
    sets each field through object.__setattr__, and making them took 3.4 of a training estimate's 35 us (8B,
    bench/bench_estimate.py, 21 Nov 2026); nothing changes one after _step makes it."""

    weights: int
    gathered: int
    amp_copies: int
    gradients: int
    outside_grads: int
    states: OptimizerMemory
    batch: int
    saved_outside: int
    saved_head: int
    loss: act.LossMemory
    buckets: int
    dequant: int
    accumulating: bool
    reduce_bucket: int = 0      # DeepSpeed ZeRO-3's persistent reduce bucket (_reduce_buckets)
    backward_bucket: int = 0    # DeepSpeed ZeRO-1/2's, alive during backward only
    in_flight: int
    host: dict[str, int] = field(default_factory=dict, hash=False)
    fsdp_root: int = 0
    fsdp_block: int = 0
    held_inputs: int = 0        # bitsandbytes < 0.43.2: 4-bit inputs alive until the graph is freed
    held_previous: int = 0      # the previous step's, alive through this forward (Framework.graph_kept)
    held_in_optimizer: bool = False
    dequant_head: int = 0       # a 4-bit head dequantized at the loss and at the start of backward
    flat_root_grads: int = 0    # FSDP1 flat root: unsharded gradient of its trainable tensors (_flat_root_grads)
    flat_head_grads: int = 0
    flat_root_kept: int = 0     # its gradient as kept after the step (sharded unless accumulating)
    runs: tuple[tuple[BlockStep, int], ...] = ()   # the blocks in walk order (last first) as (block, how many in a row)

    @property
    def blocks(self) -> tuple[BlockStep, ...]:
        """Every block's step, in block order."""
        return tuple(block for block, count in reversed(self.runs) for _ in range(count))

    @property
    def block_count(self) -> int:
        return sum(count for _, count in self.runs)


def plan(model: Model, settings: Settings) -> Plan:
    profile = framework(settings.training.framework)
    lay = layout(settings.parallelism, settings.workload)
    if profile.fsdp_no_sync and settings.parallelism.fsdp != "none" and settings.workload.grad_accum > 1:
        lay = _no_sync(lay)   # FSDP.no_sync(): full gradients until the sync step
    setup = _setup(model, settings, profile, lay)
    steps = [_step(setup, settings, stage) for stage in _candidate_stages(lay.pipeline)]
    tables = [_phase_table(step) for step in steps]
    # the largest phase of each candidate stage, then the larger stage; the first one on a tie
    chosen = max(range(len(steps)), key=lambda i: tables[i][3][0])
    names, values, outer, (_, position) = tables[chosen]
    name, step = names[position], steps[chosen]
    components = (*_components(_phase(step, name, outer), step, settings, setup, lay), *_offload_copies(step, lay),
                  *_constant_overheads(_hopper(settings.gpu), setup.eager_context), *setup.nccl)
    notes = (f"peak phase: {name}; steady-state step (optimizer states already allocated)", *setup.notes)
    extra = {"peak_phase": name, "phases": dict(zip(names, values)),
             "framework": {"name": profile.name, "behaviours": list(profile.behaviours)}, "layout": lay.name}
    if step.host:
        extra["host_memory"] = dict(step.host)
    return Plan(components=components, parameters=setup.parameters, notes=notes, extra=extra)


class Setup(NamedTuple):
    """What a training estimate takes from the model and the settings no workload changes, made once per their
    objects (_setup): the framework profile, the model as the framework builds it, the layout, the byte widths,
    the parameter counts, the notes after the peak phase's, and each candidate stage's StageTerms. (A NamedTuple:
    a frozen slots dataclass costs 0.7 ms more to create at import, which the first training estimate pays.)"""

    model: Model
    profile: Framework
    layout: Layout
    widths: Bytes
    parameters: Parameters
    notes: tuple[str, ...]
    stages: dict[int, StageTerms]
    buckets: dict[str, int]          # DeepSpeed's reduce bucket (_reduce_buckets)
    grads_kept: bool                 # torch < 2.0 keeps the gradients between steps (_grads_kept)
    eager_context: bool              # torch < 1.13 loads every kernel into the context
    nccl: tuple[Component, ...]      # NCCL's buffers, if any (overhead.nccl_buffers)
    described: dict[tuple[str, int], Component]   # _components of _DESCRIBE_PER_SETUP's names, by (name, bytes)


def _setup(model: Model, settings: Settings, profile: Framework, lay: Layout) -> Setup:
    """The Setup of (model, training, precision, runtime, layout, framework profile), by the objects' identities:
    a sweep's Settings.replace keeps every part but the Workload, so each point finds it with six `is` tests
    instead of hashing the settings. New objects equal to earlier ones make a new Setup from the value-keyed
    caches."""
    held = (model, settings.training, settings.precision, settings.runtime, lay, profile)
    key = tuple(map(id, held))
    hit = _SETUPS.get(key)
    if hit is None or any(a is not b for a, b in zip(hit[0], held)):
        hit = (held, _make_setup(model, settings, profile, lay))
        put(_SETUPS, key, hit, _TERMS_SIZE)
    return hit[1]


# (ids of model, training, precision, runtime, layout, profile) -> (those objects, their Setup)
_SETUPS: dict[tuple[int, ...], tuple[tuple[object, ...], Setup]] = {}


def _make_setup(model: Model, settings: Settings, profile: Framework, lay: Layout) -> Setup:
    if profile.untied_head and model.architecture.head.tied and model.architecture.head.output is not None:
        model = _untied(model)   # litgpt: lm_head.weight is a copy of the token table
    arch, training = model.architecture, settings.training
    validate_tensor_parallel(arch, lay.tensor)
    widths = _bytes(settings, profile)
    nccl = overhead.nccl_buffers((lay.data, lay.tensor, lay.pipeline, lay.context))
    return Setup(model=model, profile=profile, layout=lay, widths=widths,
                 parameters=_cached(("parameters", training), arch, lambda: _parameters(arch, training)),
                 notes=_notes(settings, profile, lay), stages={}, described={}, buckets=_reduce_buckets(arch, settings, lay, widths),
                 grads_kept=_grads_kept(settings), eager_context=settings.runtime.torch_before(TORCH_LAZY_MODULES),
                 nccl=() if nccl is None else (nccl,))


def _no_sync(lay: Layout) -> Layout:
    """`lay` with unsharded gradients (FSDP.no_sync() while accumulating), one object per layout object."""
    return _memo(_NO_SYNC, id(lay), lay, lambda: replace(lay, grad_shard=1))


_NO_SYNC: dict[int, tuple[object, Any]] = {}


def _untied(model: Model) -> Model:
    """The model with its head untied, one object per model object: every cache of the estimate is keyed by
    the architecture object, so a new one at each call would price every tensor again (and fill the caches)."""
    arch = model.architecture
    return _memo(_UNTIED, id(model), model,
                 lambda: replace(model, architecture=replace(arch, head=replace(arch.head, tied=False))))


_UNTIED: dict[int, tuple[object, Any]] = {}


def _parameters(arch: Architecture, training: Any) -> Parameters:
    """The model's parameters under `training`: the architecture's, its adapters, and what trains."""
    tensors = parameter_tensors(arch, training)
    count = arch.parameter_count()
    return Parameters(total=count.total + sum(t.elements for t in tensors if t.adapter),
                      trainable=trainable_parameters(tensors), active=count.active, by_part=count.by_part)


def _cached(key: tuple[Any, ...], arch: Architecture, make: Any) -> Any:
    """`make()` once per (architecture, key)."""
    return _memo(_SMALL, (id(arch), *key), arch, make)


_SMALL: dict[tuple[Any, ...], tuple[object, Any]] = {}


def _candidate_stages(pipeline: int) -> list[int]:
    return [0] if pipeline == 1 else [0, pipeline - 1]


def _bytes(settings: Settings, profile: Framework) -> Bytes:
    """AMP keeps fp32 parameters and computes in the amp dtype; otherwise both are --dtype. LoRA adapters are
    fp32 where the framework upcasts them (PEFT >= 0.12, _peft_adapter_bytes), else in the parameter dtype."""
    param = _param_bytes(settings.precision)
    return _widths(settings.precision, _peft_adapter_bytes(settings, param) if profile.adapter_fp32 else param)


def _param_bytes(precision: Precision) -> int:
    return 4 if precision.amp else DTYPE_BYTES[precision.dtype]


@functools.lru_cache(maxsize=256)
def _widths(precision: Precision, adapter: int) -> Bytes:
    """The byte widths of `precision` with adapters of `adapter` bytes."""
    param = _param_bytes(precision)
    compute = DTYPE_BYTES[precision.compute_dtype]
    return Bytes(param=param, compute=compute, adapter=adapter, amp=precision.amp is not None,
                 double_quant=precision.quant == "bnb-nf4-dq")


def _peft_adapter_bytes(settings: Settings, param: int) -> int:
    """PEFT upcasts adapters to fp32 from 0.12.0; before it a new adapter takes its base weight's dtype where that is
    a float, so a QLoRA adapter stays fp32 over uint8-stored 4-bit data (settings.PEFT_ADAPTER_FP32)."""
    version = peft_version(settings.training.peft)
    if version is None or version >= PEFT_ADAPTER_FP32:
        return 4
    if settings.training.finetune == "qlora":
        return param if _sharded_4bit(settings) else 4
    return param


def _sharded_4bit(settings: Settings) -> bool:
    """FSDP and ZeRO-3 QLoRA store the 4-bit data in the compute dtype (bnb_4bit_quant_storage) so it can shard."""
    p = settings.parallelism
    return p.fsdp in ("full", "hybrid") or p.zero_stage == 3


@dataclass(frozen=True, kw_only=True, slots=True)
class Held:
    """What one pipeline stage of one tensor-parallel rank holds: its blocks, its tensors (grouped by block)."""

    blocks: range
    tensors: tuple[ParamTensor, ...]
    by_layer: dict[int | None, list[ParamTensor]] = field(hash=False)

    @property
    def trainable(self) -> list[ParamTensor]:
        return [t for t in self.tensors if t.trainable]


def _held(arch: Architecture, training: Any, lay: Layout, stage: int, tp_plan: bool,
          quantized_head: bool = False) -> Held:
    """tp_plan: transformers' split (embedding whole, an untied head split by rows, sharding.shard); else
    Megatron's vocabulary-parallel embedding and head."""
    counts = stage_layer_counts(arch.num_layers, lay.pipeline)
    first = sum(counts[:stage])
    blocks = range(first, first + counts[stage])
    sliced = rank_tensors(arch, tensor=lay.tensor, stage=stage, stages=lay.pipeline, expert=lay.expert,
                          vocab_parallel=not tp_plan, head_parallel=True)
    tensors = parameter_tensors(arch, training, held=sliced, blocks=blocks, quantized_head=quantized_head)
    by_layer: dict[int | None, list[ParamTensor]] = {}
    for t in tensors:   # one pass, in order: each block's own tensors (a filter per block is layers x tensors)
        by_layer.setdefault(t.layer, []).append(t)
    return Held(blocks=blocks, tensors=tensors, by_layer=by_layer)


@dataclass(frozen=True, kw_only=True, slots=True)
class TensorTerms:
    """What one stage's step takes from its tensors alone, whatever the batch: its tensors, its distinct
    blocks (layer, first block index, its tensors, its gradient holders) and which of them each block is, and
    the byte sums over tensors. Made once per (architecture, training, layout, widths, stage, framework)."""

    held: Held
    groups: tuple[tuple[Layer, int, list[ParamTensor], list[ParamTensor]], ...]
    group_tensors: tuple[BlockTensors, ...]   # each distinct block's tensor-only terms, as groups
    block_group: tuple[int, ...]
    runs: tuple[tuple[int, int], ...]   # block_group in walk order (last block first) as (group, how many in a row)
    states: OptimizerMemory
    held_states: OptimizerMemory        # as this GPU holds them: sharded over state_shard, or offloaded
    grads: int
    weights: int
    gathered: int
    fsdp_root: int
    fsdp_block: int
    amp_copies: int
    outside_grads: int
    dequant: int
    host: dict[str, int] = field(hash=False)
    dequant_head: int = 0
    flat_root_grads: int = 0    # FSDP1 flat root (Framework.fsdp_flat_root): its trainable tensors' gradient, unsharded
    flat_head_grads: int = 0    # the part made before the blocks' backward (head, final norm), unsharded


# (id(arch), training, layout, widths, stage, framework) -> (arch, terms)
_TERMS: dict[tuple[Any, ...], tuple[object, Any]] = {}
_TERMS_SIZE = 256

_T = TypeVar("_T")


def _memo(store: dict[Any, tuple[object, Any]], key: Any, holder: object, make: Callable[[], _T]) -> _T:
    """held.held with this module's bound (_TERMS_SIZE entries)."""
    return held(store, key, holder, make, _TERMS_SIZE)


def _terms(arch: Architecture, training: Any, lay: Layout, widths: Bytes, stage: int,
           profile: Framework, foreach: bool) -> TensorTerms:
    return _memo(_TERMS, (id(arch), training, lay, widths, stage, profile, foreach), arch,
                 lambda: _tensor_terms(arch, training, lay, widths, stage, profile, foreach))


def _tensor_terms(arch: Architecture, training: Any, lay: Layout, widths: Bytes, stage: int,
                  profile: Framework, foreach: bool) -> TensorTerms:
    held = _held(arch, training, lay, stage, profile.tp_plan, profile.quantized_head)
    grad_width = widths.adapter if training.finetune != "full" else widths.param
    holders = _grad_holders(held, profile.fsdp_unit_gradients and lay.name.startswith("FSDP")
                            and training.finetune != "full")
    layers = list(arch.layers())[held.blocks.start:held.blocks.stop]
    groups, block_group = _block_groups(layers, held, holders, training.frozen_layers)
    gathered = _gathered_bytes(held.by_layer, held.blocks, widths, lay)
    states = optimizer_memory(training.optimizer, held.trainable, grad_width, foreach=foreach)
    grad_amp = widths.amp and lay.param_shard == 1
    return TensorTerms(
        held=held, groups=groups, block_group=block_group, states=states,
        held_states=_offloaded(states) if lay.offload_states else _sharded(states, lay.state_shard),
        runs=tuple((group, len(tuple(run))) for group, run in groupby(reversed(block_group))),
        group_tensors=tuple(_block_tensors(mine, with_grads, grad_width, widths, lay, grad_amp)
                            for _, _, mine, with_grads in groups),
        grads=gradient_bytes((t.elements for t in holders), grad_width) // lay.grad_shard,
        weights=_resident_weights_bytes(held.tensors, widths, lay),
        gathered=gathered, fsdp_root=_fsdp_root_bytes(held.by_layer, widths, lay),
        fsdp_block=gathered // lay.gathered_blocks if lay.gathered_blocks else 0,
        amp_copies=_amp_copies(held.tensors, widths) if widths.amp and lay.param_shard == 1 else 0,
        outside_grads=_head_gradients(held, grad_width) // lay.grad_shard,
        dequant=_dequant_bytes([t for t in held.tensors if t.layer is not None], widths),
        dequant_head=_dequant_bytes([t for t in held.tensors if t.layer is None], widths),
        host=_host(states, held.tensors, widths, lay),
        **_flat_root_grads(held, grad_width, lay, profile))


def _flat_root_grads(held: Held, grad_width: int, lay: Layout, profile: Framework) -> dict[str, int]:
    """FSDP1's root unit is one flat parameter, and its forward runs on views of it (torch/distributed/fsdp/
    _flat_param.py `_use_unsharded_views(as_params=False)`: "We use `Tensor` views in the forward so that they
    are tracked by autograd", views from `torch.split(flat_param, numels)`). Its gradient is made by one split
    backward, which waits for every view's gradient (the head's, made first, waits through the blocks'
    backward for the embedding's, made last) and concatenates them into a new flat-sized tensor."""
    if not (profile.fsdp_flat_root and lay.gathered_blocks and lay.name.startswith("FSDP")):
        return {}
    root = [t for t in held.trainable if t.layer is None]
    head = [t for t in root if t.role not in _EMBEDDING_ROLES]
    return {"flat_root_grads": gradient_bytes((t.elements for t in root), grad_width),
            "flat_head_grads": gradient_bytes((t.elements for t in head), grad_width)}


def _reduce_buckets(arch: Architecture, settings: Settings, lay: Layout, widths: Bytes) -> dict[str, int]:
    """DeepSpeed's gradient reduce bucket with contiguous_gradients (its default, runtime/zero/config.py), a flat
    buffer of reduce_bucket_size elements (default 5e8, config.py 105) in the dtype of the optimizer's 16-bit
    parameters, however few of them train. ZeRO-3 allocates it when the optimizer is set up and frees it only in
    destroy() (deepspeed v0.14.0 runtime/zero/stage3.py 489-492, 362, 407): every phase holds it. ZeRO-1/2 allocate
    it at each backward() and release it after the reduction (stage_1_and_2.py 2033-2044, _release_ipg_buffers
    at 786): the backward phases hold it (one buffer: the second comes with overlap_comm, off by default for
    stages 1 and 2). FSDP has no such buffer."""
    if not lay.name.startswith("ZeRO-"):
        return {}
    bucket = settings.parallelism.zero_bucket
    elements = arch.hidden_size ** 2 if bucket == "auto" else bucket
    nbytes = allocation_bytes(elements * (widths.adapter if settings.training.finetune != "full" else widths.param))
    return {"reduce_bucket": nbytes} if lay.name == "ZeRO-3" else {"backward_bucket": nbytes}


def _step(setup: Setup, settings: Settings, stage: int) -> Step:
    """Every term of one stage's step, before the phases combine them: the tensor terms (cached), then what the
    batch and the length change (_sizes: each distinct block priced once, the loss, ...)."""
    training, workload, profile, lay = settings.training, settings.workload, setup.profile, setup.layout
    terms, sizes = _sizes(setup, settings, stage, workload.batch_size, -(-workload.seq_len // lay.context))
    priced = [_block_step(sizes, group, tensors, training, lay) for group, tensors in enumerate(terms.group_tensors)]
    is_first, is_last = stage == 0, stage == lay.pipeline - 1
    host = dict(terms.host)
    offload_tail = 0
    if training.activation_offload:
        priced, offload_tail, host["activations"] = _offload_activations(priced, terms.block_group)
    runs = tuple((priced[group], count) for group, count in terms.runs)
    held = _held_inputs(sizes["head_held"], runs, lay.in_flight if is_first else 1)
    loss = _NO_LOSS if not is_last else act.LossMemory(
        saved=sizes["loss_saved"], forward_transient=sizes["loss_forward_transient"],
        backward_transient=sizes["loss_backward_transient"], kept=sizes["loss_kept"], formula=sizes["loss_formula"])
    return Step(
        weights=terms.weights, gathered=terms.gathered, fsdp_root=terms.fsdp_root, fsdp_block=terms.fsdp_block,
        amp_copies=terms.amp_copies, gradients=terms.grads, outside_grads=terms.outside_grads,
        states=terms.held_states,
        batch=2 * allocation_bytes(workload.batch_size * workload.seq_len * act.INDEX),
        saved_outside=sizes["saved_outside"] + offload_tail, saved_head=sizes["saved_head"], loss=loss,
        runs=runs,
        buckets=ddp_bucket_bytes(terms.grads) if lay.ddp_buckets else 0,
        **setup.buckets,
        dequant=terms.dequant, accumulating=workload.grad_accum > 1 or setup.grads_kept,
        in_flight=lay.in_flight if is_first else 1, host=host, flat_root_grads=terms.flat_root_grads,
        flat_head_grads=terms.flat_head_grads, flat_root_kept=terms.flat_root_grads // lay.grad_shard,
        held_inputs=held, held_previous=held if profile.graph_kept else 0, held_in_optimizer=profile.graph_kept,
        dequant_head=terms.dequant_head if is_last else 0)


class StageTerms:
    """One stage's tensor terms, how many estimates evaluated its _shape_sizes directly, and their compiled form
    once made (symbolic.Compiled; None where the symbols cannot trace it; _NOT_YET before). Mutable: the count
    and the compiled form change after it is made. (A plain class: see Setup.)"""

    __slots__ = ("compiled", "direct", "terms")

    def __init__(self, terms: TensorTerms) -> None:
        self.terms = terms
        self.direct = 0
        self.compiled: Any = _NOT_YET


# Compiling a stage's sizes (symbolic.compile_sizes) costs 0.7 to 1.9 ms (Llama-3.1-8B, DeepSeek-V2-Lite,
# gemma-2-2b) and saves 22 to 37 us per estimate (direct 23-39 us, compiled 1.2-2.4 us), so it pays after
# 30 to 50 estimates of the key. It is made at the 16th: a search that tries a layout a few times never
# pays for it, a sweep pays it once (at most 2x the least possible cost, as when renting skis until the
# rent paid reaches the price). Measured 07:26 UTC on this machine; see docs/BENCHMARKS.md.
_COMPILE_AT = 16


def _sizes(setup: Setup, settings: Settings, stage: int, batch: int, seq: int) -> tuple[TensorTerms, dict[Any, Any]]:
    """The stage's tensor terms (_terms), and _shape_sizes at (batch, seq): evaluated directly for the first
    estimates of its key, then compiled (symbolic.compile_sizes: the same functions traced once with batch and
    seq as symbols, then one arithmetic function of the two; _COMPILE_AT says when). The key is everything
    _shape_sizes reads besides batch and seq (_stage_terms, _setup); a stage the symbols cannot trace stays
    direct."""
    training, runtime = settings.training, settings.runtime
    entry = setup.stages.get(stage)
    if entry is None:
        entry = _stage_terms(setup, training, runtime, stage)
        setup.stages[stage] = entry
    compiled = entry.compiled
    if compiled is not _NOT_YET and compiled is not None:
        return entry.terms, compiled(batch, seq)

    def direct(b: Any, s: Any) -> dict[Any, Any]:
        return _shape_sizes(setup.model, training, runtime, setup.profile, setup.layout, setup.widths, stage,
                            entry.terms, b, s)

    if compiled is _NOT_YET:
        entry.direct += 1
        if entry.direct >= _COMPILE_AT:
            from vramfit.memory.symbolic import compile_sizes  # imported when first needed: 2 ms at import

            entry.compiled = compile_sizes(direct)
            if entry.compiled is not None:
                return entry.terms, entry.compiled(batch, seq)
    return entry.terms, direct(batch, seq)


def _stage_terms(setup: Setup, training: Any, runtime: Runtime, stage: int) -> StageTerms:
    """The StageTerms of (model, training, runtime, framework, layout, widths, stage), by value: equal
    settings in new objects (a new Setup) share them. The runtime brings the attention and the torch release."""
    key = (id(setup.model), training, runtime, setup.profile, setup.layout, setup.widths, stage)
    foreach = not runtime.torch_before(TORCH_FOREACH_DEFAULT)
    return _memo(_COMPILED, key, setup.model, lambda: StageTerms(_terms(
        setup.model.architecture, training, setup.layout, setup.widths, stage, setup.profile, foreach)))


# (id(model), training, runtime, framework, layout, widths, stage) -> (model, StageTerms)
_COMPILED: dict[tuple[Any, ...], tuple[object, StageTerms]] = {}
_NOT_YET = object()   # StageTerms.compiled before it is made


def _shape_sizes(model: Model, training: Any, runtime: Runtime, profile: Framework, lay: Layout, widths: Bytes,
                 stage: int, terms: TensorTerms, batch: Any, seq: Any) -> dict[Any, Any]:
    """Every term of one stage's step that the batch and the length change, by name: each distinct block's
    (_block_sizes, keyed (group, name)), the embedding's and rotary tables' saved tensors, the final norm's, the
    loss (and its formula) and a 4-bit head's kept input. Reads nothing but its arguments, so _sizes can key a
    compiled form by them."""
    arch = model.architecture
    shape = _shape(model, training, runtime, profile, lay, widths, batch, seq)
    is_first, is_last = stage == 0, stage == lay.pipeline - 1
    out: dict[Any, Any] = {}
    for group, (layer, index, _, _) in enumerate(terms.groups):
        out.update(((group, name), value) for name, value in _block_sizes(layer, index, shape, training).items())
    out["saved_outside"] = _saved_outside(arch, shape, training, is_first)
    out["saved_head"] = act.final_norm_saved(arch, shape, trains=training.finetune == "full") if is_last else 0
    loss = _loss(arch, shape, profile) if is_last else _NO_LOSS
    out.update(loss_saved=loss.saved, loss_forward_transient=loss.forward_transient,
               loss_backward_transient=loss.backward_transient, loss_kept=loss.kept, loss_formula=loss.formula)
    head = any(t.quantized for t in terms.held.by_layer.get(None, []))
    out["head_held"] = head_held_input(arch, shape) if is_last and head and _holds_4bit_inputs(training) else 0
    return out


def _held_inputs(head_held: int, runs: tuple[tuple[BlockStep, int], ...], in_flight: int) -> int:
    """bitsandbytes < 0.43.2 (lora.held_4bit_inputs): the blocks' kept inputs and a 4-bit head's (`head_held`), for
    every micro-batch in flight. They live until the graph goes, i.e. through the whole backward, and under a
    framework that keeps the graph referenced (Framework.graph_kept) through the optimizer step into the next
    forward, where the previous step's coexist with the new ones (steady state: the same shapes each step)."""
    return (sum(block.held * count for block, count in runs) + head_held) * in_flight


def _holds_4bit_inputs(training: Training) -> bool:
    return training.finetune == "qlora" and training.bnb_saves_4bit_input


_NO_LOSS = act.LossMemory(saved=0, forward_transient=0, backward_transient=0, formula="not on this stage")


def _loss(arch: Architecture, shape: act.Shape, profile: Framework) -> act.LossMemory:
    """The loss as the framework takes it; with final logit soft-capping (Head.logit_softcap, Gemma 2), tanh's
    saved output on top: the CausalLM computes logits / cap, tanh, * cap (modeling_gemma2.py
    Gemma2ForCausalLM.forward); tanh saves its output (T x V x E) for its backward, which runs right after
    the loss's backward, so it lives from the head's forward to there. With Framework.fp32_output the loss
    and the loop's kept logits are the wrapper's fp32 copies (Fabric convert_output, frameworks.py)."""
    from dataclasses import replace

    if profile.tp_plan and shape.shard != 1:   # lm_head colwise_gather_output: the loss sees the full vocabulary
        shape = replace(shape, shard=1)      # on every rank
    logits = replace(shape, compute_bytes=act.FP32) if profile.fp32_output else shape
    loss = act.loss_memory(arch, logits, chunks=profile.loss_chunks, fp32_logits=profile.fp32_logits,
                           fp32_loss=profile.fp32_loss and (shape.amp or not _masked_lm(arch)),
                           logits_kept=profile.logits_kept)
    if arch.head.logit_softcap is None or arch.head.output is None:
        return loss
    tanh = allocation_bytes(shape.tokens * (arch.head.output.out_features // shape.shard) * shape.compute_bytes)
    return replace(loss, saved=loss.saved + tanh, formula=loss.formula + f" + T x V x {shape.compute_bytes} "
                   "(soft-capping's tanh output)")


def _masked_lm(arch: Architecture) -> bool:
    """An encoder with an output head is a masked LM. transformers' masked-LM heads take the loss with a plain
    `CrossEntropyLoss()(prediction_scores.view(-1, vocab), labels.view(-1))` on the model-dtype scores
    (models/bert/modeling_bert.py BertForMaskedLM.forward; RoBERTa, ELECTRA, ... copy it): log_softmax and
    its gradients stay in the model dtype. Only causal LMs go through loss/loss_utils.py ForCausalLMLoss,
    which upcasts the logits to fp32 first. Under autocast the masked LM's log_softmax and nll_loss run in
    fp32 anyway (both are on autocast's fp32 list, aten/src/ATen/autocast_mode.cpp), as the causal path."""
    return arch.decoder is None and arch.encoder is not None and arch.head.output is not None


def _grad_holders(held: Held, unit_gradients: bool) -> list[ParamTensor]:
    """The tensors that get a .grad: the trainable ones; with FSDP1's use_orig_params=True, every parameter of
    a wrapped unit that mixes frozen and trainable ones ("the gradient memory usage will be higher than
    expected (namely, equivalent to not freezing those parameters)", PyTorch FSDP docs; litgpt issue #1417:
    its LoRA recipes wrap whole blocks). Gradients of frozen base weights take the trained dtype here."""
    if not unit_gradients:
        return held.trainable
    mixed = {layer for layer, ts in held.by_layer.items() if layer is not None and any(t.trainable for t in ts)}
    return [t for t in held.tensors if t.trainable or (t.layer in mixed and not t.quantized)]


def _head_gradients(held: Held, grad_width: int) -> int:
    """Gradients made before the blocks' backward: the head and final norm (the embedding's come last)."""
    return gradient_bytes((t.elements for t in held.trainable if t.layer is None and t.role not in _EMBEDDING_ROLES),
                          grad_width)


def _shape(model: Model, training: Any, runtime: Runtime, profile: Framework, lay: Layout, widths: Bytes, batch: Any,
           seq: Any) -> act.Shape:
    """One micro-batch on one GPU: `seq` is the length on this GPU (the sequence over context parallelism)."""
    lora: dict[str, tuple[int, int, bool]] = {}
    if training.finetune != "full":
        arch = model.architecture
        names = _cached(("targets", training.lora.targets), arch, lambda: frozenset(
            linear.name for _, linear in targeted_linears(arch, training.lora.targets)))
        lora = {name: (training.lora.rank, widths.adapter, training.lora.dropout > 0) for name in names}
    return act.Shape(batch=batch, seq=seq,
                     compute_bytes=widths.compute, attention=runtime.attention,
                     hidden_dropout=_dropout(model, training.dropout, _HIDDEN_DROPOUT_KEYS),
                     attention_dropout=_dropout(model, training.dropout, _ATTENTION_DROPOUT_KEYS),
                     shard=lay.tensor,
                     replicated=lay.tensor if lay.sequence_parallel and not profile.tp_plan else 1,
                     trains=training.finetune == "full", lora=lora,
                     kv_cache=profile.kv_cache_in_training and training.grad_ckpt == "none",
                     native_activations=profile.native_activations, amp=widths.amp,
                     expand_kv=profile.expand_kv, qkv_view=profile.qkv_view, qkv_lora=profile.qkv_lora,
                     softmax_saves_input=runtime.torch_before(TORCH_SOFTMAX_INPUT_FREED))


def _grads_kept(settings: Settings) -> bool:
    """torch < 2.0 zeroes gradients in place (TORCH_ZERO_GRAD_TO_NONE), so a plain or DDP step holds them from
    the previous step as accumulation does; ZeRO and FSDP keep their own gradient buffers (not modelled here)."""
    p = settings.parallelism
    return p.zero_stage == 0 and p.fsdp == "none" and settings.runtime.torch_before(TORCH_ZERO_GRAD_TO_NONE)


def _dropout(model: Model, override: float | None, keys: tuple[str, ...]) -> float:
    """Dropout probability: the --dropout override, else the first of `keys` config.json states, else 0."""
    if override is not None:
        return override
    for key in keys:
        value = model.config.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return 0.0


def _block_groups(layers: list[Layer], held: Held, holders: list[ParamTensor], frozen_layers: int,
                  ) -> tuple[tuple[tuple[Layer, int, list[ParamTensor], list[ParamTensor]], ...], tuple[int, ...]]:
    """The distinct blocks and which one each block is. A block's step depends on its layer, whether it
    trains and its tensors' sizes and kinds, never on its index otherwise, so identical blocks (all of them
    in most models) are priced once. The gradient holders are grouped by block in one pass."""
    holders_by_layer: dict[int | None, list[ParamTensor]] = {}
    for t in holders:
        holders_by_layer.setdefault(t.layer, []).append(t)
    seen: dict[tuple[Any, ...], int] = {}
    groups: list[tuple[Layer, int, list[ParamTensor], list[ParamTensor]]] = []
    block_group = []
    for offset, layer in enumerate(layers):
        index = held.blocks.start + offset
        mine, with_grads = held.by_layer.get(index, []), holders_by_layer.get(index, [])
        key = (layer, index >= frozen_layers, _signature(mine), _signature(with_grads))
        if key not in seen:
            seen[key] = len(groups)
            groups.append((layer, index, mine, with_grads))
        block_group.append(seen[key])
    return tuple(groups), tuple(block_group)


def _signature(tensors: list[ParamTensor]) -> tuple[tuple[Any, ...], ...]:
    """A block's tensors without their block index."""
    return tuple((t.elements, t.trainable, t.role, t.quantized, t.adapter, t.rows, t.cols) for t in tensors)


@dataclass(frozen=True, kw_only=True, slots=True)
class BlockTensors:
    """What a block's step takes from its tensors alone (kept with the tensor terms): its gradients, those of
    its MLP's output linear, and its AMP weight copies."""

    grads: int
    mlp_grads: int
    amp_copies: int


def _block_tensors(mine: list[ParamTensor], with_grads: list[ParamTensor], grad_width: int, widths: Bytes,
                   lay: Layout, amp: bool) -> BlockTensors:
    """`mine`: the block's own tensors (layer == index), in order; `with_grads`: those of them that get a
    gradient. amp: AMP with unsharded parameters (each linear's cast copy is kept for backward)."""
    return BlockTensors(
        grads=gradient_bytes((t.elements for t in with_grads), grad_width),
        mlp_grads=gradient_bytes((t.elements for t in with_grads if t.role.startswith("ffn_down")), grad_width),
        amp_copies=_amp_copies(mine, widths) if amp else 0)


def _block_sizes(layer: Layer, index: int, shape: act.Shape, training: Any) -> dict[str, Any]:
    """What one block's step takes from the batch and the length: its saved tensors (all of them, and the MLP's
    part freed by the MLP's backward), the residual stream, torchtitan's selective set, the MLP product its
    backward frees, its kept 4-bit inputs and its MLP's gradient temporaries."""
    trains = training.finetune == "full" and index >= training.frozen_layers
    block_shape = _with_trains(shape, trains)
    full = act.layer_saved(layer, block_shape)
    return {
        "full": full.total,
        "mlp_saved": full.parts["mlp"] + full.parts["norms"] // 2 + full.parts["residual"] // 2,
        "stream": allocation_bytes(shape.tokens * layer.attention.hidden_size // shape.replicated * shape.compute_bytes),
        "selective": act.selective_saved(layer, block_shape) if training.grad_ckpt == "selective" else 0,
        "product": _intermediate(layer, block_shape) if trains or _down_adapted(layer, shape) else 0,
        "held": _block_held(layer, block_shape, training),
        "mlp_temporaries": _mlp_temporaries(layer, shape)}


def _block_step(sizes: dict[Any, Any], group: int, tensors: BlockTensors, training: Any, lay: Layout) -> BlockStep:
    """One distinct block's step for this batch (its _block_sizes, keyed (group, name) in `sizes`), on top of its
    tensor-only terms."""
    full, stream, held = sizes[group, "full"], sizes[group, "stream"], sizes[group, "held"]
    saved = _checkpointed(full, training.grad_ckpt, stream, sizes[group, "selective"])
    # Kept 4-bit inputs: under full reentrant checkpointing the forward runs without grad and keeps none; the
    # recomputation keeps this block's until its backward is done. Otherwise they stay with the graph.
    reentrant = training.grad_ckpt == "full" and training.use_reentrant
    recomputed = (full + (held if reentrant else 0)) if training.grad_ckpt != "none" else saved
    return BlockStep(saved=saved, recomputed=recomputed, held=0 if reentrant else held,
                     mlp_saved=sizes[group, "mlp_saved"], product=sizes[group, "product"], grads=tensors.grads,
                     grads_kept=tensors.grads // lay.grad_shard,
                     mlp_grads=tensors.mlp_grads, amp_copies=tensors.amp_copies,
                     mlp_temporaries=sizes[group, "mlp_temporaries"], attention_temporaries=2 * stream)


def _block_held(layer: Layer, shape: act.Shape, training: Any) -> int:
    """bitsandbytes < 0.43.2's kept 4-bit inputs: under non-reentrant full checkpointing every distinct input of the
    block's 4-bit linears (lora.checkpointed_4bit_inputs; the checkpoint dropped what saves them otherwise), else
    those that nothing else saves (lora.held_4bit_inputs)."""
    if not _holds_4bit_inputs(training):
        return 0
    if training.grad_ckpt == "full" and not training.use_reentrant:
        return checkpointed_4bit_inputs(layer, shape)
    return held_4bit_inputs(layer, shape)


def _down_adapted(layer: Layer, shape: act.Shape) -> bool:
    """A LoRA adapter on the MLP's output linear saves the product as lora_A's input
    (activations._lora_saved), which its backward frees just as a training down_proj's would."""
    if isinstance(layer.mlp, MixtureOfExperts):
        return False
    return list(layer.mlp.linears())[-1].name in shape.lora


def _with_trains(shape: act.Shape, trains: bool) -> act.Shape:
    from dataclasses import replace

    return shape if shape.trains == trains else replace(shape, trains=trains)


def _checkpointed(full: int, mode: str, stream: int, selective: int) -> int:
    """`full`: every tensor the block saves. none: all of them; full: the block's output only (the next block's
    checkpointed input, HF reentrant checkpointing saves nothing else); selective: torchtitan's per-op policy
    (activations.selective_saved). Under both, backward recomputes the whole block before differentiating it."""
    if mode == "full":
        return stream
    if mode == "selective":
        return min(selective, full)
    return full


def _intermediate(layer: Layer, shape: act.Shape) -> int:
    """One T x I tensor of the block's MLP (per routed token for MoE experts)."""
    mlp = layer.mlp.expert if isinstance(layer.mlp, MixtureOfExperts) else layer.mlp
    tokens = shape.tokens * (layer.mlp.experts_per_token if isinstance(layer.mlp, MixtureOfExperts) else 1)
    return allocation_bytes(tokens * mlp.intermediate_size // shape.shard * shape.compute_bytes)


def _mlp_temporaries(layer: Layer, shape: act.Shape) -> int:
    """Gradients alive at the MLP's backward peak, right after down_proj's backward, when the product it saved
    is freed: the incoming gradient (T x h), the gradient of the product and, for a gated MLP, the gradients
    of act(gate) and of up made by the product's backward (T x I each); a plain MLP has one of them."""
    mlp = layer.mlp.expert if isinstance(layer.mlp, MixtureOfExperts) else layer.mlp
    stream = allocation_bytes(shape.tokens * layer.attention.hidden_size // shape.replicated * shape.compute_bytes)
    return stream + (3 if isinstance(mlp, GatedMLP) else 2) * _intermediate(layer, shape)


def _saved_outside(arch: Architecture, shape: act.Shape, training: Any, first: bool) -> int:
    """Saved before the blocks and kept to the end of backward: the embedding output (first stage) and the
    rotary tables. The embedding output requires grad when the embedding trains or when checkpointing makes
    the inputs require grad (transformers' enable_input_require_grads)."""
    trains = training.finetune == "full"
    embedding = act.embedding_saved(arch, shape, trains=trains or training.grad_ckpt != "none") if first else 0
    return embedding + act.rotary_saved(arch, shape)


def _weights_bytes(tensors: tuple[ParamTensor, ...], widths: Bytes) -> int:
    """Per tensor: 4-bit storages for QLoRA's base linears (with double quantization's nested constants under
    --quant bnb-nf4-dq), adapters in their dtype, the rest in --dtype (fp32 under AMP)."""
    total = 0
    for t in tensors:
        if t.quantized:
            total += sum(allocation_bytes(b) for b in nf4_storages(t.elements, double_quant=widths.double_quant))
        else:
            total += _stored_bytes(t, widths)
    return total


def _stored_bytes(t: ParamTensor, widths: Bytes) -> int:
    """A tensor that is not 4-bit, in its stored dtype: an adapter in the adapters' dtype, the rest in --dtype."""
    return allocation_bytes(t.elements * (widths.adapter if t.adapter else widths.param))


def _resident_weights_bytes(tensors: tuple[ParamTensor, ...], widths: Bytes, lay: Layout) -> int:
    """The weights each GPU holds between all-gathers: the sharded part / param_shard (none under parameter
    offload) plus, under ZeRO-3/FSDP, every 4-bit weight's quant_state whole. absmax and the nested constants
    live in Params4bit.quant_state, a Python attribute, not a parameter or buffer (bitsandbytes 0.43 nn/modules.py
    fix_4bit_weight_quant_state_from_module: "the quant state got lost when the parameter got converted. This
    happens for example for fsdp"), so FSDP's flat parameter and ZeRO-3's partitions take the packed data only
    and CPUOffload / offload_param move the packed data only. transformers (>= 4.39 _load_state_dict_into_meta_model
    under FSDP or ZeRO-3) quantizes on the GPU, then `type(value)(value.data.to("cpu"), **value.__dict__)` moves
    the data and keeps quant_state on the GPU; every rank runs every layer, so every rank keeps all of them."""
    replicated = _quant_state_bytes(tensors, widths) if lay.param_shard > 1 or lay.offload_params else 0
    sharded = 0 if lay.offload_params else (_weights_bytes(tensors, widths) - replicated) // lay.param_shard
    return sharded + replicated + _persistent_bytes(tensors, widths, lay)


def _persistent_bytes(tensors: tuple[ParamTensor, ...], widths: Bytes, lay: Layout) -> int:
    """DeepSpeed ZeRO-3 keeps a whole copy of every parameter of at most stage3_param_persistence_threshold elements
    beside its partition, on every rank (deepspeed v0.14.0 runtime/zero/parameter_offload.py 242-259
    mark_persistent_parameters sets ds_persist; partitioned_param_coordinator.py 491-493 never releases one; stage3.py
    1985-1986 gathers them again after each optimizer step): norms, and LoRA matrices of rank x hidden."""
    if not lay.live_elements:
        return 0
    return sum(_packed_bytes(t) if t.quantized else _stored_bytes(t, widths)
               for t in tensors if _persistent(t, widths))


def _persistent(t: ParamTensor, widths: Bytes) -> bool:
    return _ds_numel(t, widths) <= DEEPSPEED_PERSISTENCE_THRESHOLD


def _ds_numel(t: ParamTensor, widths: Bytes) -> int:
    """Elements as DeepSpeed counts them (param.ds_numel): a 4-bit base weight's packed bytes in its
    bnb_4bit_quant_storage, the compute dtype under ZeRO-3 (_sharded_4bit)."""
    return nf4_storages(t.elements, double_quant=False)[0] // widths.compute if t.quantized else t.elements


def _quant_state_bytes(tensors: tuple[ParamTensor, ...], widths: Bytes) -> int:
    """The 4-bit weights' constants outside the packed data: absmax (and the nested statistics)."""
    return sum(allocation_bytes(b) for t in tensors if t.quantized
               for b in nf4_storages(t.elements, double_quant=widths.double_quant)[1:])


def _amp_copies(tensors: Any, widths: Bytes) -> int:
    """autocast casts each linear weight to the amp dtype at its first use and the linear saves the cast for
    backward (torch/csrc/autograd autocast cache, aten/src/ATen/autocast_mode.cpp): one low-precision copy of
    every linear weight lives from the forward to that layer's backward. With sharded parameters (FSDP
    MixedPrecision / ZeRO-3) the cast happens at the all-gather instead: the gathered blocks are those copies."""
    return tensors_bytes((t.elements for t in tensors if t.matrix and t.role not in _EMBEDDING_ROLES
                          and not t.quantized), widths.compute)


def _gathered_bytes(by_layer: dict[int | None, list[ParamTensor]], blocks: range, widths: Bytes,
                    lay: Layout) -> int:
    """FSDP: the unsharded parameters of the blocks being computed and prefetched, in the compute dtype; a QLoRA
    base weight as its packed 4-bit data (_gathered_tensor_bytes). DeepSpeed ZeRO-3: _deepspeed_gathered_bytes."""
    if lay.live_elements:
        return _deepspeed_gathered_bytes(by_layer, widths, lay.live_elements)
    if not lay.gathered_blocks or not blocks:
        return 0
    per_block = max(sum(_gathered_tensor_bytes(t, widths) for t in by_layer.get(i, [])) for i in blocks)
    return min(lay.gathered_blocks, len(blocks)) * per_block


def _deepspeed_gathered_bytes(by_layer: dict[int | None, list[ParamTensor]], widths: Bytes, live: int) -> int:
    """DeepSpeed ZeRO-3's unsharded parameters: min(every partitioned parameter, live elements + the largest one).

    deepspeed v0.14.0 runtime/zero/partitioned_param_coordinator.py (the same logic at v0.13.4 and v0.19.8):
    1. A hook on every module gathers the module's own parameters before its forward and its backward and
       releases them after (parameter_offload.py 442-483; fetch_sub_module 261-391, release_sub_module 395-403),
       unless the recorded trace uses them again within stage3_max_reuse_distance elements (__params_to_release
       506-515) or the prefetcher has already passed their next use (502-504).
    2. From the second step on the trace is complete, and every fetch also all-gathers the next parameters of the
       trace: at most prefetch_bucket_size elements per call and only while fewer than max_live elements are
       gathered, `min(max_live - n_available, prefetch_bucket)` (353-378). The loop checks before it adds each
       parameter, so it stops at most one parameter over. A block calls it once per module (14 modules in a
       Llama block, about 45 with LoRA), so the prefetch runs ahead until the cap: max_live gathered, not the
       current and the next block.
    3. The gathered tensors are allocated on the all-gather stream (303-309; a side stream under overlap_comm,
       ZeRO-3's default, config.py 305-310, parameter_offload.py 138-139), a pool the compute stream never reuses
       (CUDACachingAllocator.cpp get_free_block), so that pool keeps the step's high-water mark in every phase.
    Parameters of at most stage3_param_persistence_threshold elements are never partitioned (_persistent_bytes).
    Not modelled: a coalesced all-gather's flat buffer beside the per-parameter copies until the group's last
    parameter is waited (partition_parameters.py 1120-1150, 700-715), at most one prefetch group.
    Replaying the coordinator's bookkeeping on Llama-shaped traces reaches 95-99% of the bound over a step."""
    sizes = [_gathered_tensor_bytes(t, widths) for tensors in by_layer.values() for t in tensors
             if not _persistent(t, widths)]
    if not sizes:
        return 0
    return min(sum(sizes), live * widths.compute + max(sizes))


def _gathered_tensor_bytes(t: ParamTensor, widths: Bytes) -> int:
    """One tensor as the all-gather returns it. A 4-bit base weight is a bitsandbytes Params4bit whose data is the
    packed pairs in bnb_4bit_quant_storage (what FSDP-QLoRA and ZeRO-3 QLoRA shard and gather: peft
    docs/source/accelerate/fsdp.md, 6008f272a); its absmax lives in quant_state, a Python attribute outside the
    flat parameter (bitsandbytes nn/modules.py fix_4bit_weight_quant_state_from_module: "the quant state got lost
    when the parameter got converted. This happens for example for fsdp"), so the gathered bytes are the packed
    data only; dequantizing for the matmul is _dequant_bytes."""
    if t.quantized:
        return _packed_bytes(t)
    return tensors_bytes((t.elements,), widths.compute)


def _packed_bytes(t: ParamTensor) -> int:
    """A 4-bit weight's packed data alone (nf4_storages' first storage; double quantization changes only the
    constants after it): what FSDP and ZeRO-3 gather and what parameter offload moves."""
    return allocation_bytes(nf4_storages(t.elements, double_quant=False)[0])


def _fsdp_root_bytes(by_layer: dict[int | None, list[ParamTensor]], widths: Bytes, lay: Layout) -> int:
    """FSDP's root unit (fully_shard on the model after each block: the embedding, the final norm and the
    head) in the compute dtype. The root's forward gathers it first and its output is the loss, so FSDP2's
    pre-backward hook on that output (torch/distributed/fsdp/_fully_shard/_fsdp_state.py _pre_backward)
    gathers it again at the very start of backward and it is resharded only in the post-backward callback at
    the end (the embedding's gradient comes last): alive at the loss and through every block's backward."""
    if not lay.gathered_blocks or not lay.name.startswith("FSDP"):
        return 0
    return tensors_bytes((t.elements for t in by_layer.get(None, []) if not t.quantized), widths.compute)


def _offload_copies(step: Step, lay: Layout) -> tuple[Component, ...]:
    """FSDP1 with CPUOffload(offload_params=True) copies each unit's CPU shard to the GPU on its own stream before the
    all-gather (torch 2.2 fsdp/_flat_param.py pre_unshard 1253-1255, _runtime_utils.py 290, 314-315) and drops the
    copy after it with record_stream (_flat_param.py 1395-1404). The caching allocator reuses a free block only on
    the stream that allocated it (c10/cuda/CUDACachingAllocator.cpp get_free_block), so those blocks form a pool
    the compute stream never reuses: reserved, never allocated at the peak. Its least size is the segment of the
    largest unit's shard copy (the root's: embedding, head and norm); more when a block's copy is issued before the
    root's block is free (not modelled). Without offload pre_unshard copies nothing."""
    if not (lay.offload_params and lay.name.startswith("FSDP")):
        return ()
    largest = max(step.fsdp_root, step.fsdp_block) // lay.param_shard
    if not largest:
        return ()
    return (Component(name="fsdp_offload_copies", bytes=overhead.segment_bytes(largest), level="reserved",
                      formula="segment of the largest unit's shard copy (root or block, gathered bytes / shards)",
                      inputs={"largest_shard_bytes": largest, "param_shard": lay.param_shard},
                      source="torch 2.2 fsdp/_flat_param.py pre_unshard (copy on the pre-unshard stream) and "
                             "record_stream free; CUDACachingAllocator.cpp: free blocks are reused per stream"),)


def _dequant_bytes(tensors: list[ParamTensor], widths: Bytes) -> int:
    """bitsandbytes matmul_4bit dequantizes the whole weight to the compute dtype for each call."""
    largest = max((t.elements for t in tensors if t.quantized), default=0)
    return allocation_bytes(largest * widths.compute) if largest else 0


def _sharded(states: OptimizerMemory, shard: int) -> OptimizerMemory:
    from dataclasses import replace

    if shard == 1:
        return states
    return replace(states, states=states.states // shard, paged=states.paged // shard,
                   step_temporaries=states.step_temporaries // shard)


def _offloaded(states: OptimizerMemory) -> OptimizerMemory:
    from dataclasses import replace

    return replace(states, states=0, paged=0, step_temporaries=0)


def _offload_activations(distinct: list[BlockStep], block_group: tuple[int, ...]) -> tuple[list[BlockStep], int, int]:
    """Activation offloading (torchtune training/_activation_offloading.py): every block's saved tensors go
    to pinned host memory as they are made; the GPU keeps the block still being copied out at the end of the
    forward, and in backward the block being differentiated plus the one prefetched behind it. `distinct`:
    each distinct block's step; `block_group`: which one each block is."""
    largest = max((b.saved for b in distinct), default=0)
    moved = [replace(b, saved=0, recomputed=b.recomputed + largest) for b in distinct]
    return moved, largest, sum(distinct[group].saved for group in block_group)


def _host(states: OptimizerMemory, tensors: tuple[ParamTensor, ...], widths: Bytes, lay: Layout) -> dict[str, int]:
    """Host memory an offload needs: the optimizer states plus fp32 master weights (ZeRO-Offload keeps the
    fp32 parameters and does the update on the CPU), and with parameter offload the parameters too."""
    if not lay.offload_states:
        return {}
    master = tensors_bytes((t.elements for t in tensors if t.trainable), 4)
    host = {"optimizer_states": states.states // lay.state_shard, "fp32_master_weights": master // lay.state_shard}
    if lay.offload_params:
        host["parameters"] = _offloaded_parameters_bytes(tensors, widths) // lay.param_shard
    return host


def _offloaded_parameters_bytes(tensors: tuple[ParamTensor, ...], widths: Bytes) -> int:
    """What parameter offload moves to the host: the flat parameters, so a 4-bit weight's packed data only (its
    quant_state stays on the GPU, _resident_weights_bytes) and every other tensor in --dtype."""
    packed = sum(_packed_bytes(t) for t in tensors if t.quantized)
    return packed + tensors_bytes((t.elements for t in tensors if not t.quantized), widths.param)


def _phase_totals(step: Step) -> dict[str, int]:
    """The total live bytes of every phase, in the step's order: forward, start of backward, each block's MLP
    and attention halves (last block first), optimizer step (_phase_table)."""
    names, values, _, _ = _phase_table(step)
    return dict(zip(names, values))


def _phase_table(step: Step) -> tuple[tuple[str, ...], list[int], dict[str, dict[str, int]], tuple[int, int]]:
    """The phases' names and totals, in the step's order (_phase_totals), the live sets of the phases outside
    the blocks' backward (_outer_phases), and the largest total with the first position holding it (_peak).
    The block phases are summed a run of equal blocks at a time without building their live sets
    (_block_totals): only the peak phase's is built (_phase)."""
    saved = _saved(step)
    outer = _outer_phases(step, saved)
    values = [sum(outer["forward"].values()), sum(outer["backward_start"].values())]
    ends = [(values[0], 0), (values[1], 1)]
    _block_totals(step, saved, values, ends)
    if "backward_end" in outer:
        values.append(sum(outer["backward_end"].values()))
        ends.append((values[-1], len(values) - 1))
    values.append(sum(outer["optimizer_step"].values()))
    ends.append((values[-1], len(values) - 1))
    return _phase_names(step.block_count, "backward_end" in outer), values, outer, _peak(ends)


def _peak(ends: list[tuple[int, int]]) -> tuple[int, int]:
    """max(totals) and totals.index(max(totals)) from `ends` alone: the (total, position) of each phase outside the
    blocks' backward and of both ends of each run's MLP and attention progressions (_block_totals), in the order
    of positions. A progression's largest value is at one of its ends; where its change is not zero its values
    all differ, so no inner block holds the largest total, and where the change is zero its first end holds it
    first."""
    return max(ends, key=itemgetter(0))   # `ends` is in the order of positions: the first of equal totals


@functools.cache
def _phase_names(blocks: int, backward_end: bool) -> tuple[str, ...]:
    return ("forward", "backward_start", *_block_phase_names(blocks), *(("backward_end",) if backward_end else ()),
            "optimizer_step")


def _phase(step: Step, name: str, outer: dict[str, dict[str, int]] | None = None) -> dict[str, int]:
    """Live bytes by component in one phase (the keys become the breakdown's component names); `outer`: the
    step's _outer_phases where the caller has them."""
    outer = _outer_phases(step, _saved(step)) if outer is None else outer
    return outer[name] if name in outer else _block_phase(step, name)


def _saved(step: Step) -> int:
    """Every saved activation of the micro-batches in flight, at the loss."""
    return (sum(block.saved * count for block, count in step.runs) + step.saved_outside + step.saved_head
            + step.loss.saved) * step.in_flight


def _resident(step: Step) -> dict[str, int]:
    """What every phase holds."""
    return {"weights": step.weights, "gathered_parameters": step.gathered, "optimizer_states": step.states.states,
            "batch": step.batch, "ddp_gradient_buckets": step.buckets,
            **({"zero_reduce_bucket": step.reduce_bucket} if step.reduce_bucket or step.backward_bucket else {})}


def _outer_phases(step: Step, saved: int) -> dict[str, dict[str, int]]:
    """The phases outside the blocks' backward: forward at the loss, start of backward, optimizer step."""
    resident = _resident(step)
    grads_before = step.gradients if step.accumulating else 0
    fsdp = step.fsdp_root > 0
    # FSDP (reshard after forward): at the loss only the root is gathered; backward's first hook prefetches the
    # last block; inside the blocks' backward, the current block and the prefetched one beside the root.
    forward = {**resident, "gathered_parameters": step.fsdp_root if fsdp else step.gathered,
               "gradients": grads_before, "amp_weight_copies": step.amp_copies,
               "activations": saved, "bitsandbytes_saved_inputs": step.held_inputs + step.held_previous,
               "logits_and_loss": step.loss.forward_transient + max(step.dequant, step.dequant_head)}
    backward_start = {**resident, "gathered_parameters": step.fsdp_root + step.fsdp_block if fsdp else step.gathered,
                      "gradients": grads_before, "amp_weight_copies": step.amp_copies,
                      "activations": saved, "bitsandbytes_saved_inputs": step.held_inputs,
                      "logits_and_loss": step.loss.backward_transient + step.dequant_head,
                      "zero_reduce_bucket": step.reduce_bucket + step.backward_bucket}
    phases = {"forward": forward, "backward_start": backward_start}
    if step.flat_root_grads:
        phases["backward_end"] = _flat_root_backward_end(step, resident)
    phases["optimizer_step"] = {**resident, "gradients": step.gradients,
                                "activations": step.loss.kept * step.in_flight,
                                "optimizer_step_temporaries": step.states.step_temporaries,
                                "bitsandbytes_saved_inputs": step.held_inputs if step.held_in_optimizer else 0}
    return phases


def _flat_root_backward_end(step: Step, resident: dict[str, int]) -> dict[str, int]:
    """FSDP1 flat root, at its split backward after the embedding's: every block's gradient (while accumulating,
    the root's accumulated one too; else the root's shard comes only after this), the head's gradient held since
    the loss + the embedding's + their concatenation (2 x the root's), the root still gathered, the loop's logits."""
    done = step.gradients - (0 if step.accumulating else step.flat_root_kept)
    return {**resident, "gathered_parameters": step.fsdp_root, "gradients": done,
            "fsdp_root_gradients": 2 * step.flat_root_grads, "activations": step.loss.kept * step.in_flight}


def _block_resident(step: Step) -> dict[str, int]:
    """What every block phase holds besides the walk's terms (_halves); with an FSDP1 flat root, the head's
    gradient waiting in the root's split backward (the walk counts the head's kept shard when not accumulating)."""
    waiting = step.flat_head_grads - (0 if step.accumulating else step.outside_grads) if step.flat_root_grads else 0
    return {**_resident(step), "gathered_parameters": step.gathered + step.fsdp_root,
            "bitsandbytes_saved_inputs": step.held_inputs, "fsdp_root_gradients": waiting,
            "zero_reduce_bucket": step.reduce_bucket + step.backward_bucket}


# Where the walk over the blocks' backward (last block first) stands before a block: the gradients made so
# far, the activations not yet freed and the AMP weight copies still alive.
Walk = tuple[int, int, int]


def _walk_start(step: Step, saved: int) -> Walk:
    """Before the last block: the gradients made so far, every activation saved (`saved`, _saved) but the
    loss's and the final norm's, which the backward has freed, and every AMP copy."""
    grads = step.gradients if step.accumulating else step.outside_grads
    # the loss's saved tensors are freed by its backward, except what the loop still holds (LossMemory.kept)
    remaining = saved - (step.loss.saved - step.loss.kept + step.saved_head) * step.in_flight
    return grads, remaining, step.amp_copies


def _halves(step: Step, block: BlockStep, walk: Walk) -> tuple[dict[str, int], dict[str, int]]:
    """A block's MLP half, then its attention half, at `walk`: live bytes beyond _block_resident."""
    grads, remaining, amp = walk
    recompute = block.recomputed - block.saved
    new_grads = 0 if step.accumulating else block.mlp_grads
    mlp = {"gradients": grads + new_grads, "amp_weight_copies": amp,
           "activations": remaining + recompute - block.product,
           "backward_transient": block.mlp_temporaries + step.dequant}
    new_grads = 0 if step.accumulating else block.grads
    attention = {"gradients": grads + new_grads, "amp_weight_copies": amp,
                 "activations": remaining + recompute - block.mlp_saved,
                 "backward_transient": block.attention_temporaries + step.dequant}
    return mlp, attention


def _walk_past(step: Step, block: BlockStep, walk: Walk, count: int) -> Walk:
    """The walk after `count` blocks like `block`: each adds its kept gradients and frees its saved
    activations and its AMP copies."""
    grads, remaining, amp = walk
    kept = 0 if step.accumulating else block.grads_kept
    return grads + count * kept, remaining - count * block.saved, amp - count * block.amp_copies


def _runs(step: Step) -> tuple[tuple[BlockStep, int], ...]:
    """The blocks in walk order (last first) as (block, how many in a row): equal blocks share one BlockStep
    object (_step prices each distinct block once, TensorTerms.runs), so a model's 32 equal blocks are one run."""
    return step.runs


def _block_totals(step: Step, saved: int, values: list[int], ends: list[tuple[int, int]]) -> None:
    """The totals of the block phases, appended to `values` in walk order, a run of equal blocks at a time; each
    run's first MLP and attention totals, then its last ones, with their positions appended to `ends` (_peak).
    Each phase's total is the resident bytes plus its half's terms, where the walk's three terms each count
    once: the total is resident + sum(walk) + the half's own part, which _halves gives at an empty walk, once per
    distinct block. From one block to the next the walk's sum changes by the same amount, what
    _walk_past adds for one block to an empty walk."""
    level = sum(_block_resident(step).values()) + sum(_walk_start(step, saved))
    own: dict[int, tuple[int, int, int]] = {}
    for block, count in _runs(step):
        if id(block) not in own:
            mlp, attention = (sum(half.values()) for half in _halves(step, block, (0, 0, 0)))
            own[id(block)] = mlp, attention, sum(_walk_past(step, block, (0, 0, 0), 1))
        mlp, attention, change = own[id(block)]
        halves = [0] * (2 * count)   # MLP half, attention half, for each block of the run
        halves[0::2] = _progression(level + mlp, change, count)
        halves[1::2] = _progression(level + attention, change, count)
        first, last = len(values), len(values) + 2 * count - 2
        ends += [(halves[0], first), (halves[1], first + 1), (halves[-2], last), (halves[-1], last + 1)]
        values += halves
        level += count * change


def _progression(first: int, change: int, count: int) -> Sequence[int]:
    """first, first + change, first + 2 x change, ...: `count` values."""
    return range(first, first + count * change, change) if change else [first] * count


def _block_phase(step: Step, name: str) -> dict[str, int]:
    """The live set of one block phase: walk the runs to its block, then take its half."""
    position = _block_phase_names(step.block_count).index(name)
    before, walk = position // 2, _walk_start(step, _saved(step))
    for block, count in _runs(step):
        if before < count:
            return {**_block_resident(step), **_halves(step, block, _walk_past(step, block, walk, before))[position % 2]}
        walk, before = _walk_past(step, block, walk, count), before - count
    raise KeyError(name)


@functools.cache
def _block_phase_names(blocks: int) -> tuple[str, ...]:
    """The block phases' names in walk order: the last block's MLP half, its attention half, and so on."""
    return tuple(f"backward_block_{index}_{half}" for index in range(blocks - 1, -1, -1) for half in ("mlp", "attention"))


def _components(live: dict[str, int], step: Step, settings: Settings, setup: Setup,
                lay: Layout) -> list[Component]:
    """The live set of the peak phase as Components with formula, inputs and source (_DESCRIBE_PER_CALL, and
    _DESCRIBE_PER_SETUP's once per setup and size)."""
    out, widths, described = [], setup.widths, setup.described
    for name, nbytes in live.items():
        if nbytes <= 0:
            continue
        per_setup = _DESCRIBE_PER_SETUP.get(name)
        if per_setup is not None:
            hit = described.get((name, nbytes))
            if hit is None:
                formula, inputs, source, textbook = per_setup(step, settings, widths, lay)
                hit = described[name, nbytes] = Component(name=name, bytes=nbytes, formula=formula, inputs=inputs,
                                                          source=source, textbook=textbook)
            out.append(hit)
            continue
        describe = _DESCRIBE_PER_CALL.get(name)
        formula, inputs, source, textbook = describe(step, settings, widths, lay) if describe else ("", {}, "", "")
        out.append(Component(name=name, bytes=nbytes, formula=formula, inputs=inputs, source=source,
                             textbook=textbook))
    if step.states.paged:
        out.append(Component(name="optimizer_states_paged", bytes=step.states.paged, level="device",
                             formula=step.states.formula, source=step.states.source + " (paged: unified memory)"))
    return out


# A component's (formula, inputs, source, textbook): only the peak phase's components are described.
Description = tuple[str, dict[str, Any], str, str]


def _tokens(s: Settings, widths: Bytes) -> dict[str, Any]:
    return {"batch": s.workload.batch_size, "seq_len": s.workload.seq_len, "compute_bytes": widths.compute}


_PERSISTENT_NOTE = (f"; DeepSpeed ZeRO-3: parameters of <= {DEEPSPEED_PERSISTENCE_THRESHOLD:,} elements also whole, "
                    "beside their partition (_persistent_bytes)")


def _deepspeed_gathered_description(lay: Layout) -> Description:
    formula = ("min(every partitioned parameter, stage3_max_live_parameters + the largest one) unsharded in the "
               "compute dtype (QLoRA base: packed 4-bit); parameters of <= stage3_param_persistence_threshold "
               "elements excluded")
    source = ("deepspeed v0.14.0 runtime/zero/partitioned_param_coordinator.py fetch_sub_module 353-378 (prefetch "
              "while fewer than max_live are gathered), config.py 217; on the all-gather stream's own pool")
    inputs = {"layout": lay.name, "zero_live": lay.live_elements, "persistence_threshold": DEEPSPEED_PERSISTENCE_THRESHOLD}
    return formula, inputs, source, ""


# How each component is described from (step, settings, widths, layout). Those that read only the setup's parts
# (training, precision, layout, widths, the optimizer's terms), never the workload, are made once per setup and size
# (_components, Setup.described; bounded by the setup's few sizes of each: gathered_parameters is the root alone or
# with a block); the others at each call.
_DESCRIBE_PER_SETUP: dict[str, Callable[[Step, Settings, Bytes, Layout], Description]] = {
    "weights": lambda step, s, widths, lay: (
        ("sum over tensors round512(elements x bytes); QLoRA base: nf4 packed + absmax; / ZeRO-3 shards "
         "(4-bit quant_state whole on every rank, not offloaded)" + (_PERSISTENT_NOTE if lay.live_elements else "")),
        {"param_bytes": widths.param, "finetune": s.training.finetune, "param_shard": lay.param_shard},
        "memory/lora.py parameter_tensors; bitsandbytes functional.quantize_4bit", _TEXTBOOK_WEIGHTS),
    "optimizer_states": lambda step, s, widths, lay: (
        step.states.formula, {"optimizer": s.training.optimizer, "state_shard": lay.state_shard},
        step.states.source, _TEXTBOOK_STATES),
    "optimizer_step_temporaries": lambda step, s, widths, lay: (
        step.states.temporaries_formula, {"optimizer": s.training.optimizer}, step.states.source, "not in the seeds"),
    "amp_weight_copies": lambda step, s, widths, lay: (
        "sum over linear weights round512(elements x amp bytes)", {"amp": s.precision.amp},
        "aten/src/ATen/autocast_mode.cpp cached casts", ""),
    "gathered_parameters": lambda step, s, widths, lay: _deepspeed_gathered_description(lay) if lay.live_elements else (
        "2 blocks unsharded in the compute dtype (current + prefetch)", {"layout": lay.name},
        "FSDP backward_prefetch=BACKWARD_PRE", ""),
    "ddp_gradient_buckets": lambda step, s, widths, lay: (
        "one bucket copy of the gradients", {"bucket_cap_mb": 25},
        "torch/nn/parallel/distributed.py gradient_as_bucket_view=False", ""),
    "zero_reduce_bucket": lambda step, s, widths, lay: (
        "reduce_bucket_size x gradient bytes", {"zero_bucket": s.parallelism.zero_bucket}, _BUCKET_SOURCE,
        "not in the seeds"),
}
_DESCRIBE_PER_CALL: dict[str, Callable[[Step, Settings, Bytes, Layout], Description]] = {
    "gradients": lambda step, s, widths, lay: (
        "sum over trainable tensors round512(elements x bytes) / grad shards",
        {"grad_bytes": widths.adapter if s.training.finetune != "full" else widths.param,
         "grad_shard": lay.grad_shard, "grad_accum": s.workload.grad_accum},
        "torch autograd AccumulateGrad: .grad in the parameter dtype", "[S0]/[S4] 4 bytes x parameters"),
    "activations": lambda step, s, widths, lay: (
        _ACTIVATIONS_FORMULA, {**_tokens(s, widths), "attention": s.runtime.attention,
                               "grad_ckpt": s.training.grad_ckpt, "in_flight": step.in_flight},
        "autograd saved tensors of transformers 5.23 modeling_llama / modeling_gpt2", _textbook_activations(step, s)),
    "logits_and_loss": lambda step, s, widths, lay: (
        step.loss.formula, _tokens(s, widths), "transformers/loss/loss_utils.py ForCausalLMLoss", ""),
    "backward_transient": lambda step, s, widths, lay: (
        "incoming gradient T x h + MLP gradient temporaries (2 x T x I gated)", _tokens(s, widths),
        "autograd: gradients of mul/down_proj inputs", ""),
    "batch": lambda step, s, widths, lay: ("input_ids + labels: 2 x T x 8", _tokens(s, widths), "int64 token tensors", ""),
    "fsdp_root_gradients": lambda step, s, widths, lay: (
        _ROOT_FORMULA, {"layout": lay.name, "grad_accum": s.workload.grad_accum}, _ROOT_SOURCE, "not in the seeds"),
    "bitsandbytes_saved_inputs": lambda step, s, widths, lay: (
        _HELD_FORMULA, {**_tokens(s, widths), "bitsandbytes": s.training.bitsandbytes,
                        "micro_batches_in_flight": step.in_flight}, _HELD_SOURCE, "not in the seeds"),
}


_BUCKET_SOURCE = ("deepspeed v0.14.0 runtime/zero/stage3.py 489-492 (persistent), stage_1_and_2.py 2033-2044 (during "
                  "backward): contiguous_gradients' flat IPG buffer")
_ROOT_FORMULA = ("while the blocks run backward: the head's gradient, unsharded; after the embedding's backward: "
                 "head + embedding gradients + their concatenation = 2 x the root's trainable elements x grad bytes")
_ROOT_SOURCE = ("torch/distributed/fsdp/_flat_param.py: the forward runs on torch.split views of the flat parameter; "
                "autograd split_with_sizes_backward concatenates all views' gradients once the last (the embedding's) "
                "arrives")
_HELD_FORMULA = ("per block, each tensor a 4-bit linear reads that nothing else saves: T x h (qkv input) + T x h "
                 "(MLP input; one for a parallel block with a shared norm) + T x I (down_proj input), x E; + T x h x E "
                 "for a 4-bit head; the previous step's too at the forward when the loop keeps its graph; under "
                 "non-reentrant full checkpointing every block's inputs, o_proj's (T x h) included, from the forward "
                 "to its backward")
_HELD_SOURCE = ("bitsandbytes/autograd/_functions.py MatMul4Bit.forward `ctx.tensors = (A, B)` before 0.43.2 (fixed by "
                "9e753741, #1270); memory/lora.py held_4bit_inputs, checkpointed_4bit_inputs")
_ACTIVATIONS_FORMULA = "sum over blocks of the tensors saved for backward (memory/activations.py) x micro-batches in flight"
_TEXTBOOK_WEIGHTS = ("[S0]/[S4] 4 bytes x parameters (fp32), [S1] 2 bytes (fp16): the same bytes per parameter; "
                     "vramfit adds the 512-byte rounding per tensor and the 4-bit constants of QLoRA")
_TEXTBOOK_STATES = ("[S2]/[S3] Adam keeps 8 bytes per parameter (two fp32 states): equal for fp32 parameters; a bf16 "
                    "model keeps bf16 states (torch zeros_like), and the foreach step adds one more copy")


def _textbook_activations(step: Step, settings: Settings) -> str:
    """The seeds' Korthikanti formula for the same run, and why vramfit's count differs."""
    return ("[S1]/[S2] s·b·h·(34 + 5·a·s/h)·L (Korthikanti et al. 2022): a GPT-3 block in 16-bit with eager "
            "attention and dropout; vramfit counts the saved tensors of the actual operators instead: no s² term "
            "for sdpa/flash, the gated MLP's 4 x T x I, the norms' fp32 internals, no dropout masks when dropout "
            "is off, and the logits and loss apart")


@functools.lru_cache(maxsize=256)
def _hopper(gpu: str | None) -> bool:
    """A Hopper GPU (sm90), by the name the settings give."""
    return bool(gpu) and any(name in str(gpu).upper() for name in ("H100", "H200", "H800", "GH200"))


@functools.cache
def _constant_overheads(hopper: bool, eager_context: bool) -> tuple[Component, ...]:
    """The cuBLAS workspace (allocated through the caching allocator, once per stream; training runs forward and
    backward on one stream) and the CUDA context (device) depend on nothing else: the same two frozen Components
    for every estimate. NCCL's buffers come from the layout (Setup.nccl)."""
    return overhead.cublas_workspace(hopper=hopper), overhead.cuda_context(eager=eager_context)


def _notes(settings: Settings, profile: Framework, lay: Layout) -> tuple[str, ...]:
    """The notes after the peak phase's (plan): the framework's behaviours, tensor parallelism, NCCL."""
    notes = [f"framework {profile.name}: " + "; ".join(profile.behaviours)]
    if lay.tensor > 1:
        notes.append("tensor parallelism as transformers' tp_plan (no sequence parallelism, gathered logits)"
                     if profile.tp_plan else "tensor parallelism assumes sequence parallelism (Megatron layout)")
    if lay.data * lay.tensor * lay.pipeline * lay.context > 1:
        notes.append("NCCL: one communicator per parallel dimension as measured on A100 NVLink (nccl #964); NVLS "
                     "buffers on NVSwitch systems (0.75-2.25 GiB more) are not included")
    old = _old_torch(settings)
    if old:
        notes.append(f"torch {settings.runtime.torch}: " + "; ".join(old))
    version = peft_version(settings.training.peft)
    if profile.adapter_fp32 and version is not None and version < PEFT_ADAPTER_FP32:
        notes.append(f"peft {settings.training.peft}: adapters take the base weight's dtype (before 0.12.0; fp32 over "
                     "uint8-stored 4-bit data), not the fp32 of autocast_adapter_dtype")
    return tuple(notes)


def _old_torch(settings: Settings) -> list[str]:
    """What an older torch allocates that the current one does not (settings.TORCH_*), as the estimate counts it."""
    runtime, found = settings.runtime, []
    if runtime.torch_before(TORCH_LAZY_MODULES):
        found.append("the CUDA context loads every kernel (before 1.13)")
    if runtime.torch_before(TORCH_SOFTMAX_INPUT_FREED):
        found.append("softmax and log_softmax keep their input for backward (before 1.11)")
    if _grads_kept(settings):
        found.append("zero_grad() zeroes in place, so the gradients stay between steps (before 2.0)")
    if runtime.torch_before(TORCH_FOREACH_DEFAULT) and settings.training.optimizer in ("adam", "adamw"):
        found.append("Adam runs one parameter at a time (no foreach default before 2.0)")
    return found
