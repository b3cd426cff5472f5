"""How fast one estimate is in-process, and how many a sweep answers per second on one core.

    python bench/bench_estimate.py              # every case, the sweep; writes bench/results/bench_estimate.json
    python bench/bench_estimate.py --quick      # fewer repetitions

Targets (issue 10): one estimate's median under 50 microseconds; a sweep of at least 20,000 estimates a
second on one core. The model is loaded once (loading reads config.json from the catalog and is not part of
an estimate); each timed call is `vramfit.estimate(model, settings)` with settings built beforehand. The
first call of each case is timed apart (it fills the caches of workload-independent terms, docs/BENCHMARKS.md
lists them), then 5 untimed calls; the CPU figure is over the timed calls only.
The sweep is what a batch x sequence-length table or a plot does: one model, every (batch, length) point of a
grid, as `vramfit.sweep(model, settings, batch_size=[...], seq_len=[...])` answers it (the settings validated
once, each point's Workload checked alone). The same points as a loop of `estimate(model,
settings.replace(batch_size=b, seq_len=t))` calls are timed beside it: what a caller who writes the loop gets.
vramfit is single-threaded, so estimates per CPU second of the process are estimates per second on one core; on
a busy machine that is the figure to read (the wall figure counts other processes' turns too).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import pin_one_core, samples, summary, table, write

from vramfit import Settings, estimate, load_model
from vramfit import sweep as grid

TARGET_MEDIAN_US = 50.0
TARGET_SWEEP_PER_S = 20_000.0

# (label, model, settings changes)
CASES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("8B infer b1 s2048", "meta-llama/Llama-3.1-8B", {"mode": "inference"}),
    ("8B generate b8 s8192 +1024", "meta-llama/Llama-3.1-8B",
     {"mode": "inference", "batch_size": 8, "seq_len": 8192, "new_tokens": 1024}),
    ("8B train full adamw b1 s4096", "meta-llama/Llama-3.1-8B", {"mode": "training", "seq_len": 4096}),
    ("8B train lora ckpt b4 s2048", "meta-llama/Llama-3.1-8B",
     {"mode": "training", "finetune": "lora", "grad_ckpt": "full", "batch_size": 4}),
    ("0.6B train full b2 s2048", "Qwen/Qwen3-0.6B", {"mode": "training", "batch_size": 2}),
    ("70B infer TP8", "meta-llama/Llama-3.1-70B", {"mode": "inference", "gpus": 8, "tensor": 8}),
    ("70B train ZeRO-3 x8", "meta-llama/Llama-3.1-70B",
     {"mode": "training", "gpus": 8, "zero_stage": 3, "grad_ckpt": "full"}),
    ("DeepSeek-V3 infer TP8", "deepseek-ai/DeepSeek-V3", {"mode": "inference", "gpus": 8, "tensor": 8}),
)

SWEEP_MODEL = "meta-llama/Llama-3.1-8B"
SWEEP_BATCHES = (1, 2, 4, 8, 16, 32, 64)
SWEEP_SEQS = (512, 1024, 2048, 4096, 8192, 16384, 32768)


def time_cases(repeat: int) -> list[dict[str, Any]]:
    out = []
    for label, name, changes in CASES:
        model = load_model(name)
        settings = Settings().replace(**changes).validate()
        cold = time.process_time()
        estimate(model, settings)   # the first estimate of a model and settings fills the caches (BENCHMARKS.md)
        cold_us = (time.process_time() - cold) * 1e6
        for _ in range(5):
            estimate(model, settings)
        cpu = time.process_time()
        seconds = samples(lambda m=model, s=settings: estimate(m, s), repeat=repeat, warmup=0)
        cpu_per_call_us = (time.process_time() - cpu) / repeat * 1e6
        out.append({"case": label, "model": name, "changes": changes, **summary(seconds),
                    "cpu_per_call_us": cpu_per_call_us, "first_call_cpu_us": cold_us, "meets_target": summary(seconds)["median_us"] < TARGET_MEDIAN_US})
    return out


def sweep(rounds: int) -> dict[str, Any]:
    """Every (batch, seq) point of each mode, `rounds` times over, through vramfit.sweep and through a loop of
    estimate calls, each on a model object of its own (every cache starts cold): the first round's CPU time,
    which holds the one-time work (the first estimate of a model and settings, and compiling the sizes, see
    docs/BENCHMARKS.md), and the estimates per CPU second of the later rounds, the steady rate the target is
    about; per wall second and over all rounds beside them."""
    loaded = load_model(SWEEP_MODEL)
    out: dict[str, Any] = {"model": SWEEP_MODEL, "rounds": rounds}
    for label, run in (("sweep", _by_sweep), ("loop", _by_loop)):
        totals = [0, 0.0, 0.0]
        for mode in ("inference", "training"):
            model = dataclasses.replace(loaded, architecture=dataclasses.replace(loaded.architecture))
            base = Settings().replace(mode=mode)
            points = len(SWEEP_BATCHES) * len(SWEEP_SEQS)
            wall, cpu = time.perf_counter(), time.process_time()
            run(model, base)
            first = time.process_time() - cpu
            for _ in range(rounds - 1):
                run(model, base)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            n = rounds * points
            out[f"{label} {mode}"] = {"points": points, "estimates": n, "first_round_cpu_ms": first * 1e3,
                                      "per_cpu_second_after_first": (n - points) / (cpu - first),
                                      "per_cpu_second": n / cpu, "per_wall_second": n / wall}
            totals = [totals[0] + n, totals[1] + cpu, totals[2] + wall]
        out[f"{label} both"] = {"estimates": totals[0], "per_cpu_second": totals[0] / totals[1],
                                "per_wall_second": totals[0] / totals[2]}
    out["meets_target"] = {f"sweep {mode}": out[f"sweep {mode}"]["per_cpu_second_after_first"] >= TARGET_SWEEP_PER_S
                           for mode in ("inference", "training")}
    return out


def _by_sweep(model: Any, base: Settings) -> None:
    grid(model, base, batch_size=SWEEP_BATCHES, seq_len=SWEEP_SEQS)


def _by_loop(model: Any, base: Settings) -> None:
    for b in SWEEP_BATCHES:
        for s in SWEEP_SEQS:
            estimate(model, base.replace(batch_size=b, seq_len=s))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    parser.add_argument("--pin", action="store_true", help="pin the process to one CPU (sched_setaffinity)")
    args = parser.parse_args()
    pinned = pin_one_core() if args.pin else "not pinned; single-threaded, so CPU time is one core's"
    cases = time_cases(repeat=30 if args.quick else 300)
    rows = [[c["case"], f"{c['median_us']:,.0f}", f"{c['p10_us']:,.0f}", f"{c['p90_us']:,.0f}",
             f"{c['cpu_per_call_us']:,.0f}", f"{c['first_call_cpu_us']:,.0f}", "yes" if c["meets_target"] else "no"]
            for c in cases]
    print(f"one estimate in-process ({pinned}; target median < {TARGET_MEDIAN_US:.0f} us)")
    print(table(["case", "median us", "p10 us", "p90 us", "CPU us/call", "first call CPU us", "< 50 us"], rows))
    result = sweep(rounds=3 if args.quick else 11)
    print(f"\nsweep: {SWEEP_MODEL}, {len(SWEEP_BATCHES)} batches x {len(SWEEP_SEQS)} lengths per mode, "
          f"x {result['rounds']} (target >= {TARGET_SWEEP_PER_S:,.0f} estimates per second on one core)")
    keys = [f"{how} {mode}" for how in ("sweep", "loop") for mode in ("inference", "training")]
    target = lambda k: ("met" if result["meets_target"][k] else "missed") if k in result["meets_target"] else ""
    print(table(["how, mode", "estimates", "first round, CPU ms", "later rounds, per CPU s", "all rounds, per CPU s",
                 "per wall s", "target"],
                [[k, str(result[k]["estimates"]), f"{result[k]['first_round_cpu_ms']:,.1f}",
                  f"{result[k]['per_cpu_second_after_first']:,.0f}", f"{result[k]['per_cpu_second']:,.0f}",
                  f"{result[k]['per_wall_second']:,.0f}", target(k)] for k in keys]))
    path = write("bench_estimate", {"pinned": pinned, "cases": cases, "sweep": result,
                                    "targets": {"median_us": TARGET_MEDIAN_US, "sweep_per_s": TARGET_SWEEP_PER_S}})
    print(f"-> {path}")


if __name__ == "__main__":
    main()
