"""Weight bytes by format: every format's bytes derived from how its library stores a tensor.

`FORMATS` lists the `--quant` names; `resolve(name)` also reads the parametric ones (gptq-3bit-g64, gguf-Q5_K_S).
A format answers two questions for every stored tensor (`vramfit.memory.tensors.WeightTensor`): is it
quantized (which modules each method leaves alone follows what the method really does), and how many bytes
it takes (quantized: packed data plus every scale, zero and index the library keeps).

Storage definitions, each cited where its function is:
- bitsandbytes LLM.int8 (`Int8Params`, bitsandbytes/nn/modules.py; `int8_vectorwise_quant`): int8 weight
  CB [out, in] + fp32 row scales SCB [out].
- bitsandbytes 4-bit (`Params4bit` / `functional.quantize_4bit`): uint8 [(n+1)//2] packed pairs, fp32 absmax
  per 64-weight block, a 16-entry fp32 code; with double quantization (compress_statistics) the absmax is
  uint8 per block plus an fp32 offset, and its own fp32 absmax per 256 blocks (`quantize_blockwise`,
  blocksize=256; the 256-entry dynamic code is shared by all tensors).
- GPTQ (AutoGPTQ / GPTQModel `QuantLinear`): qweight int32 [in/32*bits, out], qzeros int32
  [ceil(in/group), out/32*bits], scales fp16 [ceil(in/group), out], g_idx int32 [in], bias fp16.
- AWQ (AutoAWQ `WQLinear_GEMM`): qweight int32 [in, out/(32/bits)], qzeros int32 [in/group, out/(32/bits)],
  scales fp16 [in/group, out], bias fp16.
- FP8 (vLLM `Fp8LinearMethod`, compressed-tensors `CompressedTensorsW8A8Fp8`): e4m3/e5m2 weight [out, in]
  (1 byte) + fp32 weight_scale: one per tensor, one per output channel, or one per 128x128 block
  (DeepSeek-V3 config.json `weight_block_size: [128, 128]`, stored as `weight_scale_inv`).
- int8 weight-only (compressed-tensors W8A16, `pack-quantized`/`int-quantized` channel strategy): int8 weight
  [out, in] + one scale per output channel in the model dtype.
- compressed-tensors W4A16 (`pack_quantized` compressor): weight_packed int32 [out, in/8], weight_scale
  [out, in/group] in the model dtype, weight_shape int64 [2].
- GGUF: see `vramfit.memory.gguf` (ggml-common.h block layouts and llama-quant.cpp mixtures).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from vramfit.errors import InvalidConfig, InvalidSetting
from vramfit.held import put
from vramfit.memory import gguf
from vramfit.memory.tensors import WeightTensor, weight_tensors
from vramfit.model.architecture import Architecture, Attention, MixtureOfExperts
from vramfit.result import Component
from vramfit.settings import DTYPE_BYTES

Keep = Callable[[WeightTensor], bool]


@dataclass(frozen=True, kw_only=True, slots=True)
class WeightFormat:
    """A storage format: `matrix_bytes(rows, cols)` for one quantized matrix (weight plus its scales, zeros
    and indices, bias excluded), `keeps(tensor)` True for tensors the method leaves in the model dtype."""

    name: str
    method: str
    summary: str
    source: str
    matrix_bytes: Callable[[int, int], int]
    keeps: Keep
    bias_bytes: int | None = None  # bytes per bias element of a quantized linear; None: the model dtype


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


# --- which tensors each method leaves unquantized ---------------------------------------------------------

def _keeps_non_linear_and_head(t: WeightTensor) -> bool:
    """bitsandbytes via transformers: `replace_with_bnb_linear` swaps `type(module) is nn.Linear` (and Conv1D)
    except `get_keys_to_not_convert` (the output embedding and tied weights; quantizers/base.py).
    Embeddings, norms and biases are not Linear weights; routed experts in transformers 5 are fused
    nn.Parameter tensors (e.g. modeling_mixtral.py `MixtralExperts`), not nn.Linear, so they stay too."""
    return (not t.matrix or t.role in ("token_embd", "embedding_other", "output", "router") or t.expert)


def _keeps_non_linear(t: WeightTensor) -> bool:
    """Lightning Fabric's BitsandbytesPrecision (litgpt): every torch.nn.Linear becomes a bnb layer, lm_head,
    router and experts included (lightning_fabric/plugins/precision/bitsandbytes.py: _ClassReplacementContextManager
    {"torch.nn.Linear": linear_cls}, _convert_layers with an empty ignore_modules); embeddings and norms stay."""
    return not t.matrix or t.role in ("token_embd", "embedding_other")


def every_linear(fmt: WeightFormat) -> WeightFormat:
    """The same bitsandbytes format applied to every Linear, the lm_head included (litgpt / Lightning)."""
    if fmt.method != "bitsandbytes":
        return fmt
    return replace(fmt, keeps=_keeps_non_linear)


def _keeps_outside_blocks(t: WeightTensor) -> bool:
    """GPTQ/AWQ quantize the linears inside the decoder blocks; embeddings, lm_head, norms and the MoE
    router stay (AutoAWQ's `modules_to_not_convert=["gate"]`, GPTQModel's per-model layer lists)."""
    return not t.matrix or t.layer is None or t.role in ("router", "embedding_other")


def _keeps_head_and_router(t: WeightTensor) -> bool:
    """FP8 / compressed-tensors checkpoints: every Linear except the `ignore` list, which llm-compressor
    recipes and DeepSeek-V3 set to lm_head and the MoE gate; embeddings and norms are not Linear."""
    return not t.matrix or t.role in ("token_embd", "embedding_other", "output", "router")


# --- bytes of one quantized matrix -------------------------------------------------------------------------

def bnb_int8_bytes(rows: int, cols: int) -> int:
    """Int8Params: CB int8 [rows, cols] + SCB fp32 [rows]."""
    return rows * cols + 4 * rows


def bnb_4bit_bytes(rows: int, cols: int, *, blocksize: int = 64, double_quant: bool = False) -> int:
    """Params4bit: packed uint8 [(n+1)//2]; absmax fp32 per block, or with double quantization uint8 per block +
    fp32 offset + fp32 absmax per 256 blocks; the 16-value fp32 code of quantize_4bit (64 B)."""
    n = rows * cols
    blocks = _ceil(n, blocksize)
    absmax = blocks + 4 + 4 * _ceil(blocks, 256) if double_quant else 4 * blocks
    return (n + 1) // 2 + absmax + 16 * 4


def gptq_bytes(rows: int, cols: int, *, bits: int, group: int | None) -> int:
    """QuantLinear buffers: qweight, qzeros, scales (fp16), g_idx; group None means one group (group_size=-1)."""
    group = group or cols
    groups = _ceil(cols, group)
    qweight = 4 * (cols // 32 * bits) * rows
    qzeros = 4 * groups * (rows // 32 * bits)
    return qweight + qzeros + 2 * groups * rows + 4 * cols


def awq_bytes(rows: int, cols: int, *, bits: int, group: int) -> int:
    """WQLinear_GEMM buffers: qweight, qzeros (int32, 32/bits values each), scales fp16 per group and column."""
    pack = 32 // bits
    return 4 * cols * (rows // pack) + 4 * (cols // group) * (rows // pack) + 2 * (cols // group) * rows


def fp8_bytes(rows: int, cols: int, *, scales: str, block: tuple[int, int] = (128, 128)) -> int:
    """1-byte e4m3/e5m2 weight + fp32 scales: per tensor (1), per output channel (rows) or per block."""
    count = {"tensor": 1, "channel": rows,
             "block": _ceil(rows, block[0]) * _ceil(cols, block[1])}[scales]
    return rows * cols + 4 * count


def int8_weight_only_bytes(rows: int, cols: int, *, scale_bytes: int) -> int:
    """int8 weight + one scale per output channel in the model dtype (compressed-tensors W8A16)."""
    return rows * cols + scale_bytes * rows


def w4a16_bytes(rows: int, cols: int, *, group: int, scale_bytes: int) -> int:
    """compressed-tensors pack_quantized: int32 [rows, cols/8] + scales [rows, cols/group] + int64 shape [2]."""
    return 4 * rows * _ceil(cols, 8) + scale_bytes * rows * _ceil(cols, group) + 16


# --- the registry ------------------------------------------------------------------------------------------

def _dense(name: str, nbytes: int) -> WeightFormat:
    return WeightFormat(name=name, method="dense", summary=f"{nbytes} bytes per parameter",
                        source="IEEE 754 / bfloat16 element sizes",
                        matrix_bytes=lambda rows, cols: nbytes * rows * cols, keeps=lambda t: False)


def _bnb4(quant_type: str, double_quant: bool) -> WeightFormat:
    suffix = "-dq" if double_quant else ""
    return WeightFormat(
        name=f"bnb-{quant_type}{suffix}", method="bitsandbytes",
        summary=f"bitsandbytes 4-bit {quant_type.upper()}, block 64" + (", double-quantized absmax" if suffix else ""),
        source="bitsandbytes/functional.py quantize_4bit, quantize_blockwise; bitsandbytes/nn/modules.py Params4bit",
        matrix_bytes=lambda r, c: bnb_4bit_bytes(r, c, double_quant=double_quant), keeps=_keeps_non_linear_and_head)


def _gptq(bits: int, group: int | None) -> WeightFormat:
    label = f"g{group}" if group else "gall"
    return WeightFormat(
        name=f"gptq-{bits}bit-{label}", method="gptq",
        summary=f"GPTQ {bits}-bit, group {group or 'all inputs'}: int32-packed weight and zeros, fp16 scales, g_idx",
        source="AutoGPTQ auto_gptq/nn_modules/qlinear/qlinear_cuda.py QuantLinear.__init__ (same buffers in GPTQModel)",
        matrix_bytes=lambda r, c: gptq_bytes(r, c, bits=bits, group=group), keeps=_keeps_outside_blocks,
        bias_bytes=2)


def _awq(bits: int, group: int) -> WeightFormat:
    return WeightFormat(
        name=f"awq-{bits}bit-g{group}", method="awq",
        summary=f"AWQ {bits}-bit GEMM, group {group}: int32-packed weight and zeros, fp16 scales",
        source="AutoAWQ awq/modules/linear/gemm.py WQLinear_GEMM.__init__",
        matrix_bytes=lambda r, c: awq_bytes(r, c, bits=bits, group=group), keeps=_keeps_outside_blocks,
        bias_bytes=2)


def _fp8(name: str, scales: str, block: tuple[int, int] = (128, 128)) -> WeightFormat:
    return WeightFormat(
        name=name, method="fp8", summary=f"FP8 e4m3 weights, fp32 scale per {scales}"
        + (f" {block[0]}x{block[1]}" if scales == "block" else ""),
        source="vLLM model_executor/layers/quantization/fp8.py Fp8LinearMethod.create_weights; DeepSeek-V3 "
               "config.json quantization_config.weight_block_size",
        matrix_bytes=lambda r, c: fp8_bytes(r, c, scales=scales, block=block), keeps=_keeps_head_and_router)


def _gguf(file_type: str) -> WeightFormat:
    default = gguf.FILE_TYPES[file_type]
    return WeightFormat(
        name=f"gguf-{file_type}", method="gguf",
        summary=f"llama.cpp GGUF {file_type} (default tensor type {default}, "
                f"{float(gguf.bits_per_weight(default)):.4g} bits per weight)",
        source="ggml/src/ggml-common.h block structs; src/llama-quant.cpp llama_tensor_get_type_impl",
        matrix_bytes=lambda r, c: gguf.tensor_type_bytes(default, r * c), keeps=lambda t: False)


def _int8_weight_only(scale_bytes: int) -> WeightFormat:
    return WeightFormat(
        name="int8-weight-only", method="int8-weight-only",
        summary="int8 weights, one scale per output channel (W8A16)",
        source="compressed-tensors quantization scheme W8A16 (channel strategy, symmetric)",
        matrix_bytes=lambda r, c: int8_weight_only_bytes(r, c, scale_bytes=scale_bytes),
        keeps=_keeps_head_and_router)


def _w4a16(group: int, scale_bytes: int) -> WeightFormat:
    return WeightFormat(
        name=f"w4a16-g{group}", method="compressed-tensors",
        summary=f"compressed-tensors W4A16, group {group}, symmetric",
        source="compressed-tensors compressors/quantized_compressors/pack_quantized.py",
        matrix_bytes=lambda r, c: w4a16_bytes(r, c, group=group, scale_bytes=scale_bytes),
        keeps=_keeps_head_and_router)


_BNB = {f"bnb-{q}{d}": (q, bool(d)) for q in ("nf4", "fp4") for d in ("", "-dq")}
_GPTQ = re.compile(r"^gptq-(2|3|4|8)bit(?:-g(all|32|64|128|256|1024))?$")
_AWQ = re.compile(r"^awq(?:-(4)bit)?(?:-g(32|64|128|256))?$")
_W4A16 = re.compile(r"^w4a16(?:-g(32|64|128|256))?$")
_FP8 = {"fp8": "tensor", "fp8-channel": "channel", "fp8-block": "block"}

FORMATS: tuple[str, ...] = (
    "bnb-int8", *_BNB, "gptq-4bit-g128", "gptq-{2,3,4,8}bit-g{32,64,128,all}", "awq-4bit-g128",
    "awq-4bit-g{32,64,128}", *_FP8, "int8-weight-only", "w4a16-g128",
    *(f"gguf-{t}" for t in gguf.FILE_TYPES),
)


@functools.lru_cache(maxsize=256)
def resolve(name: str, dtype: str = "bf16") -> WeightFormat:
    """The format a `--quant` name stands for; unknown names raise InvalidSetting listing the known ones.
    One object per (name, dtype), made once: formats are frozen, and `requests_bytes` keys on the object."""
    scale = DTYPE_BYTES[dtype]
    if name in ("none", "fp32", "fp16", "bf16"):
        return _dense(dtype if name == "none" else name, DTYPE_BYTES[dtype if name == "none" else name])
    if name == "bnb-int8":
        return WeightFormat(name=name, method="bitsandbytes", summary="bitsandbytes LLM.int8: int8 + fp32 row scales",
                            source="bitsandbytes/nn/modules.py Int8Params; functional.int8_vectorwise_quant",
                            matrix_bytes=bnb_int8_bytes, keeps=_keeps_non_linear_and_head)
    if name in _BNB:
        return _bnb4(*_BNB[name])
    if name in _FP8:
        return _fp8(name, _FP8[name])
    if name == "int8-weight-only":
        return _int8_weight_only(scale)
    if name.startswith("gguf-") and name[5:] in gguf.FILE_TYPES:
        return _gguf(name[5:])
    for pattern, build in ((_GPTQ, _parse_gptq), (_AWQ, _parse_awq), (_W4A16, _parse_w4a16)):
        match = pattern.match(name)
        if match:
            return build(match, scale)
    raise InvalidSetting(f"quant: unknown format {name!r}; known formats are {', '.join(FORMATS)}")


def _parse_gptq(match: re.Match[str], scale: int) -> WeightFormat:
    group = match.group(2) or "128"
    return _gptq(int(match.group(1)), None if group == "all" else int(group))


def _parse_awq(match: re.Match[str], scale: int) -> WeightFormat:
    return _awq(int(match.group(1) or 4), int(match.group(2) or 128))


def _parse_w4a16(match: re.Match[str], scale: int) -> WeightFormat:
    return _w4a16(int(match.group(1) or 128), scale)


# --- a config.json quantization_config ---------------------------------------------------------------------

def format_from_config(qc: dict[str, Any]) -> str:
    """The `--quant` name a Hugging Face `quantization_config` describes (transformers' quantizer configs in
    utils/quantization_config.py: BitsAndBytesConfig, GPTQConfig, AwqConfig, FineGrainedFP8Config,
    CompressedTensorsConfig)."""
    method = str(qc.get("quant_method", "")).lower()
    readers: dict[str, Callable[[dict[str, Any]], str]] = {
        "bitsandbytes": _bnb_name, "gptq": _gptq_name, "awq": _awq_name, "fp8": _fp8_name,
        "compressed-tensors": _compressed_tensors_name}
    if method not in readers:
        raise InvalidConfig(f"quantization_config.quant_method: {method!r} is not supported; supported are "
                            f"{', '.join(readers)}; or pass --quant explicitly")
    return readers[method](qc)


def _bnb_name(qc: dict[str, Any]) -> str:
    if qc.get("load_in_8bit"):
        return "bnb-int8"
    kind = str(qc.get("bnb_4bit_quant_type", "fp4"))
    return f"bnb-{kind}" + ("-dq" if qc.get("bnb_4bit_use_double_quant") else "")


def _gptq_name(qc: dict[str, Any]) -> str:
    group = int(qc.get("group_size", 128))
    return f"gptq-{int(qc.get('bits', 4))}bit-" + ("gall" if group <= 0 else f"g{group}")


def _awq_name(qc: dict[str, Any]) -> str:
    bits = int(qc.get("bits", qc.get("w_bit", 4)))
    return f"awq-{bits}bit-g{int(qc.get('group_size', qc.get('q_group_size', 128)))}"


def _fp8_name(qc: dict[str, Any]) -> str:
    block = qc.get("weight_block_size")
    if block and list(block) != [128, 128]:
        raise InvalidConfig(f"quantization_config.weight_block_size: {block} is not 128x128, the only block "
                            "vramfit models; pass --quant fp8-channel or fp8 to approximate")
    return "fp8-block" if block else "fp8"


def _compressed_tensors_name(qc: dict[str, Any]) -> str:
    groups = qc.get("config_groups") or {}
    weights = next((g.get("weights") for g in groups.values() if isinstance(g, dict) and g.get("weights")), None)
    if not isinstance(weights, dict):
        raise InvalidConfig("quantization_config.config_groups: no weights scheme found; pass --quant")
    bits, kind, strategy = int(weights.get("num_bits", 8)), weights.get("type", "int"), weights.get("strategy")
    if kind == "float" and bits == 8:
        return {"tensor": "fp8", "channel": "fp8-channel", "block": "fp8-block"}.get(str(strategy), "fp8")
    if kind == "int" and bits == 8 and strategy == "channel":
        return "int8-weight-only"
    if kind == "int" and bits == 4 and strategy == "group":
        return f"w4a16-g{int(weights.get('group_size', 128))}"
    raise InvalidConfig(f"quantization_config.config_groups: weights {weights} not modelled; pass --quant")


# --- bytes of a whole model --------------------------------------------------------------------------------

def requests_bytes(fmt: WeightFormat, tensors: Sequence[WeightTensor], dtype: str) -> tuple[int, ...]:
    """tensor_bytes of each tensor, in order. Kept per (format object, tensor objects, dtype): formats and
    tensors are frozen, and an estimate prices the same few hundred tensors again at every call; each entry
    holds its format and tensors, so their ids are not reused while it lives."""
    key = (id(fmt), tuple(map(id, tensors)), dtype)
    hit = _REQUESTS.get(key)
    if hit is None:
        hit = (fmt, tuple(tensors), tuple(tensor_bytes(fmt, t, dtype) for t in tensors))
        put(_REQUESTS, key, hit, _REQUESTS_SIZE)
    return hit[2]


_REQUESTS: dict[tuple[int, tuple[int, ...], str],
                tuple[WeightFormat, tuple[WeightTensor, ...], tuple[int, ...]]] = {}
_REQUESTS_SIZE = 256


def tensor_bytes(fmt: WeightFormat, t: WeightTensor, dtype: str) -> int:
    """Bytes of one stored tensor (all its `count` copies) under `fmt`, unquantized ones in `dtype`."""
    dense = DTYPE_BYTES[dtype]
    if fmt.method == "dense" or fmt.keeps(t):
        return (DTYPE_BYTES[fmt.name] if fmt.method == "dense" else dense) * t.elements
    if not t.matrix:
        return (fmt.bias_bytes or dense) * t.elements
    return fmt.matrix_bytes(t.rows, t.cols) * t.count


def gguf_tensor_types(arch: Architecture, file_type: str) -> list[tuple[WeightTensor, str]]:
    """The GGUF type of every tensor for a llama.cpp file type, from the model's parts."""
    attn = next((layer.attention for layer in arch.layers()), None)
    gqa = attn.heads // attn.kv_heads if isinstance(attn, Attention) else 1
    experts = max((layer.mlp.experts for layer in arch.layers() if isinstance(layer.mlp, MixtureOfExperts)),
                  default=0)
    return gguf.mixture_types(file_type, weight_tensors(arch), gqa=gqa, experts=experts, tied=arch.head.tied)


def model_weight_bytes(arch: Architecture, fmt: WeightFormat, dtype: str) -> int:
    """Every stored tensor's bytes: GGUF by its mixture, other formats tensor by tensor."""
    if fmt.method == "gguf":
        types = gguf_tensor_types(arch, fmt.name.removeprefix("gguf-"))
        return sum(gguf.tensor_type_bytes(kind, t.elements) for t, kind in types)
    return sum(tensor_bytes(fmt, t, dtype) for t in weight_tensors(arch))


def dequantized_matrix_bytes(fmt: WeightFormat, tensors: list[WeightTensor], dtype: str,
                             quantized_from: str | None = None) -> int:
    """bitsandbytes 4-bit matmuls with more than one token dequantize the whole weight (bitsandbytes/autograd/
    _functions.py `matmul_4bit`: the gemv_4bit kernel only for a single row, else `MatMul4Bit.forward`:
    F.dequantize_4bit(B, quant_state).to(A.dtype)). dequantize_4bit returns the dtype the weight had when it
    was quantized (quant_state.dtype); when that is not the compute dtype, `.to` makes a second copy while
    the first is alive. The largest such matrix is a transient of every prefill. Other formats: 0."""
    if fmt.method != "bitsandbytes" or fmt.name == "bnb-int8":
        return 0
    sizes = [t.rows * t.cols for t in tensors if t.matrix and not fmt.keeps(t)]
    copies = DTYPE_BYTES[dtype] + (DTYPE_BYTES[quantized_from] if quantized_from not in (None, dtype) else 0)
    return max(sizes, default=0) * copies


def quantized_linear_bytes(rows: int, cols: int, *, quant: str | None, dtype: str, bias: bool = False) -> int:
    """Bytes of one Linear (out=rows, in=cols) in a format: for reuse (QLoRA base weights, per-layer sums)."""
    fmt = resolve(quant or "none", dtype)
    t = WeightTensor(role="attn_q", rows=rows, cols=cols, layer=0)
    b = WeightTensor(role="bias", rows=rows, cols=1, layer=0)
    return tensor_bytes(fmt, t, dtype) + (tensor_bytes(fmt, b, dtype) if bias else 0)


def weights_component(arch: Architecture, fmt: WeightFormat, dtype: str) -> Component:
    """The `weights` component of a whole (unsharded) model."""
    nbytes = model_weight_bytes(arch, fmt, dtype)
    return Component(name="weights", bytes=nbytes, formula="sum over stored tensors of their bytes in the format",
                     inputs={"format": fmt.name, "dtype": dtype, "summary": fmt.summary}, source=fmt.source)
