"""The caching-allocator replay (truth/allocator.py) on sequences whose answer follows from the rules in
c10/cuda/CUDACachingAllocator.cpp by hand, and against the tracker on a real CPU step."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vramfit.truth.allocator import Event, replay, round_size, segment_size, tracker_events

KiB, MiB = 1 << 10, 1 << 20


def alloc(key: int, nbytes: int) -> Event:
    return Event(key=key, nbytes=nbytes, allocate=True)


def free(key: int) -> Event:
    return Event(key=key, nbytes=0, allocate=False)


def test_rounding_to_512_and_segment_sizes() -> None:
    assert [round_size(n) for n in (1, 512, 513, 1000)] == [512, 512, 1024, 1024]
    assert segment_size(512) == 2 * MiB            # small request: kSmallBuffer
    assert segment_size(1 * MiB) == 2 * MiB        # <= kSmallSize is still small
    assert segment_size(1 * MiB + 512) == 20 * MiB  # large below kMinLargeAlloc: kLargeBuffer
    assert segment_size(10 * MiB) == 10 * MiB       # from 10 MiB: its own segment, rounded to 2 MiB
    assert segment_size(10 * MiB + 512) == 12 * MiB


def test_one_byte_takes_512_of_a_2_mib_segment() -> None:
    result = replay([alloc(1, 1)])
    assert (result.peak_requested_bytes, result.peak_allocated_bytes, result.peak_reserved_bytes) == (512, 512, 2 * MiB)


def test_small_segment_holds_4096_blocks_of_512() -> None:
    assert replay([alloc(k, 512) for k in range(4096)]).peak_reserved_bytes == 2 * MiB
    assert replay([alloc(k, 512) for k in range(4097)]).peak_reserved_bytes == 4 * MiB


def test_large_requests_share_a_20_mib_segment() -> None:
    # 1 MiB + 512 from a new 20 MiB segment; the remainder (19 MiB - 512 > 1 MiB) is split off and serves 5 MiB.
    result = replay([alloc(1, MiB + 1), alloc(2, 5 * MiB)])
    assert result.peak_reserved_bytes == 20 * MiB
    assert result.segments == 1


def test_large_remainder_up_to_1_mib_is_not_split() -> None:
    # 11 MiB + 512 -> a 12 MiB segment; remainder 1 MiB - 512 <= kSmallSize: the block stays 12 MiB.
    result = replay([alloc(1, 11 * MiB + 1)])
    assert result.peak_requested_bytes == 11 * MiB + 512
    assert result.peak_allocated_bytes == 12 * MiB
    # 10 MiB + 512 -> 12 MiB segment; remainder 2 MiB - 512 > 1 MiB: split off, and it serves 1.5 MiB whole
    # (its own remainder, 0.5 MiB - 512, is not split): the two blocks are the full 12 MiB.
    split = replay([alloc(1, 10 * MiB + 1), alloc(2, 3 * MiB // 2)])
    assert (split.peak_requested_bytes, split.peak_allocated_bytes, split.peak_reserved_bytes) == (
        10 * MiB + 512 + 3 * MiB // 2, 12 * MiB, 12 * MiB)


def test_best_fit_takes_the_smallest_block_that_fits() -> None:
    # Free 30 MiB and 12 MiB segments; 11 MiB must take the 12 MiB one, so 29 MiB still fits the 30 MiB one.
    result = replay([alloc(1, 30 * MiB), alloc(2, 12 * MiB), free(1), free(2), alloc(3, 11 * MiB), alloc(4, 29 * MiB)])
    assert result.peak_reserved_bytes == 42 * MiB


def test_freed_neighbours_merge() -> None:
    # Four 512 KiB blocks fill one 2 MiB small segment. Two adjacent freed blocks merge into 1 MiB, which
    # serves a 1 MiB request; two non-adjacent ones do not, and a second segment is needed.
    fill = [alloc(k, 512 * KiB) for k in range(4)]
    assert replay([*fill, free(0), free(1), alloc(9, MiB)]).peak_reserved_bytes == 2 * MiB
    assert replay([*fill, free(0), free(2), alloc(9, MiB)]).peak_reserved_bytes == 4 * MiB


def test_segments_are_kept_and_reused() -> None:
    result = replay([alloc(1, 100 * MiB), free(1), alloc(2, 50 * MiB), alloc(3, 200 * MiB)])
    assert result.peak_reserved_bytes == 300 * MiB
    assert result.final_reserved_bytes == 300 * MiB


def test_pools_do_not_serve_each_other() -> None:
    # A free small segment cannot serve a large request, nor a free large block a small one.
    assert replay([alloc(1, 512 * KiB), free(1), alloc(2, 3 * MiB // 2)]).peak_reserved_bytes == 22 * MiB
    assert replay([alloc(1, 3 * MiB // 2), free(1), alloc(2, 512 * KiB)]).peak_reserved_bytes == 22 * MiB


def test_out_of_memory_releases_free_whole_segments() -> None:
    # cudaMalloc would fail past 30 MiB: the free 20 MiB segment is released, then the 25 MiB one is made.
    result = replay([alloc(1, 5 * MiB), free(1), alloc(2, 25 * MiB)], capacity_bytes=30 * MiB)
    # 25 MiB -> a 26 MiB segment (rounded to 2 MiB); 20 + 26 > 30, so the 20 MiB one goes first.
    assert (result.peak_reserved_bytes, result.final_reserved_bytes, result.released_segments) == (26 * MiB, 26 * MiB, 1)


def test_zero_bytes_allocate_nothing() -> None:
    result = replay([alloc(1, 0), free(1)])
    assert (result.peak_allocated_bytes, result.peak_reserved_bytes) == (0, 0)


sizes = st.integers(min_value=1, max_value=24 * MiB)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), sizes), max_size=60))
def test_requested_le_allocated_le_reserved(ops: list[tuple[bool, int]]) -> None:
    events, live, expected, peak = [], [], 0, 0
    for key, (do_free, nbytes) in enumerate(ops):
        if do_free and live:
            gone = live.pop(0)
            events.append(free(gone[0]))
            expected -= gone[1]
        else:
            events.append(alloc(key, nbytes))
            live.append((key, round_size(nbytes)))
            expected += round_size(nbytes)
        peak = max(peak, expected)
    result = replay(events)
    assert result.peak_requested_bytes == peak
    assert result.peak_requested_bytes <= result.peak_allocated_bytes <= result.peak_reserved_bytes
    assert result.final_reserved_bytes % (2 * MiB) == 0


def test_replay_of_a_traced_step_peaks_where_the_tracker_does() -> None:
    """A real (tiny) CPU training step with AdamW, two steps and a storage resize: replaying the tracker's
    sequence gives exactly the tracker's peak."""
    import torch

    from vramfit.truth.tracker import LiveTensorTracker

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 256))
    optimizer = torch.optim.AdamW(model.parameters(), foreach=False)
    with LiveTensorTracker() as tracker:
        tracker.mark(model.parameters(), "parameters")
        for _ in range(2):
            model(torch.randn(64, 256)).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        scratch = torch.empty(1000)
        scratch.untyped_storage().resize_(300_000)
        del scratch
    result = replay(tracker_events(tracker))
    assert result.peak_requested_bytes == tracker.peak_bytes
    assert result.peak_allocated_bytes >= tracker.peak_bytes
