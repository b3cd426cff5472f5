"""The built-in offline catalog: upstream config.json files, looked up by hub id or alias, no network.

`index.json` maps each hub id to {"file", "source", "upstream", "aliases", "notes"}; `configs/<file>` is the
model's config.json as published upstream (see this folder's README.md for how the files were taken).
Nothing is read at import; the index and each config are parsed once, on first use, and cached.
Lookups ignore case, so `meta-llama/llama-3.1-8b` and an alias such as `llama-3.1-8b` find the same entry.
"""

from __future__ import annotations

import copy
import difflib
import json
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from vramfit.errors import InvalidConfig, ModelNotFound

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = ["CatalogEntry", "catalog_config", "catalog_entry", "catalog_ids", "close_matches", "find_entry",
           "search_catalog"]


@dataclass(frozen=True, kw_only=True, slots=True)
class CatalogEntry:
    """One catalog model: its hub id, its config file under configs/, where that file was taken from."""

    id: str
    file: str
    source: str = ""      # the URL the config.json was copied from
    upstream: str = ""    # the hub repository (or paper) the model is published in
    aliases: tuple[str, ...] = ()
    notes: str = ""


def _root() -> Traversable:
    """The catalog folder inside the installed package (a function so tests can point it elsewhere)."""
    return resources.files(__name__)


@lru_cache(maxsize=1)
def _entries() -> tuple[CatalogEntry, ...]:
    index = _read_json(_root() / "index.json", "catalog index.json")
    if not isinstance(index, dict):
        raise InvalidConfig("catalog index.json: expected an object mapping hub ids to entries; reinstall vramfit")
    return tuple(_entry(model_id, value) for model_id, value in sorted(index.items()))


def _entry(model_id: str, value: Any) -> CatalogEntry:
    if not isinstance(value, dict) or not isinstance(value.get("file"), str):
        raise InvalidConfig(f"catalog index.json: entry {model_id!r} has no 'file'; reinstall vramfit")
    return CatalogEntry(id=model_id, file=value["file"], source=str(value.get("source", "")),
                        upstream=str(value.get("upstream", "")),
                        aliases=tuple(str(alias) for alias in value.get("aliases", ())),
                        notes=str(value.get("notes", "")))


@lru_cache(maxsize=1)
def _by_name() -> dict[str, CatalogEntry]:
    """Lower-cased id and aliases -> entry."""
    names: dict[str, CatalogEntry] = {}
    for entry in _entries():
        for name in (entry.id, *entry.aliases):
            names.setdefault(name.lower(), entry)
    return names


@cache
def _config(file: str) -> dict[str, Any]:
    config = _read_json(_root() / "configs" / file, f"catalog config {file}")
    if not isinstance(config, dict):
        raise InvalidConfig(f"catalog config {file}: expected a JSON object; reinstall vramfit")
    return config


def _read_json(path: Traversable, label: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise InvalidConfig(f"{label}: missing from the installed package; reinstall vramfit") from error
    except json.JSONDecodeError as error:
        raise InvalidConfig(f"{label}: invalid JSON at line {error.lineno}, column {error.colno} "
                            f"({error.msg}); reinstall vramfit") from error


def catalog_ids() -> tuple[str, ...]:
    """Every hub id in the catalog, sorted."""
    return tuple(entry.id for entry in _entries())


def find_entry(name: str) -> CatalogEntry | None:
    """The entry whose id or alias equals `name` ignoring case, or None."""
    return _by_name().get(name.strip().lower())


def catalog_entry(name: str) -> CatalogEntry:
    """The entry for a hub id or alias (case-insensitive); ModelNotFound lists close matches."""
    entry = find_entry(name)
    if entry is None:
        close = close_matches(name)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise ModelNotFound(f"{name}: not in the built-in catalog ({len(_entries())} models; "
                            f"`vramfit.model.catalog.catalog_ids()` lists them).{hint}")
    return entry


def close_matches(name: str) -> list[str]:
    """Up to five ids whose lower-cased id or alias is near `name` (difflib's ratio, cutoff 0.6)."""
    by_name = _by_name()
    near = difflib.get_close_matches(name.strip().lower(), list(by_name), n=10, cutoff=0.6)
    return list(dict.fromkeys(by_name[match].id for match in near))[:5]


def catalog_config(name: str) -> dict[str, Any]:
    """The upstream config.json of a catalog model, as a fresh dict the caller may change."""
    return copy.deepcopy(_config(catalog_entry(name).file))


def search_catalog(text: str) -> list[CatalogEntry]:
    """Entries whose id, aliases or notes contain every word of `text` (case-insensitive), sorted by id."""
    words = text.lower().split()
    return [entry for entry in _entries()
            if all(word in " ".join((entry.id, *entry.aliases, entry.notes)).lower() for word in words)]
