"""`vramfit validate`, `vramfit trace`, `vramfit measure`: the truth tools.

validate is torch-free; trace and measure import torch only when run, and print the pip install line of
the `truth` extra when it is missing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vramfit.cli.common import (
    add_model_arguments,
    add_settings_arguments,
    model_from_args,
    settings_from_args,
)
from vramfit.errors import InvalidSetting
from vramfit.units import format_bytes

DEFAULT_TRUTH_DIR = Path("data/truth")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _register_validate(subparsers)
    _register_trace(subparsers)
    _register_measure(subparsers)


def _register_measure(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "measure", help="run the same step for real on a CUDA GPU (random weights, no download) and record it")
    add_model_arguments(parser)
    add_settings_arguments(parser)
    parser.add_argument("--out", metavar="FILE.jsonl",
                        help="append the truth row here (default: data/truth/measured/<GPU name>.jsonl)")
    parser.add_argument("--score", choices=("allocated", "reserved", "device"), default="allocated",
                        help="the quantity validate compares estimates with (default: allocated)")
    parser.add_argument("--group", default="", help="the row's group for validate's summaries")
    parser.add_argument("--json", action="store_true", help="print the truth row as JSON")
    parser.set_defaults(handler=run_measure)


def run_measure(args: argparse.Namespace) -> int:
    from vramfit.truth.trace import require_torch

    require_torch()
    from vramfit.truth.measure import default_output, measure, record

    model = model_from_args(args)
    settings = settings_from_args(args, model)
    result = measure(model, settings)
    path = args.out or default_output(result.env)
    row = record(result, path, model_id=args.model or model.name, measure=args.score, group=args.group)
    if args.json:
        print(json.dumps(row.to_dict(), indent=2))
    else:
        figures = ", ".join(f"{k} {format_bytes(v)}" for k, v in row.truth.items()) or "out of memory"
        print(f"{row.id}: {figures} on {result.env.get('gpu')} -> {path}")
    return 0


def _register_trace(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "trace", help="run the real step on fake tensors (no memory, no GPU) and report its peak by category")
    add_model_arguments(parser)
    add_settings_arguments(parser)
    parser.add_argument("--json", action="store_true",
                        help='print {"peak": {"allocated": bytes}, "breakdown": {...}, "settings": {...}}')
    parser.add_argument("--record", metavar="FILE.jsonl", help="also append the result as a truth row to FILE")
    parser.set_defaults(handler=run_trace)


def run_trace(args: argparse.Namespace) -> int:
    from vramfit.truth.trace import require_torch

    require_torch()
    from vramfit.truth.trace import trace, trace_row

    model = model_from_args(args)
    settings = settings_from_args(args, model)
    result = trace(model, settings)
    if args.record:
        from vramfit.truth.rows import append_row

        append_row(args.record, trace_row(result, model_id=args.model or model.name))
    print(json.dumps(result.to_dict(), indent=2) if args.json else render_trace(result.to_dict()))
    return 0


def render_trace(data: dict[str, Any]) -> str:
    lines = [(f"{data['model']}: traced peak {format_bytes(data['peak']['allocated'])} allocated "
              f"({data['seconds']} s on fake tensors)")]
    lines += [f"  {name:<16} {format_bytes(size):>14}" for name, size in sorted(data["breakdown"].items())]
    lines += [f"  rank {i}: {format_bytes(size)}" for i, size in enumerate(data.get("ranks", []))]
    lines += [f"note: {note}" for note in data["notes"]]
    return "\n".join(lines)


def _register_validate(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "validate", help="estimate every row of traced, measured or published truth and report the errors")
    parser.add_argument("files", nargs="*", metavar="DATA.jsonl",
                        help="truth rows (default: every .jsonl under ./data/truth)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON (errors as fractions)")
    parser.add_argument("--thresholds", metavar="FILE",
                        help="JSON limits: median_abs_error, p90_abs_error, max_abs_error, oom_missed, unmapped, "
                             "flat or per kind under traced / measured / published; exit 1 when one is exceeded")
    parser.add_argument("--max-median", type=float, help="fail when the median |error| exceeds this fraction")
    parser.add_argument("--max-p90", type=float, help="fail when the p90 |error| exceeds this fraction")
    parser.add_argument("--max-error", type=float, help="fail when any |error| exceeds this fraction")
    parser.add_argument("--plot", metavar="PNG", help="also save predicted vs truth as a scatter plot (matplotlib)")
    parser.add_argument("--results", metavar="FILE.jsonl",
                        help="append each row's outcome here as it finishes; a rerun reads finished rows back "
                             "instead of scoring them again (resume after an interruption)")
    parser.add_argument("--convert-published", metavar="SRC",
                        help="convert published measurements into truth rows (written to --output) and stop")
    parser.add_argument("--output", default=str(DEFAULT_TRUTH_DIR / "published.jsonl"),
                        help="where --convert-published writes (default: data/truth/published.jsonl)")
    parser.set_defaults(handler=run_validate)


def run_validate(args: argparse.Namespace) -> int:
    if args.convert_published:
        from vramfit.truth.published import main as convert

        return convert([args.convert_published, args.output])
    from vramfit.truth.validate import check_thresholds, summary, validate_files

    results = Path(args.results) if args.results else None
    report = check_thresholds(validate_files(_truth_files(args.files), results=results), _limits(args))
    data = summary(report)
    print(json.dumps(data, indent=2) if args.json else render(data))
    if args.plot:
        from vramfit.truth.plot import scatter

        scatter(report, args.plot)
    return 1 if report.failures else 0


def _truth_files(files: list[str]) -> list[Path]:
    if files:
        return [Path(f) for f in files]
    found = sorted(DEFAULT_TRUTH_DIR.rglob("*.jsonl"))
    if not found:
        raise InvalidSetting("DATA.jsonl: none given and none under ./data/truth; pass truth files")
    return found


def _limits(args: argparse.Namespace) -> dict[str, Any]:
    limits: dict[str, Any] = {}
    if args.thresholds:
        try:
            limits = json.loads(Path(args.thresholds).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise InvalidSetting(f"--thresholds: cannot read {args.thresholds} ({error})") from None
    flags = {"median_abs_error": args.max_median, "p90_abs_error": args.max_p90, "max_abs_error": args.max_error}
    limits.update({k: v for k, v in flags.items() if v is not None})
    return limits


def render(data: dict[str, Any]) -> str:
    """Per row, per group, unmapped rows and threshold failures, as a plain-text report."""
    lines = [f"{'id':<58} {'measure':<9} {'predicted':>12} {'truth':>12} {'error':>8}"]
    for row in data["per_row"]:
        truth = format_bytes(row["truth"], "GiB") if row["truth"] is not None else "OOM"
        error = f"{row['error']:+.1%}" if row["error"] is not None else (
            "caught" if row["oom_caught"] else "MISSED")
        lines.append(f"{row['id'][:58]:<58} {row['measure']:<9} {format_bytes(row['predicted'], 'GiB'):>12} "
                     f"{truth:>12} {error:>8}")
    lines += ["", f"{'group':<36} {'rows':>5} {'median':>8} {'p90':>8} {'max':>8} {'mean':>8}"]
    for name, stats in {**data["by_group"], "ALL": data}.items():
        lines.append(f"{name[:36]:<36} {stats['rows']:>5} {stats['median_abs_error']:>8.1%} "
                     f"{stats['p90_abs_error']:>8.1%} {stats['max_abs_error']:>8.1%} {stats['mean_error']:>+8.1%}")
    lines.append(f"OOM rows: {data['oom']['rows']}, missed: {', '.join(data['oom']['missed']) or 'none'}")
    lines += [f"unmapped {u['id']}: {u['reason']}" for u in data["unmapped"]]
    lines += [f"FAILED {failure}" for failure in data["failures"]]
    return "\n".join(lines)
