"""Arithmetic the tests derive their expected bytes with, written apart from vramfit's own
(memory.gradients.allocation_bytes) so that a test does not check the code with itself."""

from __future__ import annotations


def round512(nbytes: int) -> int:
    """What the CUDA caching allocator hands out for a request: rounded up to 512 bytes (kMinBlockSize)."""
    return -(-nbytes // 512) * 512
