"""Models described by numbers: stated dimensions kept, the others filled with a standard decoder shape."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vramfit.errors import InvalidSetting
from vramfit.model.architecture import (
    MLP,
    Architecture,
    Attention,
    Embedding,
    Head,
    Layer,
    Linear,
    Norm,
    Stack,
    Table,
)
from vramfit.model.numbers import Shape, decoder, model_from_numbers, swiglu_intermediate


def _mlp_width(model_arch: Architecture) -> int:
    assert model_arch.decoder is not None
    return model_arch.decoder.layers[0].mlp.intermediate_size  # type: ignore[union-attr]


@pytest.mark.parametrize(("hidden", "expected"), [(4096, 11008), (5120, 13824), (8192, 22016)])
def test_swiglu_rule_gives_llama_widths(hidden: int, expected: int) -> None:
    # LLaMA-7B, -13B and -65B intermediate sizes (their config.json files).
    assert swiglu_intermediate(hidden) == expected


def test_llama_2_7b_shape_counts_its_published_parameters() -> None:
    # Llama-2-7b-hf: 6,738,415,616 parameters (model card; sum of its safetensors shapes).
    shape = Shape(hidden_size=4096, layers=32, heads=32, kv_heads=32, intermediate_size=11008, vocab_size=32000)
    assert decoder(shape).parameter_count().total == 6_738_415_616


def test_seeds_llama_count_is_reproduced_from_its_dimensions() -> None:
    # Seed 003 ("比如LLaMA的参数量为7000559616"): a LLaMA-7B shape with a 64000-token vocabulary (Baichuan-7B).
    # Stating everything but the MLP width, the solver finds LLaMA's 11008 and the exact count.
    model = model_from_numbers(7_000_559_616, hidden_size=4096, layers=32, heads=32, vocab_size=64000)
    assert _mlp_width(model.architecture) == 11008
    assert model.architecture.parameter_count().total == 7_000_559_616


def test_seeds_bert_style_hand_count_is_reproduced_from_an_architecture() -> None:
    # Seed 004, section 2.1: 12 layers, hidden 768, vocab 30522, 512 positions; it counts word and position
    # tables, Q/K/V/O as 4 h^2 and the FFN as 2 x h x 4h per layer, no biases, no norms: 108,768,768.
    h = 768
    layer = Layer(attention=Attention(hidden_size=h, heads=12, kv_heads=12, head_dim=64, causal=False),
                  mlp=MLP(hidden_size=h, intermediate_size=4 * h, bias=False), norms=())
    seeds_model = Architecture(
        model_type="bert", class_name="BertModel", hidden_size=h, vocab_size=30522,
        embedding=Embedding(tokens=Table(name="word_embeddings", rows=30522, dim=h),
                            positions=Table(name="position_embeddings", rows=512, dim=h)),
        head=Head(output=None), encoder=Stack(layers=(layer,) * 12))
    assert seeds_model.parameter_count().total == 108_768_768


def test_real_bert_base_adds_what_the_seeds_leave_out() -> None:
    # transformers BertModel(BertConfig()) has 109,482,240 parameters (measured: built on the meta device,
    # sum(p.numel() for p in model.parameters())): the seeds' count plus biases, LayerNorms, 2 token types and
    # the pooler.
    h = 768
    layer = Layer(attention=Attention(hidden_size=h, heads=12, kv_heads=12, head_dim=64, causal=False,
                                      qkv_bias=True, out_bias=True),
                  mlp=MLP(hidden_size=h, intermediate_size=4 * h, bias=True),
                  norms=(Norm(name="attention.output.LayerNorm", size=h, kind="layer", bias=True),
                         Norm(name="output.LayerNorm", size=h, kind="layer", bias=True)))
    bert = Architecture(
        model_type="bert", class_name="BertModel", hidden_size=h, vocab_size=30522,
        embedding=Embedding(tokens=Table(name="word_embeddings", rows=30522, dim=h),
                            positions=Table(name="position_embeddings", rows=512, dim=h),
                            token_types=Table(name="token_type_embeddings", rows=2, dim=h),
                            norm=Norm(name="LayerNorm", size=h, kind="layer", bias=True)),
        head=Head(output=None, transform=(Linear(name="pooler.dense", in_features=h, out_features=h, bias=True),)),
        encoder=Stack(layers=(layer,) * 12))
    assert bert.parameter_count().total == 109_482_240


def test_7b_gets_the_llama_7b_shape_and_the_stated_total() -> None:
    model = model_from_numbers(7_000_000_000)
    arch = model.architecture
    assert (arch.hidden_size, arch.num_layers, arch.vocab_size) == (4096, 32, 32000)
    # The MLP width absorbs the difference, so the total is within one MLP column of every layer (3 h L / 2).
    assert abs(arch.parameter_count().total - 7_000_000_000) <= 3 * 4096 * 32 // 2
    assert model.source == "numbers"
    assumed = " | ".join(model.assumed)
    for field in ("hidden_size=4096", "layers=32", "heads=32", "kv_heads=32", "intermediate_size=", "vocab_size="):
        assert field in assumed


def test_13b_gets_the_llama_13b_shape() -> None:
    arch = model_from_numbers(13_000_000_000).architecture
    assert (arch.hidden_size, arch.num_layers) == (5120, 40)


def test_stated_dimensions_are_kept_and_layers_solved() -> None:
    # Llama-3.1-8B's dimensions without its layer count: the solver finds its 32 layers and exact count.
    model = model_from_numbers(8_030_261_248, hidden_size=4096, heads=32, kv_heads=8, intermediate_size=14336,
                               vocab_size=128256)
    arch = model.architecture
    attention = arch.decoder.layers[0].attention  # type: ignore[union-attr]
    assert (arch.hidden_size, attention.heads, attention.kv_heads, arch.vocab_size) == (4096, 32, 8, 128256)
    assert arch.num_layers == 32
    assert arch.parameter_count().total == 8_030_261_248
    assumed = " | ".join(model.assumed)
    assert "assumed hidden_size" not in assumed
    assert "assumed kv_heads" not in assumed
    assert "assumed intermediate_size" not in assumed
    assert "assumed layers=32" in assumed


def test_more_parameters_never_give_a_shallower_or_narrower_model() -> None:
    shapes = [model_from_numbers(int(p * 1e9)).architecture for p in (0.5, 1, 3, 7, 13, 34, 70, 180, 405)]
    layers = [a.num_layers for a in shapes]
    widths = [a.hidden_size for a in shapes]
    assert layers == sorted(layers)
    assert widths == sorted(widths)


def test_dimensions_far_from_params_get_a_note() -> None:
    model = model_from_numbers(7_000_000_000, hidden_size=2048, layers=16, heads=16, intermediate_size=5632,
                               vocab_size=32000)
    assert any("from --params" in note for note in model.assumed)


@pytest.mark.parametrize(("kwargs", "flag"), [
    ({"params": 0}, "--params"),
    ({"params": 7_000_000_000, "layers": -1}, "--layers"),
    ({"params": 7_000_000_000, "hidden_size": 4096, "heads": 30}, "--heads"),
    ({"params": 7_000_000_000, "heads": 32, "kv_heads": 5}, "--kv-heads"),
    ({"params": 1_000_000, "hidden_size": 4096, "layers": 32}, "--params"),
    ({"params": 7_000_000_000, "hidden_size": 1000}, "--heads"),
])
def test_impossible_numbers_name_the_flag(kwargs: dict[str, int], flag: str) -> None:
    params = kwargs.pop("params")
    with pytest.raises(InvalidSetting, match=flag):
        model_from_numbers(params, **kwargs)


@settings(max_examples=40, deadline=None)
@given(params=st.integers(min_value=50_000_000, max_value=2_000_000_000_000))
def test_any_count_gets_a_standard_shape_whose_total_is_the_count(params: int) -> None:
    model = model_from_numbers(params)
    arch = model.architecture
    assert arch.hidden_size == 128 * arch.num_layers
    # Only the rounding of the solved MLP width separates the total from the stated count: half a column of
    # the three SwiGLU matrices in every layer.
    assert abs(arch.parameter_count().total - params) <= 3 * arch.hidden_size * arch.num_layers // 2
    assert len(model.assumed) == 6  # the decoder kind, vocab, shape, heads, kv_heads, intermediate_size
