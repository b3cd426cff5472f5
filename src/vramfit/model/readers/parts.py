"""Building blocks shared by the readers: heads and head_dim, norms, windows per layer, the class read.

Every check here is one transformers makes (or silently relies on) when it builds the model: head_dim is
hidden_size / num_attention_heads only where config.json states no head_dim (LlamaConfig.__post_init__),
and grouped-query attention needs num_attention_heads to be a multiple of num_key_value_heads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from vramfit.errors import InvalidConfig, UnsupportedArchitecture
from vramfit.model.architecture import (
    Architecture,
    Attention,
    Embedding,
    Head,
    Layer,
    Linear,
    Norm,
    NormKind,
    Stack,
    Table,
)
from vramfit.model.readers.fields import Fields


def heads(f: Fields) -> tuple[int, int, int]:
    """(heads, kv_heads, head_dim): kv_heads defaults to heads (multi-head attention)."""
    count = f.integer("num_attention_heads")
    kv_heads = f.optional_integer("num_key_value_heads") or count
    if count % kv_heads:
        raise InvalidConfig(f"config.json ({f.model_type}): num_key_value_heads={kv_heads} does not divide "
                            f"num_attention_heads={count}; grouped-query attention needs a whole number of "
                            f"query heads per key/value head")
    return count, kv_heads, head_dim(f, count)


def head_dim(f: Fields, count: int) -> int:
    """head_dim as stated; else hidden_size / heads, which must then divide exactly."""
    stated = f.optional_integer("head_dim")
    if stated is not None:
        return stated
    hidden = f.integer("hidden_size")
    if hidden % count:
        raise InvalidConfig(f"config.json ({f.model_type}): hidden_size={hidden} is not divisible by "
                            f"num_attention_heads={count} and there is no head_dim; state head_dim")
    return hidden // count


def rms(name: str, size: int, *, weight_in_fp32: bool = False) -> Norm:
    return Norm(name=name, size=size, kind="rms", weight_in_fp32=weight_in_fp32)


def layer_norm(name: str, size: int, *, bias: bool = True) -> Norm:
    return Norm(name=name, size=size, kind="layer", bias=bias)


def norms(names: Sequence[str], size: int, kind: NormKind, *, bias: bool = False,
          weight_in_fp32: bool = False) -> tuple[Norm, ...]:
    return tuple(Norm(name=name, size=size, kind=kind, bias=bias, weight_in_fp32=weight_in_fp32)
                 for name in names)


def softcap(f: Fields, name: str) -> float | None:
    """A soft-capping value (attn_logit_softcapping, final_logit_softcapping) as config.json states it: None
    (no capping) when unset, null or 0; the modeling code caps whenever it is not None."""
    value = f.get(name)
    if not value:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidConfig(f"config.json ({f.model_type}) field {name} is {value!r}; "
                            "it must be a number or null")
    return float(value)


def windows(f: Fields, layers: int, window: int | None, sliding: Callable[[int], bool]) -> tuple[int | None, ...]:
    """The attention window of every layer: config.json's layer_types where stated ("sliding_attention" /
    "full_attention"), else the model type's rule, as its config class's __post_init__ derives layer_types."""
    stated = f.get("layer_types")
    if stated is None:
        return tuple(window if window and sliding(index) else None for index in range(layers))
    if not isinstance(stated, list) or len(stated) != layers:
        raise InvalidConfig(f"config.json ({f.model_type}): layer_types must list one entry per layer "
                            f"({layers}); it has {stated!r}")
    return tuple(window if kind == "sliding_attention" and window else None for kind in stated)


def uniform_window(f: Fields, layers: int) -> tuple[int | None, ...]:
    """sliding_window on every layer (Mistral, Mixtral, Phi-3, Starcoder2): None or 0 means global."""
    window = f.optional_integer("sliding_window") if f.get("sliding_window") else None
    return windows(f, layers, window, lambda _: True)


def class_name(f: Fields, *, prefix: str, classes: Sequence[str]) -> str:
    """architectures[0], or the bare `<Prefix>Model` AutoModel builds when none is named."""
    named = f.config.get("architectures") or [f"{prefix}Model"]
    name = named[0] if isinstance(named, list) else named
    if name not in classes:
        raise UnsupportedArchitecture(f"config.json ({f.model_type}) names the class {name!r}; vramfit counts "
                                      f"{', '.join(classes)} for this model type")
    return str(name)


LM_HEAD_CLASSES = ("ForCausalLM", "LMHeadModel")


def causal_lm(f: Fields, *, name: str, layers: Sequence[Layer], final_norm: Norm | None,
              embedding: Embedding | None = None, head_bias: bool = False,
              logit_softcap: float | None = None) -> Architecture:
    """A decoder-only model: token table, layers, final norm, and (for *ForCausalLM, *LMHeadModel) the
    vocabulary head `lm_head`, from the token table's width, whose weight is the token table when
    tie_word_embeddings (with the model type's default) says so."""
    hidden, vocab = f.integer("hidden_size"), f.integer("vocab_size")
    embedding = embedding or Embedding(tokens=Table(name="embed_tokens", rows=vocab, dim=hidden))
    output = Linear(name="lm_head", in_features=embedding.tokens.dim, out_features=vocab, bias=head_bias)
    head = Head(output=output, tied=f.flag("tie_word_embeddings"), logit_softcap=logit_softcap) \
        if name.endswith(LM_HEAD_CLASSES) else Head(output=None)
    return Architecture(model_type=f.model_type, class_name=name, hidden_size=hidden, vocab_size=vocab,
                        embedding=embedding, head=head, decoder=Stack(layers=tuple(layers), final_norm=final_norm),
                        max_positions=f.optional_integer("max_position_embeddings"), dtype=dtype(f))


def dtype(f: Fields) -> str | None:
    value = f.config.get("torch_dtype") or f.config.get("dtype")
    return value if isinstance(value, str) else None


def attention(f: Fields, *, qkv_bias: bool = False, out_bias: bool = False, qk_norm: NormKind | None = None,
              window: int | None = None, fused: str | None = None,
              names: tuple[str, str, str, str] = ("q_proj", "k_proj", "v_proj", "o_proj")) -> Attention:
    count, kv_heads, dim = heads(f)
    return Attention(hidden_size=f.integer("hidden_size"), heads=count, kv_heads=kv_heads, head_dim=dim,
                     qkv_bias=qkv_bias, out_bias=out_bias, qk_norm=qk_norm, sliding_window=window, fused=fused,
                     names=names)
