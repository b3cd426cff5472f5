"""LiveTensorTracker: the bytes of every live tensor storage during a PyTorch step, and their peak.

A TorchDispatchMode sees every operator's outputs; each new storage is counted once (views share it), at
its size rounded up to the CUDA caching allocator's 512-byte block granularity (kMinBlockSize = 512 and
round_size() in c10/cuda/CUDACachingAllocator.cpp; torch.cuda.max_memory_allocated counts these rounded
blocks), and uncounted when the storage is garbage collected. Storage.resize_ is not an operator, so it is
wrapped while tracking (FSDP2 frees and refills unsharded parameters that way), as torch's own
torch.distributed._tools.mem_tracker does. Counted this way a full training step agreed with MemTracker to
0.001% (/work/shared/TRACING-NOTES.md).

Categories: `mark(tensors, name)` labels storages (parameters, gradients, optimizer_state, kv_cache); the
peak's breakdown is computed afterwards from each storage's lifetime, so a label given after the peak (the
gradients, marked after backward) still applies to it. Unlabelled storages are activations and temporaries.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode, is_traceable_wrapper_subclass
from torch.utils._pytree import tree_leaves

BLOCK_BYTES = 512   # c10/cuda/CUDACachingAllocator.cpp: kMinBlockSize, every allocation is rounded up to it
OTHER = "activations"
# Operators whose result is their input tensor on a real device but a fresh tensor under FakeTensorMode:
# c10d's functional wait_tensor returns the tensor it waited on (torch/csrc/distributed/c10d/Functional.cpp,
# `wait_tensor(const at::Tensor& tensor) { ...; return tensor; }`), while its fake kernel returns a new
# one, which counted a tensor-parallel all-gather's output twice (the full logits of `lm_head` gathered by
# DTensor's Shard -> Replicate, funcol.all_gather_tensor then wait_tensor).
RETURNS_ITS_INPUT = frozenset({"_c10d_functional.wait_tensor.default"})


def rounded_bytes(nbytes: int) -> int:
    """What the caching allocator hands out for a request of nbytes: the next multiple of 512."""
    return -(-nbytes // BLOCK_BYTES) * BLOCK_BYTES


def storages(tensor: torch.Tensor) -> list[Any]:
    """The untyped storages behind a tensor, looking inside wrapper subclasses such as DTensor."""
    if is_traceable_wrapper_subclass(tensor):
        names, _ = tensor.__tensor_flatten__()
        inner = [getattr(tensor, name) for name in names]
        return [s for t in inner if isinstance(t, torch.Tensor) for s in storages(t)]
    return [tensor.untyped_storage()]


@dataclass(slots=True)
class _Life:
    bytes: int
    born: int
    died: int | None = None


# torch's TorchDispatchMode is untyped: its super() calls are marked for mypy below.
class LiveTensorTracker(TorchDispatchMode):
    """`with LiveTensorTracker() as tracker: ...`; then tracker.peak_bytes and tracker.breakdown()."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._serials = itertools.count()
        self._by_storage: dict[int, int] = {}   # storage _cdata -> serial, live storages only
        self._lives: dict[int, _Life] = {}
        self._labels: dict[int, str] = {}
        self._clock = 0
        self._peak_clock = 0
        self.current_bytes = 0
        self.peak_bytes = 0
        self._original_resize: Any = None

    def __enter__(self) -> LiveTensorTracker:  # noqa: PYI034  (typing.Self needs Python 3.11)
        self._original_resize = torch.UntypedStorage.resize_
        tracker, original = self, self._original_resize

        def resize_(storage: Any, size: int) -> Any:
            result = original(storage, size)
            tracker._resized(storage)
            return result

        torch.UntypedStorage.resize_ = resize_  # type: ignore[method-assign, assignment]
        super().__enter__()  # type: ignore[no-untyped-call]
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)  # type: ignore[no-untyped-call]
        torch.UntypedStorage.resize_ = self._original_resize  # type: ignore[method-assign]

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if str(func) in RETURNS_ITS_INPUT and isinstance(out, torch.Tensor):
            self.alias(out, args[0])
            return out
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.track(leaf)
        return out

    def track(self, tensor: torch.Tensor) -> list[int]:
        """Count the tensor's storages if they are new; returns their serial numbers."""
        return [self._register(storage) for storage in storages(tensor)]

    def alias(self, tensor: torch.Tensor, source: torch.Tensor) -> None:
        """Count `tensor` as `source`'s storage (see RETURNS_ITS_INPUT): no new bytes, and the source's
        bytes stay live until both are gone."""
        for out, src in zip(storages(tensor), storages(source)):
            if out._cdata in self._by_storage:
                continue
            self._by_storage[out._cdata] = self._register(src)
            weakref.finalize(out, self._forget, out._cdata, src)

    def _forget(self, key: int, _source: Any) -> None:
        """An alias died: drop its key (the source, held until now by this call's arguments, may die next)."""
        self._by_storage.pop(key, None)

    def mark(self, tensors: Iterable[torch.Tensor | None], label: str) -> None:
        """Label these tensors' storages (tracking them first if they were made before tracking began)."""
        for tensor in tensors:
            if isinstance(tensor, torch.Tensor):
                for serial in self.track(tensor):
                    self._labels.setdefault(serial, label)

    def label_live(self, label: str) -> None:
        """Label every live storage that has no label yet."""
        for serial in self._by_storage.values():
            self._labels.setdefault(serial, label)

    def reset_peak(self) -> None:
        """Start a new peak from what is live now (the measured step after a warm-up)."""
        self.peak_bytes = self.current_bytes
        self._peak_clock = self._clock

    def breakdown(self) -> dict[str, int]:
        """Bytes live at the peak, by label; sums to peak_bytes."""
        out: dict[str, int] = {}
        for serial, life in self._lives.items():
            if life.born <= self._peak_clock and (life.died is None or life.died > self._peak_clock):
                label = self._labels.get(serial, OTHER)
                out[label] = out.get(label, 0) + life.bytes
        return out

    def _register(self, storage: Any) -> int:
        key = storage._cdata
        serial = self._by_storage.get(key)
        if serial is not None:
            return serial
        serial = next(self._serials)
        self._by_storage[key] = serial
        self._clock += 1
        self._lives[serial] = _Life(bytes=rounded_bytes(storage.nbytes()), born=self._clock)
        weakref.finalize(storage, self._free, key, serial)
        self._grow(self._lives[serial].bytes)
        return serial

    def _resized(self, storage: Any) -> None:
        serial = self._by_storage.get(storage._cdata)
        if serial is None:
            return
        life = self._lives[serial]
        self._clock += 1
        new = _Life(bytes=rounded_bytes(storage.nbytes()), born=self._clock)
        life.died = self._clock
        self._lives[serial] = life   # the old size ends here; the new size lives on under a new serial
        fresh = next(self._serials)
        self._lives[fresh] = new
        self._by_storage[storage._cdata] = fresh
        if serial in self._labels:
            self._labels[fresh] = self._labels[serial]
        self.current_bytes -= life.bytes
        self._grow(new.bytes)

    def _grow(self, nbytes: int) -> None:
        self.current_bytes += nbytes
        if self.current_bytes > self.peak_bytes:
            self.peak_bytes = self.current_bytes
            self._peak_clock = self._clock

    def _free(self, key: int, serial: int) -> None:
        current = self._by_storage.pop(key, None)   # a resized storage lives on under a newer serial
        life = self._lives.get(serial if current is None else current)
        if life is None or life.died is not None:
            return
        self._clock += 1
        life.died = self._clock
        self.current_bytes -= life.bytes
