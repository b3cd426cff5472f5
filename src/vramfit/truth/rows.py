"""One JSON-lines row format for every kind of ground truth: traced (CPU, fake tensors), measured (a real
GPU) and published (numbers others measured and wrote down).

A row, one JSON object per line:

```
{"id": "trace/Qwen--Qwen3-0.6B/train-full-b2-s512",    unique within its file; reruns skip finished ids
 "kind": "traced" | "measured" | "published",
 "model": "Qwen/Qwen3-0.6B",                           catalog or hub id, or a config.json path (relative
                                                       paths are taken relative to the row's file)
 "settings": {...},                                    Settings.to_dict() shape (settings_from_dict reads it)
 "truth": {"allocated": 123, "reserved": 456, "device": 789},   bytes, any subset; empty for an OOM row
 "measure": "allocated" | "reserved" | "device",       which truth the score compares against
 "oom": false,                                         true: the step ran out of memory on a GPU of
                                                       settings.gpu_memory bytes (then "truth" may be empty)
 "group": "inference/dense",                           errors are summarised per group
 "breakdown": {...}, "env": {...}, "source": {...},    free-form: what was live at the peak, versions, citation
 "unmapped": null | "reason"}                          published rows that cannot become Settings say why
```

This module reads and writes rows only; it never imports torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from vramfit.errors import InvalidConfig

Kind = Literal["traced", "measured", "published"]
Quantity = Literal["allocated", "reserved", "device"]
KINDS = ("traced", "measured", "published")
QUANTITIES = ("allocated", "reserved", "device")


@dataclass(frozen=True, kw_only=True, slots=True)
class TruthRow:
    """One configuration and what really happened to its memory (see the module docstring)."""

    id: str
    kind: Kind
    model: str
    settings: dict[str, Any] = field(hash=False)
    truth: dict[str, int] = field(default_factory=dict, hash=False)
    measure: Quantity = "allocated"
    oom: bool = False
    group: str = ""
    breakdown: dict[str, Any] = field(default_factory=dict, hash=False)
    env: dict[str, Any] = field(default_factory=dict, hash=False)
    source: dict[str, Any] = field(default_factory=dict, hash=False)
    unmapped: str | None = None

    def __post_init__(self) -> None:
        # Hold the dicts in their JSON form (tuples as lists), so a row read back equals the row written.
        for name in ("settings", "truth", "breakdown", "env", "source"):
            object.__setattr__(self, name, json.loads(json.dumps(getattr(self, name))))

    def check(self) -> TruthRow:
        """The row's own consistency; raises InvalidConfig naming the field."""
        if self.kind not in KINDS:
            raise InvalidConfig(f"row {self.id}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.measure not in QUANTITIES:
            raise InvalidConfig(f"row {self.id}: measure {self.measure!r} is not one of {', '.join(QUANTITIES)}")
        unknown = set(self.truth) - set(QUANTITIES)
        if unknown:
            raise InvalidConfig(f"row {self.id}: truth has unknown quantities {sorted(unknown)}; use "
                                f"{', '.join(QUANTITIES)}")
        if self.unmapped is None and not self.oom and self.measure not in self.truth:
            raise InvalidConfig(f"row {self.id}: measure is {self.measure!r} but truth has no such value; "
                                "add it, or mark the row oom or unmapped")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def row_from_dict(data: dict[str, Any], *, where: str = "row") -> TruthRow:
    """A TruthRow from its JSON object; unknown or missing keys raise InvalidConfig naming them."""
    names = set(TruthRow.__dataclass_fields__)
    unknown = sorted(set(data) - names)
    if unknown:
        raise InvalidConfig(f"{where}: unknown key(s) {', '.join(unknown)}; a truth row has "
                            f"{', '.join(sorted(names))}")
    missing = sorted({"id", "kind", "model", "settings"} - set(data))
    if missing:
        raise InvalidConfig(f"{where}: missing key(s) {', '.join(missing)}")
    return TruthRow(**data).check()


def read_rows(path: str | Path) -> list[TruthRow]:
    """Every row of a .jsonl file; blank lines are skipped, a malformed line raises InvalidConfig with
    its line number."""
    path = Path(path)
    if not path.is_file():
        raise InvalidConfig(f"{path}: no such truth file; pass a .jsonl file of truth rows")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as error:
            raise InvalidConfig(f"{path}:{number}: not JSON ({error.msg}); each line must be one row") from None
        rows.append(row_from_dict(data, where=f"{path}:{number}"))
    return rows


def finished_ids(path: str | Path) -> set[str]:
    """Ids already in a file (empty when it does not exist yet): what a resumed run skips. A torn last line
    (a run killed while writing it) is not finished: it is skipped here, and `append_row` cuts it off."""
    path = Path(path)
    if not path.is_file():
        return set()
    drop_torn_tail(path)
    return {row.id for row in read_rows(path)}


def append_row(path: str | Path, row: TruthRow) -> bool:
    """Append one row and make it durable at once (flush + fsync), so an interrupted run keeps it. A row whose
    id the file already has is not appended again (returns False): a rerun never duplicates a finished row."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(row.check().to_dict(), sort_keys=True) + "\n"
    if path.is_file() and row.id in finished_ids(path):
        return False
    with path.open("a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())
    return True


def drop_torn_tail(path: Path) -> None:
    """A file that does not end in a newline was cut while its last line was written (rows are written whole,
    newline included): cut the partial line off, so the next row starts on a line of its own. A last line
    that is complete JSON but lost only its newline gets the newline back."""
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    start = data.rfind(b"\n") + 1
    try:
        json.loads(data[start:])
    except ValueError:
        os.truncate(path, start)   # in place: the finished rows before it are never rewritten
        return
    with path.open("ab") as handle:
        handle.write(b"\n")
        handle.flush()
        os.fsync(handle.fileno())


def write_rows(path: str | Path, rows: Iterable[TruthRow]) -> int:
    """Replace a file with these rows (a conversion's output); returns how many were written."""
    lines = [json.dumps(row.check().to_dict(), sort_keys=True) for row in rows]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return len(lines)
