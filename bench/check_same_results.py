"""Check that a speed-up changed no result: every estimate of the working tree against the same estimate
of a git revision, over every catalog model and a spread of settings.

    python bench/check_same_results.py              # against HEAD
    python bench/check_same_results.py --rev abc123
    python bench/check_same_results.py --rev abc123 --repeat   # each estimate again, and at batch + 1
    python bench/check_same_results.py --rev abc123 --compile-at 1   # training's compiled sizes everywhere

The revision's src/ is unpacked into a temporary folder (git archive) and each side runs in its own
process; every component (name, bytes, level, formula, inputs, source, textbook), the peaks, notes, extra and
parameter counts must match, and so must every error message. Exit status 1 when anything differs (the
first differences are printed).

    python bench/check_same_results.py --only src/vramfit/settings.py src/vramfit/memory/training.py

compares the revision against the revision with only those files taken from the working tree: on a tree
several engineers edit at once, this isolates one engineer's change from the others' uncommitted edits.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

VARIANTS = (
    {"mode": "inference"}, {"mode": "inference", "batch_size": 8, "seq_len": 8192, "new_tokens": 1024},
    {"mode": "inference", "gpus": 8, "tensor": 8}, {"mode": "inference", "quant": "bnb-nf4"},
    {"mode": "inference", "name": "vllm"}, {"mode": "inference", "name": "llama.cpp", "quant": "gguf-Q4_K_M"},
    {"mode": "inference", "gpus": 4, "tensor": 2, "pipeline": 2},
    {"mode": "inference", "name": "sglang", "kv_dtype": "fp8"},
    {"mode": "training"}, {"mode": "training", "finetune": "lora", "grad_ckpt": "full", "batch_size": 4},
    {"mode": "training", "finetune": "qlora", "quant": "bnb-nf4"}, {"mode": "training", "gpus": 8, "zero_stage": 3},
    {"mode": "training", "gpus": 8, "tensor": 4, "pipeline": 2},
    # added for issue 10's structural speed-ups: every runtime, pool sizing with a GPU, beams, eager, TP
    # quantized, chunked prefill, partial llama.cpp offload, drafts; AMP, accumulation, every framework,
    # DoRA, offloads, FSDP, ZeRO-2, context and expert parallelism, frozen layers, dropout, QLoRA all-linear
    {"mode": "inference", "name": "vllm", "gpu": "h100-80gb", "gpus": 2, "tensor": 2, "max_num_seqs": 64},
    {"mode": "inference", "name": "sglang", "gpu": "a100-80gb", "gpus": 2, "pipeline": 2},
    {"mode": "inference", "name": "litgpt", "seq_len": 1024, "new_tokens": 256},
    {"mode": "inference", "attention": "eager", "batch_size": 2, "seq_len": 1024, "new_tokens": 128, "num_beams": 2},
    {"mode": "inference", "quant": "gptq-4bit-g128", "gpus": 2, "tensor": 2, "gpu": "h100-80gb"},
    {"mode": "inference", "dtype": "fp32", "prefill_chunk": 512, "attention": "flash", "new_tokens": 8},
    {"mode": "inference", "name": "llama.cpp", "n_gpu_layers": 10, "kv_dtype": "int8", "attention": "flash"},
    {"mode": "inference", "draft_model": "Qwen/Qwen3-0.6B", "new_tokens": 64, "num_return_sequences": 2},
    {"mode": "training", "amp": "bf16", "dtype": "fp32", "grad_accum": 4, "optimizer": "adamw-8bit"},
    {"mode": "training", "finetune": "dora", "framework": "torchtune", "activation_offload": True, "grad_ckpt": "full"},
    {"mode": "training", "framework": "litgpt", "finetune": "lora", "gpus": 4, "fsdp": "full", "grad_accum": 2},
    {"mode": "training", "gpus": 8, "fsdp": "full", "amp": "bf16", "dtype": "fp32", "gpu": "h100-80gb"},
    {"mode": "training", "gpus": 8, "zero_stage": 2, "offload": "optimizer", "optimizer": "adafactor"},
    {"mode": "training", "gpus": 8, "zero_stage": 3, "offload": "params", "grad_ckpt": "selective"},
    {"mode": "training", "gpus": 8, "context": 2, "tensor": 2, "grad_ckpt": "selective", "seq_len": 4096},
    {"mode": "training", "gpus": 8, "expert": 8, "zero_stage": 1},
    {"mode": "training", "frozen_layers": 4, "optimizer": "sgd-momentum", "attention": "eager", "dropout": 0.1},
    {"mode": "training", "finetune": "qlora", "quant": "bnb-nf4", "framework": "litgpt", "optimizer": "paged-adamw-8bit",
     "lora": {"rank": 64, "alpha": 16, "dropout": 0.05, "targets": ["all-linear"]}},
    {"mode": "training", "gpus": 4, "pipeline": 4, "grad_accum": 8, "batch_size": 2},
    {"mode": "training", "framework": "torchtune", "gpus": 2, "fsdp": "full", "finetune": "lora", "amp": "fp16",
     "dtype": "fp32", "optimizer": "lion"},
)

SNAPSHOT = """
import json, sys
from vramfit import Settings, estimate, load_model
from vramfit.errors import VramfitError
from vramfit.settings import LoRA
from vramfit.model.catalog import catalog_ids
variants = json.loads(sys.argv[2])
repeat = sys.argv[3] == "1"
if sys.argv[4] != "0":   # --compile-at: when training compiles a stage's sizes (a tree without it ignores this)
    import vramfit.memory.training as planner
    if hasattr(planner, "_COMPILE_AT"):
        planner._COMPILE_AT = int(sys.argv[4])
out = {}
for name in catalog_ids():
    model = load_model(name)
    for i, changes in enumerate(variants):
        if "lora" in changes:
            changes = {**changes, "lora": LoRA(**{k: tuple(v) if isinstance(v, list) else v
                                                  for k, v in changes["lora"].items()})}
        settings = Settings().replace(**changes)
        points = [("", settings)]
        if repeat:   # the same estimate again (every cache hit, compiled forms), then a neighbouring batch
            points += [("|again", settings), ("|batch+1", settings.replace(batch_size=settings.workload.batch_size + 1))]
        for suffix, point in points:
            try:
                e = estimate(model, point)
                out[f"{name}|{i}{suffix}"] = [[c.name, c.bytes, c.level, c.formula, repr(c.inputs), c.source,
                                               c.textbook] for c in e.memory.components] + [
                    [e.peak.allocated, e.peak.reserved, e.peak.device], list(e.notes), repr(e.extra),
                    repr(e.parameters)]
            except VramfitError as error:
                out[f"{name}|{i}{suffix}"] = "error: " + str(error)
json.dump(out, open(sys.argv[1], "w"), sort_keys=True)
"""


def snapshot(src: Path, path: Path, repeat: bool, compile_at: int = 0) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    subprocess.run([sys.executable, "-c", SNAPSHOT, str(path), json.dumps(VARIANTS), "1" if repeat else "0",
                    str(compile_at)], check=True, env=env,
                   cwd=path.parent)
    return json.loads(path.read_text(encoding="utf-8"))


def unpack(rev: str, into: Path) -> Path:
    archive = subprocess.run(["git", "archive", "--format=tar", rev, "src"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def overlay(src: Path, paths: list[str]) -> Path:
    """The unpacked revision's src with each of `paths` (relative to the repository root) replaced by the
    working tree's version."""
    for path in paths:
        relative = Path(path)
        if relative.parts[0] != "src":
            raise SystemExit(f"--only {path}: give paths under src/")
        (src.parent / relative).parent.mkdir(parents=True, exist_ok=True)
        (src.parent / relative).write_bytes((ROOT / relative).read_bytes())
    return src


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", default="HEAD")
    parser.add_argument("--only", nargs="+", metavar="PATH",
                        help="the revision with only these working-tree files, instead of the whole working tree")
    parser.add_argument("--repeat", action="store_true",
                        help="also each estimate a second time (every cache hit) and then at batch_size + 1: three "
                             "times the estimates")
    parser.add_argument("--compile-at", type=int, default=0, metavar="N",
                        help="the working tree's training planner compiles a stage's sizes at the Nth estimate of its "
                             "key (memory/training.py _COMPILE_AT); 1: every estimate takes the compiled form, which is "
                             "then compared with the revision's direct one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        before = snapshot(unpack(args.rev, Path(tmp) / "rev"), Path(tmp) / "before.json", args.repeat)
        after_src = overlay(unpack(args.rev, Path(tmp) / "mine"), args.only) if args.only else ROOT / "src"
        after = snapshot(after_src, Path(tmp) / "after.json", args.repeat, args.compile_at)
    differ = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    errors = sum(1 for v in after.values() if isinstance(v, str))
    print(f"{len(after)} estimates ({errors} of them errors) against {args.rev}: {len(differ)} differ")
    for key in differ[:10]:
        print(f"  {key}\n    {args.rev}: {before.get(key)}\n    now: {after.get(key)}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
