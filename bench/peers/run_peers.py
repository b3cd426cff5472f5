"""Run the tools people use today on the same cases as `vramfit validate`, and print one table.

    bash bench/peers/setup.sh                       # once: each peer in its own virtual environment under /tmp
    python bench/peers/run_peers.py                 # every scorable row under data/truth
    python bench/peers/run_peers.py --limit 20 --peers accelerate textbook

Cases: every truth row (data/truth/**/*.jsonl, as `vramfit validate` reads them) that vramfit scores with a
number: OOM rows and rows vramfit cannot map are left out (validate lists them). Each peer runs in its own
virtual environment (a subprocess: bench/peers/peer_<name>.py), reading the cases as JSON and writing one
result per case: the bytes it predicts, the quantity that number is, and the seconds it took; or the reason
it has no number (it crashed, or it cannot express the case). The seeds' textbook formulas (vramfit.textbook)
run here. Every number is scored against the row's own truth quantity, (predicted - truth) / truth, whatever
the peer's number means; the table's legend says what each peer's number is, so a peer that estimates
weights only is not mistaken for one that is wrong about the total.

Writes bench/results/peers.json (every case, every peer) and prints the table and a summary per peer.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _common import table, write

from vramfit.errors import VramfitError
from vramfit.settings import Settings, settings_from_dict
from vramfit.truth.rows import TruthRow, read_rows
from vramfit.truth.validate import default_loader, model_name

TRUTH_DIR = Path("data/truth")
CELL_WIDTH = 28   # reasons and crash messages are cut here in the table; bench/results/peers.json has them whole
PEERS = {  # name -> (virtual environment, what its number is)
    "accelerate": ("/tmp/peer-accelerate", ("inference: weights of AutoModel (no head) at the dtype; training: "
                                            "max of its Adam table (model, grads, optimizer), batch 1, no "
                                            "activations")),
    "deepspeed": ("/tmp/peer-deepspeed", ("training only: ZeRO-2/3 model states per GPU "
                                          "(estimate_zero2/zero3_model_states_mem_needs), no activations")),
    "llm-analysis": ("/tmp/peer-llm-analysis", ("total: weights + KV cache + activations (inference); "
                                                "weights + grads + optimizer + activations (training)")),
}
TEXTBOOK = ("seeds' textbook: inference weights + KV cache (2·b·s·h·L); training 16 B/param + "
            "Korthikanti activations, one GPU")


# ---------------------------------------------------------------------------------------------- the cases

def truth_files() -> list[Path]:
    return sorted(TRUTH_DIR.rglob("*.jsonl"))


def flat_settings(settings: Settings) -> dict[str, Any]:
    """The settings a peer can read, flat, without vramfit installed."""
    w, p, t, par, r = (settings.workload, settings.precision, settings.training, settings.parallelism,
                       settings.runtime)
    return {"mode": w.mode, "batch_size": w.batch_size, "seq_len": w.seq_len, "new_tokens": w.new_tokens,
            "grad_accum": w.grad_accum, "num_beams": w.num_beams, "dtype": p.dtype, "quant": p.quant,
            "kv_dtype": p.kv_dtype, "amp": p.amp, "finetune": t.finetune, "optimizer": t.optimizer,
            "grad_ckpt": t.grad_ckpt, "framework": t.framework, "gpus": par.gpus, "tensor": par.tensor,
            "pipeline": par.pipeline, "zero_stage": par.zero_stage, "fsdp": par.fsdp, "offload": par.offload,
            "runtime": r.name, "attention": r.attention}


def vramfit_case(row: TruthRow, base: Path, load: Any) -> dict[str, Any] | None:
    """The case as peers see it, with vramfit's own prediction and time per estimate; None when vramfit
    does not score the row with a number (unmapped, OOM)."""
    if row.unmapped or row.oom:
        return None
    from vramfit.estimate import estimate

    try:
        settings = settings_from_dict(row.settings).validate()
        model = load(model_name(row, base))
        predicted = int(getattr(estimate(model, settings).peak, row.measure))
    except (VramfitError, ImportError):
        return None
    start = time.perf_counter()
    for _ in range(5):
        estimate(model, settings)
    seconds = (time.perf_counter() - start) / 5
    truth = int(row.truth[row.measure])
    return {"id": row.id, "kind": row.kind, "group": row.group, "measure": row.measure, "truth": truth,
            "model": row.model, "config": model.config, "parameters": model.architecture.parameter_count().total,
            "dims": _dims(model.architecture),
            "settings": flat_settings(settings), "gpu_memory": settings.gpu_memory,
            "vramfit": {"bytes": predicted, "seconds": seconds, "quantity": row.measure}}


def _dims(arch: Any) -> dict[str, int]:
    """The textbook's h, a, L for this architecture (vramfit.textbook.dims_of)."""
    from vramfit.textbook import dims_of

    d = dims_of(arch, 1, 1)
    return {"hidden": d.hidden, "heads": d.heads, "layers": d.layers}


def collect_cases(limit: int | None) -> list[dict[str, Any]]:
    load, cases = default_loader(), []
    for path in truth_files():
        for row in read_rows(path):
            case = vramfit_case(row, path.resolve().parent, load)
            if case is not None:
                cases.append(case)
    return cases[:limit] if limit else cases


# ---------------------------------------------------------------------------------------------- the peers

def run_peer(name: str, cases: list[dict[str, Any]], timeout_s: int) -> dict[str, dict[str, Any]]:
    """One peer over every case in its own environment; a peer that cannot start says why in every cell."""
    venv = Path(PEERS[name][0])
    python = venv / "bin" / "python"
    if not python.exists():
        return {c["id"]: {"cell": f"not installed ({venv}; run bench/peers/setup.sh)"} for c in cases}
    with tempfile.TemporaryDirectory() as tmp:
        given, got = Path(tmp) / "cases.json", Path(tmp) / "results.json"
        given.write_text(json.dumps(cases), encoding="utf-8")
        script = HERE / f"peer_{name.replace('-', '_')}.py"
        try:
            done = subprocess.run([str(python), str(script), str(given), str(got)], capture_output=True, text=True,
                                  timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            return {c["id"]: {"cell": f"timed out after {timeout_s} s"} for c in cases}
        if done.returncode != 0 or not got.exists():
            reason = (done.stderr.strip().splitlines() or ["no output"])[-1][:80]
            return {c["id"]: {"cell": f"peer failed: {reason}"} for c in cases}
        return json.loads(got.read_text(encoding="utf-8"))


# The seeds' precisions for bitsandbytes' formats ([S1] 1.2: INT4 half a byte, INT8 one byte).
_TEXTBOOK_QUANT = {"bnb-nf4": "int4", "bnb-nf4-dq": "int4", "bnb-fp4": "int4", "bnb-int8": "int8"}


def textbook(case: dict[str, Any]) -> dict[str, Any]:
    """The seeds' formulas (vramfit.textbook) with this case's numbers: one GPU, no LoRA, no quantization."""
    from vramfit import textbook as tb

    s = case["settings"]
    if s["gpus"] > 1:
        return {"cell": "one GPU only"}
    if s["finetune"] != "full" and s["mode"] == "training":
        return {"cell": "no LoRA"}
    dtype = _TEXTBOOK_QUANT.get(s["quant"], "") if s["quant"] else s["dtype"]
    if dtype not in tb.PRECISION_BYTES:
        return {"cell": f"no {s['quant'] or s['dtype']}"}
    start = time.perf_counter()
    d = tb.Dims(batch=s["batch_size"], seq=s["seq_len"], **case["dims"])
    if s["mode"] == "inference":
        value = tb.weights_bytes(case["parameters"], dtype) + tb.kv_cache_bytes(d, s["dtype"])
    else:
        value = tb.training_bytes(case["parameters"], s["optimizer"]) + tb.activations_bytes(d)
    return {"bytes": int(value), "seconds": time.perf_counter() - start, "quantity": "total"}


# ---------------------------------------------------------------------------------------------- the table

def error(case: dict[str, Any], result: dict[str, Any]) -> float | None:
    value = result.get("bytes")
    return None if value is None else (value - case["truth"]) / case["truth"]


def cell(case: dict[str, Any], result: dict[str, Any]) -> str:
    e = error(case, result)
    if e is None:
        return result.get("cell", "-")[:CELL_WIDTH]
    marker = {"weights": " W", "model states": " S"}.get(result.get("quantity", ""), "")
    return f"{e:+.0%}{marker}"


def summarize(name: str, cases: list[dict[str, Any]], results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """The tool's errors where it gave a number, and vramfit's errors on exactly those cases (like with like)."""
    mine = results[name]
    scored = [c for c in cases if error(c, mine.get(c["id"], {})) is not None]
    errors = sorted(abs(error(c, mine[c["id"]]) or 0.0) for c in scored)
    ours = sorted(abs(error(c, results["vramfit"][c["id"]]) or 0.0) for c in scored)
    times = [mine[c["id"]]["seconds"] for c in scored if mine[c["id"]].get("seconds") is not None]
    return [name, f"{len(scored)}/{len(cases)}", _pct(errors, 0.5), _pct(errors, 0.9), _pct(ours, 0.5),
            _pct(ours, 0.9), f"{statistics.median(times) * 1e3:.3f}" if times else "-"]


def _pct(ordered: list[float], q: float) -> str:
    """The median, or the nearest-rank percentile q of sorted |errors| (as `vramfit validate` reports p90)."""
    if not ordered:
        return "-"
    value = statistics.median(ordered) if q == 0.5 else ordered[math.ceil(q * len(ordered)) - 1]
    return f"{value:.1%}"


SUMMARY = ["tool", "cases with a number", "median |error|", "p90 |error|", "vramfit median, same cases",
           "vramfit p90, same cases", "median ms/estimate"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", nargs="+", default=[*PEERS, "textbook"], choices=[*PEERS, "textbook"])
    parser.add_argument("--limit", type=int, help="only the first N cases")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per peer (all its cases)")
    args = parser.parse_args()
    cases = collect_cases(args.limit)
    print(f"{len(cases)} cases from {', '.join(str(p) for p in truth_files())}", flush=True)
    results: dict[str, dict[str, dict[str, Any]]] = {"vramfit": {c["id"]: c["vramfit"] for c in cases}}
    for name in args.peers:
        start = time.perf_counter()
        results[name] = ({c["id"]: textbook(c) for c in cases} if name == "textbook"
                         else run_peer(name, cases, args.timeout))
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    tools = list(results)
    rows = [[c["id"][:60], c["measure"], f"{c['truth'] / 2**30:.2f}",
             *(cell(c, results[t].get(c["id"], {})) for t in tools)] for c in cases]
    print(table(["case", "measure", "truth GiB", *tools], rows))
    print("\nW: the peer's number is weights only; S: model states only (no activations, no overheads); "
          "errors are against the row's truth quantity either way.")
    for name, (_, what) in {"vramfit": ("", "the row's quantity (allocated, reserved or device) per GPU"),
                            **PEERS, "textbook": ("", TEXTBOOK)}.items():
        if name in tools:
            print(f"  {name}: {what}")
    for mode in ("inference", "training", None):
        subset = [c for c in cases if mode is None or c["settings"]["mode"] == mode]
        print(f"\n{mode or 'all'} cases ({len(subset)})")
        print(table(SUMMARY, [summarize(t, subset, results) for t in tools]))
    slim = [{k: v for k, v in c.items() if k != "config"} for c in cases]
    print(f"-> {write('peers', {'cases': slim, 'results': results})}")


if __name__ == "__main__":
    main()
