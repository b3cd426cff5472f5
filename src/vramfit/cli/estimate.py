"""`vramfit estimate MODEL [flags]`: the per-GPU memory of one workload, as a table or JSON."""

from __future__ import annotations

import argparse
import json

from vramfit.cli.common import add_model_arguments, add_settings_arguments, model_from_args, settings_from_args
from vramfit.estimate import estimate
from vramfit.result import Component, Estimate
from vramfit.units import format_bytes, format_count


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("estimate", help="per-GPU memory of one workload, component by component")
    add_model_arguments(parser)
    add_settings_arguments(parser)
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the result as JSON (bytes)")
    out.add_argument("--explain", action="store_true",
                     help="show each component's formula, the numbers in it and its source")
    out.add_argument("--units", choices=("GiB", "GB"), default="GiB",
                     help="size units in tables: GiB (1024^3, default) or GB (10^9)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    result = estimate(model_from_args(args), settings_from_args(args))
    print(json.dumps(result.to_dict(), indent=2) if args.json else render(result, args.units, args.explain))
    return 0


def render(result: Estimate, units: str = "GiB", explain: bool = False) -> str:
    p = result.parameters
    lines = [f"{result.model}: {format_count(p.total)} parameters ({p.total:,}), trainable {p.trainable:,}, "
             f"active per token {p.active:,}", ""]
    width = max(len(c.name) for c in result.memory.components) if result.memory.components else 10
    for c in result.memory.components:
        lines.append(f"  {c.name:<{width}}  {format_bytes(c.bytes, units):>14}  ({c.level})")
        if explain:
            lines.extend(_explanation(c))
    lines.append(f"  {'total':<{width}}  {format_bytes(result.memory.total, units):>14}")
    peak = result.peak
    lines += ["", f"peak: allocated {format_bytes(peak.allocated, units)}, reserved "
                  f"{format_bytes(peak.reserved, units)}, device {format_bytes(peak.device, units)}"]
    lines += [f"note: {note}" for note in result.notes]
    return "\n".join(lines)


def _explanation(component: Component) -> list[str]:
    out = []
    if component.formula:
        out.append(f"      formula: {component.formula}")
    if component.inputs:
        out.append("      with: " + ", ".join(f"{k}={v}" for k, v in component.inputs.items()))
    if component.source:
        out.append(f"      source: {component.source}")
    if component.textbook:
        out.append(f"      textbook: {component.textbook}")
    return out
