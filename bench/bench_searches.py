"""How fast the searches answer: largest batch, longest context, the fewest GPUs of each kind, what to change,
and plans over many GPUs.

    python bench/bench_searches.py               # writes bench/results/bench_searches.json
    python bench/bench_searches.py --no-plan     # skip the plans (the slowest part)

Each search is a sequence of estimates (bisection over a monotone fit, or a walk over layouts), so its
time is about (estimates made) x (time per estimate) plus its own bookkeeping; both are reported. The plans
reuse bench/bench_search.py (the search engineer's) to split estimate time from planner time.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import table, write

from vramfit import (
    Settings,
    fit,
    load_model,
    max_batch,
    max_context,
    search,
    what_to_change,
)

GPU = "h100-80gb"
FIT_GPUS = ("h100-80gb", "a100-40gb", "rtx-4090")


def _counted(call: Callable[[], Any]) -> tuple[Any, float, float, int]:
    """(result, wall s, CPU s, estimates made) of one call, counting search.estimate calls."""
    inner, calls = search.estimate, [0]

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return inner(*args, **kwargs)

    search.estimate = counting  # type: ignore[assignment]
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        result = call()
        return result, time.perf_counter() - wall, time.process_time() - cpu, calls[0]
    finally:
        search.estimate = inner  # type: ignore[assignment]


def cases() -> list[tuple[str, Callable[[], Any], Callable[[Any], str]]]:
    m8, m70 = load_model("meta-llama/Llama-3.1-8B"), load_model("meta-llama/Llama-3.1-70B")
    infer = Settings().replace(gpu=GPU, mode="inference", seq_len=4096)
    train = Settings().replace(gpu=GPU, mode="training", seq_len=4096)
    big = Settings().replace(gpu=GPU, mode="training", seq_len=8192, batch_size=8)
    return [
        ("max_batch 8B inference s4096", lambda: max_batch(m8, infer), lambda r: f"batch {r.value}"),
        ("max_batch 8B training s4096", lambda: max_batch(m8, train), lambda r: f"batch {r.value}"),
        ("max_context 8B inference b1", lambda: max_context(m8, infer.replace(batch_size=1)),
         lambda r: f"{r.value} tokens ({r.limited_by})"),
        ("max_context 70B inference TP8", lambda: max_context(m70, infer.replace(gpus=8, tensor=8)),
         lambda r: f"{r.value} tokens ({r.limited_by})"),
        ("fit 70B training (3 GPU kinds)", lambda: fit(m70, train, gpus=[search.lookup(g) for g in FIT_GPUS]),
         lambda r: ", ".join(f"{g.count} x {g.gpu.id}" for g in r)),
        ("what_to_change 8B training b8 s8192", lambda: what_to_change(m8, big),
         lambda r: f"{len(r)} changes; first: {r[0].label if r else '-'}"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-plan", action="store_true", help="skip the plans over many GPUs")
    args = parser.parse_args()
    results = []
    for label, call, describe in cases():
        result, wall, cpu, calls = _counted(call)
        results.append({"search": label, "wall_s": wall, "cpu_s": cpu, "estimates": calls,
                        "cpu_ms_per_estimate": cpu / calls * 1e3 if calls else None, "answer": describe(result)})
        print(f"{label}: {wall:.2f} s", flush=True)
    rows = [[r["search"], f"{r['wall_s']:.2f}", f"{r['cpu_s']:.2f}", str(r["estimates"]),
             f"{r['cpu_ms_per_estimate']:.2f}" if r["cpu_ms_per_estimate"] else "-", r["answer"]] for r in results]
    print(table(["search", "wall s", "CPU s", "estimates", "CPU ms/estimate", "answer"], rows))
    plans = []
    if not args.no_plan:
        import bench_search

        for model_id, mode, gpus in (("meta-llama/Llama-3.1-8B", "training", 8),
                                     ("meta-llama/Llama-3.1-70B", "training", 64),
                                     ("meta-llama/Llama-3.1-405B", "training", 1024)):
            line = bench_search.run_case(model_id, mode, gpus, GPU, 4096)
            plans.append(line)
            print(line, flush=True)
    print(f"-> {write('bench_searches', {'gpu': GPU, 'searches': results, 'plans': plans})}")


if __name__ == "__main__":
    main()
