"""Llama-style decoders: token table, pre-norm blocks of attention + gated MLP, final RMSNorm, lm_head.

Each reader states what differs, read from the transformers 5.23 modeling file of that type:
- llama (modeling_llama.py): q/k/v/o bias = attention_bias, gate/up/down bias = mlp_bias.
- mistral: no biases anywhere, one sliding_window on every layer.
- qwen2: q/k/v biases always (bias=True with no config flag), o_proj without; windows from
  use_sliding_window / max_window_layers / layer_types.
- qwen3: q/k/v/o bias = attention_bias, RMSNorm q_norm/k_norm over head_dim.
- gemma: like llama with attention_bias and hidden_act; tie_word_embeddings defaults to true.
- gemma2: four norms per block (input, post_attention, pre_feedforward, post_feedforward), alternating
  sliding/global layers (even layers slide); activation is hidden_activation.
- gemma3_text: gemma2 plus q_norm/k_norm; five of every sliding_window_pattern (6) layers slide.
- phi3: fused qkv_proj and gate_up_proj, no biases.
- glm4: fused gate_up_proj, q/k/v bias = attention_bias, o_proj without, four norms per block.
- olmo2: no input norm; post_attention and post_feedforward norms; q_norm/k_norm across all heads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from vramfit.model.architecture import Architecture, Attention, GatedMLP, Layer
from vramfit.model.readers import parts
from vramfit.model.readers.fields import Fields

PRE_NORMS = ("input_layernorm", "post_attention_layernorm")
GEMMA2_NORMS = PRE_NORMS + ("pre_feedforward_layernorm", "post_feedforward_layernorm")

# Defaults of each transformers 5.23 config class (configuration_<type>.py), for the fields read here.
DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False, "hidden_act": "silu"},
    "mistral": {"tie_word_embeddings": False, "hidden_act": "silu", "sliding_window": 4096},
    "qwen2": {"tie_word_embeddings": False, "hidden_act": "silu", "use_sliding_window": False,
              "sliding_window": 4096, "max_window_layers": 28},
    "qwen3": {"tie_word_embeddings": False, "attention_bias": False, "hidden_act": "silu", "head_dim": 128,
              "use_sliding_window": False, "sliding_window": 4096, "max_window_layers": 28},
    "gemma": {"tie_word_embeddings": True, "attention_bias": False, "hidden_act": "gelu_pytorch_tanh",
              "head_dim": 256},
    "gemma2": {"tie_word_embeddings": True, "attention_bias": False, "hidden_activation": "gelu_pytorch_tanh",
               "head_dim": 256, "sliding_window": 4096},
    "gemma3_text": {"tie_word_embeddings": True, "attention_bias": False, "hidden_activation": "gelu_pytorch_tanh",
                    "head_dim": 256, "sliding_window": 4096},
    "phi3": {"tie_word_embeddings": False, "hidden_act": "silu", "sliding_window": None},
    "glm4": {"tie_word_embeddings": False, "attention_bias": True, "hidden_act": "silu", "head_dim": 128},
    "olmo2": {"tie_word_embeddings": False, "attention_bias": False, "hidden_act": "silu"},
}

PREFIXES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3", "gemma": "Gemma",
            "gemma2": "Gemma2", "gemma3_text": "Gemma3Text", "phi3": "Phi3", "glm4": "Glm4", "olmo2": "Olmo2"}


def _class(f: Fields) -> str:
    prefix = PREFIXES[f.model_type]
    causal = "Gemma3ForCausalLM" if f.model_type == "gemma3_text" else f"{prefix}ForCausalLM"
    return parts.class_name(f, prefix=prefix, classes=(causal, f"{prefix}Model"))


def gated_mlp(f: Fields, *, bias: bool = False, activation: str = "hidden_act", fused: str | None = None,
              size: str = "intermediate_size") -> GatedMLP:
    return GatedMLP(hidden_size=f.integer("hidden_size"), intermediate_size=f.integer(size), bias=bias,
                    activation=f.text(activation), fused=fused)


def _stack(f: Fields, attention: Callable[[int | None], Attention], mlp: GatedMLP,
           windows: tuple[int | None, ...], norm_names: tuple[str, ...] = PRE_NORMS, *,
           fp32_norm_weight: bool = False, logit_softcap: float | None = None) -> Architecture:
    """fp32_norm_weight: GemmaRMSNorm on every norm (Norm.weight_in_fp32); logit_softcap: the head's."""
    hidden = f.integer("hidden_size")
    norms = parts.norms(norm_names, hidden, "rms", weight_in_fp32=fp32_norm_weight)
    layers = [Layer(attention=attention(window), mlp=mlp, norms=norms) for window in windows]
    return parts.causal_lm(f, name=_class(f), layers=layers, logit_softcap=logit_softcap,
                           final_norm=parts.rms("norm", hidden, weight_in_fp32=fp32_norm_weight))


def _layers(f: Fields) -> int:
    return f.integer("num_hidden_layers")


def _qwen_windows(f: Fields) -> tuple[int | None, ...]:
    """Qwen2/Qwen3Config.__post_init__: with use_sliding_window, layers from max_window_layers on slide."""
    window = f.optional_integer("sliding_window") if f.flag("use_sliding_window") else None
    first = f.count("max_window_layers")
    return parts.windows(f, _layers(f), window, lambda index: index >= first)


def read_llama(f: Fields) -> Architecture:
    bias = f.flag("attention_bias")
    return _stack(f, lambda w: parts.attention(f, qkv_bias=bias, out_bias=bias, window=w),
                  gated_mlp(f, bias=f.flag("mlp_bias")), (None,) * _layers(f))


def read_mistral(f: Fields) -> Architecture:
    return _stack(f, lambda w: parts.attention(f, window=w), gated_mlp(f), parts.uniform_window(f, _layers(f)))


def read_qwen2(f: Fields) -> Architecture:
    return _stack(f, lambda w: parts.attention(f, qkv_bias=True, window=w), gated_mlp(f), _qwen_windows(f))


def read_qwen3(f: Fields) -> Architecture:
    bias = f.flag("attention_bias")
    return _stack(f, lambda w: parts.attention(f, qkv_bias=bias, out_bias=bias, qk_norm="rms", window=w),
                  gated_mlp(f), _qwen_windows(f))


def read_gemma(f: Fields) -> Architecture:
    """GemmaRMSNorm everywhere: `output * (1.0 + self.weight.float())` in fp32 (Norm.weight_in_fp32)."""
    bias = f.flag("attention_bias")
    return _stack(f, lambda w: parts.attention(f, qkv_bias=bias, out_bias=bias, window=w),
                  gated_mlp(f), (None,) * _layers(f), fp32_norm_weight=True)


def _gemma2_attention(f: Fields, window: int | None, *, qk_norm: bool = False) -> Attention:
    """Gemma 2/3 attention: the scores soft-capped by attn_logit_softcapping (modeling_gemma2.py
    eager_attention_forward: scores / cap, tanh, * cap); Gemma 3's q_norm/k_norm are GemmaRMSNorms."""
    bias = f.flag("attention_bias")
    plain = parts.attention(f, qkv_bias=bias, out_bias=bias, qk_norm="rms" if qk_norm else None, window=window)
    return replace(plain, qk_norm_weight_in_fp32=qk_norm, logit_softcap=parts.softcap(f, "attn_logit_softcapping"))


def read_gemma2(f: Fields) -> Architecture:
    """Gemma2Config.__post_init__: layer i slides when (i + 1) % 2 (every even index). Logits soft-capped by
    final_logit_softcapping (Gemma2ForCausalLM.forward); GemmaRMSNorm-style norms (Gemma2RMSNorm)."""
    windows = parts.windows(f, _layers(f), f.optional_integer("sliding_window"), lambda index: (index + 1) % 2 == 1)
    return _stack(f, lambda w: _gemma2_attention(f, w), gated_mlp(f, activation="hidden_activation"), windows,
                  GEMMA2_NORMS, fp32_norm_weight=True, logit_softcap=parts.softcap(f, "final_logit_softcapping"))


def read_gemma3_text(f: Fields) -> Architecture:
    """Gemma3TextConfig.__post_init__: layer i slides when (i + 1) % sliding_window_pattern (default 6).
    Soft-capping and norms as gemma2 (Gemma3RMSNorm, q_norm/k_norm included)."""
    pattern = f.count("sliding_window_pattern", default=6) or 6
    windows = parts.windows(f, _layers(f), f.optional_integer("sliding_window"),
                            lambda index: (index + 1) % pattern != 0)
    return _stack(f, lambda w: _gemma2_attention(f, w, qk_norm=True), gated_mlp(f, activation="hidden_activation"),
                  windows, GEMMA2_NORMS, fp32_norm_weight=True,
                  logit_softcap=parts.softcap(f, "final_logit_softcapping"))


def read_phi3(f: Fields) -> Architecture:
    return _stack(f, lambda w: parts.attention(f, fused="qkv_proj", window=w),
                  gated_mlp(f, fused="gate_up_proj"), parts.uniform_window(f, _layers(f)))


def read_glm4(f: Fields) -> Architecture:
    norms = PRE_NORMS + ("post_self_attn_layernorm", "post_mlp_layernorm")
    return _stack(f, lambda w: parts.attention(f, qkv_bias=f.flag("attention_bias"), window=w),
                  gated_mlp(f, fused="gate_up_proj"), (None,) * _layers(f), norms)


def read_olmo2(f: Fields) -> Architecture:
    bias = f.flag("attention_bias")

    def attention(window: int | None) -> Attention:
        plain = parts.attention(f, qkv_bias=bias, out_bias=bias, window=window)
        return replace(plain, qk_norm="rms", qk_norm_across_heads=True)
    return _stack(f, attention, gated_mlp(f), (None,) * _layers(f),
                  ("post_attention_layernorm", "post_feedforward_layernorm"))


READERS: dict[str, Callable[[Fields], Architecture]] = {
    "llama": read_llama, "mistral": read_mistral, "qwen2": read_qwen2, "qwen3": read_qwen3, "gemma": read_gemma,
    "gemma2": read_gemma2, "gemma3_text": read_gemma3_text, "phi3": read_phi3, "glm4": read_glm4,
    "olmo2": read_olmo2,
}
