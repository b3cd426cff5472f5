"""Bounded caches keyed by object identity, as the estimate path keeps them (docs/BENCHMARKS.md lists each cache,
its key and its bound).

Settings parts, architectures, models and tensors are frozen, so what is derived from one object stays true while
the object lives. An entry holds the object it was derived from, so that object's id cannot be reused while the
entry lives; a store starts afresh when full (`dict.clear`: dropping the oldest entry one at a time can raise under
`vramfit serve`'s thread pool, and iterating a dict's front after many removals is slow).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

_T = TypeVar("_T")


def put(store: dict[Any, Any], key: Any, value: Any, limit: int) -> None:
    """store[key] = value, the store cleared first when it holds `limit` entries."""
    if len(store) >= limit:
        store.clear()
    store[key] = value


def held(store: dict[Any, Any], key: Any, holder: object, make: Callable[[], _T], limit: int) -> _T:
    """make() once per key, for a key built from id(holder): the entry (holder, value) keeps `holder` alive, and an
    entry whose holder is another object (the id was reused after the store was cleared) is made again."""
    hit = store.get(key)
    if hit is None or hit[0] is not holder:
        hit = (holder, make())
        put(store, key, hit, limit)
    return cast(_T, hit[1])
