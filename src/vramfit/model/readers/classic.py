"""Decoders with LayerNorm, biases and plain MLPs: the GPT lineage and its descendants.

From the transformers 5.23 modeling files:
- gpt2: Conv1D c_attn (fused q/k/v) and c_proj, MLP c_fc/c_proj of n_inner (default 4 x hidden), all
  with biases; ln_1, ln_2, ln_f; learned positions wpe of n_positions; tied head by default.
- gptj: one ln_1 per block, q/k/v/out_proj without biases and fc_in/fc_out with them read the same input
  (parallel); ln_f; lm_head with a bias, untied by default.
- openai-gpt: the same blocks, post-norm, no final norm; tables tokens_embed and positions_embed.
- gpt_bigcode: GPT-2 with nn.Linear and multi_query (one key/value head) by default.
- opt: q/k/v/out_proj and fc1/fc2 with biases (enable_bias); positions have max_position_embeddings + 2
  rows (OPTLearnedPositionalEmbedding's offset); project_in/out where word_embed_proj_dim differs from
  hidden_size (OPT-350m); final_layer_norm only when do_layer_norm_before.
- bloom: query_key_value and dense, dense_h_to_4h/dense_4h_to_h of 4 x hidden, all with biases; a
  LayerNorm after the token table (word_embeddings_layernorm); ALiBi has no parameters.
- falcon: query_key_value of (heads + 2 kv_heads) x head_dim, kv_heads = num_kv_heads with
  new_decoder_architecture, 1 with multi_query, else heads; biases = bias; norms by parallel_attn and
  num_ln_in_parallel_attn.
- gpt_neox: query_key_value and dense (bias = attention_bias), dense_h_to_4h/dense_4h_to_h with biases,
  two LayerNorms per block, untied embed_in / lm_head by default; parallel residual by default.
- phi: q/k/v/dense and fc1/fc2 with biases, one input_layernorm per block (parallel attention and MLP),
  final_layernorm, lm_head with a bias; optional q/k LayerNorms over head_dim.
- stablelm: q/k/v bias = use_qkv_bias, gated MLP, LayerNorms; per-head q/k LayerNorms (no bias) when
  qk_layernorm; no post_attention_layernorm with use_parallel_residual.
- starcoder2: q/k/v/o and c_fc/c_proj with biases (use_bias), LayerNorms, one sliding_window on all layers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal

from vramfit.model.architecture import (
    MLP,
    Architecture,
    Attention,
    Embedding,
    GatedMLP,
    Layer,
    Linear,
    Norm,
    Table,
)
from vramfit.model.readers import parts
from vramfit.model.readers.fields import Fields

DEFAULTS: dict[str, dict[str, Any]] = {
    "gpt2": {"tie_word_embeddings": True, "activation_function": "gelu_new", "n_inner": None},
    "openai-gpt": {"tie_word_embeddings": True, "afn": "gelu"},
    "gptj": {"tie_word_embeddings": False, "activation_function": "gelu_new", "n_inner": None},
    "gpt_bigcode": {"tie_word_embeddings": True, "activation_function": "gelu_pytorch_tanh",
                    "n_inner": None, "multi_query": True},
    "opt": {"tie_word_embeddings": True, "activation_function": "relu", "enable_bias": True,
            "do_layer_norm_before": True, "_remove_final_layer_norm": False, "word_embed_proj_dim": None,
            "layer_norm_elementwise_affine": True},
    "bloom": {"tie_word_embeddings": True},
    "falcon": {"tie_word_embeddings": True, "activation": "gelu", "num_key_value_heads": None, "bias": False,
               "new_decoder_architecture": False, "multi_query": True, "parallel_attn": True,
               "num_ln_in_parallel_attn": None, "ffn_hidden_size": None},
    "gpt_neox": {"tie_word_embeddings": False, "hidden_act": "gelu", "attention_bias": True,
                 "use_parallel_residual": True},
    "phi": {"tie_word_embeddings": False, "hidden_act": "gelu_new", "qk_layernorm": False},
    "stablelm": {"tie_word_embeddings": False, "hidden_act": "silu", "use_qkv_bias": False, "qk_layernorm": False,
                 "use_parallel_residual": False},
    "starcoder2": {"tie_word_embeddings": True, "hidden_act": "gelu_pytorch_tanh", "use_bias": True,
                   "sliding_window": None},
}

CLASSES = {
    "gpt2": ("GPT2", ("GPT2LMHeadModel", "GPT2Model")),
    "openai-gpt": ("OpenAIGPT", ("OpenAIGPTLMHeadModel", "OpenAIGPTModel")),
    "gptj": ("GPTJ", ("GPTJForCausalLM", "GPTJModel")),
    "gpt_bigcode": ("GPTBigCode", ("GPTBigCodeForCausalLM", "GPTBigCodeModel")),
    "opt": ("OPT", ("OPTForCausalLM", "OPTModel")),
    "bloom": ("Bloom", ("BloomForCausalLM", "BloomModel")),
    "falcon": ("Falcon", ("FalconForCausalLM", "FalconModel")),
    "gpt_neox": ("GPTNeoX", ("GPTNeoXForCausalLM", "GPTNeoXModel")),
    "phi": ("Phi", ("PhiForCausalLM", "PhiModel")),
    "stablelm": ("StableLm", ("StableLmForCausalLM", "StableLmModel")),
    "starcoder2": ("Starcoder2", ("Starcoder2ForCausalLM", "Starcoder2Model")),
}


def _class(f: Fields) -> str:
    prefix, classes = CLASSES[f.model_type]
    return parts.class_name(f, prefix=prefix, classes=classes)


def _layers(f: Fields, layer: Callable[[int], Layer]) -> list[Layer]:
    return [layer(index) for index in range(f.integer("num_hidden_layers"))]


def _ln(names: tuple[str, ...], f: Fields) -> tuple[Norm, ...]:
    return parts.norms(names, f.integer("hidden_size"), "layer", bias=True)


def _mlp(f: Fields, width: int, activation: str, names: tuple[str, str], *, bias: bool = True) -> MLP:
    return MLP(hidden_size=f.integer("hidden_size"), intermediate_size=width, bias=bias,
               activation=f.text(activation), names=names)


def _fused(f: Fields, *, kv_heads: int | None = None, bias: bool = True, fused: str = "c_attn",
           out: str = "c_proj", softmax_dtype: Literal["fp32", "model"] = "fp32") -> Attention:
    """One projection for q, k and v, head_dim = hidden_size / heads (these classes derive it so)."""
    heads = f.integer("num_attention_heads")
    return Attention(hidden_size=f.integer("hidden_size"), heads=heads, kv_heads=kv_heads or heads,
                     head_dim=parts.head_dim(f, heads), qkv_bias=bias, out_bias=bias, fused=fused,
                     names=(fused, fused, fused, out), softmax_dtype=softmax_dtype)


def _learned(f: Fields, tokens: str, positions: str, *, extra_rows: int = 0) -> Embedding:
    hidden = f.integer("hidden_size")
    return Embedding(tokens=Table(name=tokens, rows=f.integer("vocab_size"), dim=hidden),
                     positions=Table(name=positions, rows=f.integer("max_position_embeddings") + extra_rows,
                                     dim=hidden))


def read_gpt2(f: Fields) -> Architecture:
    """GPT2Block; gpt_bigcode (GPTBigCodeBlock) is the same with one kv head under multi_query. GPT-2's eager
    attention takes the softmax in the model dtype (models/gpt2 eager_attention_forward, Attention.softmax_dtype)."""
    hidden = f.integer("hidden_size")
    bigcode = f.model_type == "gpt_bigcode"
    kv_heads = 1 if bigcode and f.flag("multi_query") else None
    width = f.optional_integer("n_inner") or 4 * hidden
    attention = _fused(f, kv_heads=kv_heads, softmax_dtype="fp32" if bigcode else "model")
    layer = Layer(attention=attention, mlp=_mlp(f, width, "activation_function", ("c_fc", "c_proj")),
                  norms=_ln(("ln_1", "ln_2"), f))
    return parts.causal_lm(f, name=_class(f), layers=_layers(f, lambda _: layer),
                           final_norm=parts.layer_norm("ln_f", hidden), embedding=_learned(f, "wte", "wpe"))


def read_gptj(f: Fields) -> Architecture:
    hidden, heads = f.integer("hidden_size"), f.integer("num_attention_heads")
    attention = Attention(hidden_size=hidden, heads=heads, kv_heads=heads, head_dim=parts.head_dim(f, heads),
                          names=("q_proj", "k_proj", "v_proj", "out_proj"))
    mlp = _mlp(f, f.optional_integer("n_inner") or 4 * hidden, "activation_function", ("fc_in", "fc_out"))
    layer = Layer(attention=attention, mlp=mlp, norms=_ln(("ln_1",), f), parallel=True)
    embedding = Embedding(tokens=Table(name="wte", rows=f.integer("vocab_size"), dim=hidden))
    return parts.causal_lm(f, name=_class(f), layers=_layers(f, lambda _: layer),
                           final_norm=parts.layer_norm("ln_f", hidden), embedding=embedding, head_bias=True)


def read_openai_gpt(f: Fields) -> Architecture:
    """OpenAI GPT Block: post-norm (ln_1 after attention, ln_2 after the MLP of 4 x hidden), no final norm."""
    layer = Layer(attention=_fused(f), mlp=_mlp(f, 4 * f.integer("hidden_size"), "afn", ("c_fc", "c_proj")),
                  norms=_ln(("ln_1", "ln_2"), f))
    return parts.causal_lm(f, name=_class(f), layers=_layers(f, lambda _: layer), final_norm=None,
                           embedding=_learned(f, "tokens_embed", "positions_embed"))


def read_opt(f: Fields) -> Architecture:
    hidden, bias = f.integer("hidden_size"), f.flag("enable_bias")
    count = f.integer("num_attention_heads")
    attention = Attention(hidden_size=hidden, heads=count, kv_heads=count, head_dim=parts.head_dim(f, count),
                          qkv_bias=bias, out_bias=bias, names=("q_proj", "k_proj", "v_proj", "out_proj"))
    affine = f.flag("layer_norm_elementwise_affine")
    norms = _ln(("self_attn_layer_norm", "final_layer_norm"), f) if affine else ()
    layer = Layer(attention=attention, norms=norms,
                  mlp=_mlp(f, f.integer("ffn_dim"), "activation_function", ("fc1", "fc2"), bias=bias))
    final = affine and f.flag("do_layer_norm_before") and not f.flag("_remove_final_layer_norm")
    return parts.causal_lm(f, name=_class(f), layers=_layers(f, lambda _: layer),
                           final_norm=parts.layer_norm("final_layer_norm", hidden) if final else None,
                           embedding=_opt_embedding(f))


def _opt_embedding(f: Fields) -> Embedding:
    """Tokens of word_embed_proj_dim, positions with 2 extra rows, project_in/out between the widths."""
    hidden, vocab = f.integer("hidden_size"), f.integer("vocab_size")
    width = f.optional_integer("word_embed_proj_dim") or hidden
    projections = () if width == hidden else (
        Linear(name="project_in", in_features=width, out_features=hidden),
        Linear(name="project_out", in_features=hidden, out_features=width))
    return Embedding(tokens=Table(name="embed_tokens", rows=vocab, dim=width), projections=projections,
                     positions=Table(name="embed_positions", rows=f.integer("max_position_embeddings") + 2,
                                     dim=hidden))


def read_bloom(f: Fields) -> Architecture:
    hidden = f.integer("hidden_size")
    layer = Layer(attention=_fused(f, fused="query_key_value", out="dense"),
                  mlp=MLP(hidden_size=hidden, intermediate_size=4 * hidden, activation="gelu",
                          names=("dense_h_to_4h", "dense_4h_to_h")),
                  norms=_ln(("input_layernorm", "post_attention_layernorm"), f))
    embedding = Embedding(tokens=Table(name="word_embeddings", rows=f.integer("vocab_size"), dim=hidden),
                          norm=parts.layer_norm("word_embeddings_layernorm", hidden))
    return parts.causal_lm(f, name=_class(f), layers=_layers(f, lambda _: layer),
                           final_norm=parts.layer_norm("ln_f", hidden), embedding=embedding)


def read_falcon(f: Fields) -> Architecture:
    hidden, bias, new = f.integer("hidden_size"), f.flag("bias"), f.flag("new_decoder_architecture")
    heads = f.integer("num_attention_heads")
    kv_heads = (f.optional_integer("num_key_value_heads") or heads) if new else (1 if f.flag("multi_query") else heads)
    parallel = f.flag("parallel_attn")
    # Eager attention's softmax in the model dtype (modeling_falcon.py passes dtype=hidden_states.dtype).
    attention = _fused(f, kv_heads=kv_heads, bias=bias, fused="query_key_value", out="dense", softmax_dtype="model")
    layer = Layer(attention=attention,
                  mlp=_mlp(f, f.optional_integer("ffn_hidden_size") or 4 * hidden, "activation",
                           ("dense_h_to_4h", "dense_4h_to_h"), bias=bias),
                  norms=_ln(_falcon_norms(f, new, parallel), f), parallel=parallel or new)
    embedding = Embedding(tokens=Table(name="word_embeddings", rows=f.integer("vocab_size"), dim=hidden))
    return parts.causal_lm(f, name=_class(f), layers=_layers(f, lambda _: layer),
                           final_norm=parts.layer_norm("ln_f", hidden), embedding=embedding)


def _falcon_norms(f: Fields, new: bool, parallel: bool) -> tuple[str, ...]:
    """FalconDecoderLayer: two norms unless parallel_attn; with it, ln_attn + ln_mlp when
    num_ln_in_parallel_attn is 2 (its default under new_decoder_architecture), else one input_layernorm."""
    if not parallel:
        return ("input_layernorm", "post_attention_layernorm")
    count = f.count("num_ln_in_parallel_attn") or (2 if new else 1)
    return ("ln_attn", "ln_mlp") if count == 2 else ("input_layernorm",)


def read_gpt_neox(f: Fields) -> Architecture:
    hidden, bias = f.integer("hidden_size"), f.flag("attention_bias")
    layer = Layer(attention=_fused(f, bias=bias, fused="query_key_value", out="dense"),
                  mlp=_mlp(f, f.integer("intermediate_size"), "hidden_act", ("dense_h_to_4h", "dense_4h_to_h")),
                  norms=_ln(("input_layernorm", "post_attention_layernorm"), f),
                  parallel=f.flag("use_parallel_residual"))
    embedding = Embedding(tokens=Table(name="embed_in", rows=f.integer("vocab_size"), dim=hidden))
    return parts.causal_lm(f, name=_class(f), layers=_layers(f, lambda _: layer),
                           final_norm=parts.layer_norm("final_layer_norm", hidden), embedding=embedding)


def read_phi(f: Fields) -> Architecture:
    hidden = f.integer("hidden_size")
    attention = parts.attention(f, qkv_bias=True, out_bias=True, names=("q_proj", "k_proj", "v_proj", "dense"))
    if f.flag("qk_layernorm"):
        attention = replace(attention, qk_norm="layer", qk_norm_bias=True)
    layer = Layer(attention=attention, mlp=_mlp(f, f.integer("intermediate_size"), "hidden_act", ("fc1", "fc2")),
                  norms=_ln(("input_layernorm",), f), parallel=True)
    return parts.causal_lm(f, name=_class(f), layers=_layers(f, lambda _: layer),
                           final_norm=parts.layer_norm("final_layernorm", hidden), head_bias=True)


def read_stablelm(f: Fields) -> Architecture:
    hidden, parallel = f.integer("hidden_size"), f.flag("use_parallel_residual")
    attention = parts.attention(f, qkv_bias=f.flag("use_qkv_bias"))
    if f.flag("qk_layernorm"):
        attention = replace(attention, qk_norm="layer", qk_norm_across_heads=True)
    mlp = GatedMLP(hidden_size=hidden, intermediate_size=f.integer("intermediate_size"),
                   activation=f.text("hidden_act"))
    names = ("input_layernorm",) if parallel else ("input_layernorm", "post_attention_layernorm")
    layer = Layer(attention=attention, mlp=mlp, norms=_ln(names, f), parallel=parallel)
    return parts.causal_lm(f, name=_class(f), layers=_layers(f, lambda _: layer),
                           final_norm=parts.layer_norm("norm", hidden))


def read_starcoder2(f: Fields) -> Architecture:
    hidden, bias = f.integer("hidden_size"), f.flag("use_bias")
    windows = parts.uniform_window(f, f.integer("num_hidden_layers"))
    mlp = _mlp(f, f.integer("intermediate_size"), "hidden_act", ("c_fc", "c_proj"), bias=bias)
    norms = _ln(("input_layernorm", "post_attention_layernorm"), f)
    layers = [Layer(attention=parts.attention(f, qkv_bias=bias, out_bias=bias, window=window), mlp=mlp, norms=norms)
              for window in windows]
    return parts.causal_lm(f, name=_class(f), layers=layers, final_norm=parts.layer_norm("norm", hidden))


READERS: dict[str, Callable[[Fields], Architecture]] = {
    "gpt2": read_gpt2, "gptj": read_gptj, "openai-gpt": read_openai_gpt, "gpt_bigcode": read_gpt2, "opt": read_opt,
    "bloom": read_bloom, "falcon": read_falcon, "gpt_neox": read_gpt_neox, "phi": read_phi,
    "stablelm": read_stablelm, "starcoder2": read_starcoder2,
}
