"""Weight bytes per format: each expected figure is derived here from the library's storage definition.

The layer shape is a Llama q_proj, 4096 x 4096 (n = 16,777,216 weights), unless stated.
"""

from __future__ import annotations

import pytest

from vramfit.errors import InvalidConfig, InvalidSetting
from vramfit.memory import gguf, weights
from vramfit.memory.tensors import weight_tensors
from vramfit.model.sources import load_model
from vramfit.units import GiB

ROWS = COLS = 4096
N = ROWS * COLS


def linear(quant: str, dtype: str = "fp16", rows: int = ROWS, cols: int = COLS) -> int:
    return weights.quantized_linear_bytes(rows, cols, quant=quant, dtype=dtype)


def test_llama2_7b_fp16_weights_are_two_bytes_per_parameter() -> None:
    arch = load_model("meta-llama/Llama-2-7b-hf").architecture
    fmt = weights.resolve("none", "fp16")
    assert weights.model_weight_bytes(arch, fmt, "fp16") == 2 * 6_738_415_616


def test_bnb_int8_is_int8_weight_plus_fp32_row_scales() -> None:
    # bitsandbytes/nn/modules.py Int8Params: CB int8 [out, in], SCB fp32 [out]
    assert linear("bnb-int8") == N * 1 + ROWS * 4


def test_bnb_nf4_packs_two_weights_per_byte_with_fp32_absmax_per_64() -> None:
    # functional.quantize_4bit: uint8 [(n+1)//2, 1], absmax fp32 [ceil(n/64)], code fp32 [16]
    assert linear("bnb-nf4") == N // 2 + 4 * (N // 64) + 16 * 4
    assert linear("bnb-fp4") == linear("bnb-nf4")


def test_bnb_nf4_double_quant_stores_uint8_absmax_and_a_second_level() -> None:
    # compress_statistics: absmax - mean -> quantize_blockwise(blocksize=256): uint8 per 64-block,
    # fp32 offset (the mean), fp32 absmax per 256 first-level blocks; the dynamic code is shared
    blocks = N // 64
    assert linear("bnb-nf4-dq") == N // 2 + blocks * 1 + 4 + 4 * (blocks // 256) + 16 * 4


def test_gptq_4bit_group_128_buffers() -> None:
    # auto_gptq qlinear QuantLinear: qweight int32 [in//32*bits, out], qzeros int32 [in/g, out//32*bits],
    # scales fp16 [in/g, out], g_idx int32 [in]
    qweight = (COLS // 32 * 4) * ROWS * 4
    qzeros = (COLS // 128) * (ROWS // 32 * 4) * 4
    scales = (COLS // 128) * ROWS * 2
    g_idx = COLS * 4
    assert linear("gptq-4bit-g128") == qweight + qzeros + scales + g_idx


def test_gptq_3bit_without_groups_packs_three_rows_of_int32_per_32_inputs() -> None:
    assert linear("gptq-3bit-gall") == (COLS // 32 * 3) * ROWS * 4 + 1 * (ROWS // 32 * 3) * 4 + ROWS * 2 + COLS * 4


def test_awq_4bit_group_128_buffers() -> None:
    # AutoAWQ WQLinear_GEMM: qweight int32 [in, out/8], qzeros int32 [in/g, out/8], scales fp16 [in/g, out]
    assert linear("awq-4bit-g128") == COLS * (ROWS // 8) * 4 + (COLS // 128) * (ROWS // 8) * 4 + (COLS // 128) * ROWS * 2


@pytest.mark.parametrize(("quant", "scales"), [("fp8", 1), ("fp8-channel", ROWS), ("fp8-block", 32 * 32)])
def test_fp8_is_one_byte_plus_fp32_scales_per_scheme(quant: str, scales: int) -> None:
    # per tensor: one fp32 scale; per channel: one per output row; DeepSeek-V3 blocks: ceil(out/128) x ceil(in/128)
    assert linear(quant) == N + 4 * scales


def test_fp8_block_scales_round_partial_blocks_up() -> None:
    # DeepSeek-V3 kv_a_proj_with_mqa: 7168 -> 576 rows: ceil(576/128)=5 x ceil(7168/128)=56 scales
    assert linear("fp8-block", rows=576, cols=7168) == 576 * 7168 + 4 * 5 * 56


def test_int8_weight_only_keeps_a_scale_per_channel_in_the_model_dtype() -> None:
    assert linear("int8-weight-only", dtype="bf16") == N + 2 * ROWS


def test_w4a16_compressed_tensors_packs_eight_per_int32() -> None:
    assert linear("w4a16-g128", dtype="bf16") == ROWS * (COLS // 8) * 4 + ROWS * (COLS // 128) * 2 + 2 * 8


@pytest.mark.parametrize(("kind", "block_elements", "block_bytes"), [
    ("Q4_0", 32, 18), ("Q4_1", 32, 20), ("Q5_0", 32, 22), ("Q5_1", 32, 24), ("Q8_0", 32, 34),
    ("Q2_K", 256, 84), ("Q3_K", 256, 110), ("Q4_K", 256, 144), ("Q5_K", 256, 176), ("Q6_K", 256, 210),
])
def test_gguf_block_layouts(kind: str, block_elements: int, block_bytes: int) -> None:
    # ggml-common.h: e.g. block_q4_K = {fp16 d, dmin; uint8 scales[12]; uint8 qs[128]} = 144 B per 256
    assert gguf.tensor_type_bytes(kind, N) == N // block_elements * block_bytes


def test_gguf_q4_k_m_mixture_on_llama_3_1_8b() -> None:
    """llama-quant.cpp: Q4_K by default; attn_v and ffn_down Q6_K on use_more_bits layers (of 32: 0-3, 28-31
    and 6, 9, ..., 27: 16 layers); output Q6_K; token_embd Q4_K; norms F32."""
    arch = load_model("meta-llama/Llama-3.1-8B").architecture
    more = [i for i in range(32) if i < 4 or i >= 28 or (i - 4) % 3 == 2]
    assert len(more) == 16
    q4k, q6k = (lambda n: n // 256 * 144), (lambda n: n // 256 * 210)
    h, kv, inter, vocab = 4096, 1024, 14336, 128256
    per_layer_q4 = q4k(h * h) * 2 + q4k(h * kv) + q4k(h * inter) * 2  # q, o, k, gate, up
    expected = 32 * per_layer_q4 + 32 * 2 * h * 4  # two norms per layer in F32
    expected += sum(q6k(h * kv) if i in more else q4k(h * kv) for i in range(32))          # attn_v
    expected += sum(q6k(h * inter) if i in more else q4k(h * inter) for i in range(32))    # ffn_down
    expected += q4k(vocab * h) + q6k(vocab * h) + h * 4                                    # embd, output, norm
    assert weights.model_weight_bytes(arch, weights.resolve("gguf-Q4_K_M"), "bf16") == expected


def test_gguf_file_sizes_match_published_llama_3_1_8b_files() -> None:
    """Cross-check against published file sizes of Llama-3.1-8B GGUF builds: "A 16-bit Llama-3.1-8B weighs
    14.96 GB. The Q4_K_M build of the exact same model is 4.57 GB" (runyard.dev, "Q4_K_M vs Q5_K_M vs Q6_K vs
    Q8_0"; the figures are GiB, rounded to 0.01, metadata and tokenizer included): within 0.5%."""
    arch = load_model("meta-llama/Llama-3.1-8B").architecture
    for quant, shown_gib in (("gguf-Q4_K_M", 4.57), ("gguf-F16", 14.96)):
        predicted = weights.model_weight_bytes(arch, weights.resolve(quant), "bf16") / GiB
        assert abs(predicted - shown_gib) / shown_gib < 0.005


def test_k_quant_falls_back_when_rows_are_not_whole_blocks() -> None:
    # tensor_type_fallback: Q4_K -> Q5_0 when ncols % 256 != 0 (e.g. 4 x 160-wide rows: 160 % 256 != 0)
    from vramfit.memory.tensors import WeightTensor

    t = WeightTensor(role="attn_q", rows=4, cols=160, layer=0)
    [(_, kind)] = gguf.mixture_types("Q4_K_M", [t], gqa=1, experts=0, tied=False)
    assert kind == "Q5_0"


def test_bnb_leaves_embeddings_head_and_norms_in_the_model_dtype() -> None:
    arch = load_model("meta-llama/Llama-2-7b-hf").architecture
    fmt = weights.resolve("bnb-nf4", "fp16")
    dense = sum(t.elements for t in weight_tensors(arch) if not t.matrix or t.layer is None)
    assert dense == 2 * 32000 * 4096 + 4096 * (2 * 32 + 1)
    quantized = sum(weights.bnb_4bit_bytes(t.rows, t.cols) for t in weight_tensors(arch)
                    if t.matrix and t.layer is not None)
    assert weights.model_weight_bytes(arch, fmt, "fp16") == 2 * dense + quantized


def test_gptq_and_awq_leave_the_moe_router_unquantized() -> None:
    arch = load_model("mistralai/Mixtral-8x7B-v0.1").architecture
    router = [t for t in weight_tensors(arch) if t.role == "router"]
    assert router and all(weights.resolve("gptq-4bit-g128").keeps(t) for t in router)


def test_quantization_config_is_read() -> None:
    assert weights.format_from_config({"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128],
                                       "activation_scheme": "dynamic"}) == "fp8-block"
    assert weights.format_from_config({"quant_method": "bitsandbytes", "load_in_4bit": True,
                                       "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}) == "bnb-nf4-dq"
    assert weights.format_from_config({"quant_method": "gptq", "bits": 4, "group_size": -1}) == "gptq-4bit-gall"
    assert weights.format_from_config({"quant_method": "awq", "bits": 4, "group_size": 64}) == "awq-4bit-g64"
    ct = {"quant_method": "compressed-tensors", "config_groups": {"group_0": {
        "weights": {"num_bits": 8, "type": "float", "strategy": "channel"}}}}
    assert weights.format_from_config(ct) == "fp8-channel"
    with pytest.raises(InvalidConfig, match="quant_method"):
        weights.format_from_config({"quant_method": "hqq"})


def test_unknown_quant_lists_the_known_formats() -> None:
    with pytest.raises(InvalidSetting, match="bnb-nf4.*gguf-Q4_K_M"):
        weights.resolve("int3-magic")
