"""`vramfit fit | max-batch | max-context | plan | what-to-change`: decisions on top of estimates.

Every command takes the workload flags of `estimate` (cli/common.py) and `--json`; sizes in JSON are bytes.
"""

from __future__ import annotations

import argparse
import importlib
import json
from typing import TYPE_CHECKING, Any

from vramfit.cli.common import (
    add_model_arguments,
    add_settings_arguments,
    model_from_args,
    settings_from_args,
)
from vramfit.errors import InvalidSetting
from vramfit.gpus import CATALOG, GPU, custom, lookup
from vramfit.model.loaded import Model
from vramfit.settings import Settings
from vramfit.units import format_bytes, parse_bytes

_Subparsers = argparse._SubParsersAction  # argparse exposes no public name for it


class _OnFirstUse:
    """A module imported at its first attribute access: every command's parser is built at each start, and
    importing vramfit.search would add about 15% to `vramfit estimate`'s start (bench/bench_cli.py)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(importlib.import_module(self._name), attribute)


if TYPE_CHECKING:
    from vramfit import search
else:
    search = _OnFirstUse("vramfit.search")


def register(subparsers: _Subparsers[argparse.ArgumentParser]) -> None:
    gpus = subparsers.add_parser("gpus", help="the GPU catalog: ids, memory as sold and as the driver reports it",
                                 description="the GPU catalog: ids, memory as sold and as the driver reports it")
    gpus.add_argument("--json", action="store_true", help="print JSON, sizes in bytes (default: a table)")
    gpus.set_defaults(handler=run_gpus)
    _fit_parser(subparsers)
    _largest_parser(subparsers, "max-batch", "largest batch (training: micro-batch) that fits the --gpu",
                    run_max_batch)
    _largest_parser(subparsers, "max-context", "longest sequence (prompt plus generated tokens) that fits",
                    run_max_context)
    _plan_parser(subparsers)
    parser = _common(subparsers, "what-to-change", "cheapest changes that make a workload fit the --gpu")
    parser.add_argument("--max-gpus", type=int, default=64, help="largest GPU count to suggest (default: 64)")
    parser.set_defaults(handler=run_what_to_change)


def _common(subparsers: _Subparsers[argparse.ArgumentParser], name: str, text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=text, description=text)
    add_model_arguments(parser)
    add_settings_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON, sizes in bytes (default: a table)")
    return parser


def _fit_parser(subparsers: _Subparsers[argparse.ArgumentParser]) -> None:
    parser = _common(subparsers, "fit", "which GPUs, singly or n of each, run this workload, with the headroom")
    parser.add_argument("--candidates", help="comma list of GPU names to try (default: the whole catalog; "
                                             "with --gpu or --gpu-memory, that GPU only)")
    parser.add_argument("--max-gpus", type=int, default=64, help="largest count of one GPU to try (default: 64)")
    parser.set_defaults(handler=run_fit)


def _largest_parser(subparsers: _Subparsers[argparse.ArgumentParser], name: str, text: str, handler: Any) -> None:
    parser = _common(subparsers, name, text)
    parser.add_argument("--limit", type=int, help="largest value to search (default: 1,048,576 sequences; "
                                                  "tokens: the model's max_position_embeddings)")
    parser.set_defaults(handler=handler)


def _plan_parser(subparsers: _Subparsers[argparse.ArgumentParser]) -> None:
    parser = _common(subparsers, "plan", "parallel layouts of --gpus GPUs that fit, ranked by step cost")
    parser.add_argument("--global-batch", type=int,
                        help="training: sequences per optimizer step (default: batch size x grad accum x gpus)")
    parser.add_argument("--top", type=int, default=5, help="layouts to show (default: 5)")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (default: 8)")
    parser.add_argument("--inter-node-bandwidth", default="50GB",
                        help="per GPU, per direction, between nodes, e.g. 50GB for a 400 Gb/s NIC (default: 50GB)")
    parser.set_defaults(handler=run_plan)


# ----------------------------------------------------------------------------------------------------------


def run_gpus(args: argparse.Namespace) -> int:
    rows = [{"id": g.id, "name": g.name, "vendor": g.vendor, "memory_bytes": g.memory_bytes,
             "usable_bytes": g.usable_bytes, "aliases": list(g.aliases), "source": g.source,
             "usable_source": g.usable_source} for g in CATALOG]
    width = max(len(g.id) for g in CATALOG)
    lines = [f"{'id':<{width}}  {'sold':>10}  {'usable':>10}  name"]
    lines += [f"{g.id:<{width}}  {_gib(g.memory_bytes):>10}  {_gib(g.usable_bytes):>10}  {g.name}" for g in CATALOG]
    lines.append("usable: what the driver reports (nvidia-smi memory.total, rocm-smi, Metal's working set); "
                 "--json lists each figure's source")
    print(json.dumps(rows, indent=2) if args.json else "\n".join(lines))
    return 0


def _inputs(args: argparse.Namespace) -> tuple[Model, Settings]:
    model = model_from_args(args)
    return model, settings_from_args(args, model)


def _print(args: argparse.Namespace, data: dict[str, Any], lines: list[str]) -> int:
    print(json.dumps(data, indent=2) if args.json else "\n".join(lines))
    return 0


def _gib(n: int) -> str:
    """GiB, or MiB under one GiB so that a boundary's last step stays visible."""
    return format_bytes(n, "GiB" if abs(n) >= 2**30 else "MiB")


def _limit(args: argparse.Namespace) -> int | None:
    if args.limit is not None and args.limit < 1:
        raise InvalidSetting(f"--limit: {args.limit} must be 1 or more, or left out")
    return int(args.limit) if args.limit else None


def run_max_batch(args: argparse.Namespace) -> int:
    _limit(args)
    model, settings = _inputs(args)
    found = search.max_batch(model, settings, **({"limit": args.limit} if args.limit else {}))
    return _print(args, {"max_batch_size": found.value, **_largest_json(found)}, _largest_lines(found, "batch"))


def run_max_context(args: argparse.Namespace) -> int:
    model, settings = _inputs(args)
    found = search.max_context(model, settings, limit=_limit(args))
    return _print(args, {"max_seq_len": found.value, **_largest_json(found)}, _largest_lines(found, "tokens"))


def _largest_json(found: search.Largest) -> dict[str, Any]:
    return {"limited_by": found.limited_by, "gpu_memory_bytes": found.capacity_bytes,
            "total_bytes": found.at_value.total_bytes if found.at_value else None,
            "total_bytes_one_more": found.above.total_bytes if found.above else None,
            "estimates": found.calls}


def _largest_lines(found: search.Largest, unit: str) -> list[str]:
    if found.at_value is None:
        return [f"nothing fits: even the smallest {found.name} needs more than {_gib(found.capacity_bytes)}"]
    lines = [(f"{found.name} {found.value:,} ({unit}) fits: {_gib(found.at_value.total_bytes)} of "
              f"{_gib(found.capacity_bytes)}, headroom {_gib(found.at_value.headroom_bytes)}")]
    if found.above is not None:
        lines.append(f"{found.name} {found.value + 1:,} does not: {_why_not(found.above)}")
    else:
        lines.append(f"limited by the {found.limited_by}, not by memory (raise it with --limit)")
    return lines


def _why_not(check: search.Check) -> str:
    pool = check.pool_tokens
    if check.pool_short and pool:
        return f"the runtime's KV-cache pool holds {pool[0]:,} tokens, the batch needs {pool[1]:,}"
    return f"{_gib(check.total_bytes)} of {_gib(check.capacity_bytes)}, over by {_gib(-check.headroom_bytes)}"


# ----------------------------------------------------------------------------------------------------------


def run_plan(args: argparse.Namespace) -> int:
    model, settings = _inputs(args)
    network = search.Network(gpus_per_node=args.gpus_per_node,
                             inter_node_bytes_per_s=parse_bytes(args.inter_node_bandwidth,
                                                                field="--inter-node-bandwidth"))
    result = search.plan(model, settings, settings.parallelism.gpus, global_batch=args.global_batch, top=args.top,
                         network=network)
    data = {"gpus": result.gpus, "gpu": result.gpu, "gpu_memory_bytes": result.capacity_bytes,
            "layouts": [_ranked_json(r) for r in result.layouts], "considered": result.considered,
            "estimates": result.estimated, "notes": list(result.notes)}
    return _print(args, data, _plan_lines(result))


def _ranked_json(ranked: search.Ranked) -> dict[str, Any]:
    return {"layout": ranked.layout.changes() | {"data": ranked.layout.data}, "description": ranked.layout.describe(),
            "total_bytes": ranked.check.total_bytes, "headroom_bytes": ranked.check.headroom_bytes,
            "relative_step_cost": ranked.cost.relative,
            "cost_parts": {k: v / ranked.cost.ideal_s for k, v in ranked.cost.parts_s.items() if v}}


def _plan_lines(result: search.PlanResult) -> list[str]:
    head = (f"{result.gpus} x {result.gpu} ({_gib(result.capacity_bytes)} each): {len(result.layouts)} best of "
            f"{result.considered} candidate layouts, {result.estimated} estimates")
    if not result.layouts:
        return [head, "no layout fits; try `vramfit what-to-change` or more GPUs"] + _notes(result.notes)
    lines = [head, ("ranked by score: step time relative to the ideal (all GPUs computing, nothing else), raised "
                    "when the headroom is under 5% of the GPU:")]
    for rank, ranked in enumerate(result.layouts, 1):
        text = ranked.explain()
        lines += [f"{rank}. {text[0]}", *text[1:]]
    return lines + _notes(result.notes)


def _notes(notes: tuple[str, ...]) -> list[str]:
    return [f"note: {note}" for note in notes]


# ----------------------------------------------------------------------------------------------------------


def run_fit(args: argparse.Namespace) -> int:
    model, settings = _inputs(args)
    if args.max_gpus < 1:
        raise InvalidSetting(f"--max-gpus: {args.max_gpus} must be 1 or more")
    results = search.fit(model, settings, gpus=_candidates(args, settings), max_gpus=args.max_gpus)
    data = {"model": model.name, "gpus": [_gpu_fit_json(r) for r in results]}
    return _print(args, data, _fit_lines(results, args.max_gpus))


def _candidates(args: argparse.Namespace, settings: Settings) -> list[GPU]:
    """--candidates, else the --gpu-memory capacity, else --gpu, else the whole catalog."""
    if args.candidates:
        return [lookup(name) for name in args.candidates.split(",") if name.strip()]
    if settings.gpu_memory is not None:
        return [custom(settings.gpu_memory)]
    return [lookup(settings.gpu)] if settings.gpu else list(CATALOG)


def _gpu_fit_json(result: search.GpuFit) -> dict[str, Any]:
    best = result.best
    return {"gpu": result.gpu.id, "gpu_memory_bytes": result.gpu.usable_bytes, "count": result.count,
            "layout": best.layout.describe() if best else None,
            "total_bytes": best.check.total_bytes if best else None,
            "headroom_bytes": best.check.headroom_bytes if best else None}


def _fit_lines(results: list[search.GpuFit], max_gpus: int) -> list[str]:
    width = max(len(r.gpu.id) for r in results)
    lines = []
    for r in sorted(results, key=lambda r: (r.count == 0, r.count, -r.gpu.usable_bytes)):
        if r.best is None:
            lines.append(f"{r.gpu.id:<{width}}  does not fit on {max_gpus} or fewer")
            continue
        lines.append(f"{r.gpu.id:<{width}}  {r.count:>4} x  headroom {_gib(r.best.check.headroom_bytes):>12} "
                     f"each  ({r.best.layout.describe()})")
    return lines


# ----------------------------------------------------------------------------------------------------------


def run_what_to_change(args: argparse.Namespace) -> int:
    model, settings = _inputs(args)
    now = search.check(model, settings)
    changes = search.what_to_change(model, settings, max_gpus=args.max_gpus) if not now.fits else []
    data = {"fits": now.fits, "total_bytes": now.total_bytes, "gpu_memory_bytes": now.capacity_bytes,
            "changes": [{"change": c.label, "settings": _plain(c.changes), "impact": c.impact, "why": c.why,
                         "total_bytes": c.check.total_bytes if c.check else None} for c in changes]}
    return _print(args, data, _change_lines(now, changes))


def _plain(changes: dict[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v) for k, v in changes.items()}


def _change_lines(now: search.Check, changes: list[search.Change]) -> list[str]:
    head = f"now: {_gib(now.total_bytes)} of {_gib(now.capacity_bytes)}"
    if now.fits:
        return [head + f": fits, headroom {_gib(now.headroom_bytes)}"]
    if not changes:
        return [head + ": does not fit, and no single change tried makes it fit"]
    lines = [head + ": does not fit. Cheapest changes that make it fit:"]
    for change in changes:
        total = _gib(change.check.total_bytes) if change.check else "?"
        lines.append(f"  - {change.label}: {total}  ({change.why})")
    return lines
