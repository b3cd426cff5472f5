"""How a parallel layout divides the training state, and the buffers it adds, on the most-loaded GPU.

- DDP (torch/nn/parallel/distributed.py, Reducer): gradients are copied into flat bucket tensors (25 MiB
  each) for the all-reduce; with the default gradient_as_bucket_view=False the buckets are a second copy of
  every gradient, allocated at the first backward and kept.
- ZeRO (Rajbhandari et al. 2020, section 5): stage 1 shards optimizer states over the data-parallel ranks,
  stage 2 gradients too, stage 3 parameters too. FSDP: FULL_SHARD = ZeRO-3, SHARD_GRAD_OP = ZeRO-2,
  HYBRID_SHARD = FULL_SHARD inside a node (8 GPUs here) and replication across nodes.
- FSDP keeps the unsharded parameters of the block being computed and of the block prefetched next
  (FSDP's default backward_prefetch=BACKWARD_PRE, forward_prefetch in torchtitan) in the compute dtype, and
  each block's unsharded gradients until they are reduce-scattered. DeepSpeed ZeRO-3 gathers module by module
  and prefetches ahead until stage3_max_live_parameters elements are gathered (training._deepspeed_gathered_bytes).
- Tensor parallelism (Megatron layout, Shoeybi et al. 2019): attention heads, MLP width and the vocabulary are
  split t ways; norms stay whole. Activations (Korthikanti et al. 2022, section 4): the head- and
  intermediate-sized tensors divide by t; with sequence parallelism the h-sized ones (norm inputs, residuals,
  dropout masks) divide by t too.
- Pipeline parallelism, 1F1B (Narayanan et al. 2021, section 2.2): the first stage holds the activations of
  min(pipeline, micro-batches) micro-batches at once; it also holds the embedding, the last stage the head.
- Context parallelism divides the sequence; expert parallelism divides the routed experts.
- Offload: ZeRO-Offload / FSDP CPU offload keep the optimizer states (and fp32 master weights) in host
  memory, ZeRO-Infinity / FSDP offload_params the parameters too; the host memory needed is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

from vramfit.errors import InvalidSetting
from vramfit.held import put
from vramfit.settings import Parallelism, Workload

NODE_GPUS = 8  # HYBRID_SHARD shards within a node; 8-GPU nodes (DGX/HGX) assumed
DDP_BUCKET_MIB = 25  # torch DistributedDataParallel(bucket_cap_mb=25)
GATHERED_BLOCKS = 2  # FSDP: the block being computed and the one prefetched


@dataclass(frozen=True, kw_only=True, slots=True)
class Layout:
    """Divisors and flags of one layout. *_shard: data-parallel divisor of each state;
    gathered_blocks: unsharded blocks alive (FSDP); live_elements: DeepSpeed ZeRO-3's stage3_max_live_parameters
    (0 otherwise); in_flight: micro-batches held by the first stage."""

    data: int
    tensor: int
    pipeline: int
    context: int
    expert: int
    param_shard: int
    grad_shard: int
    state_shard: int
    sequence_parallel: bool
    gathered_blocks: int
    live_elements: int
    ddp_buckets: bool
    in_flight: int
    offload_states: bool
    offload_params: bool
    name: str


def layout(parallelism: Parallelism, workload: Workload) -> Layout:
    """The layout of `parallelism`; a ZeRO stage together with an FSDP strategy is refused. One object per
    (parallelism, micro-batches in flight), the only things it reads (a failing one raises every time)."""
    key = (parallelism, min(parallelism.pipeline, workload.grad_accum))
    if key not in _LAYOUTS:
        put(_LAYOUTS, key, _layout(parallelism, workload), 1024)
    return _LAYOUTS[key]


_LAYOUTS: dict[tuple[Parallelism, int], Layout] = {}


def _layout(parallelism: Parallelism, workload: Workload) -> Layout:
    if parallelism.zero_stage and parallelism.fsdp != "none":
        raise InvalidSetting("zero_stage: DeepSpeed ZeRO and FSDP are alternatives; pass either --zero or --fsdp")
    d = parallelism.data
    stage = _stage(parallelism)
    shard = min(d, NODE_GPUS) if parallelism.fsdp == "hybrid" else d
    if parallelism.offload == "params" and stage < 3:
        raise InvalidSetting("offload: parameter offload needs sharded parameters; pass --zero 3 or --fsdp full")
    return Layout(
        data=d, tensor=parallelism.tensor, pipeline=parallelism.pipeline, context=parallelism.context,
        expert=parallelism.expert, param_shard=shard if stage >= 3 else 1, grad_shard=shard if stage >= 2 else 1,
        state_shard=shard if stage >= 1 else 1, sequence_parallel=parallelism.tensor > 1,
        gathered_blocks=GATHERED_BLOCKS if stage >= 3 and parallelism.fsdp != "none" else 0,
        live_elements=parallelism.zero_live if parallelism.zero_stage == 3 else 0, ddp_buckets=d > 1 and stage == 0,
        in_flight=min(parallelism.pipeline, workload.grad_accum) if parallelism.pipeline > 1 else 1,
        offload_states=parallelism.offload in ("optimizer", "params"), offload_params=parallelism.offload == "params",
        name=_name(parallelism, stage))


def _stage(parallelism: Parallelism) -> int:
    return {"none": parallelism.zero_stage, "full": 3, "hybrid": 3, "shard-grad-op": 2}[parallelism.fsdp]


def _name(parallelism: Parallelism, stage: int) -> str:
    if parallelism.fsdp != "none":
        return f"FSDP {parallelism.fsdp}"
    if stage:
        return f"ZeRO-{stage}"
    return "DDP" if parallelism.data > 1 else "single GPU"


def stage_blocks(num_layers: int, pipeline: int) -> list[range]:
    """Blocks per pipeline stage: an even split, the remainder on the first stages (Megatron's default)."""
    base, extra = divmod(num_layers, pipeline)
    stages, start = [], 0
    for index in range(pipeline):
        size = base + (1 if index < extra else 0)
        stages.append(range(start, start + size))
        start += size
    return stages


def ddp_bucket_bytes(gradient_bytes: int) -> int:
    """DDP's bucket copy of the gradients: as large as the gradients (buckets of 25 MiB, last one partial)."""
    return gradient_bytes
