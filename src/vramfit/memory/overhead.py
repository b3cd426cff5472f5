"""Memory no tensor formula explains: the CUDA context, library workspaces, and the caching allocator's rounding.

Each constant names the measurement or source it comes from:

- CUDA context + loaded kernels, seen by nvidia-smi but not by torch.cuda counters ("device" level):
  426 MiB, measured with PyTorch 2.10.0+cu130 on an RTX 6000 Ada as the nvidia-smi usage after
  `torch.cuda.mem_get_info(0)` created the context (unslothai/unsloth-zoo PR #1053, 2026-08). PyTorch loads
  CUDA modules lazily by default since 1.13 (pytorch/pytorch PR #86509: 287,047,680 bytes lazy vs 666,632,192
  eager after one small tensor op; ptrblck in pytorch/pytorch#109888: "around 400MB if CUDA >= 11.7 is used
  and lazy module loading enabled"). Stacks before CUDA 11.7 loaded every kernel up front: the Hugging Face
  docs measured 1343 MiB on a V100 with CUDA 11.2 (model_memory_anatomy.md; published row hf-bertlarge-load),
  kept as CUDA_CONTEXT_EAGER_BYTES. Kernels loaded on first use (cuBLAS, attention) add to the lazy figure
  and are not modelled: a GPU measurement should replace this constant.
- vLLM's non-torch memory (context, cuBLAS/NCCL handles, custom all-reduce buffers): 1.79 GiB on one GPU and
  3.58 GiB per GPU at tensor parallel 2, from vLLM's own profiler log (rows vllm-llama3-8b-tp1-profile and
  vllm-llama3-8b-tp2-profile).
- NCCL's communicator buffers, allocated by NCCL itself (cudaMalloc / cuMem), so nvidia-smi sees them and the
  torch.cuda counters do not ("device" level): 544 MB per GPU for a 2-GPU communicator and 688 MB for a larger one,
  measured on 4 x A100 with NVLink after a 4 MB all-reduce (NVIDIA/nccl issue #964, 2023-08-16; nvidia-smi figures,
  read as MiB). What they are (NVIDIA/nccl v2.18.3 / v2.21.5 src/init.cc, src/include/device.h): per channel and peer
  a SIMPLE buffer of NCCL_BUFFSIZE (4 MiB) + LL (512 KiB) + LL128 (4.7 MiB), up to 32 channels. Not modelled: NVLS
  buffers on NVSwitch systems with more than 2 GPUs (0.75-2.25 GiB more by NCCL release: nccl src/transport/nvls.cc;
  vllm-project/vllm#9699 logs nvlsTotalSize 2415919104 on 8 x H200), communicators that all-to-all widens (nccl #1685),
  and NCCL >= 2.22's connect-on-first-use (NCCL_RUNTIME_CONNECT), which allocates less for unused algorithms.
- cuBLAS workspace, allocated through PyTorch's caching allocator (so "allocated"):
  aten/src/ATen/cuda/CublasHandlePool.cpp `parseChosenWorkspaceSize`: ":4096:2:16:8" = 4096 KiB x 2 +
  16 KiB x 8 = 8,519,680 bytes by default, 4096 KiB x 8 = 32 MiB on Hopper (sm90). One per handle/stream.
- Caching-allocator rounding (c10/cuda/CUDACachingAllocator.cpp): requests round up to 512 bytes
  (`kMinBlockSize`); requests up to 1 MiB come from 2 MiB segments (`kSmallBuffer`), requests up to 10 MiB
  from 20 MiB segments (`kLargeBuffer`), larger ones get a segment rounded up to 2 MiB (`kRoundLarge`).
  What a tensor occupies in reserved memory beyond its bytes is its segment's rounding.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from vramfit.result import Component
from vramfit.units import KiB, MiB

CUDA_CONTEXT_BYTES = 426 * MiB
CUDA_CONTEXT_SOURCE = ("nvidia-smi after CUDA context creation, PyTorch 2.10.0+cu130, RTX 6000 Ada, lazy module "
                       "loading (unslothai/unsloth-zoo PR #1053); see vramfit.memory.overhead for older stacks")
CUDA_CONTEXT_EAGER_BYTES = 1343 * MiB  # HF model_memory_anatomy, V100/CUDA 11.2, every kernel loaded up front
VLLM_NON_TORCH_BYTES = {1: int(1.79 * 1024 * MiB), 2: int(3.58 * 1024 * MiB)}
VLLM_NON_TORCH_SOURCE = ("vLLM profiler log, Llama-3-8B on 80 GB GPUs: non_torch_memory 1.79 GiB (tp 1), "
                         "3.58 GiB per GPU (tp 2) (rows vllm-llama3-8b-tp1/tp2-profile)")
CUBLAS_WORKSPACE_BYTES = 4096 * KiB * 2 + 16 * KiB * 8
CUBLAS_WORKSPACE_HOPPER_BYTES = 4096 * KiB * 8
# The caching allocator's sizes (c10/cuda/CUDACachingAllocator.cpp; truth/allocator.py replays the same rules):
MIN_BLOCK_BYTES = 512            # kMinBlockSize: every request is rounded up to a multiple
SMALL_REQUEST_BYTES = 1 * MiB    # kSmallSize: largest request served by the small pool
SMALL_SEGMENT_BYTES = 2 * MiB    # kSmallBuffer: a small-pool segment
MIN_LARGE_ALLOC_BYTES = 10 * MiB  # kMinLargeAlloc: from here a request gets a segment of its own size
LARGE_SEGMENT_BYTES = 20 * MiB   # kLargeBuffer: the segment of a request below kMinLargeAlloc
ROUND_LARGE_BYTES = 2 * MiB      # kRoundLarge: the rounding of a segment of its own


CUDA_CONTEXT_EAGER_SOURCE = ("nvidia-smi after torch.ones(1, 1).cuda(), V100, CUDA 11.2, every kernel loaded up "
                             "front (transformers docs model_memory_anatomy.md, row hf-bertlarge-load): torch before "
                             "1.13 loads CUDA modules eagerly (pytorch/pytorch PR #86509)")
_CONTEXTS = {
    False: Component(name="cuda_context", bytes=CUDA_CONTEXT_BYTES, level="device", formula="measured constant",
                     source=CUDA_CONTEXT_SOURCE),
    True: Component(name="cuda_context", bytes=CUDA_CONTEXT_EAGER_BYTES, level="device",
                    formula="measured constant (eager module loading)", source=CUDA_CONTEXT_EAGER_SOURCE),
}


def cuda_context(eager: bool = False) -> Component:
    """The context of a lazy-loading stack, or with `eager` (torch < 1.13) the one that loads every kernel."""
    return _CONTEXTS[eager]


def vllm_non_torch(tensor_parallel: int) -> Component:
    """vLLM's non-torch memory per GPU; tp > 2 takes the tp 2 figure (the all-reduce buffers do not grow)."""
    nbytes = VLLM_NON_TORCH_BYTES[1 if tensor_parallel == 1 else 2]
    return Component(name="cuda_context", bytes=nbytes, level="device",
                     formula="measured non_torch_memory of vLLM's profiler", inputs={"tp": tensor_parallel},
                     source=VLLM_NON_TORCH_SOURCE)


NCCL_COMMUNICATOR_BYTES = {2: 544 * MiB, 3: 688 * MiB}   # by ranks: 2, or more (3 stands for "more than 2")
NCCL_SOURCE = "NVIDIA/nccl issue #964: nvidia-smi after a 4 MB all-reduce, 4 x A100 NVLink (NCCL 2.18)"


def nccl_buffers(groups: Iterable[int]) -> Component | None:
    """One NCCL communicator per process group of more than one rank that this GPU is in (`groups`: their sizes)."""
    sizes = [size for size in groups if size > 1]
    if not sizes:
        return None
    nbytes = sum(NCCL_COMMUNICATOR_BYTES[min(size, 3)] for size in sizes)
    return Component(name="nccl", bytes=nbytes, level="device",
                     formula="544 MiB per 2-rank communicator, 688 MiB per larger one", inputs={"groups": sizes},
                     source=NCCL_SOURCE)


def cublas_workspace(hopper: bool = False) -> Component:
    nbytes = CUBLAS_WORKSPACE_HOPPER_BYTES if hopper else CUBLAS_WORKSPACE_BYTES
    return Component(name="workspace", bytes=nbytes, formula=":4096:2:16:8 -> 2 x 4 MiB + 8 x 16 KiB "
                     "(32 MiB on sm90)", inputs={"hopper": hopper},
                     source="PyTorch aten/src/ATen/cuda/CublasHandlePool.cpp parseChosenWorkspaceSize")


def block_bytes(request: int) -> int:
    """What the allocator hands out for a request: rounded up to 512 bytes (counted as allocated)."""
    return -(-max(request, 1) // MIN_BLOCK_BYTES) * MIN_BLOCK_BYTES


def segment_bytes(request: int) -> int:
    """The segment of its own a large request (> 10 MiB) gets: rounded up to 2 MiB (`kRoundLarge`)."""
    return -(-request // ROUND_LARGE_BYTES) * ROUND_LARGE_BYTES


def reserve_bytes(requests: Iterable[int]) -> int:
    """Reserved beyond allocated for tensors that stay alive: the 2 MiB rounding of each large tensor's
    segment, plus one partly used 2 MiB small-pool segment and 20 MiB medium segment when such tensors exist."""
    return padded_reserve_bytes(reserve_sums(Counter(requests)))


# (large, small, medium): the segment rounding of the large requests, and the block bytes of the small-pool
# and of the medium requests. Sums over requests, so the sums of two sets of requests add up.
ReserveSums = tuple[int, int, int]


def reserve_sums(counts: Mapping[int, int]) -> ReserveSums:
    """The ReserveSums of requests given as size -> how many: a model repeats a few sizes many times, so each
    size is rounded once and multiplied by its count."""
    sizes = counts.items()
    large = sum(n * (segment_bytes(s) - block_bytes(s)) for s, n in sizes if s > MIN_LARGE_ALLOC_BYTES)
    small = sum(n * block_bytes(s) for s, n in sizes if s <= SMALL_REQUEST_BYTES)
    medium = sum(n * block_bytes(s) for s, n in sizes if SMALL_REQUEST_BYTES < s <= MIN_LARGE_ALLOC_BYTES)
    return large, small, medium


def padded_reserve_bytes(sums: ReserveSums) -> int:
    """The large requests' rounding plus the unused tails of the small-pool and medium segments."""
    large, small, medium = sums
    small_pad = (-small) % SMALL_SEGMENT_BYTES
    medium_pad = (-medium) % LARGE_SEGMENT_BYTES
    return large + small_pad + medium_pad


def allocator_reserve(sums: ReserveSums) -> Component:
    """The reserved-level component for the live requests' reserve_sums (added over sets of requests)."""
    nbytes = padded_reserve_bytes(sums)
    return Component(name="allocator_reserve", bytes=nbytes, level="reserved",
                     formula="per live tensor: segment rounding (2 MiB for > 10 MiB) + unused tail of the shared "
                             "2 MiB / 20 MiB segments",
                     source="PyTorch c10/cuda/CUDACachingAllocator.cpp kMinBlockSize, kSmallBuffer, kLargeBuffer, "
                            "kRoundLarge")


def rounding_bytes(requests: Iterable[int]) -> int:
    """Allocated beyond the tensors' bytes: each request rounded up to 512 bytes."""
    return sum(block_bytes(s) - s for s in requests)
