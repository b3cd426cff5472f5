"""Replay a traced allocation sequence through a model of PyTorch's CUDA caching allocator: peak reserved.

`torch.cuda.max_memory_reserved` (and pynvml's device `used`, minus the CUDA context) is the high-water mark of
the segments the caching allocator took from cudaMalloc; it is never released during a run without
`empty_cache()`. Its rules, from c10/cuda/CUDACachingAllocator.cpp (the same in torch 1.10/1.11 of 2022, the
stack of the transformers docs' rows, and in torch 2.x):

1. Every request is rounded up to kMinBlockSize = 512 bytes (`round_size`).
2. Requests <= kSmallSize (1 MiB) come from the small pool, others from the large pool (`get_pool`).
3. A new segment is kSmallBuffer = 2 MiB for small requests, kLargeBuffer = 20 MiB for large requests below
   kMinLargeAlloc = 10 MiB, else the request rounded up to kRoundLarge = 2 MiB (`get_allocation_size`).
4. A request takes the smallest free block of its pool that fits (best fit: the pool is a std::set ordered by
   stream, size, then address, searched with lower_bound; `get_free_block`).
5. The block is split when the remainder is >= 512 bytes (small pool) or > 1 MiB (large pool)
   (`should_split`: `remaining > kSmallSize` with the default max_split_size).
6. A freed block merges with free neighbours of its segment (`free_block` / `try_merge_blocks`).
7. Segments are released only by empty_cache() or when cudaMalloc fails (`release_cached_blocks`, which frees
   every free whole segment, then the allocation retries); `capacity_bytes` models that last case.

Zero-byte requests allocate nothing (`THCCachingAllocator::malloc` returns nullptr for size 0).
One stream only, no CUDA graphs, no expandable segments, no garbage_collection_threshold (all off by default).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from vramfit.memory.overhead import (
    LARGE_SEGMENT_BYTES,
    MIN_BLOCK_BYTES,
    MIN_LARGE_ALLOC_BYTES,
    SMALL_REQUEST_BYTES,
    SMALL_SEGMENT_BYTES,
    block_bytes,
    segment_bytes,
)


@dataclass(frozen=True, slots=True)
class Event:
    """One request (nbytes > 0 allocates, the same key with nbytes = 0 frees it)."""
    key: int
    nbytes: int
    allocate: bool


@dataclass(frozen=True, slots=True)
class Replay:
    """peak_requested_bytes: live requests rounded to 512 (what the tracker counts); peak_allocated_bytes: live
    blocks, which keep an unsplit remainder (torch.cuda.max_memory_allocated counts block sizes); peak_reserved_bytes:
    segments (torch.cuda.max_memory_reserved)."""
    peak_requested_bytes: int
    peak_allocated_bytes: int
    peak_reserved_bytes: int
    final_reserved_bytes: int
    segments: int
    released_segments: int


round_size = block_bytes   # Rule 1: the next multiple of 512 (at least 512), as the estimate rounds


def segment_size(nbytes: int) -> int:
    """Rule 3: the cudaMalloc size for a rounded request that no cached block can serve."""
    if nbytes <= SMALL_REQUEST_BYTES:
        return SMALL_SEGMENT_BYTES
    if nbytes < MIN_LARGE_ALLOC_BYTES:
        return LARGE_SEGMENT_BYTES
    return segment_bytes(nbytes)


def should_split(block_bytes: int, nbytes: int, small: bool) -> bool:
    """Rule 5."""
    remaining = block_bytes - nbytes
    return remaining >= MIN_BLOCK_BYTES if small else remaining > SMALL_REQUEST_BYTES


class _Block:
    __slots__ = ("address", "allocated", "next", "prev", "size", "small")

    def __init__(self, address: int, size: int, small: bool) -> None:
        self.address, self.size, self.small, self.allocated = address, size, small, False
        self.prev: _Block | None = None
        self.next: _Block | None = None


class CachingAllocator:
    """The caching allocator's bookkeeping without memory: addresses are numbers."""

    def __init__(self, capacity_bytes: int | None = None) -> None:
        self.capacity_bytes = capacity_bytes
        self._free: dict[bool, list[tuple[int, int]]] = {True: [], False: []}   # pool -> sorted (size, address)
        self._blocks: dict[int, _Block] = {}    # address -> free block
        self._live: dict[int, _Block] = {}      # key -> allocated block
        self._next_address = itertools.count(0, 1 << 40)
        self.requested_bytes = self.allocated_bytes = self.reserved_bytes = 0
        self.peak_requested_bytes = self.peak_allocated_bytes = self.peak_reserved_bytes = 0
        self._requests: dict[int, int] = {}    # key -> rounded request
        self.segments = self.released_segments = 0

    def malloc(self, key: int, nbytes: int) -> None:
        if nbytes == 0:
            return
        size = round_size(nbytes)
        small = size <= SMALL_REQUEST_BYTES
        block = self._take_free(size, small) or self._new_segment(size, small)
        if should_split(block.size, size, small):
            rest = _Block(block.address + size, block.size - size, small)
            rest.prev, rest.next = block, block.next
            if block.next is not None:
                block.next.prev = rest
            block.next, block.size = rest, size
            self._put_free(rest)
        block.allocated = True
        self._live[key] = block
        self._requests[key] = size
        self.requested_bytes += size
        self.allocated_bytes += block.size
        self.peak_requested_bytes = max(self.peak_requested_bytes, self.requested_bytes)
        self.peak_allocated_bytes = max(self.peak_allocated_bytes, self.allocated_bytes)

    def free(self, key: int) -> None:
        block = self._live.pop(key, None)
        if block is None:
            return
        block.allocated = False
        self.requested_bytes -= self._requests.pop(key)
        self.allocated_bytes -= block.size
        for neighbour in (block.prev, block.next):   # rule 6
            if neighbour is not None and not neighbour.allocated:
                self._take_block(neighbour)
                if neighbour is block.prev:
                    block.address, block.prev = neighbour.address, neighbour.prev
                    if neighbour.prev is not None:
                        neighbour.prev.next = block
                else:
                    block.next = neighbour.next
                    if neighbour.next is not None:
                        neighbour.next.prev = block
                block.size += neighbour.size
        self._put_free(block)

    def _take_free(self, size: int, small: bool) -> _Block | None:
        """Rule 4: the smallest free block of the pool that fits, lowest address first."""
        pool = self._free[small]
        index = bisect.bisect_left(pool, (size, -1))
        if index == len(pool):
            return None
        return self._take_block(self._blocks[pool[index][1]])

    def _take_block(self, block: _Block) -> _Block:
        pool = self._free[block.small]
        del pool[bisect.bisect_left(pool, (block.size, block.address))]
        del self._blocks[block.address]
        return block

    def _put_free(self, block: _Block) -> None:
        bisect.insort(self._free[block.small], (block.size, block.address))
        self._blocks[block.address] = block

    def _new_segment(self, size: int, small: bool) -> _Block:
        nbytes = segment_size(size)
        if self.capacity_bytes is not None and self.reserved_bytes + nbytes > self.capacity_bytes:
            self._release_cached_segments()   # rule 7: cudaMalloc failed, free whole cached segments, retry
        self.reserved_bytes += nbytes
        self.peak_reserved_bytes = max(self.peak_reserved_bytes, self.reserved_bytes)
        self.segments += 1
        return _Block(next(self._next_address), nbytes, small)

    def _release_cached_segments(self) -> None:
        for small in (True, False):
            for size, address in list(self._free[small]):
                block = self._blocks[address]
                if block.prev is None and block.next is None:   # a whole segment, unused
                    self._take_block(block)
                    self.reserved_bytes -= size
                    self.released_segments += 1


def replay(events: Iterable[Event], capacity_bytes: int | None = None) -> Replay:
    """Run the sequence through the allocator; the peaks are high-water marks over the whole sequence."""
    allocator = CachingAllocator(capacity_bytes)
    for event in events:
        if event.allocate:
            allocator.malloc(event.key, event.nbytes)
        else:
            allocator.free(event.key)
    return Replay(peak_requested_bytes=allocator.peak_requested_bytes,
                  peak_allocated_bytes=allocator.peak_allocated_bytes,
                  peak_reserved_bytes=allocator.peak_reserved_bytes,
                  final_reserved_bytes=allocator.reserved_bytes, segments=allocator.segments,
                  released_segments=allocator.released_segments)


def tracker_events(tracker: object) -> list[Event]:
    """The allocation/free sequence a LiveTensorTracker saw, in order: each storage life is born and dies at
    a tick of the tracker's clock (a resize ends one life and starts the next at the same tick: free first).
    Reads the tracker's record of lives after the fact, so tracking itself is unchanged."""
    return [event for _, event in tracker_timeline(tracker)]


def tracker_timeline(tracker: object) -> list[tuple[int, Event]]:
    """tracker_events with the tracker clock's tick of each event (to cut a run into steps)."""
    ticks: list[tuple[int, int, Event]] = []
    for serial, life in tracker._lives.items():  # type: ignore[attr-defined]
        ticks.append((life.born, 1, Event(key=serial, nbytes=life.bytes, allocate=True)))
        if life.died is not None:
            ticks.append((life.died, 0, Event(key=serial, nbytes=life.bytes, allocate=False)))
    return [(tick, event) for tick, _, event in sorted(ticks, key=lambda tick: (tick[0], tick[1]))]
