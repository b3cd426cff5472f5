"""DeepSpeed's ZeRO memory estimators on each case (runs in /tmp/peer-deepspeed, installed with DS_BUILD_OPS=0).

    /tmp/peer-deepspeed/bin/python bench/peers/peer_deepspeed.py CASES.json RESULTS.json

The functions behind `estimate_zero2_model_states_mem_needs_all_cold` / `estimate_zero3_..._all_cold`
(deepspeed/runtime/zero/stage_1_and_2.py and stage3.py): `estimate_zero2_model_states_mem_needs(total_params,
num_gpus_per_node, num_nodes, cpu_offload)` and `estimate_zero3_model_states_mem_needs(total_params,
largest_layer_params, ..., cpu_offload, cpu_offload_params)`, which return (CPU bytes, GPU bytes) of the
model states: 16-bit parameters, gradients and fp32 Adam states, no activations, no framework overhead.
total_params and largest_layer_params are counted as its `model_to_params` does (largest module's own
parameters), on the model class config.json names built on the meta device; DeepSpeed's own count dedups
tied parameters by `data_ptr()`, which is 0 for every meta tensor, so the count here dedups by identity.
Cases: training, full fine-tuning. ZeRO-3 (or FSDP full sharding) uses the stage-3 function; every other
stage (0, 1, 2: DeepSpeed has no stage-0/1 estimator) the stage-2 one, which on one GPU is 2 + 18 bytes
per parameter. GPUs per node: the case's data-parallel degree (gpus / tensor / pipeline) on one node.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


def count(config: dict[str, Any]) -> tuple[tuple[int, int], float]:
    """((total parameters, largest module's own parameters), seconds)."""
    import torch
    import transformers

    start = time.perf_counter()
    fields = {k: v for k, v in config.items() if k not in ("model_type", "quantization_config")}
    hf = transformers.AutoConfig.for_model(config["model_type"], **fields)
    names = config.get("architectures") or []
    cls = getattr(transformers, names[0], None) if names else None
    with torch.device("meta"):
        model = cls._from_config(hf) if cls is not None else transformers.AutoModelForCausalLM.from_config(hf)
    total = sum(p.numel() for p in model.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return (total, largest), time.perf_counter() - start


def reason(s: dict[str, Any]) -> str | None:
    if s["mode"] != "training":
        return "training only"
    if s["finetune"] != "full":
        return f"no {s['finetune']}"
    if s["tensor"] > 1 or s["pipeline"] > 1:
        return "no TP/PP"
    if s["optimizer"] not in ("adamw", "adam", "adamw-fused"):
        return "Adam only"
    return None


def one(case: dict[str, Any], counts: dict[str, Any]) -> dict[str, Any]:
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    s = case["settings"]
    why = reason(s)
    if why:
        return {"cell": why}
    if case["model"] not in counts:
        try:
            counts[case["model"]] = count(case["config"])
        except Exception as error:  # noqa: BLE001  (a peer's crash is a result to report)
            counts[case["model"]] = f"crash: {type(error).__name__}: {str(error)[:60]}"
    counted = counts[case["model"]]
    if isinstance(counted, str):
        return {"cell": counted}
    (total, largest), count_seconds = counted
    gpus = max(1, s["gpus"])
    start = time.perf_counter()
    if s["zero_stage"] == 3 or s["fsdp"] in ("full", "hybrid"):
        _cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            total, largest, num_gpus_per_node=gpus, num_nodes=1, cpu_offload=s["offload"] != "none",
            cpu_offload_params=s["offload"] == "params")
    else:
        _cpu, gpu = estimate_zero2_model_states_mem_needs(total, num_gpus_per_node=gpus, num_nodes=1,
                                                          cpu_offload=s["offload"] != "none")
    return {"bytes": int(gpu), "quantity": "model states", "seconds": count_seconds + time.perf_counter() - start}


def main() -> None:
    import logging

    logging.disable(logging.WARNING)   # DeepSpeed's accelerator detection warns on a CPU-only machine
    cases = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    counts: dict[str, Any] = {}
    results = {case["id"]: one(case, counts) for case in cases}
    Path(sys.argv[2]).write_text(json.dumps(results), encoding="utf-8")


if __name__ == "__main__":
    main()
