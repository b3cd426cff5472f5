"""ChatGLM2/3 and GLM-4 checkpoints published with remote code (model_type "chatglm", e.g. THUDM/glm-4-9b-chat).

Read from the modeling_chatglm.py these repositories ship (transformers has no class for them):
- ChatGLMModel holds embedding.word_embeddings (padded_vocab_size x hidden_size), the GLMTransformer and an
  untied output_layer (hidden_size -> padded_vocab_size, no bias); ChatGLMForConditionalGeneration wraps it.
- SelfAttention.query_key_value: hidden_size -> (heads + 2 groups) x kv_channels, groups =
  multi_query_group_num under multi_query_attention, else heads; bias = add_bias_linear or add_qkv_bias.
  dense: heads x kv_channels -> hidden_size, bias = add_bias_linear.
- MLP.dense_h_to_4h: hidden_size -> 2 x ffn_hidden_size (SwiGLU, gate and up fused); dense_4h_to_h back;
  bias = add_bias_linear.
- GLMBlock: input_layernorm and post_attention_layernorm, RMSNorm when rmsnorm (else LayerNorm with bias);
  final_layernorm when post_layer_norm. The rotary inv_freq is a buffer.
- ChatGLMForConditionalGeneration.forward takes the loss itself (Head.shifted_fp32_loss): lm_logits cast to
  fp32, a shifted `.contiguous()` copy, CrossEntropyLoss, then the fp32 logits cast back to the model dtype
  (THUDM's ChatGLM3 code, which first makes a batch-first `.transpose(0, 1).contiguous()` copy, and the GLM-4
  code of June 2024 alike: copies read in THUDM/LongAlign modeling_chatglm.py and XuRui314/GLM4v-Finetune
  modeling_chatglm.py at 513b75de, a verbatim glm-4v-9b file of 2024-06-29).
No default is assumed: these configs must state every switch (the remote config class is not at hand), and
a P-tuning prefix encoder (pre_seq_len) is refused rather than left out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vramfit.errors import InvalidConfig, UnsupportedArchitecture
from vramfit.model.architecture import (
    Architecture,
    Attention,
    Embedding,
    GatedMLP,
    Head,
    Layer,
    Linear,
    NormKind,
    Stack,
    Table,
)
from vramfit.model.readers import parts
from vramfit.model.readers.fields import Fields

DEFAULTS: dict[str, dict[str, Any]] = {"chatglm": {}}


def read_chatglm(f: Fields) -> Architecture:
    if "padded_vocab_size" not in f.config:
        raise UnsupportedArchitecture("model_type 'chatglm' without padded_vocab_size is the first ChatGLM-6B "
                                      "(GLM-130B-style blocks), which vramfit does not describe; ChatGLM2/3 and "
                                      "GLM-4 configs are supported")
    if f.config.get("pre_seq_len") is not None:
        raise UnsupportedArchitecture("config.json (chatglm) sets pre_seq_len: its P-tuning prefix encoder is not "
                                      "counted by vramfit; remove pre_seq_len to estimate the base model")
    name = parts.class_name(f, prefix="ChatGLM", classes=("ChatGLMForConditionalGeneration", "ChatGLMModel"))
    hidden, vocab = f.integer("hidden_size"), f.integer("padded_vocab_size")
    norm_kind: NormKind = "rms" if f.flag("rmsnorm") else "layer"
    layer = Layer(attention=_attention(f), mlp=_mlp(f),
                  norms=parts.norms(("input_layernorm", "post_attention_layernorm"), hidden, norm_kind,
                                    bias=norm_kind == "layer"))
    final = parts.norms(("final_layernorm",), hidden, norm_kind, bias=norm_kind == "layer")
    return Architecture(model_type=f.model_type, class_name=name, hidden_size=hidden, vocab_size=vocab,
                        embedding=Embedding(tokens=Table(name="word_embeddings", rows=vocab, dim=hidden)),
                        head=Head(output=Linear(name="output_layer", in_features=hidden, out_features=vocab),
                                  shifted_fp32_loss=True),
                        decoder=Stack(layers=tuple(layer for _ in range(f.integer("num_hidden_layers"))),
                                      final_norm=final[0] if f.flag("post_layer_norm") else None),
                        max_positions=f.optional_integer("seq_length"), dtype=parts.dtype(f))


def _attention(f: Fields) -> Attention:
    heads = f.integer("num_attention_heads")
    groups = f.integer("multi_query_group_num") if f.flag("multi_query_attention") else heads
    if heads % groups:
        raise InvalidConfig(f"config.json (chatglm): multi_query_group_num={groups} does not divide "
                            f"num_attention_heads={heads}")
    bias = f.flag("add_bias_linear")
    return Attention(hidden_size=f.integer("hidden_size"), heads=heads, kv_heads=groups,
                     head_dim=f.integer("kv_channels"), qkv_bias=bias or f.flag("add_qkv_bias"), out_bias=bias,
                     fused="query_key_value", names=("query_key_value",) * 3 + ("dense",))


def _mlp(f: Fields) -> GatedMLP:
    return GatedMLP(hidden_size=f.integer("hidden_size"), intermediate_size=f.integer("ffn_hidden_size"),
                    bias=f.flag("add_bias_linear"), activation="silu",
                    names=("dense_h_to_4h", "dense_h_to_4h", "dense_4h_to_h"), fused="dense_h_to_4h")


READERS: dict[str, Callable[[Fields], Architecture]] = {"chatglm": read_chatglm}
