"""Where a model's config.json comes from: a path, a folder, the catalog, the local cache, or the hub.

`load_model(spec)` tries, in order, and stops at the first that has it:

1. an existing path: a config.json file (source "config"), or a folder holding config.json (source "folder")
   whose safetensors headers, where present, give the stored element counts and dtypes;
2. the built-in offline catalog (source "catalog"), by hub id or alias, ignoring case;
3. the local Hugging Face cache (source "cache"): `models--owner--name/snapshots/<revision>/` under
   $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub (huggingface_hub's constants.py), read by
   hand, the revision named by refs/main first;
4. only with allow_network: the hub through huggingface_hub (source "hub"): config.json by `hf_hub_download`
   and the safetensors header metadata by `get_safetensors_metadata`, never a weight file.

Remote code is never run (no `trust_remote_code`): the architecture comes from
`vramfit.model.hf_config.read_architecture`, which reads config.json fields only.

Parameters and stored tensors: `parameters.total` is always the architecture's exact count, the number
`sum(p.numel() for p in model.parameters())` gives. The safetensors summary is kept on `Model.stored`, never
used as the parameter count: quantized checkpoints store packed integers (eight 4-bit weights per I32 in GPTQ
and AWQ, two per U8 in bitsandbytes) plus scales, and unquantized ones may store a tied lm_head twice or
extra buffers. Where an unquantized checkpoint's element count differs from the architecture's count, a note
says so. The stored floating dtype is the default weight dtype when config.json names none
(`Model.weight_dtype`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from vramfit.errors import InvalidConfig, MissingExtra, ModelNotFound, UnsupportedArchitecture, VramfitError
from vramfit.model.catalog import catalog_config, close_matches, find_entry
from vramfit.model.loaded import Model, StoredTensors
from vramfit.model.safetensors import stored_tensors

__all__ = ["cached_snapshot", "hub_cache_dir", "load_model", "read_config"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_LOCAL_FIX = "pass a local config.json instead: vramfit estimate path/to/config.json (or the model folder)"


def load_model(spec: str, *, allow_network: bool = False) -> Model:
    """The model `spec` names: a path, a folder, a catalog id, a cached hub id, or (allow_network) a hub id."""
    spec = spec.strip()
    if not spec:
        raise ModelNotFound("MODEL: empty; pass a hub id, a config.json path or a model folder")
    path = Path(spec).expanduser()
    if path.exists():
        return _from_path(spec, path)
    if not _HUB_ID.match(spec):
        raise ModelNotFound(f"{spec}: no such file or folder; pass the path of a config.json or of a model folder "
                            "that holds one, or a hub id such as meta-llama/Llama-3.1-8B")
    entry = find_entry(spec)
    if entry is not None:
        return _build(entry.id, catalog_config(entry.id), source="catalog", label=f"catalog config {entry.file}")
    snapshot = cached_snapshot(spec)
    if snapshot is not None:
        return _from_folder(spec, snapshot, source="cache", require_complete=False)
    if not allow_network:
        close = close_matches(spec)
        hint = f" (close catalog ids: {', '.join(close)})" if close else ""
        raise ModelNotFound(f"{spec}: no such folder here, not in the built-in catalog{hint} nor in the local "
                            f"Hugging Face cache ({hub_cache_dir()}); pass --allow-network to read it from the "
                            f"hub, or {_LOCAL_FIX}")
    return _from_hub(spec)


def _from_path(spec: str, path: Path) -> Model:
    if path.is_dir():
        return _from_folder(spec, path, source="folder", require_complete=True)
    return _build(spec, read_config(path), source="config", label=str(path))


def _from_folder(spec: str, folder: Path, *, source: str, require_complete: bool) -> Model:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise InvalidConfig(f"{folder}: no config.json in this folder; pass the folder that holds the model's "
                            "config.json, or the config.json itself")
    config = read_config(config_path)
    stored = stored_tensors(folder, require_complete=require_complete)
    return _build(spec, config, source=source, label=str(config_path), stored=stored)


def read_config(path: Path) -> dict[str, Any]:
    """A config.json as a dict; InvalidConfig names the file (and the line, for malformed JSON)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidConfig(f"{path}: cannot read it as UTF-8 text ({error}); pass a config.json file") from error
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidConfig(f"{path}: malformed JSON at line {error.lineno}, column {error.colno} ({error.msg}); "
                            "fix the file or download config.json again") from error
    except RecursionError:
        raise InvalidConfig(f"{path}: JSON nested too deeply to be a config.json; pass the model's config.json") \
            from None
    if not isinstance(config, dict):
        raise InvalidConfig(f"{path}: expected a JSON object with model_type and dimensions, "
                            f"found a JSON {type(config).__name__}; pass the model's config.json")
    return config


def _build(name: str, config: dict[str, Any], *, source: str, label: str,
           stored: StoredTensors | None = None, extra_notes: tuple[str, ...] = ()) -> Model:
    """Read the architecture; errors name where the config came from."""
    from vramfit.model.hf_config import read_architecture

    try:
        architecture = read_architecture(config)
    except UnsupportedArchitecture as error:
        custom = " (it ships its own modeling code, which vramfit never runs)" if config.get("auto_map") else ""
        raise UnsupportedArchitecture(f"{label}: {error}{custom}") from error
    except VramfitError as error:
        raise type(error)(f"{label}: {error}") from error
    notes = _stored_notes(architecture.parameter_count().total, stored, config) + extra_notes
    return Model(name=name, architecture=architecture, source=source, config=config, stored=stored, notes=notes)


def _stored_notes(total: int, stored: StoredTensors | None, config: dict[str, Any]) -> tuple[str, ...]:
    if stored is None:
        return ()
    packed = [dtype for dtype in stored.elements_by_dtype if dtype in ("I32", "U8", "I8", "U32", "I16")]
    if config.get("quantization_config") or packed:
        return ((f"checkpoint stores {stored.elements:,} elements ({_dtypes(stored)}), packed or quantized, so "
                 f"the parameter count {total:,} comes from the architecture"),)
    if stored.elements != total:
        return ((f"safetensors headers hold {stored.elements:,} elements ({_dtypes(stored)}), the architecture "
                 f"counts {total:,} parameters ({stored.elements - total:+,}: tied or extra tensors); "
                 "estimates use the architecture's count"),)
    return ()


def _dtypes(stored: StoredTensors) -> str:
    return ", ".join(f"{dtype} {count:,}" for dtype, count in sorted(stored.elements_by_dtype.items()))


def hub_cache_dir() -> Path:
    """huggingface_hub's cache folder: $HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub,
    else ~/.cache/huggingface/hub (huggingface_hub/constants.py)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    home = os.environ.get("HF_HOME") or os.path.join(xdg, "huggingface")
    return Path(home).expanduser() / "hub"


def cached_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot folder holding config.json for a hub id: the revision refs/main names, else the
    newest snapshot with a config.json; None when the cache has no copy."""
    repo = _cached_repo(hub_cache_dir(), "models--" + repo_id.replace("/", "--"))
    if repo is None:
        return None
    main = repo / "refs" / "main"
    if main.is_file():
        snapshot = repo / "snapshots" / main.read_text(encoding="utf-8").strip()
        if (snapshot / "config.json").is_file():
            return snapshot
    configs = sorted((repo / "snapshots").glob("*/config.json"), key=lambda p: p.stat().st_mtime)
    return configs[-1].parent if configs else None


def _cached_repo(cache: Path, folder: str) -> Path | None:
    """The repo folder, matched exactly, else ignoring case (hub ids are typed in any case)."""
    if (cache / folder).is_dir():
        return cache / folder
    if not cache.is_dir():
        return None
    matches = [p for p in cache.iterdir() if p.name.lower() == folder.lower() and p.is_dir()]
    return matches[0] if matches else None


def _from_hub(repo_id: str) -> Model:
    """config.json and the safetensors header metadata from the hub; hub errors become one clear line."""
    try:
        import huggingface_hub
    except ImportError as error:
        raise MissingExtra(f"{repo_id}: reading models from the Hugging Face hub needs huggingface_hub; install "
                           f"it with: pip install 'vramfit[hub]'. Or {_LOCAL_FIX}") from error
    try:
        config_file = huggingface_hub.hf_hub_download(repo_id, "config.json")
    except Exception as error:  # the hub client raises many types (HTTP, offline, auth); each becomes one line
        raise _hub_error(repo_id, error) from error
    config = read_config(Path(str(config_file)))
    stored, note = _hub_stored(huggingface_hub, repo_id)
    return _build(repo_id, config, source="hub", label=f"{repo_id} config.json", stored=stored, extra_notes=note)


def _hub_stored(huggingface_hub: Any, repo_id: str) -> tuple[StoredTensors | None, tuple[str, ...]]:
    """Per-dtype element counts from the hub's safetensors headers (HTTP range requests, no weights).

    Optional: the parameter count comes from config.json, so a repository without safetensors, or headers
    that cannot be read, leave `stored` empty (the latter with a note) instead of failing.
    """
    from huggingface_hub.errors import NotASafetensorsRepoError

    try:
        metadata = huggingface_hub.get_safetensors_metadata(repo_id)
    except NotASafetensorsRepoError:
        return None, ()
    except Exception as error:  # noqa: BLE001 - any hub trouble here only loses the optional stored summary
        return None, ((f"safetensors headers of {repo_id} could not be read ({type(error).__name__}: "
                       f"{_first_line(error)}); stored dtypes unknown"),)
    infos = [info for file in metadata.files_metadata.values() for info in file.tensors.values()]
    stored = StoredTensors(elements_by_dtype=dict(metadata.parameter_count), tensors=len(infos),
                           bytes=sum(info.data_offsets[1] - info.data_offsets[0] for info in infos))
    return stored, ()


def _hub_error(repo_id: str, error: Exception) -> VramfitError:
    from huggingface_hub import errors

    if isinstance(error, errors.GatedRepoError):
        why = ("is gated on the Hugging Face hub: accept its license on huggingface.co and log in with "
               "`hf auth login`")
    elif isinstance(error, errors.RepositoryNotFoundError):
        why = "was not found on the Hugging Face hub (or it is private: log in with `hf auth login`)"
    elif isinstance(error, errors.RevisionNotFoundError):
        why = "has no such revision on the Hugging Face hub"
    elif isinstance(error, (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled)):
        why = ("is not in the local cache and the hub cannot be reached (HF_HUB_OFFLINE is set, or no "
               "connection)")
    elif isinstance(error, errors.EntryNotFoundError):
        why = "has no config.json on the Hugging Face hub"
    else:
        why = f"could not be read from the Hugging Face hub ({type(error).__name__}: {_first_line(error)})"
    return ModelNotFound(f"{repo_id}: {why}; or {_LOCAL_FIX}")


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no message"
