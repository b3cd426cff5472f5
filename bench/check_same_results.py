"""Check that a speed-up changed no result: every estimate of the working tree against the same estimate
of a git revision, over every catalog model and a spread of settings.

    python bench/check_same_results.py              # against HEAD
    python bench/check_same_results.py --rev abc123

The revision's src/ is unpacked into a temporary folder (git archive) and each side runs in its own
process; every component (name, bytes, level), the peaks, notes, extra and parameter counts must match,
and so must every error message. Exit status 1 when anything differs (the first differences are printed).
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
)

SNAPSHOT = """
import json, sys
from vramfit import Settings, estimate, load_model
from vramfit.errors import VramfitError
from vramfit.model.catalog import catalog_ids
variants = json.loads(sys.argv[2])
out = {}
for name in catalog_ids():
    model = load_model(name)
    for i, changes in enumerate(variants):
        try:
            e = estimate(model, Settings().replace(**changes))
            out[f"{name}|{i}"] = [[c.name, c.bytes, c.level] for c in e.memory.components] + [
                [e.peak.allocated, e.peak.reserved, e.peak.device], list(e.notes), repr(e.extra), repr(e.parameters)]
        except VramfitError as error:
            out[f"{name}|{i}"] = "error: " + str(error)
json.dump(out, open(sys.argv[1], "w"), sort_keys=True)
"""


def snapshot(src: Path, path: Path) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    subprocess.run([sys.executable, "-c", SNAPSHOT, str(path), json.dumps(VARIANTS)], check=True, env=env,
                   cwd=path.parent)
    return json.loads(path.read_text(encoding="utf-8"))


def unpack(rev: str, into: Path) -> Path:
    archive = subprocess.run(["git", "archive", "--format=tar", rev, "src"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", default="HEAD")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        before = snapshot(unpack(args.rev, Path(tmp)), Path(tmp) / "before.json")
        after = snapshot(ROOT / "src", Path(tmp) / "after.json")
    differ = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    errors = sum(1 for v in after.values() if isinstance(v, str))
    print(f"{len(after)} estimates ({errors} of them errors) against {args.rev}: {len(differ)} differ")
    for key in differ[:10]:
        print(f"  {key}\n    {args.rev}: {before.get(key)}\n    now: {after.get(key)}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
