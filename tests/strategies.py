"""Hypothesis strategies shared by the property tests. Add yours here, one per concept, with a docstring.

Import as `from strategies import ...` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

from functools import cache

from hypothesis import strategies as st

from vramfit.gpus import CATALOG, GPU
from vramfit.model.catalog import catalog_ids
from vramfit.model.loaded import Model
from vramfit.settings import RUNTIMES, LoRA, Settings


@cache
def catalog_model(model_id: str) -> Model:
    """A catalog model, loaded once per session (config.json from the package, no network)."""
    from vramfit.model.sources import load_model

    return load_model(model_id)


def catalog_models() -> st.SearchStrategy[Model]:
    """Every model of the catalog (`vramfit.model.catalog.catalog_ids()`)."""
    return st.sampled_from(catalog_ids()).map(catalog_model)


def gpus() -> st.SearchStrategy[GPU]:
    """Every GPU of the catalog."""
    return st.sampled_from(CATALOG)


def modes() -> st.SearchStrategy[str]:
    return st.sampled_from(("inference", "training"))


def batch_sizes(max_value: int = 64) -> st.SearchStrategy[int]:
    return st.integers(min_value=1, max_value=max_value)


def seq_lens(max_value: int = 32768) -> st.SearchStrategy[int]:
    return st.integers(min_value=1, max_value=max_value)


@st.composite
def workload_settings(draw: st.DrawFn, mode: str | None = None) -> Settings:
    """Settings for one GPU with a drawn mode, batch, length and attention; inference draws the runtime and
    a GPU (pool runtimes size their pool from it), training the memory options."""
    chosen = mode or draw(modes())
    settings = Settings().replace(mode=chosen, batch_size=draw(batch_sizes()), seq_len=draw(seq_lens()),
                                  attention=draw(st.sampled_from(("eager", "sdpa", "flash"))))
    if chosen == "inference":
        settings = settings.replace(name=draw(st.sampled_from(RUNTIMES)),
                                    gpu=draw(st.none() | st.sampled_from(("rtx-4090", "h100-80gb"))))
    if chosen == "training":
        # LoRA on all linears: PEFT's name for a target every architecture has (q_proj, say, is not in MLA).
        settings = settings.replace(grad_ckpt=draw(st.sampled_from(("none", "selective", "full"))),
                                    finetune=draw(st.sampled_from(("full", "lora"))),
                                    lora=LoRA(rank=draw(st.sampled_from((8, 16, 64))), targets=("all-linear",)))
    return settings


def monotone_thresholds(low: int = 0, high: int = 1 << 20) -> st.SearchStrategy[tuple[int, int, int]]:
    """(low, high, threshold) with low <= high and low - 1 <= threshold <= high: the predicate n <= threshold
    is true up to the threshold and false after, the shape `search.largest` relies on."""
    return st.tuples(st.integers(low, high), st.integers(0, high - low)).flatmap(
        lambda pair: st.tuples(st.just(pair[0]), st.just(pair[0] + pair[1]),
                               st.integers(pair[0] - 1, pair[0] + pair[1])))


@st.composite
def small_hf_configs(draw: st.DrawFn) -> dict[str, object]:
    """A tiny config.json of a supported model type with its switches drawn at random (biases, tying, GQA,
    head_dim apart from hidden/heads, MoE layouts, Falcon layouts, heads by class), small enough that
    transformers builds it in milliseconds. Owner: readers (tests/test_parameters.py)."""
    heads = draw(st.sampled_from((1, 2, 4)))
    kv_heads = draw(st.sampled_from([k for k in (1, 2, 4) if heads % k == 0]))
    head_dim = draw(st.sampled_from((4, 8)))
    base: dict[str, object] = {
        "num_attention_heads": heads, "num_hidden_layers": draw(st.integers(1, 3)), "hidden_size": heads * head_dim,
        "vocab_size": draw(st.integers(8, 64)), "max_position_embeddings": 32, "pad_token_id": 0,
        "tie_word_embeddings": draw(st.booleans()),
    }
    width = draw(st.integers(2, 24))
    model_type = draw(st.sampled_from(sorted(_SMALL_CONFIG_SWITCHES)))
    switches = draw(_SMALL_CONFIG_SWITCHES[model_type](heads, kv_heads, head_dim))
    if model_type == "t5":  # T5's own keys: with the aliases, T5Config derives num_decoder_layers from the default
        base = {_T5_KEYS.get(key, key): value for key, value in base.items()}
    return {"model_type": model_type, **base, _WIDTH_KEYS.get(model_type, "intermediate_size"): width, **switches}


_T5_KEYS = {"hidden_size": "d_model", "num_hidden_layers": "num_layers", "num_attention_heads": "num_heads"}


# The MLP width under each family's own key (its config class ignores the others).
_WIDTH_KEYS = {"falcon": "ffn_hidden_size", "opt": "ffn_dim", "t5": "d_ff", "gptj": "n_inner"}


def _gqa(kv_heads: int, **more: st.SearchStrategy[object]) -> st.SearchStrategy[dict[str, object]]:
    return st.fixed_dictionaries({"num_key_value_heads": st.just(kv_heads)}, optional=more)


def _moe(kv_heads: int, **more: st.SearchStrategy[object]) -> st.SearchStrategy[dict[str, object]]:
    return st.fixed_dictionaries({"num_key_value_heads": st.just(kv_heads), "num_experts_per_tok": st.just(2),
                                  "moe_intermediate_size": st.integers(2, 12), **more})


_SMALL_CONFIG_SWITCHES = {
    "llama": lambda h, kv, d: _gqa(kv, attention_bias=st.booleans(), mlp_bias=st.booleans(),
                                   head_dim=st.sampled_from((4, 8, 12)),
                                   architectures=st.sampled_from((["LlamaForCausalLM"], ["LlamaModel"]))),
    "qwen2": lambda h, kv, d: _gqa(kv, architectures=st.just(["Qwen2ForCausalLM"])),
    "qwen3": lambda h, kv, d: _gqa(kv, attention_bias=st.booleans(), head_dim=st.sampled_from((4, 8)),
                                   architectures=st.just(["Qwen3ForCausalLM"])),
    "gemma2": lambda h, kv, d: _gqa(kv, head_dim=st.sampled_from((4, 8)), architectures=st.just(["Gemma2ForCausalLM"])),
    "gemma3_text": lambda h, kv, d: _gqa(kv, head_dim=st.sampled_from((4, 8)),
                                         architectures=st.just(["Gemma3ForCausalLM"])),
    "phi3": lambda h, kv, d: _gqa(kv, architectures=st.just(["Phi3ForCausalLM"])),
    "olmo2": lambda h, kv, d: _gqa(kv, attention_bias=st.booleans(), architectures=st.just(["Olmo2ForCausalLM"])),
    "starcoder2": lambda h, kv, d: _gqa(kv, use_bias=st.booleans(), architectures=st.just(["Starcoder2ForCausalLM"])),
    "stablelm": lambda h, kv, d: _gqa(kv, use_qkv_bias=st.booleans(), qk_layernorm=st.booleans(),
                                      use_parallel_residual=st.booleans(),
                                      architectures=st.just(["StableLmForCausalLM"])),
    "phi": lambda h, kv, d: _gqa(kv, qk_layernorm=st.booleans(), architectures=st.just(["PhiForCausalLM"])),
    "mixtral": lambda h, kv, d: _moe(kv, num_local_experts=st.integers(2, 4),
                                     architectures=st.just(["MixtralForCausalLM"])),
    "qwen2_moe": lambda h, kv, d: _moe(kv, num_experts=st.integers(2, 4), decoder_sparse_step=st.integers(1, 2),
                                       shared_expert_intermediate_size=st.integers(2, 12),
                                       mlp_only_layers=st.sampled_from(([], [0])), qkv_bias=st.booleans(),
                                       architectures=st.just(["Qwen2MoeForCausalLM"])),
    "qwen3_moe": lambda h, kv, d: _moe(kv, num_experts=st.integers(2, 4), decoder_sparse_step=st.integers(1, 2),
                                       head_dim=st.just(d), architectures=st.just(["Qwen3MoeForCausalLM"])),
    "deepseek_v3": lambda h, kv, d: _moe(kv, n_routed_experts=st.sampled_from((2, 4)), n_group=st.just(1),
                                         topk_group=st.just(1), n_shared_experts=st.integers(1, 2),
                                         first_k_dense_replace=st.integers(0, 2),
                                         q_lora_rank=st.sampled_from((None, 6)), kv_lora_rank=st.integers(2, 8),
                                         qk_nope_head_dim=st.just(4), qk_rope_head_dim=st.just(2),
                                         v_head_dim=st.just(4), attention_bias=st.booleans(),
                                         architectures=st.just(["DeepseekV3ForCausalLM"])),
    "gpt_oss": lambda h, kv, d: _moe(kv, num_local_experts=st.integers(2, 4), head_dim=st.just(d),
                                     attention_bias=st.booleans(), sliding_window=st.integers(2, 8),
                                     architectures=st.just(["GptOssForCausalLM"])),
    "gptj": lambda h, kv, d: st.fixed_dictionaries({"rotary_dim": st.just(d)}, optional={
        "architectures": st.sampled_from((["GPTJForCausalLM"], ["GPTJModel"]))}),
    "gpt_neox": lambda h, kv, d: st.fixed_dictionaries({}, optional={
        "attention_bias": st.booleans(), "use_parallel_residual": st.booleans(),
        "architectures": st.just(["GPTNeoXForCausalLM"])}),
    "falcon": lambda h, kv, d: st.fixed_dictionaries({"num_kv_heads": st.just(kv)}, optional={
        "new_decoder_architecture": st.booleans(), "multi_query": st.booleans(), "parallel_attn": st.booleans(),
        "bias": st.booleans(), "architectures": st.just(["FalconForCausalLM"])}),
    "opt": lambda h, kv, d: st.fixed_dictionaries({}, optional={
        "enable_bias": st.booleans(), "do_layer_norm_before": st.booleans(),
        "word_embed_proj_dim": st.sampled_from((4, 6)), "architectures": st.just(["OPTForCausalLM"])}),
    "bert": lambda h, kv, d: st.fixed_dictionaries({"architectures": st.sampled_from(
        (["BertModel"], ["BertForMaskedLM"], ["BertForPreTraining"], ["BertForSequenceClassification"],
         ["BertForTokenClassification"]))}, optional={"type_vocab_size": st.integers(1, 3)}),
    "t5": lambda h, kv, d: st.fixed_dictionaries({"d_kv": st.sampled_from((4, 8)), "architectures": st.sampled_from(
        (["T5ForConditionalGeneration"], ["T5Model"], ["T5EncoderModel"]))}, optional={
        "feed_forward_proj": st.sampled_from(("relu", "gated-gelu", "gated-silu")),
        "num_decoder_layers": st.integers(1, 3), "relative_attention_num_buckets": st.integers(2, 8)}),
}


# What a hand-edited or truncated config.json may hold where a number, switch or list is expected.
_JSON_ODDITIES = st.sampled_from((None, 0, -1, 1.5, "x", True, False, [], {}, [1, 2], {"a": 1}, 4096,
                                  "sliding_attention", ["full_attention"]))


@st.composite
def damaged_configs(draw: st.DrawFn, configs: list[dict[str, object]]) -> dict[str, object]:
    """One of `configs` with one to three fields removed or replaced by an odd JSON value. Owner: readers."""
    config = dict(draw(st.sampled_from(configs)))
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(sorted(config)))
        if draw(st.booleans()):
            config.pop(key)
        else:
            config[key] = draw(_JSON_ODDITIES)
        if not config:
            break
    return config


# Values that are wrong for any field: wrong types, out of range, absurd; property tests mix them in.
_HOSTILE = (0, -1, -(10**18), 10**30, True, False, None, "", "8", "nope", 1.5, float("nan"), float("inf"), (), ("x",))


def field_values(valid: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    """A field's value: mostly valid, sometimes hostile (see _HOSTILE)."""
    return st.one_of(valid, valid, valid, st.sampled_from(_HOSTILE))


@st.composite
def any_settings(draw: st.DrawFn) -> Settings:
    """Settings with every field drawn from its valid values or from hostile ones (wrong types, negative,
    huge, NaN, unknown names), built without validation: what a Python caller can pass. Owner: reliability
    (tests/test_properties.py: the only exception vramfit raises for them is its own)."""
    from vramfit.settings import OPTIMIZERS, Parallelism, Precision, Runtime, Training, Workload

    def pick(*values: object) -> object:
        return draw(field_values(st.sampled_from(values)))

    def count(high: int = 8) -> object:
        return draw(field_values(st.integers(1, high)))

    workload = Workload(mode=pick("inference", "training"), batch_size=count(16), seq_len=count(4096),
                        new_tokens=pick(0, 1, 64), grad_accum=count(4), num_beams=count(2),
                        num_return_sequences=count(2), prefill_chunk=pick(None, 256))  # type: ignore[arg-type]
    precision = Precision(dtype=pick("auto", "fp32", "fp16", "bf16"), amp=pick(None, "bf16", "fp16"),
                          quant=pick(None, "bnb-nf4", "bnb-int8", "awq-4bit-g128", "gguf-Q4_K_M", "fp8"),
                          kv_dtype=pick("auto", "fp8", "int8"))  # type: ignore[arg-type]
    training = Training(finetune=pick("full", "lora", "qlora", "dora"),
                        lora=LoRA(rank=count(64), alpha=count(64), dropout=pick(0.0, 0.05),
                                  targets=pick(("all-linear",), ("q_proj", "v_proj"))),  # type: ignore[arg-type]
                        optimizer=pick(*OPTIMIZERS), grad_ckpt=pick("none", "full", "selective"),
                        activation_offload=pick(False, True), frozen_layers=pick(0, 2),
                        framework=pick("transformers", "torchtune"))  # type: ignore[arg-type]
    parallelism = Parallelism(gpus=pick(1, 2, 4, 8), tensor=pick(1, 2, 4), pipeline=pick(1, 2), context=pick(1, 2),
                              expert=pick(1, 2), zero_stage=pick(0, 1, 2, 3),
                              fsdp=pick("none", "full", "shard-grad-op", "hybrid"),
                              offload=pick("none", "optimizer", "params"))  # type: ignore[arg-type]
    runtime = Runtime(name=pick(*RUNTIMES), attention=pick("eager", "sdpa", "flash"),
                      gpu_memory_utilization=pick(0.9, 0.5), block_size=pick(16, 32), n_gpu_layers=pick(None, 4),
                      max_num_seqs=pick(None, 16))  # type: ignore[arg-type]
    return Settings(workload=workload, precision=precision, training=training, parallelism=parallelism,
                    runtime=runtime, gpu=pick(None, "h100-80gb", "rtx-4090"),
                    gpu_memory=pick(None, 24 * 2**30))  # type: ignore[arg-type]
