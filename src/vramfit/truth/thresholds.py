"""Write data/truth/thresholds.json from what the committed truth achieves now, rounded up.

    python -m vramfit.truth.thresholds            # print what would be written
    python -m vramfit.truth.thresholds --write    # lower the thresholds to it (never raises one)

Thresholds only tighten: a new value is min(current threshold, achieved rounded up to STEP). The ceiling
(the first committed thresholds) is kept as it is; tests/test_validate_suite.py checks both.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vramfit.truth.validate import error_stats, validate_files

TRUTH = Path("data/truth")
STEP = 0.005   # half a percentage point
TARGET = {"median_abs_error": 0.02, "max_abs_error": 0.05}


def achieved(kind: str) -> dict[str, float] | None:
    files = sorted((TRUTH / kind).glob("*.jsonl"))
    if not files:
        return None
    report = validate_files(files)
    stats = error_stats([s.error for s in report.errors if s.error is not None])
    limits = {key: math.ceil(stats[key] / STEP) * STEP for key in ("median_abs_error", "p90_abs_error",
                                                                    "max_abs_error")}
    return {**{k: round(v, 3) for k, v in limits.items()}, "unmapped": len(report.unmapped),
            "oom_missed": sum(1 for s in report.ooms if not s.oom_caught)}


def tightened(current: dict[str, Any]) -> dict[str, Any]:
    out = dict(current)
    for kind in ("traced", "measured"):
        now = achieved(kind)
        if now is None:
            continue
        old = current.get(kind) or {}
        out[kind] = {key: min(value, old.get(key, value)) for key, value in now.items()}
        ceiling = out.setdefault("ceiling", {})
        ceiling[kind] = ceiling.get(kind) or out[kind]   # set once, by the first committed thresholds
    out["target"] = TARGET
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    path = TRUTH / "thresholds.json"
    current = json.loads(path.read_text()) if path.exists() else {"traced": {}, "measured": {}, "ceiling": {}}
    new = tightened(current)
    text = json.dumps(new, indent=2, sort_keys=True) + "\n"
    if "--write" in args:
        path.write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
