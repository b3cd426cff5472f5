"""safetensors headers: exact stored counts and dtypes, read from the first 8 + N bytes of each file only."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from vramfit.errors import InvalidConfig
from vramfit.model.safetensors import MAX_HEADER_BYTES, read_header, stored_tensors, weight_files

DTYPE_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "I32": 4, "U8": 1}


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]], *, with_data: bool = True) -> None:
    """A .safetensors file written by hand per the format spec: u64 LE header length, JSON header, data.
    `with_data=False` leaves out the tensor bytes, which a header reader must never need."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = DTYPE_BYTES[dtype]
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # the spec allows trailing spaces; writers pad to 8 bytes
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + (bytes(offset) if with_data else b""))


def test_single_file_counts_elements_by_dtype_tensors_and_bytes(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "model.safetensors", {
        "embed.weight": ("BF16", [100, 16]), "norm.weight": ("F32", [16]), "step": ("I32", [])})
    stored = stored_tensors(tmp_path)
    assert stored is not None
    assert stored.elements_by_dtype == {"BF16": 1600, "F32": 16, "I32": 1}  # a scalar's empty shape counts 1
    assert stored.tensors == 3
    assert stored.bytes == 1600 * 2 + 16 * 4 + 4
    assert stored.floating_dtype == "BF16"


def test_sharded_files_are_read_through_the_index(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "model-00001-of-00002.safetensors", {"a": ("F16", [4, 8])})
    write_safetensors(tmp_path / "model-00002-of-00002.safetensors", {"b": ("F16", [8, 8]), "c": ("F16", [3])})
    write_safetensors(tmp_path / "stray.safetensors", {"z": ("F16", [1000])})  # not in the index: ignored
    index = {"metadata": {"total_size": 0}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                                           "b": "model-00002-of-00002.safetensors",
                                                           "c": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert [f.name for f in weight_files(tmp_path)] == ["model-00001-of-00002.safetensors",
                                                       "model-00002-of-00002.safetensors"]
    stored = stored_tensors(tmp_path)
    assert stored is not None
    assert stored.elements_by_dtype == {"F16": 32 + 64 + 3}
    assert stored.tensors == 3


def test_tensor_data_is_never_read(tmp_path: Path) -> None:
    # The header declares 8 GB of BF16 data that the file does not contain; only the header is needed.
    write_safetensors(tmp_path / "model.safetensors", {"w": ("BF16", [65536, 65536])}, with_data=False)
    stored = stored_tensors(tmp_path)
    assert stored is not None
    assert stored.elements_by_dtype == {"BF16": 65536 * 65536}
    assert stored.bytes == 2 * 65536 * 65536


def test_real_writer_files_read_the_same(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    safetensors_torch.save_file({"w": torch.zeros(3, 5, dtype=torch.bfloat16), "b": torch.zeros(7)},
                                str(tmp_path / "model.safetensors"))
    stored = stored_tensors(tmp_path)
    assert stored is not None
    assert stored.elements_by_dtype == {"BF16": 15, "F32": 7}
    assert stored.bytes == 15 * 2 + 7 * 4


def test_folder_without_safetensors_has_no_summary(tmp_path: Path) -> None:
    assert stored_tensors(tmp_path) is None


def test_absurd_header_length_is_rejected_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}" + bytes(64))
    with pytest.raises(InvalidConfig, match="model.safetensors: safetensors header length"):
        read_header(path)


def test_header_longer_than_the_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(InvalidConfig, match="exceeds the file"):
        read_header(path)


@pytest.mark.parametrize(("content", "message"), [
    (b"abc", "too short"),
    (struct.pack("<Q", 5) + b"{nope", "not valid JSON"),
    (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
    (struct.pack("<Q", 20) + b'{"w": {"dtype": 1}} ', "needs dtype, shape and data_offsets"),
])
def test_corrupt_headers_are_invalid_config(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(InvalidConfig, match=message):
        read_header(path)


def test_missing_shard_is_an_error_or_unknown(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "model-00001-of-00002.safetensors", {"a": ("F16", [4])})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(InvalidConfig, match="missing.*model-00002-of-00002"):
        stored_tensors(tmp_path)
    assert stored_tensors(tmp_path, require_complete=False) is None
