"""How fast `vramfit.search.plan` answers, from one node to thousands of GPUs.

    python bench/bench_search.py                 # the default cases
    python bench/bench_search.py --gpus 1024 4096 --model meta-llama/Llama-3.1-405B

For each case it prints the wall time (and the process's CPU time: on a shared machine the wall time counts
other processes' turns), the number of estimate() calls, the time spent inside them, and the
planner's own time (everything else: enumeration, cost model, sorting). The planner's own time is what this
module controls; the estimate time is the memory model's, and scales with its cost per call.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from vramfit import search
from vramfit.model.sources import load_model
from vramfit.settings import Settings

CASES = (
    ("meta-llama/Llama-3.1-8B", "training", 8),
    ("meta-llama/Llama-3.1-70B", "training", 64),
    ("meta-llama/Llama-3.1-70B", "inference", 8),
    ("meta-llama/Llama-3.1-405B", "training", 1024),
    ("meta-llama/Llama-3.1-405B", "training", 4096),
    ("deepseek-ai/DeepSeek-V3", "training", 1024),
)


class Timed:
    """Wraps search.estimate, adding up the calls and the seconds spent inside it."""

    def __init__(self, inner: Callable[..., Any]) -> None:
        self.inner, self.calls, self.seconds = inner, 0, 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.calls += 1
            self.seconds += time.perf_counter() - start


def run_case(model_id: str, mode: str, gpus: int, gpu: str, seq_len: int) -> str:
    model = load_model(model_id)
    settings = Settings().replace(mode=mode, seq_len=seq_len, gpu=gpu)
    timed = Timed(search.estimate)
    search.estimate = timed  # type: ignore[assignment]
    try:
        start, cpu = time.perf_counter(), time.process_time()
        result = search.plan(model, settings, gpus, top=5)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        search.estimate = timed.inner  # type: ignore[assignment]
    best = result.layouts[0].layout.describe() if result.layouts else "nothing fits"
    per_call = timed.seconds / timed.calls * 1e3 if timed.calls else 0.0
    return (f"{model_id:<28} {mode:<9} {gpus:>5} x {gpu}: {wall:6.2f} s ({cpu:5.2f} s CPU), {timed.calls:>3} estimates "
            f"({per_call:5.1f} ms each, {timed.seconds:6.2f} s), planner {wall - timed.seconds:5.2f} s, "
            f"{result.considered} candidates; best: {best}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="one model instead of the default cases")
    parser.add_argument("--mode", default="training", choices=("inference", "training"))
    parser.add_argument("--gpus", type=int, nargs="+", default=[8, 1024])
    parser.add_argument("--gpu", default="h100-80gb")
    parser.add_argument("--seq-len", type=int, default=4096)
    args = parser.parse_args()
    cases = [(args.model, args.mode, n) for n in args.gpus] if args.model else list(CASES)
    for model_id, mode, gpus in cases:
        print(run_case(model_id, mode, gpus, args.gpu, args.seq_len), flush=True)


if __name__ == "__main__":
    main()
