"""Decisions on top of `vramfit.estimate`: does it fit, how big can it go, how many GPUs, which layout, what
to change.

Everything here calls `vramfit.estimate(model, settings)` and reads one number from it, the per-GPU device
peak (what nvidia-smi would show), against one GPU's usable memory (`vramfit.gpus`). No memory formula lives
here, so every improvement of the memory model reaches these answers unchanged.

The searches rest on one property, tested over the model catalog in tests/test_monotonic.py: memory never
decreases as batch or sequence length grows. Then "fits" is true up to some size and false after it, and one
bisection (`largest`) finds the boundary exactly: the answer fits and the answer plus one does not.

`plan` enumerates parallel layouts and ranks them by the step cost model written out, with its sources, in
`step_cost`'s docstring.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from vramfit.errors import InvalidSetting, VramfitError
from vramfit.estimate import estimate, resolve_settings
from vramfit.gpus import CATALOG, GPU, capacity_bytes, lookup
from vramfit.model.architecture import LatentAttention, MixtureOfExperts
from vramfit.model.loaded import Model
from vramfit.result import Estimate
from vramfit.settings import DTYPE_BYTES, Settings

BATCH_LIMIT = 1 << 20      # sequences: a search bound, reported as such when reached
CONTEXT_LIMIT = 1 << 24    # tokens (16,777,216)
GPU_COUNTS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


# ----------------------------------------------------------------------------------------------------------
# The one bisection


def largest(fits: Callable[[int], bool], low: int, high: int) -> int:
    """Largest n in [low, high] with fits(n), for a predicate that is true up to some n and false after it;
    low - 1 when fits(low) is false.

    Gallops (low, low+1, low+3, low+7, ...) to bracket the boundary, then bisects inside the bracket, so the
    number of calls is about 2 log2(answer - low) rather than log2(high - low): small answers stay cheap.
    """
    if high < low or not fits(low):
        return low - 1
    good, step = low, 1
    while good < high:          # invariant: fits(good)
        probe = min(good + step, high)
        if not fits(probe):
            return _bisect(fits, good, probe)
        good, step = probe, step * 2
    return good


def _bisect(fits: Callable[[int], bool], good: int, bad: int) -> int:
    """fits(good) and not fits(bad), good < bad: the largest fitting n between them."""
    while bad - good > 1:
        middle = (good + bad) // 2
        good, bad = (middle, bad) if fits(middle) else (good, middle)
    return good


# ----------------------------------------------------------------------------------------------------------
# One check: does this workload fit this GPU?


@dataclass(frozen=True, kw_only=True, slots=True)
class Check:
    """One estimate against one GPU: the device peak, the capacity, and what is left."""

    estimate: Estimate
    capacity_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.estimate.peak.device

    @property
    def fits(self) -> bool:
        """The device peak fits the GPU and, for a runtime that pre-allocates a KV-cache pool (vLLM,
        SGLang), the pool holds the workload (`pool_short`)."""
        return self.total_bytes <= self.capacity_bytes and not self.pool_short

    @property
    def pool_short(self) -> bool:
        """True when a pre-allocated KV-cache pool holds fewer tokens than batch x seq_len, each sequence in
        whole blocks (vLLM's paged allocation). A pool runtime's device peak is the pool it reserves, the same
        for any batch; what runs out is the pool. Read from the estimate's runtime answers (`extra[runtime]`:
        kv_cache_tokens, block_size), which only pool runtimes report."""
        pool = self.pool_tokens
        return pool is not None and pool[0] < pool[1]

    @property
    def pool_tokens(self) -> tuple[int, int] | None:
        """(tokens the KV-cache pool holds, tokens the workload needs in whole blocks), for pool runtimes."""
        work = self.estimate.settings.workload
        for answers in self.estimate.extra.values():
            if isinstance(answers, dict) and "kv_cache_tokens" in answers:
                block = int(answers.get("block_size") or 1)
                return int(answers["kv_cache_tokens"]), work.batch_size * -(-work.seq_len // block) * block
        return None

    @property
    def headroom_bytes(self) -> int:
        return self.capacity_bytes - self.total_bytes


class Checker:
    """Estimates for one model on one GPU capacity, cached by settings (searches revisit points)."""

    def __init__(self, model: Model, capacity: int) -> None:
        self.model, self.capacity = model, capacity
        self._cache: dict[Settings, Check] = {}
        self.calls = 0

    def check(self, settings: Settings) -> Check:
        if settings not in self._cache:
            self.calls += 1
            self._cache[settings] = Check(estimate=estimate(self.model, settings), capacity_bytes=self.capacity)
        return self._cache[settings]

    def fits(self, settings: Settings) -> bool:
        return self.check(settings).fits


def required_capacity(settings: Settings) -> int:
    """The GPU capacity the settings name (--gpu-memory, else --gpu's usable bytes); an error naming both
    flags when neither is given."""
    capacity = capacity_bytes(settings.gpu, settings.gpu_memory)
    if capacity is None:
        raise InvalidSetting("--gpu: no GPU given; pass --gpu NAME (e.g. rtx-4090, h100-80gb) or "
                             "--gpu-memory SIZE (e.g. 24GiB)")
    return capacity


def check(model: Model, settings: Settings) -> Check:
    """Estimate `settings` and compare the device peak with the GPU they name."""
    settings = resolve_settings(settings, model).validate()
    return Checker(model, required_capacity(settings)).check(settings)


# ----------------------------------------------------------------------------------------------------------
# Largest batch, longest context


@dataclass(frozen=True, kw_only=True, slots=True)
class Largest:
    """The largest value that fits; `limited_by` says what stopped the search: "memory" (value + 1 does not
    fit), or the bound that was reached first ("search bound", "max_position_embeddings")."""

    name: str
    value: int
    limited_by: str
    capacity_bytes: int
    at_value: Check | None      # the estimate at `value` (None when even the smallest does not fit)
    above: Check | None         # the estimate at value + 1 (None when a bound stopped the search)
    calls: int


def max_batch(model: Model, settings: Settings, *, limit: int = BATCH_LIMIT) -> Largest:
    """Largest batch_size (training: the micro-batch) that fits; 0 when batch 1 does not."""
    return _largest_field(model, resolve_settings(settings, model).validate(), "batch_size", 1, limit,
                          "search bound")


def max_context(model: Model, settings: Settings, *, limit: int | None = None) -> Largest:
    """Largest seq_len that fits, at least new_tokens + 1 (seq_len counts prompt plus generated tokens).

    The search stops at the model's max_position_embeddings unless `limit` says otherwise: beyond it the
    model was not trained to attend, whatever the memory allows. 0 when the shortest sequence does not fit.
    """
    settings = resolve_settings(settings, model).validate()
    bound, why = (limit, "search bound") if limit else _context_bound(model)
    low = settings.workload.new_tokens + 1
    return _largest_field(model, settings, "seq_len", low, bound, why)


def _context_bound(model: Model) -> tuple[int, str]:
    positions = model.architecture.max_positions
    return (positions, "max_position_embeddings") if positions else (CONTEXT_LIMIT, "search bound")


def _largest_field(model: Model, settings: Settings, name: str, low: int, high: int, bound: str) -> Largest:
    checker = Checker(model, required_capacity(settings))

    def fits(n: int) -> bool:
        return checker.fits(settings.replace(**{name: n}))

    value = largest(fits, low, high)
    found = value >= low
    at_value = checker.check(settings.replace(**{name: value})) if found else None
    above = checker.check(settings.replace(**{name: value + 1})) if value < high else None
    return Largest(name=name, value=value if found else 0, limited_by="memory" if value < high else bound,
                   capacity_bytes=checker.capacity, at_value=at_value, above=above, calls=checker.calls)


# ----------------------------------------------------------------------------------------------------------
# Layouts: which ways of splitting the work over N GPUs are valid, and what a step costs in each


@dataclass(frozen=True, kw_only=True, slots=True)
class Network:
    """What the cost model needs to know about the machines: per GPU, per direction.

    inter_node_bytes_per_s: one 400 Gb/s NIC per GPU (50 GB/s), the DGX H100 design (8 ConnectX-7 per
    8 GPUs, NVIDIA DGX H100 user guide). Intra-node links and flops come from the GPU catalog; a GPU known
    only by its capacity gets H100 figures (said in the plan's notes).
    """

    gpus_per_node: int = 8
    inter_node_bytes_per_s: int = 50 * 10**9


@dataclass(frozen=True, kw_only=True, slots=True)
class Layout:
    """How the work is split: sizes of each parallel dimension and the memory-saving options."""

    tensor: int = 1
    pipeline: int = 1
    context: int = 1
    expert: int = 1
    data: int = 1
    zero_stage: int = 0
    fsdp: str = "none"
    grad_ckpt: str = "none"
    offload: str = "none"
    micro_batch: int = 1
    grad_accum: int = 1
    training: bool = True     # False: micro_batch is the batch each replica serves, no options apply

    @property
    def gpus(self) -> int:
        return self.tensor * self.pipeline * self.context * self.data

    def changes(self) -> dict[str, Any]:
        """The Settings.replace(...) arguments that select this layout."""
        return {"gpus": self.gpus, "tensor": self.tensor, "pipeline": self.pipeline, "context": self.context,
                "expert": self.expert, "zero_stage": self.zero_stage, "fsdp": self.fsdp,
                "grad_ckpt": self.grad_ckpt, "offload": self.offload, "batch_size": self.micro_batch,
                "grad_accum": self.grad_accum}

    def describe(self) -> str:
        parts = [f"DP {self.data}", f"TP {self.tensor}", f"PP {self.pipeline}"]
        parts += [f"CP {self.context}"] if self.context > 1 else []
        parts += [f"EP {self.expert}"] if self.expert > 1 else []
        parts += [_sharding_name(self)] if self.zero_stage or self.fsdp != "none" else []
        parts += [f"checkpointing {self.grad_ckpt}"] if self.grad_ckpt != "none" else []
        parts += [f"offload {self.offload}"] if self.offload != "none" else []
        parts += [f"micro-batch {self.micro_batch} x {self.grad_accum} accumulation" if self.training else
                  f"batch {self.micro_batch} per replica"]
        return ", ".join(parts)


def _sharding_name(layout: Layout) -> str:
    return f"FSDP {layout.fsdp}" if layout.fsdp != "none" else f"ZeRO-{layout.zero_stage}"


@dataclass(frozen=True, kw_only=True, slots=True)
class StepCost:
    """Seconds of one optimizer step (inference: one forward) on one GPU, by part, and the total relative to
    the ideal: the same flops spread perfectly over all GPUs with no communication, bubble or recompute."""

    ideal_s: float
    parts_s: dict[str, float] = field(hash=False)

    @property
    def total_s(self) -> float:
        return self.ideal_s + sum(self.parts_s.values())

    @property
    def relative(self) -> float:
        return self.total_s / self.ideal_s if self.ideal_s else 1.0


MARGIN = 0.05   # headroom below 5% of the GPU is penalized in the ranking (see `score`)


def score(relative_cost: float, headroom_bytes: int, capacity_bytes: int, margin: float = MARGIN) -> float:
    """What `plan` ranks by: the relative step cost, raised when the headroom is under `margin` of the GPU,
    linearly up to twice the cost at zero headroom. Estimates carry an error band (the truth tests state
    theirs) and allocators fragment, so a layout that fits by a hair is worth less than one that is a little
    slower but safe. Never below the step cost, so the step cost's lower bound still bounds the score."""
    short = max(0.0, margin * capacity_bytes - headroom_bytes) / (margin * capacity_bytes) if margin else 0.0
    return relative_cost * (1 + short)


@dataclass(frozen=True, kw_only=True, slots=True)
class Ranked:
    """A layout that fits, with its memory, its step cost and its score (step cost with the headroom
    penalty; lower is better)."""

    layout: Layout
    check: Check
    cost: StepCost
    score: float

    def explain(self) -> list[str]:
        lines = [(f"{self.layout.describe()}: step {self.cost.relative:.2f}x ideal, "
                  f"headroom {self.check.headroom_bytes / 2**30:.2f} GiB, score {self.score:.2f}")]
        big = sorted(self.cost.parts_s.items(), key=lambda kv: -kv[1])
        lines += [f"    {name}: +{seconds / self.cost.ideal_s:.1%} of ideal" for name, seconds in big if seconds > 0]
        return lines


@dataclass(frozen=True, kw_only=True, slots=True)
class PlanResult:
    gpus: int
    gpu: str
    capacity_bytes: int
    layouts: tuple[Ranked, ...]
    considered: int        # layouts enumerated
    estimated: int         # estimate() calls made
    notes: tuple[str, ...] = ()


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(n**0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def _attention_heads(model: Model) -> list[tuple[int, int]]:
    """(heads, kv_heads) of every distinct attention block; MLA shares no kv heads, so kv_heads = heads."""
    out = []
    for layer in set(model.architecture.layers()):
        attention = layer.attention
        kv = attention.heads if isinstance(attention, LatentAttention) else attention.kv_heads
        out.append((attention.heads, kv))
    return out


def _experts(model: Model) -> int:
    counts = [layer.mlp.experts for layer in model.architecture.layers() if isinstance(layer.mlp, MixtureOfExperts)]
    return max(counts, default=0)


def valid_tensor(model: Model, tensor: int) -> bool:
    """Megatron's rule: attention heads split evenly; kv heads split evenly or are replicated (tensor a
    multiple of kv_heads, as vLLM and Megatron do for GQA)."""
    return all(heads % tensor == 0 and (kv % tensor == 0 or tensor % kv == 0)
               for heads, kv in _attention_heads(model))


# Context parallelism is for sequences too long for one GPU ("critical for training long context models",
# NeMo's context parallelism guide); split finer, it adds communication and smaller kernels without needing
# the memory (Megatron-Bridge's dynamic context parallel guide). The cost model has no kernel-efficiency term,
# so this floor on tokens per rank stands in for it: a judgement call, not a measurement.
MIN_CONTEXT_TOKENS = 2048


def _groups(model: Model, settings: Settings, gpus: int, network: Network) -> Iterator[Layout]:
    """Every (tensor, pipeline, context, expert, data) split of `gpus` that the model allows: tensor inside a
    node and dividing the heads, pipeline dividing the layers, context dividing seq_len into 2 x context chunks
    (Megatron's load-balanced ring) of at least MIN_CONTEXT_TOKENS each, expert dividing the experts and the
    data-parallel size."""
    layers, experts = model.architecture.num_layers, _experts(model)
    training = settings.mode == "training"
    for tensor in _divisors(gpus):
        if tensor > network.gpus_per_node or not valid_tensor(model, tensor):
            continue
        for pipeline in _divisors(gpus // tensor):
            if layers % pipeline:
                continue
            for context in _divisors(gpus // (tensor * pipeline)) if training else [1]:
                if context > 1 and (settings.workload.seq_len % (2 * context)
                                    or settings.workload.seq_len // context < MIN_CONTEXT_TOKENS):
                    continue
                data = gpus // (tensor * pipeline * context)
                for expert in [e for e in _divisors(data) if experts % e == 0] if experts else [1]:
                    yield Layout(tensor=tensor, pipeline=pipeline, context=context, expert=expert, data=data)


def _options(layout: Layout, settings: Settings) -> list[Layout]:
    """Memory-saving options for a training split, most saving first.

    Sharding: ZeRO stages 3 and 2 (FSDP FULL_SHARD and SHARD_GRAD_OP when the user asked for FSDP). Stages 0
    and 1 (and DDP) move the same bytes as stage 2 (ZeRO paper, sec. 7) and hold at least as much, so they
    can never rank above it and are not enumerated. (DDP of a model under ~0.25B parameters may hold less than
    ZeRO-2 with DeepSpeed's 0.93 GiB reduce bucket; the planner does not offer it.) With one data-parallel rank sharding saves nothing: the
    split runs unsharded, with stage 2 or 3 only as the carrier of offload, as DeepSpeed allows it (optimizer
    offload from ZeRO-1 on, parameter offload with ZeRO-3). Checkpointing: full, selective, none."""
    from dataclasses import replace

    fsdp = settings.parallelism.fsdp != "none"
    shardings = [("full", 0, 3), ("shard-grad-op", 0, 2)] if fsdp else [("none", 3, 3), ("none", 2, 2)]
    if layout.data == 1:
        shardings.append(("none", 0, 0))
    out = []
    for name, stage, level in shardings:
        for offload in ("params", "optimizer", "none"):
            if (offload == "params" and level < 3) or (offload == "optimizer" and level < 1):
                continue
            if layout.data == 1 and level and offload == "none":
                continue
            for ckpt in ("full", "selective", "none"):
                out.append(replace(layout, fsdp=name, zero_stage=stage, offload=offload, grad_ckpt=ckpt))
    return out


def _group_of(layout: Layout) -> Layout:
    """The bare split of a candidate: its sizes, no options, micro-batch 1."""
    return Layout(tensor=layout.tensor, pipeline=layout.pipeline, context=layout.context, expert=layout.expert,
                  data=layout.data)


def _deepspeed(layout: Layout) -> bool:
    """A DeepSpeed ZeRO option: its stages 2 and 3 save incomparable amounts (Planner._survives)."""
    return layout.fsdp == "none" and layout.zero_stage >= 2


def _saving(layout: Layout) -> tuple[int, int, int]:
    """How much an option saves on each axis (sharding level, offload, checkpointing), larger saves more."""
    level = 3 if layout.fsdp == "full" else 2 if layout.fsdp == "shard-grad-op" else layout.zero_stage
    return (level, ("none", "optimizer", "params").index(layout.offload),
            ("none", "selective", "full").index(layout.grad_ckpt))


# ----------------------------------------------------------------------------------------------------------
# The step cost model


def step_cost(model: Model, settings: Settings, layout: Layout, gpu: GPU | None = None,
              network: Network | None = None) -> StepCost:
    """Seconds of one step on the most loaded GPU, by part; communication is not overlapped with compute (a
    conservative, stated simplification: it ranks layouts, it does not predict throughput).

    1. Ideal: F = 6 P T flops for a training step over T tokens (2 P T for a forward pass), P the active
       parameters (Kaplan et al. 2020, "Scaling Laws", sec. 2.1), spread over all GPUs at the GPU's dense
       bf16 rate. Attention-score flops are left out of this base.
    2. Pipeline bubble: (p - 1) / m of the compute for p stages and m micro-batches, 1F1B schedule
       (Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on GPU Clusters Using
       Megatron-LM", sec. 2.2.1). A single forward (inference) has m = 1: stages run one after another.
    3. Recomputation: full checkpointing reruns the forward, +1/3 of a step; selective reruns only the
       attention core, +s / (3 (6h + s)) (Korthikanti et al. 2022, "Reducing Activation Recomputation in
       Large Transformer Models", sec. 5, forward flops 24bsh^2 + 4bs^2h per layer).
    4. Tensor parallel: 2 all-reduces of the b x s x h activations per layer forward and 2 backward
       (Shoeybi et al. 2019, "Megatron-LM", fig. 3), 2 more with full recompute; a ring all-reduce moves
       2 (t - 1) / t of the message per GPU (Patarasuk and Yuan 2009).
    5. Data parallel: gradient all-reduce of 2 Psi per step for DDP, ZeRO-1 and ZeRO-2, 3 Psi for ZeRO-3
       (Rajbhandari et al. 2020, "ZeRO", sec. 7): Psi of gradient reduce-scatter per step and 2 Psi of
       parameter all-gathers for every micro-batch; PyTorch FSDP FULL_SHARD and SHARD_GRAD_OP move the same as ZeRO-3 and ZeRO-2 (Zhao et al.
       2023, "PyTorch FSDP", sec. 3). Psi is the parameters of one tensor/pipeline shard; gradients only for
       trainable ones, parameter gathers for all. Routed experts, split e ways by expert parallelism, sync
       over the d / e ranks that hold the same experts (Megatron-Core MoE, expert data parallelism).
    6. Pipeline: one activation and one gradient of b x s x h per micro-batch at each stage boundary.
    7. Context parallel: ring attention passes K and V around the ring, (c - 1) / c of them per layer
       forward and about twice that backward (Megatron-Core context parallel docs; Liu et al. 2023, "Ring
       Attention").
    8. Expert parallel: an all-to-all dispatch and combine of the k routed copies of each token per MoE layer,
       forward and backward, (e - 1) / e of them leaving the GPU (Lepikhin et al. 2020, "GShard"; Rajbhandari
       et al. 2022, "DeepSpeed-MoE"); the group spans tensor x context x expert ranks.
    9. Offload: optimizer offload moves gradients down and parameters up once per step (Ren et al. 2021,
       "ZeRO-Offload"); parameter offload fetches the shard for every micro-batch forward and backward
       (Rajbhandari et al. 2021, "ZeRO-Infinity"). CPU optimizer time is not counted.

    Links: tensor innermost, then context, data, pipeline (Megatron-Core's default rank order); a dimension
    whose group fits in one node uses the GPU's peer link, otherwise the inter-node link.
    """
    return CostModel(model, settings, gpu, network or Network()).cost(layout)


class CostModel:
    """The arithmetic of `step_cost` for one model and workload; `cost(layout)` is cheap (no estimate)."""

    def __init__(self, model: Model, settings: Settings, gpu: GPU | None, network: Network,
                 trainable: int | None = None) -> None:
        settings = resolve_settings(settings, model)
        self.network, self.training = network, settings.mode == "training"
        arch = model.architecture
        counts = arch.parameter_count()
        self.params, self.active = counts.total, counts.active
        self.trainable = trainable if trainable is not None else estimate(model, settings).parameters.trainable
        self.hidden, self.layers, self.kv_width = arch.hidden_size, arch.num_layers, _kv_width(model)
        moe = [layer.mlp for layer in arch.layers() if isinstance(layer.mlp, MixtureOfExperts)]
        self.routed = max((mlp.experts_per_token for mlp in moe), default=0)
        self.expert_params = sum(mlp.routed_parameters() for mlp in moe)
        self.seq = settings.workload.seq_len
        self.bytes = DTYPE_BYTES[settings.precision.compute_dtype]
        reference = gpu if gpu and gpu.dense_bf16_flops else lookup("h100-80gb")
        self.flops = reference.dense_bf16_flops or 1
        self.peer, self.host = reference.peer_bytes_per_s, reference.host_bytes_per_s

    def cost(self, layout: Layout) -> StepCost:
        tokens = layout.micro_batch * layout.grad_accum * layout.data * self.seq
        ideal = (6 if self.training else 2) * self.active * tokens / (layout.gpus * self.flops)
        return StepCost(ideal_s=ideal, parts_s=self._parts(layout, ideal))

    def lower_bound(self, layout: Layout) -> float:
        """No micro-batch split of the same replica batch costs less: each part at its own best split (the
        bubble shrinks with more micro-batches, per-micro-batch gathers and fetches grow)."""
        from dataclasses import replace

        batch = layout.micro_batch * layout.grad_accum
        finest, coarsest = replace(layout, micro_batch=1, grad_accum=batch), replace(
            layout, micro_batch=batch, grad_accum=1)
        one, other = self.cost(finest), self.cost(coarsest)
        parts = sum(min(one.parts_s[k], other.parts_s[k]) for k in one.parts_s)
        return (one.ideal_s + parts) / one.ideal_s if one.ideal_s else 1.0

    def _parts(self, layout: Layout, ideal: float) -> dict[str, float]:
        link = self._link
        return {"pipeline bubble": ideal * (layout.pipeline - 1) / layout.grad_accum,
                "recomputation": ideal * self._recompute_fraction(layout),
                "tensor parallel": self._tensor_bytes(layout) / link(layout.tensor),
                "context parallel": self._context_bytes(layout) / link(layout.tensor * layout.context),
                "expert parallel": self._expert_bytes(layout) / link(layout.tensor * layout.context * layout.expert),
                "data parallel": self._data_bytes(layout) / link(layout.gpus // layout.pipeline),
                "pipeline transfers": self._pipeline_bytes(layout) / link(layout.gpus),
                "offload transfers": self._offload_bytes(layout) / self.host}

    def _link(self, group: int) -> int:
        return self.peer if group <= self.network.gpus_per_node else self.network.inter_node_bytes_per_s

    def _recompute_fraction(self, layout: Layout) -> float:
        ckpt = layout.grad_ckpt if self.training else "none"
        if ckpt == "full":
            return 1 / 3
        return self.seq / (3 * (6 * self.hidden + self.seq)) if ckpt == "selective" else 0.0

    def _activation_bytes(self, layout: Layout) -> float:
        """One micro-batch's b x s x h activations on one GPU (the sequence split by context parallelism)."""
        return layout.micro_batch * self.seq / layout.context * self.hidden * self.bytes

    def _per_step(self, layout: Layout) -> float:
        """Layers on one stage times micro-batches per step: how often a per-layer exchange happens."""
        return self.layers / layout.pipeline * layout.grad_accum

    def _tensor_bytes(self, layout: Layout) -> float:
        t = layout.tensor
        if t == 1:
            return 0.0
        all_reduces = 2 + (2 if self.training else 0) + (2 if self.training and layout.grad_ckpt == "full" else 0)
        return all_reduces * 2 * (t - 1) / t * self._activation_bytes(layout) * self._per_step(layout)

    def _context_bytes(self, layout: Layout) -> float:
        c = layout.context
        if c == 1:
            return 0.0
        kv = layout.micro_batch * self.seq / c * self.kv_width * self.bytes
        return (3 if self.training else 1) * (c - 1) * kv * self._per_step(layout)

    def _expert_bytes(self, layout: Layout) -> float:
        e = layout.expert
        if e == 1 or not self.routed:
            return 0.0
        directions = 4 if self.training else 2
        return directions * (e - 1) / e * self._activation_bytes(layout) * self.routed * self._per_step(layout)

    def _data_bytes(self, layout: Layout) -> float:
        """Dense parameters reduce over all d data-parallel ranks; routed experts, split e ways by expert
        parallelism, over the d / e ranks holding the same experts (Megatron-Core's expert data parallel)."""
        if layout.data == 1 or not self.training:
            return 0.0
        shard = layout.tensor * layout.pipeline
        dense = (self.params - self.expert_params) / shard
        experts = self.expert_params / (shard * layout.expert)
        return (self._sync_bytes(dense, dense / self.params * self.trainable, layout, layout.data)
                + self._sync_bytes(experts, experts / self.params * self.trainable, layout,
                                   layout.data // layout.expert))

    def _sync_bytes(self, params: float, trainable: float, layout: Layout, ranks: int) -> float:
        """Bytes one GPU moves to keep `params` (of which `trainable` get gradients) in step over `ranks`
        ranks (ZeRO, sec. 7): up to ZeRO-2, an all-reduce of the gradients (or its halves, a reduce-scatter
        and an all-gather of the updated shard), 2 Psi per step; ZeRO-3 keeps parameters sharded, so Psi for
        the gradient reduce-scatter plus 2 Psi of parameter all-gathers (forward, backward) per micro-batch."""
        if ranks <= 1:
            return 0.0
        level = 3 if layout.fsdp == "full" else 2 if layout.fsdp == "shard-grad-op" else layout.zero_stage
        if level == 3:
            moved = trainable * self.bytes + 2 * params * self.bytes * layout.grad_accum
        else:
            moved = 2 * trainable * self.bytes
        return (ranks - 1) / ranks * moved

    def _pipeline_bytes(self, layout: Layout) -> float:
        if layout.pipeline == 1:
            return 0.0
        return (2 if self.training else 1) * self._activation_bytes(layout) * layout.grad_accum

    def _offload_bytes(self, layout: Layout) -> float:
        if not self.training:
            return 0.0
        ranks = layout.tensor * layout.pipeline * layout.data
        if layout.offload == "optimizer":
            return 2 * self.trainable / ranks * self.bytes
        return 2 * self.params / ranks * self.bytes * layout.grad_accum if layout.offload == "params" else 0.0


def _kv_width(model: Model) -> int:
    """Elements of K and V per token per layer (the largest layer's): what ring attention passes."""
    return max((layer.attention.kv_elements_per_token() for layer in model.architecture.layers()), default=0)


# ----------------------------------------------------------------------------------------------------------
# The planner


def plan(model: Model, settings: Settings, gpus: int, *, gpu: str | None = None, global_batch: int | None = None,
         top: int = 5, network: Network | None = None, margin: float = MARGIN) -> PlanResult:
    """The layouts of `gpus` GPUs that fit, best first, ranked by `score`: the relative step cost
    (`step_cost`), penalized when the headroom is under `margin` of the GPU; ties go to more headroom.
    Inference costs are per token served over all replicas (throughput), not one request's latency.

    Training: global_batch sequences per optimizer step (default: batch_size x grad_accum x gpus, the data
    parallel reading of the flags); each split takes a micro-batch dividing its per-replica batch.
    Inference: batch_size sequences per replica, no memory options.

    Search, fast enough for 1,000+ GPUs (bench/bench_search.py): only divisors are enumerated; candidates
    are visited cheapest lower bound first (each cost part at its best micro-batch split), and the walk
    stops once `top` layouts fit and no unvisited candidate could beat them. Memory only shrinks with more
    saving and grows with the micro-batch (tests/test_monotonic.py), so a split whose most saving options do
    not fit at micro-batch 1 is dropped with one estimate, an option saving no more than one that failed is
    dropped with none, and the fitting micro-batches are found by bisection. One exception: DeepSpeed's ZeRO-3
    holds a persistent reduce bucket that ZeRO-2 holds during backward only, so for DeepSpeed the two stages are
    compared apart (one more estimate per split).
    """
    settings = resolve_settings(settings, model).validate()
    network = network or Network()
    capacity = required_capacity(settings.replace(gpu=gpu) if gpu else settings)
    _check_plan_inputs(gpus, global_batch, top, network, margin)
    named = gpu or settings.gpu
    gpu_entry = lookup(named) if named else None
    return _Planner(model, settings, gpus, capacity, gpu_entry, network, global_batch, top, margin).run()


def _check_plan_inputs(gpus: int, global_batch: int | None, top: int, network: Network, margin: float) -> None:
    for name, value in (("--gpus", gpus), ("--top", top), ("--gpus-per-node", network.gpus_per_node),
                        ("--inter-node-bandwidth", network.inter_node_bytes_per_s)):
        if value < 1:
            raise InvalidSetting(f"{name}: {value} must be 1 or more")
    if global_batch is not None and global_batch < 1:
        raise InvalidSetting(f"--global-batch: {global_batch} must be 1 or more sequences, or left out")
    if not 0 <= margin < 1:
        raise InvalidSetting(f"margin: {margin} must be a fraction of the GPU in [0, 1)")


class _Planner:
    def __init__(self, model: Model, settings: Settings, gpus: int, capacity: int, gpu: GPU | None,
                 network: Network, global_batch: int | None, top: int, margin: float) -> None:
        self.model, self.settings, self.gpus, self.gpu, self.network, self.top = (
            model, settings, gpus, gpu, network, top)
        self.checker = Checker(model, capacity)
        work = settings.workload
        self.global_batch = global_batch or work.batch_size * work.grad_accum * gpus
        self.training = settings.mode == "training"
        self.costs = CostModel(model, settings, gpu, network)
        self.rejected: list[str] = []
        self.alive: dict[Layout, bool] = {}
        self.margin = margin
        self.batch_skipped = 0
        self.failed: dict[tuple[int, ...], list[tuple[int, int, int]]] = {}

    def run(self) -> PlanResult:
        splits = list(_groups(self.model, self.settings, self.gpus, self.network))
        groups = [g for g in splits if self._batch_ok(g)]
        self.batch_skipped = len(splits) - len(groups)
        candidates = [(c, g) for g in groups for c in self._candidates(g)]
        bounds = {c: self.costs.lower_bound(c) for c, _ in candidates}
        candidates.sort(key=lambda pair: bounds[pair[0]])
        ranked = self._walk(candidates, bounds)
        return PlanResult(gpus=self.gpus, gpu=self.gpu.id if self.gpu else "custom",
                          capacity_bytes=self.checker.capacity, layouts=tuple(ranked), considered=len(candidates),
                          estimated=self.checker.calls, notes=self._notes())

    def _notes(self) -> tuple[str, ...]:
        notes = [] if self.gpu and self.gpu.dense_bf16_flops else [
            "step costs use H100 flops and links: this GPU's are not in the catalog"]
        if self.rejected:
            notes.append(f"{len(self.rejected)} layouts the memory model rejects, e.g. {self.rejected[0]}")
        if self.batch_skipped:
            notes.append(f"{self.batch_skipped} splits left out: their data-parallel size does not divide the "
                         f"global batch of {self.global_batch} sequences (--global-batch)")
        return tuple(notes)

    def _batch_ok(self, group: Layout) -> bool:
        return not self.training or self.global_batch % group.data == 0

    def _per_replica(self, group: Layout) -> int:
        return self.global_batch // group.data if self.training else self.settings.workload.batch_size

    def _candidates(self, group: Layout) -> list[Layout]:
        from dataclasses import replace

        options = _options(group, self.settings) if self.training else [group]
        batch = self._per_replica(group)
        return [replace(option, micro_batch=1, grad_accum=batch) if self.training else
                replace(option, micro_batch=batch, grad_accum=1, training=False) for option in options]

    def _settings(self, layout: Layout) -> Settings:
        return self.settings.replace(**layout.changes())

    def _fits(self, layout: Layout) -> bool:
        """Whether the layout fits; a layout the memory model calls invalid (InvalidSetting) does not."""
        try:
            return self.checker.fits(self._settings(layout).validate())
        except InvalidSetting as error:
            self.rejected.append(str(error))
            return False

    def _survives(self, group: Layout) -> bool:
        """One estimate per split, made the first time one of its candidates comes up: the split with its
        most saving options at micro-batch 1 (inference: as asked). If that does not fit, nothing of it does."""
        if group not in self.alive:
            candidates = self._candidates(group)
            fits = self._fits(candidates[0])
            # DeepSpeed: ZeRO-3's persistent reduce bucket and its gathered parameters (up to 1e9 elements) can
            # outweigh what it shards beyond ZeRO-2 (training._reduce_buckets, _deepspeed_gathered_bytes), so
            # ZeRO-2's most saving option is tried too before the split is dropped
            second = next((c for c in candidates if _deepspeed(c) and c.zero_stage == 2), None)
            self.alive[group] = fits or (_deepspeed(candidates[0]) and second is not None and self._fits(second))
        return self.alive[group]

    def _walk(self, candidates: list[tuple[Layout, Layout]], bounds: dict[Layout, float]) -> list[Ranked]:
        ranked: list[Ranked] = []
        for layout, group in candidates:
            if len(ranked) >= self.top and bounds[layout] > ranked[-1].score:
                break
            best = self._best_micro_batch(layout) if self._survives(group) else None
            if best is not None:
                ranked.append(best)
                ranked.sort(key=lambda r: (round(r.score, 3), -r.check.headroom_bytes))
                ranked = ranked[: self.top]
        return ranked

    def _best_micro_batch(self, layout: Layout) -> Ranked | None:
        """Among micro-batches dividing the per-replica batch, the fitting one with the lowest step cost
        (the largest on ties: fewer, fuller kernels). Inference keeps the batch as asked.

        Memory grows with the micro-batch, so the fitting ones are those up to a bound; when the cheapest is
        micro-batch 1 (a pipeline's bubble shrinks with more micro-batches) one estimate settles it,
        otherwise a bisection finds the bound."""
        from dataclasses import replace

        if self._dominated(layout):
            return None
        if not self._fits(layout):
            self._record_failure(layout)
            return None
        choice = layout
        if self.training:
            batch = self._per_replica(layout)
            sizes = [replace(layout, micro_batch=m, grad_accum=batch // m) for m in _divisors(batch)]
            order = sorted(sizes, key=lambda c: (round(self.costs.cost(c).relative, 3), -c.micro_batch))
            if order[0].micro_batch != 1:
                last = largest(lambda i: self._fits(sizes[i]), 0, len(sizes) - 1)
                order = [c for c in order if c.micro_batch <= sizes[last].micro_batch]
            choice = order[0]
        return self._ranked(choice)

    def _record_failure(self, layout: Layout) -> None:
        """Remember that `layout` does not fit, and climb a chain of more saving options of its split to the
        last one that still does not fit (a bisection): that failure rules out more of the split's options
        than `layout`'s own, each without an estimate."""
        chain = self._chain(layout) if self.training else [layout]
        last = largest(lambda i: not self._fits(chain[i]), 0, len(chain) - 1)
        self.failed.setdefault(self._split(layout), []).append(_saving(chain[max(last, 0)]))

    def _chain(self, layout: Layout) -> list[Layout]:
        """`layout`, then options of the same split each saving one step more (checkpointing first, then
        offload, then sharding), up to the most saving one."""
        options = {_saving(o): o for o in self._candidates(_group_of(layout))}
        chain, here = [layout], _saving(layout)
        while True:
            steps = [(here[0], here[1], here[2] + 1), (here[0], here[1] + 1, here[2])]
            if not _deepspeed(layout):   # DeepSpeed's ZeRO-3 is not ordered after ZeRO-2 (_survives)
                steps += [(here[0] + 1, here[1], here[2]), (3, here[1], here[2]), (3, here[1] + 1, here[2])]
            here = next((step for step in steps if step in options), here)
            if options.get(here) is None or options[here] == chain[-1]:
                return chain
            chain.append(options[here])

    @staticmethod
    def _split(layout: Layout) -> tuple[int, ...]:
        return (layout.tensor, layout.pipeline, layout.context, layout.expert, layout.data)

    def _dominated(self, layout: Layout) -> bool:
        """True when an option of the same split that saves at least as much on every axis already failed at
        micro-batch 1: no estimate needed (each saving option never adds memory, tests/test_monotonic.py)."""
        mine = _saving(layout)
        return any(all(f >= m for f, m in zip(failed, mine)) and not (_deepspeed(layout) and failed[0] != mine[0])
                   for failed in self.failed.get(self._split(layout), []))

    def _ranked(self, layout: Layout) -> Ranked:
        check, cost = self.checker.check(self._settings(layout)), self.costs.cost(layout)
        return Ranked(layout=layout, check=check, cost=cost,
                      score=score(cost.relative, check.headroom_bytes, check.capacity_bytes, self.margin))


# ----------------------------------------------------------------------------------------------------------
# Which GPUs


@dataclass(frozen=True, kw_only=True, slots=True)
class GpuFit:
    """The fewest GPUs of one kind that run the workload, and how: `count` 0 when none up to the limit do."""

    gpu: GPU
    count: int
    best: Ranked | None


def fit(model: Model, settings: Settings, *, gpus: Iterable[GPU] = CATALOG, max_gpus: int = 64,
        network: Network | None = None) -> list[GpuFit]:
    """For each GPU, the smallest count (1, 2, 4, ... up to max_gpus) with a layout that fits, the best such
    layout and its headroom, in the order given.

    Counts are searched, not walked: twice the GPUs can always run what half of them ran (the same split with
    twice the data-parallel ranks, each with the same batch), so "some layout fits" is false and then true
    along the counts. GPUs are visited largest first and each search starts at the previous GPU's answer (a
    smaller GPU rarely needs fewer): only a guess, every answer is checked at its count and the one below."""
    settings = resolve_settings(settings, model).validate()
    counts = [n for n in GPU_COUNTS if n <= max_gpus]
    chosen = list(gpus)
    found: dict[int, GpuFit] = {}
    guess = 0
    for index in sorted(range(len(chosen)), key=lambda i: -chosen[i].usable_bytes):
        found[index], guess = _fewest(model, settings, chosen[index], counts, guess, network)
    return [found[i] for i in range(len(chosen))]


def _fewest(model: Model, settings: Settings, gpu: GPU, counts: list[int], guess: int,
            network: Network | None) -> tuple[GpuFit, int]:
    """The first count with a layout, searched from index `guess`; also the index found (the next guess)."""
    in_catalog = gpu.id in {g.id for g in CATALOG}
    probe = settings.replace(gpu=gpu.id if in_catalog else None, gpu_memory=None if in_catalog else gpu.usable_bytes)
    plans: dict[int, PlanResult] = {}

    def short(i: int) -> bool:
        if counts[i] not in plans:
            plans[counts[i]] = plan(model, probe, counts[i], global_batch=_global_batch(settings, counts[i]),
                                    top=1, network=network)
        return not plans[counts[i]].layouts

    guess = min(guess, len(counts) - 1)
    if short(guess):
        first = largest(short, guess, len(counts) - 1) + 1
    elif guess == 0 or short(guess - 1):
        first = guess
    else:
        first = largest(short, 0, guess - 2) + 1
    if first >= len(counts):
        return GpuFit(gpu=gpu, count=0, best=None), len(counts) - 1
    return GpuFit(gpu=gpu, count=counts[first], best=plans[counts[first]].layouts[0]), first


def _global_batch(settings: Settings, count: int) -> int:
    work = settings.workload
    return work.batch_size * work.grad_accum * max(count, settings.parallelism.gpus)


# ----------------------------------------------------------------------------------------------------------
# What to change


@dataclass(frozen=True, kw_only=True, slots=True)
class Change:
    """One change to the settings, what it costs (lower impact is cheaper), and the estimate it gives."""

    label: str
    impact: int
    changes: dict[str, Any] = field(hash=False)
    check: Check | None = None
    why: str = ""


# Impact ranks, cheapest first: what the change gives up. 1: nothing but a little speed; 2: speed;
# 3: a little quality; 4: much less of the workload or much more quality risk; 5: more hardware.
_TRAINING_CHANGES: tuple[tuple[str, int, dict[str, Any], str], ...] = (
    ("selective activation checkpointing", 1, {"grad_ckpt": "selective"}, "recomputes attention only"),
    ("full activation checkpointing", 2, {"grad_ckpt": "full"}, "recomputes the forward, about +33% step time"),
    ("8-bit AdamW (bitsandbytes)", 3, {"optimizer": "adamw-8bit"}, "optimizer states in 8 bits"),
    ("LoRA (rank 16, all linear layers)", 3,
     {"finetune": "lora", "lora": None}, "trains adapters only; frozen weights stay in the compute dtype"),
    ("QLoRA (4-bit NF4 base, LoRA rank 16)", 4,
     {"finetune": "qlora", "quant": "bnb-nf4", "lora": None}, "4-bit frozen base, adapters in bf16"),
    ("offload optimizer states to CPU (ZeRO-Offload)", 4, {"offload": "optimizer", "zero_stage": 2},
     "PCIe traffic each step, CPU runs the optimizer"),
    ("offload parameters and optimizer to CPU (ZeRO-3 Offload)", 4, {"offload": "params", "zero_stage": 3},
     "parameters stream over PCIe every micro-batch"),
)
_INFERENCE_CHANGES: tuple[tuple[str, int, dict[str, Any], str], ...] = (
    ("KV cache in fp8", 3, {"kv_dtype": "fp8"}, "halves the cache of a 16-bit model; small quality cost"),
    ("weights in 8 bits (bitsandbytes int8)", 3, {"quant": "bnb-int8"}, "about half the weight memory"),
    ("weights in 4 bits (bitsandbytes NF4)", 4, {"quant": "bnb-nf4"}, "about a quarter of the weight memory"),
    ("weights in 4 bits and KV cache in fp8", 4, {"quant": "bnb-nf4", "kv_dtype": "fp8"}, "both of the above"),
)


def what_to_change(model: Model, settings: Settings, *, max_gpus: int = 64, top: int = 8,
                   max_combined: int = 3) -> list[Change]:
    """Changes that make a workload fit, cheapest first (impact, then smaller new total), each with its new
    estimate: single changes and combinations of up to `max_combined` of them (impact adds up; a combination
    is listed only when none of its parts already fits), the largest batch or context that fits, and the
    fewest GPUs of this kind with their best layout. Empty when nothing tried fits."""
    settings = resolve_settings(settings, model).validate()
    checker = Checker(model, required_capacity(settings))
    found = _combinations(checker, settings, _fixed_changes(settings), top, max_combined)
    found += [c for c in _shrink_changes(model, settings) if c.check is not None and c.check.fits]
    found += _more_gpus(model, settings, max_gpus)
    return sorted(found, key=lambda c: (c.impact, c.check.total_bytes if c.check else 0))[:top]


def _combinations(checker: Checker, settings: Settings, singles: list[Change], top: int,
                  most: int) -> list[Change]:
    """Fitting combinations of changes that touch different settings, visited cheapest first; a superset of
    one that fits is skipped (it gives up more for nothing), and the walk stops once `top` fit and the
    next would cost more than all of them."""
    from itertools import combinations

    groups = [combo for size in range(1, most + 1) for combo in combinations(singles, size) if _disjoint(combo)]
    groups.sort(key=lambda combo: (sum(c.impact for c in combo), len(combo)))
    found: list[tuple[tuple[Change, ...], Change]] = []
    for combo in groups:
        if len(found) >= top and sum(c.impact for c in combo) > max(f.impact for _, f in found):
            break
        if any(set(map(id, parts)) <= set(map(id, combo)) for parts, _ in found):
            continue
        tried = _try(checker, settings, _merge(combo))
        if tried.check is not None and tried.check.fits:
            found.append((combo, tried))
    return [change for _, change in found]


def _disjoint(combo: tuple[Change, ...]) -> bool:
    keys = [key for change in combo for key in change.changes]
    return len(keys) == len(set(keys))


def _merge(combo: tuple[Change, ...]) -> Change:
    merged: dict[str, Any] = {}
    for change in combo:
        merged.update(change.changes)
    return Change(label=" + ".join(c.label for c in combo), impact=sum(c.impact for c in combo), changes=merged,
                  why="; ".join(c.why for c in combo))


def _fixed_changes(settings: Settings) -> list[Change]:
    table = _TRAINING_CHANGES if settings.mode == "training" else _INFERENCE_CHANGES
    out = []
    for label, impact, changes, why in table:
        values = dict(changes)
        if "lora" in values:
            values["lora"] = settings.training.lora.__class__(rank=16, alpha=32, targets=("all-linear",))
        if _already(settings, values):
            continue
        out.append(Change(label=label, impact=impact, changes=values, why=why))
    work = settings.workload
    if settings.mode == "training" and work.batch_size > 1:
        out.append(Change(label=f"micro-batch 1 with grad_accum {work.grad_accum * work.batch_size}", impact=1,
                          changes={"batch_size": 1, "grad_accum": work.grad_accum * work.batch_size},
                          why="same sequences per optimizer step, in more and smaller passes"))
    if settings.mode == "training" and settings.parallelism.data > 1:
        for stage in range(settings.parallelism.zero_stage + 1, 4):
            out.append(Change(label=f"ZeRO stage {stage}", impact=2, changes={"zero_stage": stage},
                              why="shards more state over the data-parallel ranks; more communication"))
    return out


def _already(settings: Settings, values: dict[str, Any]) -> bool:
    """True when the settings already have every value of the change."""
    flat = {k: v for part in settings.to_dict().values() if isinstance(part, dict) for k, v in part.items()}
    return all(flat.get(k) == v for k, v in values.items() if k != "lora")


def _try(checker: Checker, settings: Settings, change: Change) -> Change:
    from dataclasses import replace

    try:
        return replace(change, check=checker.check(settings.replace(**change.changes).validate()))
    except VramfitError:
        return change   # a change this model or setup cannot take (e.g. no quantization format): left out


def _shrink_changes(model: Model, settings: Settings) -> list[Change]:
    """The largest batch and the longest context that fit, as changes (the smallest cut that works)."""
    out = []
    batch = max_batch(model, settings, limit=settings.workload.batch_size)
    if 0 < batch.value < settings.workload.batch_size:
        what = "micro-batch" if settings.mode == "training" else "batch"
        extra = {"grad_accum": settings.workload.grad_accum * settings.workload.batch_size // batch.value} if (
            settings.mode == "training" and settings.workload.batch_size % batch.value == 0) else {}
        out.append(Change(label=f"{what} {batch.value} (from {settings.workload.batch_size})"
                          + (f", grad_accum {extra['grad_accum']}" if extra else ""),
                          impact=2 if extra else 4, changes={"batch_size": batch.value, **extra},
                          check=batch.at_value, why="same tokens per step" if extra else "fewer sequences"))
    context = max_context(model, settings, limit=settings.workload.seq_len)
    if settings.workload.new_tokens < context.value < settings.workload.seq_len:
        out.append(Change(label=f"seq_len {context.value} (from {settings.workload.seq_len})", impact=4,
                          changes={"seq_len": context.value}, check=context.at_value, why="shorter sequences"))
    return out


def _more_gpus(model: Model, settings: Settings, max_gpus: int) -> list[Change]:
    start = settings.parallelism.gpus
    for count in (n for n in GPU_COUNTS if start < n <= max_gpus):
        result = plan(model, settings, count, global_batch=_global_batch(settings, count), top=1)
        if result.layouts:
            best = result.layouts[0]
            return [Change(label=f"{count} GPUs: {best.layout.describe()}", impact=5,
                           changes=best.layout.changes(), check=best.check,
                           why=f"step {best.cost.relative:.2f}x ideal")]
    return []
