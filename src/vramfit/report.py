"""Renderers shared by every subcommand: a result (or any rows) as a table, JSON, CSV or Markdown, and
`--explain`, which prints each component's formula with its numbers substituted beside the seeds' textbook one.

Sizes are bytes until they reach this module; here they become GiB (1024^3, the default, what PyTorch and
nvidia-smi report) or GB (10^9, what vendors sell) and the label always says which.

Other commands call `render_rows(headers, rows, fmt)` for their own tables, so every command speaks the same
four formats.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from vramfit.result import Component, Estimate, MemoryBreakdown
from vramfit.units import format_bytes, format_count

if TYPE_CHECKING:
    from vramfit.model.loaded import Model

Format = Literal["table", "json", "csv", "markdown"]
FORMATS: tuple[Format, ...] = ("table", "json", "csv", "markdown")
UNITS = ("GiB", "GB")
_DIVISORS = {"GiB": 1024**3, "GB": 10**9, "MiB": 1024**2, "MB": 10**6}


def size(n_bytes: int, units: str = "GiB") -> float:
    """Bytes as a number of `units` (rounded to 4 places, for CSV/Markdown/plots, where the header is the label)."""
    return round(n_bytes / _DIVISORS[units], 4)


# ---------------------------------------------------------------------------------------------- generic rows

def render_rows(headers: Sequence[str], rows: Sequence[Sequence[Any]], fmt: Format = "table") -> str:
    """Rows in any of the four formats; cells are printed with str() (format sizes before passing them)."""
    if fmt == "json":
        return json.dumps([dict(zip(headers, row)) for row in rows], indent=2)
    if fmt == "csv":
        return _csv(headers, rows)
    if fmt == "markdown":
        return _markdown(headers, rows)
    return _table(headers, rows)


def _cells(rows: Sequence[Sequence[Any]]) -> list[list[str]]:
    return [["" if cell is None else str(cell) for cell in row] for row in rows]


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Plain aligned columns: text left, numbers (and sizes) right."""
    cells = _cells(rows)
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    right = [bool(cells) and all(_numeric(r[i]) for r in cells if r[i]) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(list(headers)), rule] + [line(r) for r in cells])


_NUMERIC = re.compile(r"^-?[0-9][0-9,]*(\.[0-9]+)?( ?[A-Za-z%]+)?$")


def _numeric(text: str) -> bool:
    return bool(_NUMERIC.match(text))


def _csv(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows(rows)
    return buffer.getvalue().rstrip("\n")


def _markdown(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    cells = _cells(rows)
    align = ["---:" if cells and all(_numeric(r[i]) for r in cells if r[i]) else "---" for i in range(len(headers))]
    return "\n".join([line(list(headers)), "| " + " | ".join(align) + " |"] + [line(r) for r in cells])


# ---------------------------------------------------------------------------------------------- one estimate

def component_rows(result: Estimate, units: str = "GiB") -> list[list[Any]]:
    """component, level, size in `units`, bytes: one row per component, then the total."""
    rows: list[list[Any]] = [[c.name, c.level, f"{size(c.bytes, units):.2f}", c.bytes]
                             for c in result.memory.components]
    rows.append(["total", "", f"{size(result.memory.total, units):.2f}", result.memory.total])
    return rows


def render_estimate(result: Estimate, fmt: Format = "table", units: str = "GiB", explain: bool = False) -> str:
    """One estimate in the chosen format. JSON is always bytes; the other formats label their units."""
    _check_units(units)
    if fmt == "json":
        return json.dumps(estimate_json(result, explain=explain), indent=2)
    if fmt == "csv":
        return render_rows(["component", "level", f"size ({units})", "bytes"], component_rows(result, units), fmt)
    if fmt == "markdown":
        return render_markdown(result, units, explain)
    return render_table(result, units, explain)


def render_markdown(result: Estimate, units: str = "GiB", explain: bool = False) -> str:
    """A Markdown table of the components, then the peaks and notes, then (with explain) each derivation."""
    table = render_rows(["component", "level", f"size ({units})", "bytes"], component_rows(result, units),
                        "markdown")
    parts = [f"**{headline(result)}**", "", table, "", peak_line(result, units)]
    parts += [f"- note: {note}" for note in result.notes]
    if explain:
        parts += ["", explain_text(result)]
    return "\n".join(parts)


def estimate_json(result: Estimate, explain: bool = False) -> dict[str, Any]:
    """`Estimate.to_dict()`, plus each component's derivation when `explain` is asked for, and with a GPU named
    (--gpu or --gpu-memory) its usable bytes and whether the device peak fits them (vramfit.search.Check)."""
    out = result.to_dict()
    out.update(_fit_json(result))
    if explain:
        out["components"] = [_component_json(c) for c in result.memory.components]
    return out


def _fit_json(result: Estimate) -> dict[str, Any]:
    from vramfit.gpus import capacity_bytes

    capacity = capacity_bytes(result.settings.gpu, result.settings.gpu_memory)
    if capacity is None:
        return {}
    from vramfit.search import Check  # only with a GPU named: `vramfit estimate --json` never needs it

    return {"gpu_memory_bytes": capacity, "fits": Check(estimate=result, capacity_bytes=capacity).fits}


def _component_json(c: Component) -> dict[str, Any]:
    return {"name": c.name, "bytes": c.bytes, "level": c.level, "formula": c.formula,
            "substituted": substitute(c.formula, c.inputs), "inputs": _jsonable(c.inputs),
            "source": c.source, "textbook": c.textbook}


def _jsonable(inputs: dict[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v) for k, v in inputs.items()}


def headline(result: Estimate) -> str:
    p = result.parameters
    return (f"{result.model}: {format_count(p.total)} parameters ({p.total:,}), trainable {p.trainable:,}, "
            f"active per token {p.active:,}")


def render_table(result: Estimate, units: str = "GiB", explain: bool = False) -> str:
    """The human table: one line per component (size with its unit label, counter level), total, peaks, notes."""
    components = result.memory.components
    width = max([len(c.name) for c in components] + [len("total")])
    lines = [headline(result), ""]
    for c in components:
        lines.append(f"  {c.name:<{width}}  {format_bytes(c.bytes, units):>14}  ({c.level})")
        if explain:
            lines.extend("      " + line for line in explain_component(c))
    lines.append(f"  {'total':<{width}}  {format_bytes(result.memory.total, units):>14}")
    lines += ["", peak_line(result, units)]
    lines += [f"note: {note}" for note in result.notes]
    return "\n".join(lines)


def peak_line(result: Estimate, units: str = "GiB") -> str:
    peak = result.peak
    return (f"peak: allocated {format_bytes(peak.allocated, units)} (torch max_memory_allocated), reserved "
            f"{format_bytes(peak.reserved, units)} (max_memory_reserved), device "
            f"{format_bytes(peak.device, units)} (nvidia-smi)")


def _check_units(units: str) -> None:
    if units not in _DIVISORS:
        from vramfit.errors import InvalidSetting

        raise InvalidSetting(f"units: unknown {units!r}; choose GiB (1024^3) or GB (10^9)")


# ---------------------------------------------------------------------------------------------- --explain

def substitute(formula: str, inputs: dict[str, Any]) -> str:
    """The formula with each input's name replaced by its value: '2 * L * B' with L=32, B=4 -> '2 * 32 * 4'.

    Names are matched as whole identifiers, longest first, so `kv_heads` is never half-replaced by `heads`.
    Only numbers are put in: a text input (format=bf16) stays beside the formula, since formulas written in
    words use such names as ordinary words."""
    numbers = {k: v for k, v in inputs.items() if k and isinstance(v, (int, float)) and not isinstance(v, bool)}
    if not formula or not numbers:
        return formula
    names = sorted(numbers, key=len, reverse=True)
    pattern = re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(re.escape(n) for n in names) + r")(?![A-Za-z0-9_])")
    return pattern.sub(lambda m: _value_text(numbers[m.group(1)]), formula)


def _value_text(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def explain_component(c: Component) -> list[str]:
    """Lines under one component: ours with numbers in, the inputs, the source, and the textbook's beside it."""
    out = []
    if c.formula:
        out.append(f"ours:     {c.formula}")
        filled = substitute(c.formula, c.inputs)
        out.append(f"          = {filled} = {c.bytes:,} bytes" if filled != c.formula else
                   f"          = {c.bytes:,} bytes")
    if c.inputs:
        out.append("with:     " + ", ".join(f"{k}={_value_text(v)}" for k, v in c.inputs.items()))
    if c.source:
        out.append(f"source:   {c.source}")
    if c.textbook:
        out.append(f"textbook: {c.textbook}")
    return out or ["(no derivation recorded)"]


def explain_text(result: Estimate) -> str:
    """Markdown section with every component's derivation (appended to `--markdown --explain`)."""
    parts = ["## How each number is derived", ""]
    for c in result.memory.components:
        parts.append(f"**{c.name}** ({c.bytes:,} bytes)")
        parts += [f"    {line}" for line in explain_component(c)]
        parts.append("")
    return "\n".join(parts).rstrip()


# ---------------------------------------------------------------------------------------------- the seeds' figures

def with_textbook(result: Estimate, model: Model) -> Estimate:
    """The estimate with the seeds' figure beside ours for each component the seeds give a formula for
    (weights, KV cache, activations, gradients, optimizer states): their formula with this model's numbers put
    in, its value, and its ratio to ours. Where the memory model left `Component.textbook` empty, the seed
    formula's own description (vramfit.textbook, which says where it comes from and what it leaves out) is used.
    """
    figures = _seed_figures(result, model)
    gpus = result.settings.parallelism.gpus
    # The seeds' formulas are for one GPU holding everything.
    after = f" The seeds count one GPU holding everything; ours is per GPU of {gpus}." if gpus > 1 else ""
    components = tuple(_with_figure(c, figures.get(c.name), after) for c in result.memory.components)
    return dataclasses.replace(result, memory=MemoryBreakdown(components=components))


def _with_figure(c: Component, figure: tuple[str, float, str] | None, after: str = "") -> Component:
    if figure is None:
        return c
    filled, value, description = figure
    ratio = f", {value / c.bytes:.2f}x ours" if c.bytes else ""
    said = (c.textbook or description).rstrip()
    text = f"{said}{'' if said.endswith('.') else '.'} Seed figure here: {filled} = {value:,.0f} bytes{ratio}.{after}"
    return dataclasses.replace(c, textbook=text)


def _seed_figures(result: Estimate, model: Model) -> dict[str, tuple[str, float, str]]:
    """name -> (seed formula with numbers, its bytes, its description) for the terms the seeds cover."""
    from vramfit import textbook

    settings, n = result.settings, result.parameters.total
    d = textbook.dims_of(model.architecture, settings.workload.batch_size, settings.workload.seq_len)
    out: dict[str, tuple[str, float, str]] = {}
    dtype = settings.precision.dtype
    if dtype in textbook.PRECISION_BYTES and settings.precision.quant is None:
        width = textbook.PRECISION_BYTES[dtype]
        out["weights"] = (f"{n:,} x {width:g}", textbook.weights_bytes(n, dtype), _doc(textbook.weights_bytes))
    kv = settings.precision.kv_dtype
    kv = settings.precision.compute_dtype if kv == "auto" else kv
    if kv in textbook.PRECISION_BYTES and settings.mode == "inference":
        width = textbook.PRECISION_BYTES[kv]
        filled = f"2 x {d.batch} x {d.seq:,} x {d.hidden:,} x {width:g} x {d.layers}"
        out["kv_cache"] = (filled, textbook.kv_cache_bytes(d, kv), _doc(textbook.kv_cache_bytes))
    if settings.mode == "training":
        out.update(_training_figures(result, d))
    return out


def _training_figures(result: Estimate, d: Any) -> dict[str, tuple[str, float, str]]:
    """Activations (Korthikanti's 34 + 5as/h), fp32 gradients and optimizer states, per the seeds."""
    from vramfit import textbook

    trainable = result.parameters.trainable
    filled = (f"{d.seq:,} x {d.batch} x {d.hidden:,} x (34 + 5 x {d.heads} x {d.seq:,} / {d.hidden:,})"
              f" x {d.layers}")
    out = {"activations": (filled, textbook.activations_bytes(d), _doc(textbook.activations_bytes)),
           "gradients": (f"4 x {trainable:,}", 4.0 * trainable,
                         "[S0]/[S4] fp32 gradients, 4 bytes per trainable parameter.")}
    state = textbook.OPTIMIZER_BYTES_PER_PARAMETER.get(result.settings.training.optimizer)
    if state is not None:
        out["optimizer_states"] = (f"{state} x {trainable:,}", float(state * trainable),
                                   f"[S2]/[S3] {state} bytes of optimizer state per trainable parameter.")
    return out


def _doc(function: Any) -> str:
    """A seed function's docstring as one line: its source, formula and what it leaves out."""
    return " ".join((function.__doc__ or "").split())
