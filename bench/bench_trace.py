"""How long `vramfit trace` takes for one training step of a 1B and an 8B model, and how far the estimate
is from what it traced.

    python bench/bench_trace.py                    # Llama-3.2-1B and Llama-3.1-8B, full training, bf16, AdamW
    python bench/bench_trace.py --seq-len 512      # a shorter step

The trace builds the transformers model on fake tensors (no memory), runs a warm-up step that creates the
optimizer state, then the measured step (truth/trace.py). Wall and CPU seconds cover model building and
both steps; the process imports torch and transformers once, before the clock starts.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import table, write

from vramfit import Settings, estimate, load_model

MODELS = ("meta-llama/Llama-3.2-1B-Instruct", "meta-llama/Llama-3.1-8B")


def run(name: str, settings: Settings) -> dict[str, Any]:
    from vramfit.truth.trace import trace

    model = load_model(name)
    wall, cpu = time.perf_counter(), time.process_time()
    result = trace(model, settings)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    predicted = estimate(model, settings).peak.allocated
    return {"model": name, "settings": settings.to_dict(), "wall_s": wall, "cpu_s": cpu,
            "traced_allocated_bytes": result.peak_bytes, "estimated_allocated_bytes": predicted,
            "error": (predicted - result.peak_bytes) / result.peak_bytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args()
    import torch  # noqa: F401  (imported before the clock: its import is not the trace's time)
    import transformers  # noqa: F401

    settings = Settings().replace(mode="training", seq_len=args.seq_len, batch_size=args.batch_size).validate()
    from vramfit.truth.trace import trace

    # Untimed warm-up: the first trace also imports the model's transformers modules and fills torch's
    # dispatch caches, which the first timed model would otherwise pay for alone.
    trace(load_model(args.models[0]), settings.replace(seq_len=64))
    runs = []
    for name in args.models:
        runs.append(run(name, settings))
        r = runs[-1]
        print(f"{name}: {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU", flush=True)
    rows = [[r["model"], f"{r['wall_s']:.1f}", f"{r['cpu_s']:.1f}", f"{r['traced_allocated_bytes'] / 2**30:.2f}",
             f"{r['estimated_allocated_bytes'] / 2**30:.2f}", f"{r['error']:+.2%}"] for r in runs]
    print(f"\ntrace of one training step (b{args.batch_size} s{args.seq_len} bf16 AdamW, warm-up + measured step)")
    print(table(["model", "wall s", "CPU s", "traced GiB", "estimate GiB", "error"], rows))
    print(f"-> {write('bench_trace', {'runs': runs})}")


if __name__ == "__main__":
    main()
