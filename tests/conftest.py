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
def transformers_model() -> Callable[[Mapping[str, Any]], Any]:
    """The transformers model for a config, built on the meta device once per session."""
    cache: dict[str, Any] = {}

    def build(config: Mapping[str, Any]) -> Any:
        key = json.dumps(config, sort_keys=True)
        if key not in cache:
            cache[key] = _build_on_meta(config)
        return cache[key]

    return build


@pytest.fixture(scope="session")
def transformers_parameters(transformers_model: Callable[[Mapping[str, Any]], Any]) -> Callable[[Mapping[str, Any]], int]:
    """sum(p.numel() for p in model.parameters()) of the transformers model for a config; parameters()
    yields a tied weight once."""
    def count(config: Mapping[str, Any]) -> int:
        return sum(parameter.numel() for parameter in transformers_model(config).parameters())

    return count
