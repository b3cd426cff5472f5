"""The live-tensor tracker counts a tensor that a real device returns unchanged once (RETURNS_ITS_INPUT)."""

from __future__ import annotations

import gc

import pytest

torch = pytest.importorskip("torch")

from torch._subclasses.fake_tensor import FakeTensorMode

from vramfit.truth.tracker import LiveTensorTracker

MIB = 1 << 20


def test_wait_tensor_result_is_its_input() -> None:
    """c10d's functional wait_tensor returns the tensor it waited on; its fake kernel returns a new one,
    which must not add bytes, and the bytes stay live while either name is."""
    with FakeTensorMode(), LiveTensorTracker() as tracker:
        x = torch.empty(MIB, dtype=torch.uint8)
        y = torch.ops._c10d_functional.wait_tensor(x)
        assert tracker.current_bytes == MIB
        del x
        gc.collect()
        assert tracker.current_bytes == MIB   # y still holds the storage
        del y
        gc.collect()
        assert tracker.current_bytes == 0
    assert tracker.peak_bytes == MIB
