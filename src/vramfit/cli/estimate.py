"""`vramfit estimate MODEL [flags]`: the per-GPU memory of one workload, component by component.

Output: a table (default), `--json` (bytes), `--csv` or `--markdown`; `--explain` adds each component's formula
with its numbers substituted, its source and the seeds' textbook formula beside it. `--plot FILE.png|svg`
draws the stacked bar; `--plot-sweep batch|context FILE` draws memory against batch size or context length.
"""

from __future__ import annotations

import argparse
import itertools
import re
import sys
from typing import TYPE_CHECKING

from vramfit.cli.common import (
    add_model_arguments,
    add_settings_arguments,
    model_from_args,
    settings_from_args,
)
from vramfit.errors import InvalidSetting
from vramfit.estimate import estimate, sweep
from vramfit.report import Format, render_estimate, render_rows, size, with_textbook
from vramfit.settings import Settings

if TYPE_CHECKING:
    from vramfit.model.loaded import Model


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("estimate", help="per-GPU memory of one workload, component by component")
    add_model_arguments(parser)
    add_settings_arguments(parser)
    add_output_arguments(parser)
    plots = parser.add_argument_group("plots (need the extra: pip install 'vramfit[plot]')")
    plots.add_argument("--plot", metavar="FILE", help="write a stacked bar of the components to FILE.png or "
                                                      "FILE.svg (default: no plot)")
    plots.add_argument("--plot-sweep", nargs=2, metavar=("AXIS", "FILE"),
                       help="write memory against AXIS (batch: 1..256 sequences, or context: 512..131072 "
                            "tokens, powers of two) to FILE.png|svg, with the GPU's capacity as a line "
                            "(default: no plot)")
    parser.add_argument("--sweep", action="append", metavar="FIELD=V1,V2,...",
                        help="estimate at every combination of these values instead of once, and print a row "
                             "per point with its peaks (and, with --gpu, whether it fits); repeat for a grid: "
                             "--sweep batch_size=1,4,16 --sweep seq_len=2048,8192 (FIELD: any setting, as the "
                             "Python API names it; default: one estimate)")
    parser.set_defaults(handler=run)


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """--json/--csv/--markdown, --explain and --units: shared by commands that print sizes."""
    out = parser.add_argument_group("output")
    formats = out.add_mutually_exclusive_group()
    formats.add_argument("--json", dest="format", action="store_const", const="json",
                         help="print JSON; sizes in bytes (default: a table)")
    formats.add_argument("--csv", dest="format", action="store_const", const="csv",
                         help="print CSV: component, level, size in --units, bytes (default: a table)")
    formats.add_argument("--markdown", dest="format", action="store_const", const="markdown",
                         help="print a Markdown table, sizes in --units (default: a table)")
    out.add_argument("--explain", action="store_true",
                     help="show each component's formula with its numbers, its source, and the textbook "
                          "formula beside it (default: off)")
    out.add_argument("--units", choices=("GiB", "GB"), default="GiB",
                     help="size units: GiB (1024^3 bytes, what PyTorch and nvidia-smi report; default) or "
                          "GB (10^9 bytes, what vendors sell)")
    parser.set_defaults(format="table")


def run(args: argparse.Namespace) -> int:
    _check_plot_arguments(args)
    axes = _sweep_axes(args)
    model = model_from_args(args)
    settings = settings_from_args(args, model)
    if axes:
        return _run_sweep(model, settings, axes, args)
    result = estimate(model, settings)
    fmt: Format = args.format
    shown = with_textbook(result, model) if args.explain else result
    print(render_estimate(shown, fmt, args.units, args.explain))
    if args.plot or args.plot_sweep:
        from vramfit import plot

        capacity = capacity_bytes(settings)
        if args.plot:
            _wrote(plot.plot_breakdown(result, args.plot, units=args.units, capacity_bytes=capacity))
        if args.plot_sweep:
            axis, path = args.plot_sweep
            points = plot.sweep(model, settings, axis, plot.default_values(axis, settings))
            _wrote(plot.plot_sweep(points, axis, path, units=args.units, capacity_bytes=capacity,
                                   title=result.model))
    return 0


def _check_plot_arguments(args: argparse.Namespace) -> None:
    """Refuse a bad axis or file suffix before any work, not after the table is printed."""
    paths = [args.plot] if args.plot else []
    if args.plot_sweep:
        axis, path = args.plot_sweep
        if axis not in ("batch", "context"):
            raise InvalidSetting(f"--plot-sweep: unknown axis {axis!r}; choose batch or context")
        paths.append(path)
    for path in paths:
        if not path.lower().endswith((".png", ".svg")):
            raise InvalidSetting(f"--plot: {path!r} must end in .png or .svg, which picks the image format")


def _wrote(path: object) -> None:
    print(f"wrote {path}", file=sys.stderr)


def capacity_bytes(settings: Settings) -> int | None:
    """The GPU's usable memory: --gpu-memory, else the --gpu catalog entry's, else unknown (no line drawn)."""
    from vramfit import gpus

    return gpus.capacity_bytes(settings.gpu, settings.gpu_memory)


def _sweep_axes(args: argparse.Namespace) -> dict[str, list[int | str]]:
    """--sweep FIELD=V1,V2,... (repeated) as vramfit.sweep's axes: whole numbers become ints, other values stay
    text (attention=eager,sdpa); Settings checks each value's type and range and names the field."""
    if not args.sweep:
        return {}
    if args.explain or args.plot or args.plot_sweep:
        raise InvalidSetting("--sweep: prints one row per point, so it takes no --explain, --plot or --plot-sweep; "
                             "drop them, or drop --sweep to see one estimate in full")
    axes: dict[str, list[int | str]] = {}
    for text in args.sweep:
        name, sep, values = text.partition("=")
        name = name.strip().replace("-", "_")
        items = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not name or not items:
            raise InvalidSetting(f"--sweep: cannot read {text!r}; write FIELD=V1,V2,..., e.g. batch_size=1,4,16")
        if name in axes:
            raise InvalidSetting(f"--sweep: {name} is given twice; put all its values in one --sweep {name}=...")
        axes[name] = [int(v) if re.fullmatch(r"[+-]?\d+", v) else v for v in items]
    return axes


def _run_sweep(model: Model, settings: Settings, axes: dict[str, list[int | str]], args: argparse.Namespace) -> int:
    """One row per point: the axes' values, the three peaks, and with a GPU named whether it fits (the device
    peak against its usable bytes, as `vramfit check` decides it)."""
    results = sweep(model, settings, **axes)
    as_bytes = args.format == "json"
    headers = [*axes, *(level if as_bytes else f"{level} ({args.units})" for level in _LEVELS)]
    rows = []
    for point, result in zip(itertools.product(*axes.values()), results):   # vramfit.sweep's order
        peaks = [getattr(result.peak, level) for level in _LEVELS]
        rows.append([*point, *(peaks if as_bytes else (f"{size(n, args.units):.2f}" for n in peaks))])
    capacities = [capacity_bytes(result.settings) for result in results]   # --sweep gpu=... changes it
    known = [capacity for capacity in capacities if capacity is not None]
    if results and len(known) == len(results):
        from vramfit.search import Check

        headers.append("fits")
        for row, result, capacity in zip(rows, results, known):
            fits = Check(estimate=result, capacity_bytes=capacity).fits
            row.append(fits if as_bytes else ("yes" if fits else "no"))
    print(render_rows(headers, rows, args.format))
    return 0


_LEVELS = ("allocated", "reserved", "device")
