"""Shared fixtures. Keep this small: one fixture per concern, test-only imports (torch, transformers) inside."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import pytest


def _build_on_meta(config: Mapping[str, Any]) -> Any:
    """The class named in config.json's `architectures` (AutoModel when none is named), built from that
    config on the meta device: shapes only, no memory, no download."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    fields = {key: value for key, value in config.items() if key != "model_type"}
    hf_config = transformers.AutoConfig.for_model(config["model_type"], **fields)
    with torch.device("meta"):
        names = config.get("architectures") or []
        if names:
            return getattr(transformers, names[0])(hf_config)
        return transformers.AutoModel.from_config(hf_config)


@pytest.fixture(scope="session")
def transformers_parameters() -> Callable[[Mapping[str, Any]], int]:
    """sum(p.numel() for p in model.parameters()) of the transformers model for a config; parameters()
    yields a tied weight once. Cached per config for the whole session."""
    cache: dict[str, int] = {}

    def count(config: Mapping[str, Any]) -> int:
        key = json.dumps(config, sort_keys=True)
        if key not in cache:
            model = _build_on_meta(config)
            cache[key] = sum(parameter.numel() for parameter in model.parameters())
        return cache[key]

    return count
