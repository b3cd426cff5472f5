"""accelerate's `estimate-memory`, through its own functions, on each case (runs in /tmp/peer-accelerate).

    /tmp/peer-accelerate/bin/python bench/peers/peer_accelerate.py CASES.json RESULTS.json

What `accelerate estimate-memory MODEL` does (accelerate/commands/estimate.py, gather_data), with the hub
steps replaced by the case's own config.json: the config -> `AutoModel.from_config(config, torch_dtype=
float32)` under `init_empty_weights()` (AutoModel, as create_empty_model picks it: the headless base model),
`calculate_maximum_sizes(model)`, then per dtype the total size (float16 halves it, int8 quarters, int4
eighths) and "Training using Adam" = max of `estimate_training_usage(fp32 size, dtype)`'s values.
Its dtype choices are float32, float16, int8, int4: bf16 is read as float16, bnb-nf4 (with or without double
quantization) as int4, bnb-int8 as int8.
Inference: the Total Size (weights). Training (full fine-tuning): the Adam figure. It has no batch,
sequence, KV cache, LoRA or multi-GPU input: those cases get a reason instead of a number.
Time per estimate: building the empty model plus the size arithmetic, measured once per model (the tool
builds the model on every call) and once per case for the arithmetic.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

_DTYPE = {"fp32": "float32", "fp16": "float16", "bf16": "float16"}
_QUANT = {"bnb-nf4": "int4", "bnb-nf4-dq": "int4", "bnb-fp4": "int4", "bnb-int8": "int8"}
_DIVISOR = {"float32": 1, "float16": 2, "int8": 4, "int4": 8}


def build(config: dict[str, Any]) -> tuple[int, float]:
    """(total size in fp32 bytes, seconds to build and size the empty model)."""
    import torch
    import transformers
    from accelerate import init_empty_weights
    from accelerate.utils import calculate_maximum_sizes

    start = time.perf_counter()
    fields = {k: v for k, v in config.items() if k not in ("model_type", "quantization_config")}
    hf = transformers.AutoConfig.for_model(config["model_type"], **fields)
    with init_empty_weights():
        model = transformers.AutoModel.from_config(hf, torch_dtype=torch.float32)
    total, _largest = calculate_maximum_sizes(model)
    return int(total), time.perf_counter() - start


def reason(s: dict[str, Any]) -> str | None:
    if s["gpus"] > 1:
        return "no multi-GPU"
    if s["mode"] == "training" and s["finetune"] != "full":
        return f"no {s['finetune']}"
    if s["quant"] and s["quant"] not in _QUANT:
        return f"no {s['quant']}"
    if s["mode"] == "training" and s["quant"]:
        return "no quantized training"
    if s["mode"] == "training" and s["optimizer"] not in ("adamw", "adam", "adamw-fused"):
        return "Adam only"
    return None


def one(case: dict[str, Any], sizes: dict[str, tuple[int, float] | str]) -> dict[str, Any]:
    from accelerate.commands.estimate import estimate_training_usage

    s = case["settings"]
    why = reason(s)
    if why:
        return {"cell": why}
    if case["model"] not in sizes:
        try:
            sizes[case["model"]] = build(case["config"])
        except Exception as error:  # noqa: BLE001  (a peer's crash is a result to report)
            sizes[case["model"]] = f"crash: {type(error).__name__}: {str(error)[:60]}"
    built = sizes[case["model"]]
    if isinstance(built, str):
        return {"cell": built}
    total, build_seconds = built
    dtype = _QUANT.get(s["quant"] or "", _DTYPE.get(s["dtype"], "float32"))
    start = time.perf_counter()
    if s["mode"] == "inference":
        value, quantity = total / _DIVISOR[dtype], "weights"
    else:
        value, quantity = max(estimate_training_usage(total, dtype).values()), "model states"
    seconds = build_seconds + time.perf_counter() - start
    return {"bytes": int(value), "quantity": quantity, "seconds": seconds}


def main() -> None:
    cases = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    sizes: dict[str, tuple[int, float] | str] = {}
    results = {case["id"]: one(case, sizes) for case in cases}
    Path(sys.argv[2]).write_text(json.dumps(results), encoding="utf-8")


if __name__ == "__main__":
    main()
