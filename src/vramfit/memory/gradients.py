"""Gradients, and the per-tensor allocation rule every parameter-sized term follows.

PyTorch gives each trainable parameter its own `.grad` tensor of the parameter's dtype and shape
(torch/csrc/autograd/functions/accumulate_grad.h): fp32 master weights under AMP have fp32 gradients, a pure
bf16 model has bf16 gradients. With `zero_grad(set_to_none=True)` (the default since PyTorch 2.0, and what the
transformers Trainer calls after each optimizer step) the gradients exist from the backward pass to the
optimizer step only; under gradient accumulation they stay alive through the forward and backward passes of
every later micro-batch.
"""

from __future__ import annotations

from collections.abc import Iterable

# c10/cuda/CUDACachingAllocator.cpp: kMinBlockSize = 512, and round_size() rounds every request up to a
# multiple of it. The CPU traces the tests compare against count storages the same way.
ALLOCATION_GRANULE = 512


def allocation_bytes(nbytes: int) -> int:
    """Bytes the caching allocator hands out for one tensor of `nbytes`: rounded up to 512."""
    return -(-nbytes // ALLOCATION_GRANULE) * ALLOCATION_GRANULE


def tensors_bytes(elements: Iterable[int], bytes_per_element: float) -> int:
    """Sum over tensors of each tensor's rounded allocation."""
    return sum(allocation_bytes(int(-(-n * bytes_per_element // 1))) for n in elements)


def gradient_bytes(trainable_elements: Iterable[int], grad_dtype_bytes: int) -> int:
    """sum over trainable tensors of round512(elements x bytes of the parameter dtype)."""
    return tensors_bytes(trainable_elements, grad_dtype_bytes)
