"""config.json readers: errors that name the field, old key names, defaults of each model type, the HF module
names (PEFT targets), windows per layer, and what each class instantiates."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from strategies import damaged_configs

from vramfit.errors import InvalidConfig, UnsupportedArchitecture, VramfitError
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


@pytest.mark.parametrize("model_type", sorted(set(DEFAULTS) - {"chatglm"}))  # chatglm: remote code, no defaults
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
    if config["model_type"] == "chatglm":
        pytest.skip("remote-code model: transformers cannot build it")
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


def _norms(config: dict[str, Any]) -> list[Any]:
    arch = read_architecture(config)
    layer = arch.decoder.layers[0]
    return [*layer.norms, *layer.attention.norms(), arch.decoder.final_norm]


def test_readers_set_what_the_modeling_code_computes_in_which_dtype() -> None:
    """Soft-capping, the eager softmax's dtype and GemmaRMSNorm's fp32 weight are parts' fields, set by the
    reader of the model type (the memory formulas never look at model_type)."""
    gemma2 = _config(CATALOG / "google--gemma-2-2b.json")
    arch = read_architecture(gemma2)
    attention = arch.decoder.layers[0].attention
    assert (attention.logit_softcap, arch.head.logit_softcap) == (50.0, 30.0)
    assert attention.softmax_dtype == "fp32"
    assert all(norm.weight_in_fp32 for norm in _norms(gemma2))
    gemma3 = _config(CATALOG / "google--gemma-3-1b-it.json")  # states both soft-caps as null
    assert read_architecture(gemma3).head.logit_softcap is None
    assert len(_norms(gemma3)) == 7 and all(norm.weight_in_fp32 for norm in _norms(gemma3))
    for name in ("openai-community--gpt2.json", "google-bert--bert-base-uncased.json", "tiiuae--falcon-40b.json"):
        arch = read_architecture(_config(CATALOG / name))
        assert {layer.attention.softmax_dtype for layer in arch.layers()} == {"model"}, name
    llama = _llama()
    attention = read_architecture(llama).decoder.layers[0].attention
    assert (attention.softmax_dtype, attention.logit_softcap, read_architecture(llama).head.logit_softcap) == (
        "fp32", None, None)
    assert not any(norm.weight_in_fp32 for norm in _norms(llama))


def test_moe_layers_start_after_the_dense_ones() -> None:
    layers = read_architecture(_config(CATALOG / "deepseek-ai--DeepSeek-V3.json")).decoder.layers
    assert [isinstance(layer.mlp, MixtureOfExperts) for layer in layers[:4]] == [False, False, False, True]


def _own(name: str) -> dict[str, Any]:
    return _config(OWN / f"{name}.json")


def test_old_key_names_are_read() -> None:
    """GPT-2's n_embd, n_layer, n_head, n_positions (GPT2Config.attribute_map)."""
    architecture = read_architecture(_own("tiny-gpt2-old-keys"))
    attention = architecture.decoder.layers[0].attention
    assert (architecture.hidden_size, architecture.num_layers, attention.heads, architecture.max_positions) == (
        64, 3, 4, 128)
    assert architecture.embedding.positions.rows == 128


def test_opt_positions_have_two_extra_rows_and_350m_projects() -> None:
    """OPTLearnedPositionalEmbedding adds 2 rows; word_embed_proj_dim != hidden_size adds project_in/out."""
    plain = read_architecture(_own("tiny-opt")).embedding
    assert (plain.positions.rows, plain.projections) == (128 + 2, ())
    narrow = read_architecture(_own("tiny-opt-350m-shape"))
    assert [linear.name for linear in narrow.embedding.projections] == ["project_in", "project_out"]
    assert narrow.embedding.tokens.dim == 32
    assert narrow.decoder.final_norm is None  # do_layer_norm_before=false


def test_encoders_keep_no_kv_cache() -> None:
    architecture = read_architecture(_config(CATALOG / "google-bert--bert-base-uncased.json"))
    assert architecture.decoder is None
    assert all(not layer.attention.causal for layer in architecture.layers())
    assert sum(layer.attention.kv_elements_per_token() for layer in architecture.layers()) == 0


def test_bert_heads_by_class() -> None:
    """BertForMaskedLM: transform + tied decoder with a bias, no pooler; BertModel: the pooler only."""
    mlm = read_architecture(_config(CATALOG / "google-bert--bert-base-uncased.json"))
    assert mlm.class_name == "BertForMaskedLM"
    assert mlm.head.tied
    assert [part.name for part in mlm.head.transform] == ["dense", "LayerNorm"]
    bare = read_architecture(_own("tiny-bert-model"))
    assert bare.head.output is None
    assert bare.head.parameters() == 64 * 64 + 64


def test_t5_decoder_cross_attends_and_only_first_blocks_hold_the_position_table() -> None:
    architecture = read_architecture(_own("tiny-t5-v1_1-untied"))
    encoder, decoder = architecture.encoder, architecture.decoder
    assert all(layer.cross_attention is None for layer in encoder.layers)
    assert all(layer.cross_attention is not None and layer.cross_attention.cross for layer in decoder.layers)
    assert [layer.attention.relative_buckets for layer in decoder.layers] == [8, 0, 0]
    assert [linear.name for linear in decoder.layers[0].mlp.linears()] == ["wi_0", "wi_1", "wo"]


def test_t5_head_is_tied_even_when_the_config_says_false() -> None:
    """T5Config.__post_init__ (transformers 5.23) forces tie_word_embeddings = True."""
    assert read_architecture(_own("tiny-t5-v1_1-untied")).head.tied


def test_multimodal_configs_are_refused_with_the_way_forward() -> None:
    config = {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
              "text_config": {"model_type": "gemma3_text", "hidden_size": 2560}, "vision_config": {}}
    with pytest.raises(UnsupportedArchitecture, match="vision_config.*gemma3_text"):
        read_architecture(config)


@pytest.mark.parametrize(("name", "kv_heads"), [("tiny-falcon-7b-shape", 1), ("tiny-falcon-40b-shape", 2),
                                                 ("tiny-falcon-rw-shape", 4)])
def test_falcon_attention_layouts(name: str, kv_heads: int) -> None:
    """multi_query: one kv head; new_decoder_architecture: num_kv_heads; neither: multi-head."""
    attention = read_architecture(_own(name)).decoder.layers[0].attention
    assert (attention.kv_heads, attention.fused) == (kv_heads, "query_key_value")


@pytest.mark.parametrize(("name", "parallel"), [("tiny-gpt-neox", True), ("tiny-phi-qk-norm", True),
                                                 ("tiny-falcon-7b-shape", True), ("tiny-falcon-rw-shape", False),
                                                 ("tiny-llama-bare", False)])
def test_parallel_blocks(name: str, parallel: bool) -> None:
    assert read_architecture(_own(name)).decoder.layers[0].parallel is parallel


def test_qwen2_has_qkv_biases_without_a_config_flag() -> None:
    attention = read_architecture(_config(CATALOG / "Qwen--Qwen2.5-7B-Instruct.json")).decoder.layers[0].attention
    assert [linear.bias for linear in attention.linears()] == [True, True, True, False]


def test_mistral_windows_every_layer() -> None:
    layers = read_architecture(_own("tiny-mistral")).decoder.layers
    assert {layer.attention.sliding_window for layer in layers} == {64}


def test_untyped_or_non_object_config_is_an_error() -> None:
    with pytest.raises(InvalidConfig, match="JSON object"):
        read_architecture([])  # type: ignore[arg-type]


def test_chatglm_needs_its_switches_and_refuses_what_it_cannot_count() -> None:
    from test_parameters import GLM_4_9B_CHAT
    with pytest.raises(InvalidConfig, match="add_qkv_bias"):
        read_architecture({key: value for key, value in GLM_4_9B_CHAT.items() if key != "add_qkv_bias"})
    with pytest.raises(UnsupportedArchitecture, match="pre_seq_len"):
        read_architecture({**GLM_4_9B_CHAT, "pre_seq_len": 128})
    with pytest.raises(UnsupportedArchitecture, match="ChatGLM-6B"):
        read_architecture({key: value for key, value in GLM_4_9B_CHAT.items() if key != "padded_vocab_size"})


@settings(max_examples=200, deadline=None)
@given(config=damaged_configs([_config(path) for path in CONFIGS]))
def test_damaged_configs_give_a_vramfit_error_or_an_architecture(config: dict[str, Any]) -> None:
    """Missing fields and odd values end in a VramfitError naming the problem, never a traceback."""
    try:
        count = read_architecture(config).parameter_count()
    except VramfitError as error:
        assert str(error)
    else:
        assert count.total > 0
