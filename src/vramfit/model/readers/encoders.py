"""Encoders (BERT, RoBERTa) and encoder-decoders (T5, mT5): bidirectional attention, no KV cache.

From the transformers 5.23 modeling files:
- bert / roberta: embeddings word + position + token_type tables and a LayerNorm; each layer has
  query/key/value and attention.output.dense, intermediate.dense and output.dense, all with biases, and two
  LayerNorms. BertModel/RobertaModel add a pooler (dense hidden -> hidden); the MLM heads have no pooler
  but a transform (dense + LayerNorm), a decoder tied to the word table and one vocabulary bias (the decoder's
  bias is that same parameter). BertForPreTraining adds the pooler and seq_relationship (hidden -> 2).
- t5 / mt5: one `shared` table; each block has SelfAttention q/k/v/o without biases (heads x d_kv wide),
  the relative_attention_bias table (buckets x heads) in the first block of each stack only, the decoder's
  EncDecAttention, DenseReluDense wi/wo (or wi_0/wi_1/wo when feed_forward_proj is gated-*), an RMS
  layer_norm before each sub-layer, and a final_layer_norm per stack. T5Config and MT5Config force
  tie_word_embeddings = True in __post_init__ (configuration_t5.py), so lm_head is the shared table even
  for T5 v1.1 configs that say false: that is what transformers 5.23 instantiates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vramfit.errors import InvalidConfig
from vramfit.model.architecture import (
    MLP,
    Architecture,
    Attention,
    Embedding,
    FeedForward,
    GatedMLP,
    Head,
    Layer,
    Linear,
    Stack,
    Table,
)
from vramfit.model.readers import parts
from vramfit.model.readers.fields import Fields

DEFAULTS: dict[str, dict[str, Any]] = {
    "bert": {"tie_word_embeddings": True, "hidden_act": "gelu", "type_vocab_size": 2},
    "roberta": {"tie_word_embeddings": True, "hidden_act": "gelu", "type_vocab_size": 2},
    "t5": {"feed_forward_proj": "relu", "relative_attention_num_buckets": 32, "num_decoder_layers": None},
    "mt5": {"feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 32, "num_decoder_layers": None},
}

_ENCODER_CLASSES = {
    "bert": ("Bert", ("BertModel", "BertForMaskedLM", "BertForPreTraining", "BertForSequenceClassification",
                      "BertForTokenClassification")),
    "roberta": ("Roberta", ("RobertaModel", "RobertaForMaskedLM", "RobertaForSequenceClassification",
                            "RobertaForTokenClassification")),
    "t5": ("T5", ("T5ForConditionalGeneration", "T5Model", "T5EncoderModel")),
    "mt5": ("MT5", ("MT5ForConditionalGeneration", "MT5Model", "MT5EncoderModel")),
}


def _class(f: Fields) -> str:
    prefix, classes = _ENCODER_CLASSES[f.model_type]
    return parts.class_name(f, prefix=prefix, classes=classes)


def read_bert(f: Fields) -> Architecture:
    """BertLayer / RobertaLayer; the head by class (see the module docstring). Eager attention takes the
    softmax in the model dtype (models/bert, roberta eager_attention_forward, Attention.softmax_dtype)."""
    hidden, name = f.integer("hidden_size"), _class(f)
    count = f.integer("num_attention_heads")
    attention = Attention(hidden_size=hidden, heads=count, kv_heads=count, head_dim=parts.head_dim(f, count),
                          qkv_bias=True, out_bias=True, causal=False, names=("query", "key", "value", "dense"),
                          softmax_dtype="model")
    mlp = MLP(hidden_size=hidden, intermediate_size=f.integer("intermediate_size"), activation=f.text("hidden_act"),
              names=("dense", "dense"))
    layer = Layer(attention=attention, mlp=mlp, norms=parts.norms(("LayerNorm", "LayerNorm"), hidden, "layer",
                                                                 bias=True))
    embedding = Embedding(tokens=Table(name="word_embeddings", rows=f.integer("vocab_size"), dim=hidden),
                          positions=Table(name="position_embeddings", rows=f.integer("max_position_embeddings"),
                                          dim=hidden),
                          token_types=Table(name="token_type_embeddings", rows=f.integer("type_vocab_size"),
                                            dim=hidden),
                          norm=parts.layer_norm("LayerNorm", hidden))
    layers = tuple(layer for _ in range(f.integer("num_hidden_layers")))
    return Architecture(model_type=f.model_type, class_name=name, hidden_size=hidden,
                        vocab_size=f.integer("vocab_size"), embedding=embedding, head=_bert_head(f, name),
                        encoder=Stack(layers=layers), max_positions=f.integer("max_position_embeddings"),
                        dtype=parts.dtype(f))


def _bert_head(f: Fields, name: str) -> Head:
    hidden, vocab = f.integer("hidden_size"), f.integer("vocab_size")
    dense = Linear(name="dense", in_features=hidden, out_features=hidden, bias=True)
    pooler = (dense,)
    if name.endswith("Model"):
        return Head(output=None, transform=pooler)
    if name.endswith("ForSequenceClassification") and f.model_type == "roberta":
        return Head(output=Linear(name="out_proj", in_features=hidden, out_features=_labels(f), bias=True),
                    transform=pooler)
    if name.endswith(("ForSequenceClassification", "ForTokenClassification")):
        classifier = Linear(name="classifier", in_features=hidden, out_features=_labels(f), bias=True)
        return Head(output=classifier, transform=pooler if name.endswith("ForSequenceClassification") else ())
    tied = f.flag("tie_word_embeddings")
    # Untied, the head's own `bias` vector is no longer the decoder's bias (_tied_weights_keys ties both):
    # transformers keeps both parameters.
    bias = () if tied else (Table(name="bias", rows=vocab, dim=1),)
    mlm = (dense, parts.layer_norm("LayerNorm" if f.model_type == "bert" else "layer_norm", hidden)) + bias
    nsp = (dense, Linear(name="seq_relationship", in_features=hidden, out_features=2, bias=True))
    return Head(output=Linear(name="decoder", in_features=hidden, out_features=vocab, bias=True),
                tied=tied, transform=mlm + (nsp if name.endswith("ForPreTraining") else ()))


def _labels(f: Fields) -> int:
    """PretrainedConfig.num_labels: the length of id2label, else num_labels, else 2."""
    labels = f.config.get("id2label")
    if isinstance(labels, dict) and labels:
        return len(labels)
    count = f.config.get("num_labels", 2)
    if not isinstance(count, int) or isinstance(count, bool) or count <= 0:
        raise InvalidConfig(f"config.json ({f.model_type}) field num_labels is {count!r}; it must be a positive "
                            f"integer")
    return count


def read_t5(f: Fields) -> Architecture:
    hidden, vocab, name = f.integer("hidden_size"), f.integer("vocab_size"), _class(f)
    encoder_layers = f.integer("num_hidden_layers")
    decoder_layers = f.optional_integer("num_decoder_layers") or encoder_layers
    encoder = _t5_stack(f, encoder_layers, decoder=False)
    decoder = None if name.endswith("EncoderModel") else _t5_stack(f, decoder_layers, decoder=True)
    output = Linear(name="lm_head", in_features=hidden, out_features=vocab)
    head = Head(output=output, tied=True) if name.endswith("ForConditionalGeneration") else Head(output=None)
    return Architecture(model_type=f.model_type, class_name=name, hidden_size=hidden, vocab_size=vocab,
                        embedding=Embedding(tokens=Table(name="shared", rows=vocab, dim=hidden)), head=head,
                        encoder=encoder, decoder=decoder, dtype=parts.dtype(f))


def _t5_stack(f: Fields, count: int, *, decoder: bool) -> Stack:
    """T5Stack: blocks of T5LayerSelfAttention (+ T5LayerCrossAttention) + T5LayerFF, each with its RMS
    layer_norm; the relative position table only where has_relative_attention_bias (block 0)."""
    hidden, mlp = f.integer("hidden_size"), _t5_mlp(f)
    norms = parts.norms(("layer_norm",) * (3 if decoder else 2), hidden, "rms")
    cross = _t5_attention(f, causal=True, cross=True) if decoder else None

    def block(index: int) -> Layer:
        buckets = f.integer("relative_attention_num_buckets") if index == 0 else 0
        attention = _t5_attention(f, causal=decoder, buckets=buckets)
        return Layer(attention=attention, mlp=mlp, norms=norms, cross_attention=cross)
    return Stack(layers=tuple(block(index) for index in range(count)), final_norm=parts.rms("final_layer_norm", hidden))


def _t5_attention(f: Fields, *, causal: bool, cross: bool = False, buckets: int = 0) -> Attention:
    heads = f.integer("num_attention_heads")
    return Attention(hidden_size=f.integer("hidden_size"), heads=heads, kv_heads=heads,
                     head_dim=f.integer("head_dim"), causal=causal, cross=cross, relative_buckets=buckets,
                     names=("q", "k", "v", "o"))


def _t5_mlp(f: Fields) -> FeedForward:
    """T5Config.__post_init__: feed_forward_proj 'gated-ACT' is gated (gated-gelu means gelu_new), else 'ACT'."""
    projection = f.text("feed_forward_proj")
    gated, activation = projection.startswith("gated-"), projection.split("-")[-1]
    if projection == "gated-gelu":
        activation = "gelu_new"
    hidden, width = f.integer("hidden_size"), f.integer("d_ff")
    if gated:
        return GatedMLP(hidden_size=hidden, intermediate_size=width, activation=activation,
                        names=("wi_0", "wi_1", "wo"))
    return MLP(hidden_size=hidden, intermediate_size=width, bias=False, activation=activation, names=("wi", "wo"))


READERS: dict[str, Callable[[Fields], Architecture]] = {
    "bert": read_bert, "roberta": read_bert, "t5": read_t5, "mt5": read_t5,
}
