"""The source documents' textbook formulas, kept beside vramfit's own so `--explain` can show both.

The seeds (shared/seeds/, Chinese tutorials on estimating GPU memory) give these rules. Each function here
computes one of them exactly as written, cites the seed, and says what it leaves out. vramfit's memory
model never uses them; they exist to be compared against.

Seeds: [S0] 000_8bdc6a88d627983f.txt, [S1] 001_b3bd2c1eb7347e58.txt, [S2] 002_5302893628a12e8a.txt,
[S3] 003_38f3dee0a13dd66b.txt, [S4] 004_d4528c0236a87c73.txt.
"""

from __future__ import annotations

from dataclasses import dataclass

from vramfit.model.architecture import Architecture

# [S1] section 1.2 and [S2] "数据精度": bytes per value by precision; INT4 is half a byte.
PRECISION_BYTES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.0, "int4": 0.5}

# [S2] "优化器内存" and [S3] "训练" 2.: optimizer state bytes per parameter.
OPTIMIZER_BYTES_PER_PARAMETER = {"adamw": 8, "adam": 8, "adamw-8bit": 2, "paged-adamw-8bit": 2, "sgd": 4,
                                 "sgd-momentum": 4}


@dataclass(frozen=True, kw_only=True, slots=True)
class Dims:
    """What the textbook formulas read: batch b, sequence s, hidden h, heads a, layers L."""

    batch: int
    seq: int
    hidden: int
    heads: int
    layers: int


def dims_of(arch: Architecture, batch: int, seq: int) -> Dims:
    """The textbook's b, s, h, a, L taken from a real architecture (first layer's heads)."""
    first = next(arch.layers())
    return Dims(batch=batch, seq=seq, hidden=arch.hidden_size, heads=first.attention.heads, layers=arch.num_layers)


def weights_bytes(parameters: int, dtype: str) -> float:
    """[S2] 公式[1]: model size = parameters x precision. Ignores quantization scales and unquantized layers."""
    return parameters * PRECISION_BYTES[dtype]


def kv_cache_bytes(d: Dims, dtype: str) -> float:
    """[S1] 九.2 and [S2] 公式[3]: KV = 2 x b x s x h x bytes x L.

    Assumes every head has its own K and V of full width h: right for multi-head attention, too large by
    heads/kv_heads for grouped-query attention (4x for Llama-3-8B) and wrong for MLA and sliding windows."""
    return 2 * d.batch * d.seq * d.hidden * PRECISION_BYTES[dtype] * d.layers


def activations_bytes(d: Dims) -> float:
    """[S1] 六.2 and [S2] 公式[4]: s·b·h·(34 + 5·a·s/h)·L bytes.

    From Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models", eq. (2):
    per layer, a GPT-style block with 16-bit activations, dropout masks and eager attention that stores the
    a·s·s scores and softmax. It does not fit sdpa/flash attention (no s² term), gated MLPs (wider
    intermediate), GQA, models without dropout, or the logits and loss, which dominate small models with
    large vocabularies. [S2] writes it without L and says FP32; [S1] multiplies by L."""
    return d.seq * d.batch * d.hidden * (34 + 5 * d.heads * d.seq / d.hidden) * d.layers


def io_buffer_bytes(d: Dims, dtype: str) -> float:
    """[S1] 三: input (and output) tensor after the embedding, b x s x h x bytes each; [S0] uses fp32."""
    return 2 * d.batch * d.seq * d.hidden * PRECISION_BYTES[dtype]


def naive_activation_bytes(d: Dims) -> float:
    """[S0]: one B x S x D fp32 tensor for the whole model. Leaves out every intermediate of every layer."""
    return d.batch * d.seq * d.hidden * 4


def training_bytes(parameters: int, optimizer: str = "adamw") -> float:
    """[S0] and [S4]: fp32 weights + fp32 gradients + optimizer states (8 bytes/param for Adam): 16 bytes per
    parameter before activations. [S1]'s mixed-precision table gives 2 + 2 + 12 = 16 bytes too."""
    return parameters * (4 + 4 + OPTIMIZER_BYTES_PER_PARAMETER.get(optimizer, 8))


def bert_style_parameters(vocab: int, positions: int, hidden: int, layers: int) -> int:
    """[S4] 2.1: embeddings (vocab + positions) x h, and per layer 4·h² (Q, K, V, output) + 8·h² (FFN of 4h).

    Leaves out every bias, the LayerNorms, BERT's token-type table and pooler: for BERT-base it gives
    108,768,768 where BertModel has 109,482,240 parameters."""
    per_layer = 3 * hidden * hidden + hidden * hidden + 2 * hidden * 4 * hidden
    return (vocab + positions) * hidden + layers * per_layer


def rule_of_thumb(parameters: int, dtype: str = "fp16") -> dict[str, float]:
    """[S2] 经验法则: inference = parameters x precision; training = 4 to 6 times that."""
    inference = weights_bytes(parameters, dtype)
    return {"inference": inference, "training_low": 4 * inference, "training_high": 6 * inference}
