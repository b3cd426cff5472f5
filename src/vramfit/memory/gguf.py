"""GGUF (llama.cpp) weight types: block layouts and the per-tensor type choice of the K-quant mixtures.

Block layouts are the structs of ggml/src/ggml-common.h (ggml-org/llama.cpp): a block of QK weights is
stored in a fixed number of bytes, scales included, so bytes = elements / QK x block bytes.

  Q4_0  = fp16 d + 16 B nibbles                               = 18 B / 32   (4.5 bits per weight)
  Q4_1  = fp16 d, m + 16 B                                    = 20 B / 32   (5.0)
  Q5_0  = fp16 d + 4 B high bits + 16 B                       = 22 B / 32   (5.5)
  Q5_1  = fp16 d, m + 4 B + 16 B                              = 24 B / 32   (6.0)
  Q8_0  = fp16 d + 32 int8                                    = 34 B / 32   (8.5)
  IQ4_NL= fp16 d + 16 B                                       = 18 B / 32   (4.5)
  Q2_K  = 16 B scales + 64 B quants + fp16 d, dmin            = 84 B / 256  (2.625)
  Q3_K  = 32 B hmask + 64 B quants + 12 B scales + fp16 d     = 110 B / 256 (3.4375)
  Q4_K  = fp16 d, dmin + 12 B scales + 128 B quants           = 144 B / 256 (4.5)
  Q5_K  = fp16 d, dmin + 12 B scales + 32 B high + 128 B      = 176 B / 256 (5.5)
  Q6_K  = 128 B low + 64 B high + 16 B scales + fp16 d        = 210 B / 256 (6.5625)

A mixture (Q4_K_M, Q5_K_M, Q3_K_M, ...) is a default type plus the exceptions of llama.cpp's
src/llama-quant.cpp `llama_tensor_get_type_impl` (read at ggml-org/llama.cpp 007dbbf): `output` (and a tied
`token_embd`) -> Q6_K (Q8_0 stays Q8_0); attn_v / attn_qkv / attn_kv_b and ffn_down get more bits on the
layers `use_more_bits` picks; tensors whose row length is not a multiple of the block fall back
(`tensor_type_fallback`: Q2_K/Q3_K -> Q4_0, Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0). Only 2-D/3-D tensors
are quantized (`tensor_allows_quantization`): norms and biases stay F32 as convert_hf_to_gguf.py writes
them, and so do the MoE router (`ffn_gate_inp`), learned positions and token types.
Not modelled: the 70B-only attn_v bump (`LLM_TYPE_70B`), imatrix-dependent choices and the IQ types.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction

from vramfit.memory.tensors import WeightTensor

# type: (block elements, block bytes), from ggml-common.h (see the module docstring).
BLOCKS: dict[str, tuple[int, int]] = {
    "F32": (1, 4), "F16": (1, 2), "BF16": (1, 2),
    "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24), "Q8_0": (32, 34),
    "IQ4_NL": (32, 18),
    "Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210),
}
# file type (llama-quantize's name) -> default tensor type
FILE_TYPES: dict[str, str] = {
    "F16": "F16", "BF16": "BF16", "Q4_0": "Q4_0", "Q4_1": "Q4_1", "Q5_0": "Q5_0", "Q5_1": "Q5_1",
    "Q8_0": "Q8_0", "Q2_K": "Q2_K", "Q3_K_S": "Q3_K", "Q3_K_M": "Q3_K", "Q3_K_L": "Q3_K",
    "Q4_K_S": "Q4_K", "Q4_K_M": "Q4_K", "Q5_K_S": "Q5_K", "Q5_K_M": "Q5_K", "Q6_K": "Q6_K",
}
_FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
_ATTN_V = {"attn_v", "attn_qkv", "attn_kv_b"}
_KEPT_F32 = {"norm", "bias", "router", "embedding_other"}


def tensor_type_bytes(ggml_type: str, elements: int) -> int:
    """Bytes of `elements` weights stored as `ggml_type`: whole blocks of the layout above."""
    block_elements, block_bytes = BLOCKS[ggml_type]
    return -(-elements // block_elements) * block_bytes


def bits_per_weight(ggml_type: str) -> Fraction:
    block_elements, block_bytes = BLOCKS[ggml_type]
    return Fraction(8 * block_bytes, block_elements)


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama-quant.cpp: the first and last eighth of the layers, and every third one between."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def mixture_types(file_type: str, tensors: Iterable[WeightTensor], *, gqa: int, experts: int,
                  tied: bool) -> list[tuple[WeightTensor, str]]:
    """Each tensor with the GGUF type llama-quantize gives it for `file_type` (e.g. "Q4_K_M")."""
    tensors = list(tensors)
    counters = {"v": 0, "down": 0}
    totals = {"v": sum(t.role.endswith(tuple(_ATTN_V)) for t in tensors),
              "down": sum("ffn_down" in t.role for t in tensors)}
    out = []
    for tensor in tensors:
        out.append((tensor, _tensor_type(file_type, tensor, counters, totals, gqa=gqa, experts=experts,
                                         tied=tied)))
    return out


def _tensor_type(file_type: str, t: WeightTensor, counters: dict[str, int], totals: dict[str, int], *,
                 gqa: int, experts: int, tied: bool) -> str:
    if not t.matrix or t.role in _KEPT_F32:
        return "F32"
    default = FILE_TYPES[file_type]
    if default in ("F16", "BF16", "F32"):
        return default
    chosen = _choose(file_type, default, t, counters, totals, gqa=gqa, experts=experts, tied=tied)
    if t.cols % BLOCKS[chosen][0]:
        chosen = _FALLBACK.get(chosen, "F16")
        chosen = chosen if t.cols % BLOCKS[chosen][0] == 0 else "F16"
    return chosen


def _choose(ftype: str, default: str, t: WeightTensor, counters: dict[str, int], totals: dict[str, int], *,
            gqa: int, experts: int, tied: bool) -> str:
    role = t.role
    if role == "output" or (tied and role == "token_embd"):
        return "Q8_0" if t.cols % BLOCKS[default][0] or default == "Q8_0" else "Q6_K"
    if role == "token_embd":
        return default
    if role.endswith(tuple(_ATTN_V)) and not role.startswith("cross"):
        i, counters["v"] = counters["v"], counters["v"] + 1
        return _attn_v_type(ftype, default, i, totals["v"], gqa=gqa, experts=experts)
    if role == "attn_k" and experts == 8:
        return "Q8_0"
    if "ffn_down" in role:
        i, counters["down"] = counters["down"], counters["down"] + 1
        layer = t.layer if experts > 1 and t.layer is not None else i
        return _ffn_down_type(ftype, default, layer, totals["down"])
    if role == "attn_output":
        return _attn_output_type(ftype, default, experts=experts)
    return default


def _attn_v_type(ftype: str, default: str, i: int, n: int, *, gqa: int, experts: int) -> str:
    new = default
    if ftype == "Q2_K":
        new = "Q4_K" if gqa >= 4 else "Q3_K"
    elif ftype == "Q3_K_M":
        new = "Q5_K" if i < 2 else "Q4_K"
    elif ftype == "Q3_K_L":
        new = "Q5_K"
    elif ftype in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n):
        new = "Q6_K"
    elif ftype == "Q4_K_S" and i < 4:
        new = "Q5_K"
    return "Q8_0" if experts == 8 else new


def _ffn_down_type(ftype: str, default: str, i: int, n: int) -> str:
    if ftype == "Q2_K":
        return "Q3_K"
    if ftype == "Q3_K_M":
        return "Q5_K" if i < n // 16 else "Q4_K"
    if ftype == "Q3_K_L":
        return "Q5_K"
    if ftype in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n):
        return "Q6_K"
    if ftype == "Q4_K_S" and i < n // 8:
        return "Q5_K"
    return default


def _attn_output_type(ftype: str, default: str, *, experts: int) -> str:
    if experts == 8:
        return "Q5_K" if ftype in ("Q2_K", "Q3_K_S", "Q3_K_M", "Q4_K_S", "Q4_K_M") else default
    return {"Q2_K": "Q3_K", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K"}.get(ftype, default)
