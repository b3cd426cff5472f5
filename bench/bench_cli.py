"""`vramfit estimate` from the shell against a bare `python -c pass` (target: under 3x).

    python bench/bench_cli.py                     # 15 interleaved runs of each
    python bench/bench_cli.py --runs 5 --model Qwen/Qwen3-0.6B

Each round runs the bare interpreter, then the command, so both see the same machine load. Besides wall
time, the children's CPU time (user + system, from getrusage) is recorded per run: on a busy machine it is
the steadier measure. The command is the installed `vramfit` console script when it is on PATH, else
`python -m vramfit`.

Two conditions: bytecode cached (what a pip install leaves: compiled modules on disk; here kept under a
temporary PYTHONPYCACHEPREFIX so the source tree stays clean) and no bytecode cache for vramfit
(PYTHONDONTWRITEBYTECODE=1, as some containers set it, and an editable install without __pycache__: every
vramfit module is compiled at each start; the standard library keeps its installed bytecode).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import table, write

TARGET_RATIO = 3.0


def environment(bytecode: bool, cache_dir: str) -> dict[str, str]:
    """The children's environment: with bytecode, compiled modules are cached under `cache_dir` (as a pip
    install leaves them); without, PYTHONDONTWRITEBYTECODE=1 and an empty cache make every import compile."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    if bytecode:
        env["PYTHONPYCACHEPREFIX"] = cache_dir
    else:   # the standard library keeps its own installed bytecode; vramfit's source has none
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) for one run; the command must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def measure(commands: dict[str, list[str]], runs: int, env: dict[str, str]) -> dict[str, dict[str, Any]]:
    for command in commands.values():   # one untimed run each: file system cache warm, bytecode written
        timed(command, env)
    seen: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, command in commands.items():
            seen[name].append(timed(command, env))
    return {name: {"command": " ".join(commands[name]),
                   "wall_median_s": statistics.median(w for w, _ in values),
                   "wall_min_s": min(w for w, _ in values),
                   "cpu_median_s": statistics.median(c for _, c in values), "runs": len(values)}
            for name, values in seen.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--model", default="meta-llama/Llama-3.1-8B")
    args = parser.parse_args()
    cli = [shutil.which("vramfit")] if shutil.which("vramfit") else [sys.executable, "-m", "vramfit"]
    commands = {"python -c pass": [sys.executable, "-c", "pass"],
                "vramfit estimate": [*cli, "estimate", args.model],  # type: ignore[list-item]
                "vramfit estimate --json": [*cli, "estimate", args.model, "--json"]}  # type: ignore[list-item]
    everything = {}
    with tempfile.TemporaryDirectory() as cache_dir:
        for label, bytecode in (("bytecode cached", True), ("no bytecode cache", False)):
            results = measure(commands, args.runs, environment(bytecode, cache_dir))
            add_ratios(results)
            everything[label] = results
            show(label, results, args.runs)
    print(f"-> {write('bench_cli', {'model': args.model, 'target_ratio': TARGET_RATIO, 'results': everything})}")


def add_ratios(results: dict[str, dict[str, Any]]) -> None:
    base = results["python -c pass"]
    for r in results.values():
        r["wall_ratio"] = r["wall_median_s"] / base["wall_median_s"]
        r["wall_min_ratio"] = r["wall_min_s"] / base["wall_min_s"]
        r["cpu_ratio"] = r["cpu_median_s"] / base["cpu_median_s"] if base["cpu_median_s"] else float("nan")


def show(label: str, results: dict[str, dict[str, Any]], runs: int) -> None:
    rows = [[name, f"{r['wall_median_s'] * 1e3:.0f}", f"{r['wall_min_s'] * 1e3:.0f}", f"{r['cpu_median_s'] * 1e3:.0f}",
             f"{r['wall_ratio']:.2f}x", f"{r['wall_min_ratio']:.2f}x", f"{r['cpu_ratio']:.2f}x"]
            for name, r in results.items()]
    print(f"\n{label}: {runs} interleaved runs each (target: vramfit estimate under {TARGET_RATIO:g}x python -c pass)")
    print(table(["command", "wall median ms", "wall min ms", "CPU median ms", "wall ratio", "min ratio",
                 "CPU ratio"], rows))
    r = results["vramfit estimate"]
    print(f"target: wall {'met' if r['wall_ratio'] < TARGET_RATIO else 'missed'} ({r['wall_ratio']:.2f}x), "
          f"CPU {'met' if r['cpu_ratio'] < TARGET_RATIO else 'missed'} ({r['cpu_ratio']:.2f}x)")


if __name__ == "__main__":
    main()
