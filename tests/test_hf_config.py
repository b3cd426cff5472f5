"""config.json readers: errors that name the field, old key names, defaults of each model type, the HF module
names (PEFT targets), windows per layer, and what each class instantiates."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from vramfit.errors import InvalidConfig, UnsupportedArchitecture
from vramfit.model.architecture import Attention, MixtureOfExperts
from vramfit.model.hf_config import ALIASES, DEFAULTS, SUPPORTED, read_architecture

CATALOG = Path(__file__).parents[1] / "src" / "vramfit" / "model" / "catalog" / "configs"
OWN = Path(__file__).parent / "data" / "configs"
CONFIGS = sorted(CATALOG.glob("*.json")) + sorted(OWN.glob("*.json"))


def _config(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _llama(**changes: Any) -> dict[str, Any]:
    config = _config(CATALOG / "meta-llama--Llama-3.1-8B.json")
    config.update(changes)
    return {key: value for key, value in config.items() if value is not None}


def test_unknown_model_type_lists_the_supported_ones() -> None:
    with pytest.raises(UnsupportedArchitecture) as error:
        read_architecture({"model_type": "mamba"})
    message = str(error.value)
    assert "'mamba'" in message
    assert all(model_type in message for model_type in SUPPORTED)


def test_missing_model_type_is_named() -> None:
    with pytest.raises(InvalidConfig, match="model_type"):
        read_architecture({"hidden_size": 4096})


def test_missing_field_is_named() -> None:
    with pytest.raises(InvalidConfig, match="num_hidden_layers"):
        read_architecture(_llama(num_hidden_layers=None))


def test_kv_heads_that_do_not_divide_the_heads_are_an_error() -> None:
    with pytest.raises(InvalidConfig, match="num_key_value_heads=7"):
        read_architecture(_llama(num_key_value_heads=7))


def test_hidden_size_not_divisible_without_head_dim_is_an_error() -> None:
    with pytest.raises(InvalidConfig, match="head_dim"):
        read_architecture(_llama(hidden_size=4100))


def test_stated_head_dim_is_taken_as_is() -> None:
    attention = read_architecture(_llama(hidden_size=4100, head_dim=128)).decoder.layers[0].attention
    assert isinstance(attention, Attention)
    assert attention.head_dim == 128


def test_two_names_for_one_field_must_agree() -> None:
    with pytest.raises(InvalidConfig, match="n_embd"):
        read_architecture(_llama(n_embd=1024))


def test_a_class_that_is_not_counted_is_an_error() -> None:
    with pytest.raises(UnsupportedArchitecture, match="LlamaForSequenceClassification"):
        read_architecture(_llama(architectures=["LlamaForSequenceClassification"]))


def test_no_architectures_means_the_bare_automodel() -> None:
    architecture = read_architecture(_llama(architectures=None))
    assert architecture.class_name == "LlamaModel"
    assert architecture.head.output is None


def test_tie_word_embeddings_default_of_the_model_type() -> None:
    """Llama defaults to an untied head, Gemma to a tied one (their transformers config classes)."""
    assert not read_architecture(_llama(tie_word_embeddings=None)).head.tied
    gemma = _config(CATALOG / "google--gemma-2-2b.json")
    gemma.pop("tie_word_embeddings", None)
    assert read_architecture(gemma).head.tied


@pytest.mark.parametrize("model_type", sorted(DEFAULTS))
def test_defaults_are_those_of_the_transformers_config_class(model_type: str) -> None:
    transformers = pytest.importorskip("transformers")
    config_class = transformers.CONFIG_MAPPING[model_type]
    attribute_map = getattr(config_class, "attribute_map", {})
    declared = {field.name: field.default for field in dataclasses.fields(config_class)}
    for name, ours in DEFAULTS[model_type].items():
        keys = (name, *ALIASES.get(name, ()))
        fields = [*keys, *(attribute_map[key] for key in keys if key in attribute_map)]
        theirs = next(declared[field] for field in fields if field in declared)
        assert (name, ours) == (name, theirs)


@pytest.mark.parametrize("path", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_linear_names_are_the_transformers_module_names(path: Path, transformers_model: Any) -> None:
    """The names are PEFT target_modules: each attention and dense-MLP linear must exist under that name
    (GPT-2's Conv1D counts as a linear, as PEFT treats it)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = _config(path)
    ours = set()
    for layer in read_architecture(config).layers():
        blocks = [layer.attention] + ([] if isinstance(layer.mlp, MixtureOfExperts) else [layer.mlp])
        ours |= {linear.name for block in blocks for linear in block.linears()}
    kinds = (torch.nn.Linear, transformers.pytorch_utils.Conv1D)
    theirs = {name.rsplit(".", 1)[-1] for name, module in transformers_model(config).named_modules()
              if isinstance(module, kinds)}
    assert ours <= theirs


def test_gemma2_alternates_sliding_and_global_layers() -> None:
    layers = read_architecture(_config(CATALOG / "google--gemma-2-2b.json")).decoder.layers
    assert [layer.attention.sliding_window for layer in layers[:4]] == [4096, None, 4096, None]


def test_gemma3_has_one_global_layer_in_six() -> None:
    config = _config(CATALOG / "google--gemma-3-1b-it.json")
    windows = [layer.attention.sliding_window for layer in read_architecture(config).decoder.layers]
    assert windows[:6] == [512] * 5 + [None]


def test_moe_layers_start_after_the_dense_ones() -> None:
    layers = read_architecture(_config(CATALOG / "deepseek-ai--DeepSeek-V3.json")).decoder.layers
    assert [isinstance(layer.mlp, MixtureOfExperts) for layer in layers[:4]] == [False, False, False, True]
