"""The inference planner: components that add up, peaks over phases, runtimes, parallel layouts, errors."""

from __future__ import annotations

import json

import pytest

from vramfit.cli import main
from vramfit.errors import InvalidSetting
from vramfit.estimate import estimate
from vramfit.memory import forward, kv_cache, overhead, runtimes
from vramfit.model.sources import load_model
from vramfit.settings import Settings
from vramfit.units import GiB, MiB

LLAMA3 = "meta-llama/Meta-Llama-3-8B"


@pytest.fixture(scope="module")
def llama3():  # type: ignore[no-untyped-def]
    return load_model(LLAMA3)


def test_components_sum_to_total_and_levels_make_the_peaks(llama3) -> None:  # type: ignore[no-untyped-def]
    result = estimate(llama3, Settings(), seq_len=4096, new_tokens=512, batch_size=2)
    memory = result.memory.as_dict()
    assert sum(v for k, v in memory.items() if k != "total") == memory["total"]
    assert result.peak.device == memory["total"]
    assert result.peak.allocated <= result.peak.reserved <= result.peak.device
    assert memory["weights"] == 2 * 8_030_261_248


def test_json_contract_from_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", LLAMA3, "--mode", "inference", "--batch-size", "1", "--seq-len", "1024",
                 "--dtype", "bf16", "--kv-dtype", "fp8", "--attention", "flash", "--runtime", "transformers",
                 "--gpus", "1", "--tp", "1", "--pp", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("weights", "kv_cache", "activations", "logits", "cuda_context", "workspace", "allocator_reserve"):
        assert key in out["memory"]
    assert set(out["peak"]) == {"allocated", "reserved", "device"}


def test_eager_attention_materializes_scores_and_sdpa_does_not(llama3) -> None:  # type: ignore[no-untyped-def]
    sdpa = estimate(llama3, Settings(), seq_len=8192, attention="sdpa").memory["activations"]
    eager = estimate(llama3, Settings(), seq_len=8192, attention="eager").memory["activations"]
    scores = 32 * 8192 * 8192  # heads x T x T, one sequence
    assert eager - sdpa >= scores * (2 + 4 + 2)


def test_generate_keeps_logits_of_the_last_position_only(llama3) -> None:  # type: ignore[no-untyped-def]
    generating = estimate(llama3, Settings(), seq_len=4096, new_tokens=16, batch_size=4).memory["logits"]
    vocab = 128256
    assert generating <= 4 * vocab * (2 + 4 + 4)   # decode: dtype logits + fp32 copy + sampling copy
    forward_only = forward.logits_bytes(vocab, rows=4 * 4096, element_bytes=2, fp32_copies=0)
    assert forward_only == 4 * 4096 * vocab * 2


def test_peak_is_prefill_or_decode_not_their_sum(llama3) -> None:  # type: ignore[no-untyped-def]
    long_prompt = estimate(llama3, Settings(), seq_len=8192, new_tokens=8, attention="eager")
    assert "prefill" in " ".join(long_prompt.notes)
    long_output = estimate(llama3, Settings(), seq_len=8192, new_tokens=8000, batch_size=8)
    assert "decode" in " ".join(long_output.notes)
    assert long_output.memory["kv_cache"] == 8 * GiB


def test_beams_multiply_the_cache(llama3) -> None:  # type: ignore[no-untyped-def]
    one = estimate(llama3, Settings(), seq_len=2048, new_tokens=1024).memory["kv_cache"]
    beams = estimate(llama3, Settings(), seq_len=2048, new_tokens=1024, num_beams=4).memory["kv_cache"]
    assert beams == 4 * one


def test_vllm_reports_pool_tokens_and_full_length_sequences(llama3) -> None:  # type: ignore[no-untyped-def]
    result = estimate(llama3, Settings(), name="vllm", seq_len=8192, gpu_memory=80 * GiB)
    pool = result.extra["vllm"]
    used = result.memory["weights"] + result.memory["activations"] + result.memory["logits"] + \
        result.memory["cuda_context"]
    per_block = 16 * 32 * 2 * 8 * 128 * 2   # block x layers x K,V x kv heads x head_dim x bf16
    assert pool["num_blocks"] == (int(0.9 * 80 * GiB) - used) // per_block
    assert pool["kv_cache_tokens"] == 16 * pool["num_blocks"]
    assert pool["max_full_length_sequences"] == pool["num_blocks"] // (8192 // 16)
    assert result.memory["kv_cache"] == pool["num_blocks"] * per_block


def test_tensor_parallel_halves_weights_and_replicates_norms(llama3) -> None:  # type: ignore[no-untyped-def]
    """transformers' TP plan: blocks and the untied lm_head split, norms and embed_tokens whole."""
    tp2 = estimate(llama3, Settings(), tensor=2, gpus=2).memory["weights"]
    norms = 2 * 4096 * (2 * 32 + 1)
    embedding = 2 * 128256 * 4096
    assert tp2 == (2 * 8_030_261_248 - norms - embedding) // 2 + norms + embedding


def test_vllm_tensor_parallel_splits_the_padded_vocabulary(llama3) -> None:  # type: ignore[no-untyped-def]
    """vLLM's VocabParallelEmbedding and ParallelLMHead: 128256 rows (a multiple of 64) split in two."""
    tp2 = estimate(llama3, Settings(), tensor=2, gpus=2, name="vllm").memory["weights"]
    norms = 2 * 4096 * (2 * 32 + 1)
    assert tp2 == (2 * 8_030_261_248 - norms) // 2 + norms


def test_tensor_parallel_head_gathers_logits(llama3) -> None:  # type: ignore[no-untyped-def]
    """colwise_gather_output: the rank's vocabulary slice, the all-gather buffer and the concatenated logits
    (a plain forward of 1 x 1024 tokens returns logits for every position)."""
    tp4 = estimate(llama3, Settings(), tensor=4, gpus=4, seq_len=1024, new_tokens=0).memory["logits"]
    full = 1024 * 128256 * 2
    assert tp4 == 2 * full + full // 4


def test_pipeline_reports_the_most_loaded_stage(llama3) -> None:  # type: ignore[no-untyped-def]
    pp2 = estimate(llama3, Settings(), pipeline=2, gpus=2)
    layer = 2 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096)
    head = 2 * (128256 * 4096 + 4096)
    assert pp2.memory["weights"] == 16 * layer + head   # the last stage: 16 layers, final norm and lm_head


def test_invalid_tensor_parallel_names_the_field(llama3) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidSetting, match="tp"):
        estimate(llama3, Settings(), tensor=3, gpus=3)


def test_gguf_needs_llama_cpp_and_llama_cpp_offload_is_partial(llama3) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidSetting, match="llama.cpp"):
        estimate(llama3, Settings(), quant="gguf-Q4_K_M")
    full = estimate(llama3, Settings(), name="llama.cpp", quant="gguf-Q4_K_M", seq_len=4096)
    half = estimate(llama3, Settings(), name="llama.cpp", quant="gguf-Q4_K_M", seq_len=4096, n_gpu_layers=16)
    assert half.memory["weights"] < full.memory["weights"] / 2
    assert half.memory["kv_cache"] == full.memory["kv_cache"] // 2
    assert full.memory["kv_cache"] == GiB // 2   # 4096-token context, f16 K and V


def test_config_quantization_config_is_honored_without_quant() -> None:
    deepseek = load_model("deepseek-ai/DeepSeek-V3")
    result = estimate(deepseek, Settings(), name="vllm", tensor=8, gpus=8, seq_len=4096)
    assert any("FP8" in note for note in result.notes)
    assert result.memory["weights"] < 700 * GiB / 8


def test_llama_cpp_compute_buffer_without_flash_holds_the_scores() -> None:
    no_fa = runtimes.llama_cpp_compute_bytes(context=8192, heads=32, hidden=4096, vocab=128256, flash=False,
                                             logits_on_gpu=True)
    assert no_fa == 512 * 8192 * 32 * 4 + 512 * 8192 * 2
    fa = runtimes.llama_cpp_compute_bytes(context=8192, heads=32, hidden=4096, vocab=128256, flash=True,
                                          logits_on_gpu=True)
    assert fa == 512 * 128256 * 4 + 512 * 4096 * 4


def test_allocator_rounds_large_segments_to_2_mib() -> None:
    assert overhead.block_bytes(1) == 512
    assert overhead.reserve_bytes([11 * MiB + 1]) == 12 * MiB - (11 * MiB + 512)
    assert overhead.CUBLAS_WORKSPACE_BYTES == 8_519_680


def test_memory_grows_with_batch_and_length(llama3) -> None:  # type: ignore[no-untyped-def]
    totals = [estimate(llama3, Settings(), batch_size=b, seq_len=s, new_tokens=s // 2).memory.total
              for b, s in ((1, 512), (2, 512), (2, 1024), (4, 2048))]
    assert totals == sorted(totals)


def test_kv_heads_replicated_when_tp_exceeds_them(llama3) -> None:  # type: ignore[no-untyped-def]
    layers = tuple(llama3.architecture.layers())
    layout = kv_cache.CacheLayout(element_bytes=kv_cache.element_bytes("auto", "bf16"), latent=False,
                                  cap_window=True, tensor=16)
    assert kv_cache.cache_bytes(layers, sequences=1, tokens=8192, layout=layout) == GiB // 8


def test_draft_model_adds_its_weights_and_cache(llama3) -> None:  # type: ignore[no-untyped-def]
    draft = load_model("meta-llama/Llama-3.2-1B-Instruct").architecture
    result = estimate(llama3, Settings(), seq_len=4096, new_tokens=256, draft_model="meta-llama/Llama-3.2-1B-Instruct")
    assert result.memory["draft_weights"] == 2 * draft.parameter_count().total
    per_token = sum(2 * layer.attention.kv_heads * layer.attention.head_dim * 2 for layer in draft.layers())
    assert result.memory["draft_kv_cache"] == 4096 * per_token


def test_chunked_prefill_bounds_the_prefill_transient(llama3) -> None:  # type: ignore[no-untyped-def]
    whole = estimate(llama3, Settings(), seq_len=16384, new_tokens=16, batch_size=2)
    chunked = estimate(llama3, Settings(), seq_len=16384, new_tokens=16, batch_size=2, prefill_chunk=2048)
    assert chunked.memory["activations"] < whole.memory["activations"] / 4


def test_sglang_keeps_the_mla_latent_and_fp8_cache_halves_the_pool_bytes_per_token() -> None:
    deepseek = load_model("deepseek-ai/DeepSeek-V3")
    result = estimate(deepseek, Settings(), name="sglang", tensor=8, gpus=8, seq_len=4096, gpu="H200")
    assert result.extra["sglang"]["kv_cache_bytes_per_token"] == 61 * 576 * 2
    fp8 = estimate(deepseek, Settings(), name="sglang", tensor=8, gpus=8, seq_len=4096, gpu="H200", kv_dtype="fp8")
    assert fp8.extra["sglang"]["kv_cache_bytes_per_token"] == 61 * 576


def test_unknown_runtime_quant_pairs_name_the_fix(llama3) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidSetting, match="gguf"):
        estimate(llama3, Settings(), name="llama.cpp", quant="bnb-nf4")
    with pytest.raises(InvalidSetting, match="pp"):
        estimate(llama3, Settings(), pipeline=64, gpus=64)


def test_k_and_v_projections_are_replicated_beyond_the_kv_heads(llama3) -> None:  # type: ignore[no-untyped-def]
    from vramfit.memory.sharding import rank_tensors

    tensors = rank_tensors(llama3.architecture, tensor=16)
    k_rows = {t.rows for t in tensors if t.role == "attn_k"}
    q_rows = {t.rows for t in tensors if t.role == "attn_q"}
    assert k_rows == {128}          # one whole kv head (8 heads over 16 ranks: each head on two ranks)
    assert q_rows == {4096 // 16}   # query heads split evenly


def _gemma2_layers() -> tuple[object, ...]:
    return tuple(load_model("google/gemma-2-2b").architecture.layers())


def test_softmax_converts_bf16_scores_to_fp32_first() -> None:
    """aten softmax(x, dtype=float32): bf16 input, its fp32 copy and the fp32 result (10 bytes per score);
    a CUDA fp16 input takes the half-to-float kernel (the 8 of the `.to(dtype)` after it); fp32 8."""
    def per_score(dtype: str, element_bytes: int) -> int:
        return forward.softmax_bytes_per_score(forward.Pass(sequences=1, tokens=1, context=1,
                                                            element_bytes=element_bytes, dtype=dtype))
    assert (per_score("bf16", 2), per_score("fp16", 2), per_score("fp32", 4)) == (10, 8, 8)


def test_masks_live_for_the_whole_forward() -> None:
    """gemma-2 mixes full and sliding (4096) layers: eager keeps two additive masks; sdpa keeps one bool
    mask once the context reaches the window and none below it; flash none."""
    layers = _gemma2_layers()

    def masks(attention: str, tokens: int) -> int:
        return forward.mask_bytes(layers, forward.Pass(sequences=1, tokens=tokens, context=tokens,  # type: ignore[arg-type]
                                                       element_bytes=2, attention=attention))
    assert masks("eager", 2048) == 2 * 2048 * 2048 * 2
    assert (masks("sdpa", 4096), masks("sdpa", 4095)) == (4096 * 4096, 0)
    assert masks("flash", 8192) == 0


def test_final_logit_softcapping_holds_two_logits() -> None:
    """Gemma2ForCausalLM: logits / cap, tanh, * cap out of place: two full logits tensors at once."""
    gemma = load_model("google/gemma-2-2b")
    logits = estimate(gemma, Settings(), seq_len=2048, new_tokens=0, dtype="bf16",
                      attention="eager").memory["logits"]
    assert logits == 2 * 2048 * 256000 * 2


def test_tensor_parallel_splits_heads_and_mlp_width(llama3) -> None:  # type: ignore[no-untyped-def]
    """Per rank: heads / tp, kv heads / tp and intermediate / tp; the hidden states stay whole."""
    layer = next(iter(llama3.architecture.layers()))
    one = forward.Pass(sequences=1, tokens=1024, context=1024, element_bytes=2)
    four = forward.Pass(sequences=1, tokens=1024, context=1024, element_bytes=2, tensor=4)
    assert forward.mlp_bytes(layer, four) * 4 == forward.mlp_bytes(layer, one)
    assert forward.attention_bytes(layer, four) * 4 == forward.attention_bytes(layer, one)
