"""A tiny progress bar on stderr for long work (trace, measure, validate and plan sweeps); no dependency.

    from vramfit.progress import progress
    for case in progress(cases, label="validate"):
        ...

It draws only when stderr is a terminal (or `force=True`), so piped output, `--json` and tests stay clean;
it redraws at most every `interval_s` seconds and always ends its line.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")
_WIDTH = 24


class Progress:
    """Counts steps of `total` and redraws one stderr line: 'label [#####-----] 5/10 50% 3.2s'."""

    def __init__(self, total: int | None, *, label: str = "", stream: TextIO | None = None,
                 force: bool = False, interval_s: float = 0.1) -> None:
        self.total, self.label, self.done = total, label, 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = force or _is_terminal(self.stream)
        self.interval_s = interval_s
        self._start = self._last = time.monotonic()

    def advance(self, steps: int = 1, *, note: str = "") -> None:
        self.done += steps
        now = time.monotonic()
        if self.enabled and (now - self._last >= self.interval_s or self.done == self.total):
            self._last = now
            self._draw(note)

    def close(self) -> None:
        if self.enabled:
            self._draw("")
            self.stream.write("\n")
            self.stream.flush()

    def line(self, note: str = "") -> str:
        elapsed = time.monotonic() - self._start
        if self.total:
            filled = min(_WIDTH, _WIDTH * self.done // self.total)
            bar = "#" * filled + "-" * (_WIDTH - filled)
            text = f"{self.label} [{bar}] {self.done}/{self.total} {100 * self.done // self.total}%"
        else:
            text = f"{self.label} {self.done} done"
        return f"{text} {elapsed:.1f}s" + (f" {note}" if note else "")

    def _draw(self, note: str) -> None:
        self.stream.write("\r\x1b[K" + self.line(note))
        self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(items: Iterable[T], *, label: str = "", total: int | None = None, stream: TextIO | None = None,
             force: bool = False) -> Iterator[T]:
    """Yield `items` while drawing a bar; `total` defaults to len(items) where it has one."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, label=label, stream=stream, force=force) as bar:
        for item in items:
            yield item
            bar.advance()


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
