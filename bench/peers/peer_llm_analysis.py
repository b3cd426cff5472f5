"""llm-analysis (cli99/llm-analysis, pip package `llm-analysis`) on each case (runs in /tmp/peer-llm-analysis).

    /tmp/peer-llm-analysis/bin/python bench/peers/peer_llm_analysis.py CASES.json RESULTS.json

The model config is made as its `get_model_config_from_hf` makes one from a Hugging Face config (llm_analysis/
config.py): layers, heads, hidden size, vocabulary, max positions, model_type, kv heads; no FFN width, so it
takes 4 x hidden, as that path does. The GPU is its h100-sxm-80gb entry with the memory raised to 1,000 GB, so
its "does not fit" assertions never replace an estimate with a crash. Weights, activations and KV cache in
16 bits (w16a16e16), or 4-bit weights (w4a16e16) for bnb-nf4; fp32 has no dtype config, but fp32 with
autocast (amp) is its mixed-precision reading: 16-bit compute with fp32 master weights.
Inference (`LLMAnalysis.inference`): weights + max(prefill activations, KV cache + decode activations); the
prompt is seq_len - new_tokens and at least one token is generated (0 divides by zero in its latency).
Training (`LLMAnalysis.training`): its "(weight+op_state+grad+act)_memory_per_gpu", with flash attention
unless the case runs eager attention, full recomputation for grad_ckpt full, gated MLP for SwiGLU configs,
ZeRO stage and data/tensor/pipeline sizes from the case.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

_FOUR_BIT = ("bnb-nf4", "bnb-nf4-dq", "bnb-fp4")
_OPTIMIZER_BYTES = {"adamw": None, "adam": None, "adamw-fused": None, "sgd-momentum": 4, "adamw-8bit": 2,
                    "paged-adamw-8bit": 2, "lion": 4}


# What transformers' config classes answer for these names (their attribute_map, e.g. GPT2Config: n_layer ->
# num_hidden_layers), which get_model_config_from_hf reads through AutoConfig; the raw config.json may use either.
_ALIASES = {"num_hidden_layers": ("num_hidden_layers", "n_layer", "n_layers", "num_layers"),
            "num_attention_heads": ("num_attention_heads", "n_head", "n_heads"),
            "hidden_size": ("hidden_size", "n_embd", "d_model"),
            "max_position_embeddings": ("max_position_embeddings", "n_positions")}


def _get(config: dict[str, Any], name: str) -> Any:
    return next((config[k] for k in _ALIASES.get(name, (name,)) if config.get(k) is not None), None)


def model_config(config: dict[str, Any], name: str) -> Any:
    from llm_analysis.config import ModelConfig

    return ModelConfig(name=name.replace("/", "_"), max_seq_len=_get(config, "max_position_embeddings"),
                       num_layers=_get(config, "num_hidden_layers"), n_head=_get(config, "num_attention_heads"),
                       hidden_dim=_get(config, "hidden_size"), vocab_size=config["vocab_size"],
                       model_type=config.get("model_type"), num_key_value_heads=config.get("num_key_value_heads"))


def analysis(case: dict[str, Any]) -> Any:
    from llm_analysis.analysis import LLMAnalysis
    from llm_analysis.config import ParallelismConfig, get_dtype_config_by_name, get_gpu_config_by_name

    s = case["settings"]
    gpu = get_gpu_config_by_name("h100-sxm-80gb")
    gpu.mem_per_GPU_in_GB = 1000.0
    dtype = get_dtype_config_by_name("w4a16e16" if s["quant"] in _FOUR_BIT else "w16a16e16")
    data = max(1, s["gpus"] // (s["tensor"] * s["pipeline"]))
    parallel = ParallelismConfig(tp_size=s["tensor"], pp_size=s["pipeline"], dp_size=data)
    return LLMAnalysis(model_config(case["config"], case["model"]), gpu, dtype, parallel)


def reason(s: dict[str, Any]) -> str | None:
    if s["dtype"] == "fp32" and not s["amp"]:
        return "no fp32"
    if s["quant"] and s["quant"] not in _FOUR_BIT:
        return f"no {s['quant']}"
    if s["mode"] == "training" and s["finetune"] != "full":
        return f"no {s['finetune']}"
    if s["mode"] == "training" and s["optimizer"] not in _OPTIMIZER_BYTES:
        return f"no {s['optimizer']}"
    return None


def estimate(case: dict[str, Any]) -> tuple[int, str]:
    from llm_analysis.analysis import ActivationRecomputation, DSZeRO

    s, la = case["settings"], analysis(case)
    if s["mode"] == "inference":
        generated = max(1, s["new_tokens"])
        out = la.inference(batch_size_per_gpu=s["batch_size"], seq_len=max(1, s["seq_len"] - s["new_tokens"]),
                           num_tokens_to_generate=generated)
        decode = out["kv_cache_memory_per_gpu"] + out["decode_activation_memory_per_gpu"]
        return int(out["weight_memory_per_gpu"] + max(out["prefill_activation_memory_per_gpu"], decode)), "total"
    gated = case["config"].get("hidden_act", case["config"].get("hidden_activation", "")) in ("silu", "swiglu")
    out = la.training(batch_size_per_gpu=s["batch_size"], gradient_accumulation_steps=s["grad_accum"],
                      seq_len=s["seq_len"], ds_zero=DSZeRO(s["zero_stage"]),
                      activation_recomputation=ActivationRecomputation.FULL if s["grad_ckpt"] == "full"
                      else ActivationRecomputation.NONE,
                      flash_attn=s["attention"] != "eager", mlp_gated_linear_units=gated,
                      other_op_bytes=_OPTIMIZER_BYTES[s["optimizer"]])
    return int(out["(weight+op_state+grad+act)_memory_per_gpu"]), "total"


def one(case: dict[str, Any]) -> dict[str, Any]:
    why = reason(case["settings"])
    if why:
        return {"cell": why}
    start = time.perf_counter()
    try:
        value, quantity = estimate(case)
    except Exception as error:  # noqa: BLE001  (a peer's crash is a result to report)
        return {"cell": f"crash: {type(error).__name__}: {str(error)[:50]}"}
    return {"bytes": value, "quantity": quantity, "seconds": time.perf_counter() - start}


def main() -> None:
    logging.disable(logging.WARNING)   # it logs every figure at INFO and warns about efficiencies
    cases = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    results = {case["id"]: one(case) for case in cases}
    Path(sys.argv[2]).write_text(json.dumps(results), encoding="utf-8")


if __name__ == "__main__":
    main()
