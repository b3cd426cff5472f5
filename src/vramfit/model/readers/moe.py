"""Mixture-of-experts decoders: which layers are sparse, the routed and shared experts, the router.

From the transformers 5.23 modeling files:
- mixtral: every layer sparse; num_local_experts experts of intermediate_size, fused as gate_up_proj and
  down_proj (older transformers named them w1/w3/w2); router `gate` (experts x hidden, no bias).
- qwen2_moe / qwen3_moe: layer i is sparse unless i is in mlp_only_layers or (i + 1) % decoder_sparse_step;
  experts are moe_intermediate_size wide; dense layers use intermediate_size. Qwen2-MoE adds a
  shared_expert (shared_expert_intermediate_size) behind a sigmoid shared_expert_gate (hidden -> 1) and
  has q/k/v biases when qkv_bias (default true); Qwen3-MoE has q_norm/k_norm and attention_bias.
- deepseek_v2 / deepseek_v3: multi-head latent attention; layers from first_k_dense_replace on are sparse
  with n_shared_experts x moe_intermediate_size of shared experts. DeepSeek-V3's e_score_correction_bias is
  a buffer (nn.Buffer), not a parameter; its num_nextn_predict_layers MTP layers are not instantiated.
- gpt_oss: q/k/v/o biases (attention_bias, default true) and one sink logit per head; every layer sparse,
  experts with biases on gate_up_proj and down_proj, a router with a bias; even layers slide
  (GptOssConfig.__post_init__).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from vramfit.errors import InvalidConfig
from vramfit.model.architecture import (
    Architecture,
    AttentionBlock,
    FeedForwardBlock,
    GatedMLP,
    LatentAttention,
    Layer,
    MixtureOfExperts,
)
from vramfit.model.readers import parts
from vramfit.model.readers.decoders import PRE_NORMS, gated_mlp
from vramfit.model.readers.fields import Fields

DEFAULTS: dict[str, dict[str, Any]] = {
    "mixtral": {"tie_word_embeddings": False, "hidden_act": "silu", "num_local_experts": 8,
                "num_experts_per_tok": 2, "sliding_window": None},
    "qwen2_moe": {"tie_word_embeddings": False, "hidden_act": "silu", "qkv_bias": True, "num_local_experts": 60,
                  "num_experts_per_tok": 4, "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632,
                  "decoder_sparse_step": 1, "mlp_only_layers": None, "use_sliding_window": False,
                  "sliding_window": 4096, "max_window_layers": 28},
    "qwen3_moe": {"tie_word_embeddings": False, "hidden_act": "silu", "attention_bias": False,
                  "num_local_experts": 128, "num_experts_per_tok": 8, "moe_intermediate_size": 768,
                  "decoder_sparse_step": 1, "mlp_only_layers": None, "use_sliding_window": False,
                  "sliding_window": 4096},
    "gpt_oss": {"tie_word_embeddings": False, "hidden_act": "silu", "attention_bias": True, "head_dim": 64,
                "num_local_experts": 128, "num_experts_per_tok": 4, "sliding_window": 128},
    "deepseek_v2": {"tie_word_embeddings": False, "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
                    "num_local_experts": 64, "num_experts_per_tok": None, "n_shared_experts": 2,
                    "moe_intermediate_size": 1407, "first_k_dense_replace": 0, "q_lora_rank": 1536,
                    "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128},
    "deepseek_v3": {"tie_word_embeddings": False, "hidden_act": "silu", "attention_bias": False,
                    "num_local_experts": 256, "num_experts_per_tok": 8, "n_shared_experts": 1,
                    "moe_intermediate_size": 2048, "first_k_dense_replace": 3, "q_lora_rank": 1536,
                    "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128},
}

PREFIXES = {"gpt_oss": "GptOss", "mixtral": "Mixtral", "qwen2_moe": "Qwen2Moe", "qwen3_moe": "Qwen3Moe", "deepseek_v2": "DeepseekV2",
            "deepseek_v3": "DeepseekV3"}


def _decoder(f: Fields, attention: Callable[[int], AttentionBlock], mlp: Callable[[int], FeedForwardBlock],
             windows: tuple[int | None, ...] | None = None) -> Architecture:
    prefix, hidden = PREFIXES[f.model_type], f.integer("hidden_size")
    name = parts.class_name(f, prefix=prefix, classes=(f"{prefix}ForCausalLM", f"{prefix}Model"))
    norms = parts.norms(PRE_NORMS, hidden, "rms")
    layers = [Layer(attention=_windowed(attention(index), windows, index), mlp=mlp(index), norms=norms)
              for index in range(f.integer("num_hidden_layers"))]
    return parts.causal_lm(f, name=name, layers=layers, final_norm=parts.rms("norm", hidden))


def _windowed(attention: AttentionBlock, windows: tuple[int | None, ...] | None, index: int) -> AttentionBlock:
    return attention if windows is None or windows[index] is None else replace(attention,
                                                                                sliding_window=windows[index])


def _experts(f: Fields, expert: GatedMLP, *, shared: GatedMLP | None = None,
             shared_gate: bool = False) -> MixtureOfExperts:
    experts, per_token = f.integer("num_local_experts"), f.integer("num_experts_per_tok")
    if per_token > experts:
        raise InvalidConfig(f"config.json ({f.model_type}): num_experts_per_tok={per_token} exceeds the "
                            f"{experts} experts")
    return MixtureOfExperts(hidden_size=f.integer("hidden_size"), experts=experts, experts_per_token=per_token,
                            expert=expert, shared=shared, shared_gate=shared_gate)


def read_mixtral(f: Fields) -> Architecture:
    moe = _experts(f, gated_mlp(f, fused="gate_up_proj"))
    attention = parts.attention(f)
    return _decoder(f, lambda _: attention, lambda _: moe, parts.uniform_window(f, f.integer("num_hidden_layers")))


def read_gpt_oss(f: Fields) -> Architecture:
    expert = gated_mlp(f, bias=True, fused="gate_up_proj")
    moe = replace(_experts(f, expert), router_bias=True)
    bias, layers = f.flag("attention_bias"), f.integer("num_hidden_layers")
    attention = replace(parts.attention(f, qkv_bias=bias, out_bias=bias), sinks=True)
    windows = parts.windows(f, layers, f.optional_integer("sliding_window"), lambda index: (index + 1) % 2 == 1)
    return _decoder(f, lambda _: attention, lambda _: moe, windows)


def _qwen_sparse(f: Fields) -> Callable[[int], bool]:
    """Qwen2MoeDecoderLayer / Qwen3MoeDecoderLayer: sparse unless listed in mlp_only_layers or off-step."""
    dense = f.indices("mlp_only_layers")
    step = f.integer("decoder_sparse_step")
    return lambda index: index not in dense and (index + 1) % step == 0


def read_qwen2_moe(f: Fields) -> Architecture:
    """Qwen2MoeConfig.__post_init__: with use_sliding_window, even layers below max_window_layers slide."""
    sparse, dense = _qwen_sparse(f), gated_mlp(f)
    moe = _experts(f, gated_mlp(f, fused="gate_up_proj", size="moe_intermediate_size"),
                   shared=gated_mlp(f, size="shared_expert_intermediate_size"), shared_gate=True)
    attention = parts.attention(f, qkv_bias=f.flag("qkv_bias"))
    layers = f.integer("num_hidden_layers")
    window = f.optional_integer("sliding_window") if f.flag("use_sliding_window") else None
    last = f.count("max_window_layers")
    windows = parts.windows(f, layers, window, lambda index: (index + 1) % 2 == 1 and index < last)
    return _decoder(f, lambda _: attention, lambda index: moe if sparse(index) else dense, windows)


def read_qwen3_moe(f: Fields) -> Architecture:
    sparse, dense = _qwen_sparse(f), gated_mlp(f)
    moe = _experts(f, gated_mlp(f, fused="gate_up_proj", size="moe_intermediate_size"))
    bias = f.flag("attention_bias")
    attention = parts.attention(f, qkv_bias=bias, out_bias=bias, qk_norm="rms")
    layers = f.integer("num_hidden_layers")
    window = f.optional_integer("sliding_window") if f.flag("use_sliding_window") else None
    return _decoder(f, lambda _: attention, lambda index: moe if sparse(index) else dense,
                    parts.windows(f, layers, window, lambda _: True))


def _latent_attention(f: Fields) -> LatentAttention:
    return LatentAttention(hidden_size=f.integer("hidden_size"), heads=f.integer("num_attention_heads"),
                           q_lora_rank=f.optional_integer("q_lora_rank"), kv_lora_rank=f.integer("kv_lora_rank"),
                           qk_nope_head_dim=f.integer("qk_nope_head_dim"),
                           qk_rope_head_dim=f.integer("qk_rope_head_dim"), v_head_dim=f.integer("v_head_dim"),
                           bias=f.flag("attention_bias"))


def read_deepseek(f: Fields) -> Architecture:
    """DeepseekV2/V3DecoderLayer: MoE from layer first_k_dense_replace on; MLP biases = mlp_bias (V2 only)."""
    bias = f.flag("mlp_bias") if "mlp_bias" in f.defaults else False
    first_sparse = f.count("first_k_dense_replace")
    shared_width = f.integer("n_shared_experts") * f.integer("moe_intermediate_size")
    shared = GatedMLP(hidden_size=f.integer("hidden_size"), intermediate_size=shared_width, bias=bias,
                      activation=f.text("hidden_act"))
    moe = _experts(f, gated_mlp(f, fused="gate_up_proj", size="moe_intermediate_size"), shared=shared)
    dense, attention = gated_mlp(f, bias=bias), _latent_attention(f)
    return _decoder(f, lambda _: attention, lambda index: moe if index >= first_sparse else dense)


READERS: dict[str, Callable[[Fields], Architecture]] = {
    "gpt_oss": read_gpt_oss, "mixtral": read_mixtral, "qwen2_moe": read_qwen2_moe, "qwen3_moe": read_qwen3_moe,
    "deepseek_v2": read_deepseek, "deepseek_v3": read_deepseek,
}
