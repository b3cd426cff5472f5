"""Exact stored element counts and dtypes from safetensors headers, without reading any tensor.

The format (https://github.com/huggingface/safetensors#format, https://huggingface.co/docs/safetensors/index#format):

    8 bytes    N, an unsigned little-endian 64-bit integer: the size of the header
    N bytes    a UTF-8 JSON object {"name": {"dtype": "BF16", "shape": [...], "data_offsets": [begin, end]}, ...,
               "__metadata__": {...}} (optionally padded with spaces)
    the rest   the tensor bytes, which this module never reads

Only the first 8 + N bytes of a file are read. N is bounded by the reference implementation's own limit,
`MAX_HEADER_SIZE = 100_000_000` (safetensors/src/tensor.rs), and by the file's size, so a corrupt length can
neither exhaust memory nor read tensor data.

A sharded checkpoint lists its files in `model.safetensors.index.json` ("weight_map": tensor -> file).
Element counts are stored elements, not parameters: quantized checkpoints pack several 4-bit weights into one
I32 or U8 element and add scales and zero points, so callers never read these counts as parameter counts.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vramfit.errors import InvalidConfig
from vramfit.model.loaded import StoredTensors

__all__ = ["MAX_HEADER_BYTES", "read_header", "stored_tensors", "summarize_headers", "weight_files"]

MAX_HEADER_BYTES = 100_000_000  # safetensors/src/tensor.rs MAX_HEADER_SIZE
_LENGTH = struct.Struct("<Q")   # the 8-byte little-endian header length
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def read_header(path: Path) -> dict[str, Any]:
    """The JSON header of one .safetensors file: tensor name -> {"dtype", "shape", "data_offsets"}."""
    try:
        with path.open("rb") as file:
            size = path.stat().st_size
            prefix = file.read(_LENGTH.size)
            if len(prefix) < _LENGTH.size:
                raise InvalidConfig(f"{path}: too short for a safetensors file ({size} bytes); re-download it")
            (length,) = _LENGTH.unpack(prefix)
            if length > MAX_HEADER_BYTES or _LENGTH.size + length > size:
                raise InvalidConfig(f"{path}: safetensors header length {length} exceeds the file ({size} bytes) "
                                    f"or the format's {MAX_HEADER_BYTES}-byte limit; the file is corrupt, "
                                    "re-download it")
            raw = file.read(length)
    except OSError as error:
        raise InvalidConfig(f"{path}: cannot read ({error.strerror or error}); check the path and permissions"
                            ) from error
    return _parse_header(raw, path)


def _parse_header(raw: bytes, path: Path) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise InvalidConfig(f"{path}: safetensors header is not valid JSON ({error}); re-download the file") from error
    if not isinstance(header, dict):
        raise InvalidConfig(f"{path}: safetensors header is not a JSON object; re-download the file")
    header.pop("__metadata__", None)
    for name, info in header.items():
        _check_tensor(name, info, path)
    return header


def _check_tensor(name: str, info: Any, path: Path) -> None:
    offsets = info.get("data_offsets") if isinstance(info, dict) else None
    shape = info.get("shape") if isinstance(info, dict) else None
    if (not isinstance(info, dict) or not isinstance(info.get("dtype"), str) or not isinstance(shape, list)
            or not all(isinstance(d, int) and d >= 0 for d in shape)
            or not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets) or offsets[1] < offsets[0]):
        raise InvalidConfig(f"{path}: tensor {name!r} needs dtype, shape and data_offsets [begin, end] in the "
                            "safetensors header; the file is corrupt, re-download it")


def summarize_headers(headers: Iterable[dict[str, Any]]) -> StoredTensors:
    """Elements per dtype (product of each shape; a scalar's empty shape is 1), tensors, and data bytes."""
    elements: dict[str, int] = {}
    tensors = data_bytes = 0
    for header in headers:
        for info in header.values():
            count = 1
            for dim in info["shape"]:
                count *= dim
            elements[info["dtype"]] = elements.get(info["dtype"], 0) + count
            begin, end = info["data_offsets"]
            data_bytes += end - begin
            tensors += 1
    return StoredTensors(elements_by_dtype=elements, tensors=tensors, bytes=data_bytes)


def weight_files(folder: Path) -> tuple[Path, ...]:
    """The checkpoint's .safetensors files: those the sharded index names, else model.safetensors, else all
    *.safetensors in the folder; () when there are none."""
    index = folder / INDEX_FILE
    if index.is_file():
        return tuple(folder / name for name in sorted(set(_weight_map(index).values())))
    if (folder / SINGLE_FILE).is_file():
        return (folder / SINGLE_FILE,)
    return tuple(sorted(folder.glob("*.safetensors")))


def _weight_map(index: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as error:
        raise InvalidConfig(f"{index}: cannot read the shard index ({error}); re-download it") from error
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise InvalidConfig(f"{index}: 'weight_map' must map tensor names to file names; re-download it")
    return weight_map


def stored_tensors(folder: Path, *, require_complete: bool = True) -> StoredTensors | None:
    """The summary of a folder's safetensors headers, or None when it holds no safetensors files.

    A shard named by the index but absent (a partial download) makes the count unknowable: InvalidConfig, or
    None with `require_complete=False` (a Hugging Face cache often holds config.json without the weights).
    """
    files = weight_files(folder)
    if not files:
        return None
    missing = [f.name for f in files if not f.is_file()]
    if missing and not require_complete:
        return None
    if missing:
        raise InvalidConfig(f"{folder}: {INDEX_FILE} names shards that are missing ({', '.join(missing[:3])}); "
                            "finish the download, or pass the config.json alone")
    return summarize_headers(read_header(f) for f in files)
