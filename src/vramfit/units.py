"""Counts and sizes: parsing what people type ("7B", "24GiB", "80GB") and labelling what we print.

Bytes are plain ints everywhere inside vramfit. GiB (1024**3) and GB (10**9) appear only here, and the
label always says which: vendors sell GB, PyTorch and nvidia-smi report MiB/GiB.
"""

from __future__ import annotations

import re
from fractions import Fraction

from vramfit.errors import InvalidSetting

KiB = 1024
MiB = 1024**2
GiB = 1024**3
TiB = 1024**4

_COUNT_SUFFIXES = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
_BYTE_SUFFIXES = {
    "B": 1,
    "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KIB": KiB, "MIB": MiB, "GIB": GiB, "TIB": TiB,
}
_NUMBER = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*$")


def parse_count(text: str | int, *, field: str = "count") -> int:
    """'7B' -> 7_000_000_000, '1.5M' -> 1_500_000, '350m' -> 350_000_000; plain ints pass through."""
    if isinstance(text, int):
        return text
    match = _NUMBER.match(str(text))
    suffix = match.group(2).upper() if match else ""
    if match is None or suffix not in _COUNT_SUFFIXES:
        raise InvalidSetting(f"{field}: cannot read {text!r}; write a number with an optional K, M, B or T, e.g. 7B")
    return int(Fraction(match.group(1)) * _COUNT_SUFFIXES[suffix])


def parse_bytes(text: str | int, *, field: str = "size") -> int:
    """'24GiB' -> 24 * 1024**3, '80GB' -> 80 * 10**9; a bare number is taken as GiB, as tools report."""
    if isinstance(text, int):
        return text
    match = _NUMBER.match(str(text))
    suffix = match.group(2).upper() if match else ""
    if match is None or (suffix and suffix not in _BYTE_SUFFIXES and suffix not in {"G", "M", "T"}):
        raise InvalidSetting(f"{field}: cannot read {text!r}; write a size such as 24GiB, 80GB or 16000MiB")
    multiplier = {"": GiB, "G": GiB, "M": MiB, "T": TiB}.get(suffix) or _BYTE_SUFFIXES[suffix]
    return int(Fraction(match.group(1)) * multiplier)


def format_bytes(n: int, units: str = "GiB") -> str:
    """'14.96 GiB' or '16.06 GB': always labelled."""
    divisor = {"GiB": GiB, "GB": 10**9, "MiB": MiB, "MB": 10**6}[units]
    return f"{n / divisor:,.2f} {units}"


def format_count(n: int) -> str:
    """8030261248 -> '8.03B'."""
    for suffix, size in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{suffix}"
    return str(n)
