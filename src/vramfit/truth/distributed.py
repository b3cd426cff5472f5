"""Multi-GPU layouts traced on one CPU: torch.distributed with a fake process group of N ranks.

The fake backend (torch.testing._internal.distributed.fake_pg.FakeStore, backend "fake") runs every
collective as a no-op that still returns correctly shaped outputs, so the memory each rank holds is the
real layout's: FSDP2 (torch.distributed.fsdp.fully_shard) per decoder layer and at the root, with
reshard_after_forward True for "full", False for "shard-grad-op", over a (replicate, shard) mesh for
"hybrid"; DistributedDataParallel (gradient buckets included); tensor parallelism with DTensor
(torch.distributed.tensor.parallel: q/k/v and gate/up column-wise, o and down row-wise, the head
column-wise with its logits gathered, as transformers' tp_plan; the embedding and a tied head
replicated). The device mesh is built before entering fake mode.

Ranks: rank 0 and the last rank are traced (FSDP2 pads every shard to the same size, and DDP and TP ranks
hold the same shapes, so the ranks between them hold what these hold); each one's peak is reported and
the largest is the truth.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from vramfit.settings import Settings

HYBRID_SHARD_GPUS = 8   # hybrid sharding: shard within a node of 8 GPUs (the DGX/HGX node), replicate across


def layout(settings: Settings) -> str:
    """single | fsdp | ddp | tp: what a multi-GPU setting runs as; raises Untraceable for the rest."""
    from vramfit.truth.trace import _MEASURE, Untraceable

    p = settings.parallelism
    if p.gpus == 1:
        return "single"
    refused = [(p.pipeline > 1, "pipeline parallelism"), (p.context > 1, "context parallelism"),
               (p.expert > 1, "expert parallelism"), (p.zero_stage > 0, "DeepSpeed ZeRO (trace --fsdp instead)"),
               (p.tensor > 1 and p.fsdp != "none", "tensor parallelism combined with FSDP"),
               (p.tensor > 1 and p.tensor != p.gpus, "tensor parallelism combined with data parallelism")]
    for refused_now, what in refused:
        if refused_now:
            raise Untraceable(f"{what} is not traced over a fake process group; {_MEASURE}")
    if p.tensor > 1:
        return "tp"
    if p.fsdp != "none":
        return "fsdp"
    return "ddp" if settings.mode == "training" else "single"


@contextlib.contextmanager
def fake_world(world_size: int, rank: int) -> Iterator[None]:
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def device_mesh(settings: Settings) -> Any:
    """The mesh of this layout, on the CPU device (built before fake mode is entered)."""
    from torch.distributed.device_mesh import init_device_mesh

    gpus, fsdp = settings.parallelism.gpus, settings.parallelism.fsdp
    if fsdp == "hybrid" and gpus > HYBRID_SHARD_GPUS and gpus % HYBRID_SHARD_GPUS == 0:
        return init_device_mesh("cpu", (gpus // HYBRID_SHARD_GPUS, HYBRID_SHARD_GPUS),
                                mesh_dim_names=("replicate", "shard"))
    return init_device_mesh("cpu", (gpus,))


def distribute(module: Any, settings: Settings, mesh: Any, kind: str) -> Any:
    if kind == "fsdp":
        return _fully_shard(module, settings, mesh)
    if kind == "tp":
        return _tensor_parallel(module, mesh)
    if kind == "ddp":
        return _DDP(_ddp(module, mesh))
    return module


def _decoder_layers(module: Any) -> list[Any]:
    import torch

    found = [m for name, m in module.named_modules() if isinstance(m, torch.nn.ModuleList)
             and name.split(".")[-1] in ("layers", "h", "layer", "blocks")]
    if not found:
        from vramfit.truth.trace import _MEASURE, Untraceable

        raise Untraceable(f"no decoder layer list found to shard; {_MEASURE}")
    return list(found[0])


def _fully_shard(module: Any, settings: Settings, mesh: Any) -> Any:
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    reshard = settings.parallelism.fsdp != "shard-grad-op"
    amp = settings.precision.amp
    policy = MixedPrecisionPolicy(param_dtype=getattr(torch, {"bf16": "bfloat16", "fp16": "float16"}[amp]),
                                  reduce_dtype=torch.float32) if amp else MixedPrecisionPolicy()
    for layer in _decoder_layers(module):
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard, mp_policy=policy)
    fully_shard(module, mesh=mesh, reshard_after_forward=reshard, mp_policy=policy)
    return module


_COLUMN = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
_ROW = ("o_proj", "down_proj")


def _tensor_parallel(module: Any, mesh: Any) -> Any:
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    if any(".experts." in name for name, _ in module.named_parameters()):
        from vramfit.truth.trace import _MEASURE, Untraceable

        raise Untraceable(f"tensor parallelism of mixture-of-experts layers (how the experts are split) is not "
                          f"traced; {_MEASURE}")

    for layer in _decoder_layers(module):
        plan: dict[str, Any] = {}
        for name, _ in layer.named_modules():
            leaf = name.split(".")[-1]
            if leaf in _COLUMN:
                plan[name] = ColwiseParallel()
            elif leaf in _ROW:
                plan[name] = RowwiseParallel()
        if not plan:
            from vramfit.truth.trace import _MEASURE, Untraceable

            raise Untraceable(f"no q/k/v/o or gate/up/down projections to split; {_MEASURE}")
        parallelize_module(layer, mesh, plan)
    _split_head(module, mesh)
    return module


def _split_head(module: Any, mesh: Any) -> None:
    """The output projection split by vocabulary rows with the logits gathered, as transformers' own plan
    does (`_tp_plan = {"lm_head": "colwise_gather_output"}` in its Llama/Qwen modeling files); a head tied
    to the input embedding stays whole, like the embedding."""
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import ColwiseParallel, parallelize_module

    head, embedding = module.get_output_embeddings(), module.get_input_embeddings()
    if head is None or (embedding is not None and head.weight is embedding.weight):
        return
    name = next(name for name, child in module.named_modules() if child is head)
    parallelize_module(module, mesh, {name: ColwiseParallel(output_layouts=Replicate())})


def _ddp(module: Any, mesh: Any) -> Any:
    """DDP as constructed on a GPU, minus the start-up check that reads every parameter's values across
    ranks (fake tensors have none; it allocates nothing that lasts)."""
    from torch.nn.parallel import DistributedDataParallel
    from torch.nn.parallel import distributed as ddp_module

    verify = getattr(ddp_module, "_verify_param_shape_across_processes")  # noqa: B009
    setattr(ddp_module, "_verify_param_shape_across_processes", lambda *args, **kwargs: None)  # noqa: B010
    try:
        ddp = DistributedDataParallel(module, process_group=mesh.get_group())
    finally:
        setattr(ddp_module, "_verify_param_shape_across_processes", verify)  # noqa: B010
    # DDP rejects a hook whose `bucket` annotation is a string (this module's annotations are): a lambda.
    ddp.register_comm_hook(state=None, hook=lambda state, bucket: _completed(bucket.buffer()))
    return ddp


def _completed(bucket_buffer: torch.Tensor) -> Any:
    """DDP's default hook all-reduces each gradient bucket in place (NCCL writes into the bucket); the
    fake process group's future carries no tensor, so the bucket itself is handed back, unchanged."""
    future: Any = torch.futures.Future()
    future.set_result(bucket_buffer)
    return future


class _DDP:
    """DDP's wrapper, exposing the wrapped model's config (the step reads it) and calling through DDP."""

    def __init__(self, ddp: Any) -> None:
        self._ddp = ddp

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ddp.module, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._ddp(*args, **kwargs)


def ranks_to_trace(settings: Settings) -> list[int]:
    gpus = settings.parallelism.gpus
    return [0] if gpus == 1 else [0, gpus - 1]
