"""Byte formulas compiled once per model and workload-independent settings, exact for every batch and length.

A training estimate prices the same operators at every call: only the micro-batch b and the per-GPU sequence
length s change. Instead of re-deriving the operator list each time, `compile_sizes` runs the very same
per-operator functions (memory/activations.py, memory/lora.py, training's block terms) once with b and s as
symbols, and turns the integer expressions they build into one Python function of (b, s). A change to a
formula therefore changes the compiled form too: there is no second copy of any formula.

The symbols follow Python's integer arithmetic exactly:
- a value is a sum of integer coefficients times atoms; an atom is a monomial b^i s^j or floor(inner / d);
- `x // d` (d a positive int) stays a polynomial only when every coefficient is divisible by d, which makes the
  floor exact for every integer b and s; otherwise it becomes a floor atom that the compiled function
  evaluates with the same `//`. So the caching allocator's rounding (gradients.allocation_bytes,
  -(-n // 512) * 512) stays per tensor wherever it changes a value;
- anything whose result would depend on the values of b and s, a comparison, a truth test, a float, a
  string, a hash, raises NotTraceable, and the caller falls back to evaluating the functions directly (the
  sliding-window mask's `seq < window` is such a branch).
The compiled function returns exactly what the direct evaluation returns; bench/check_same_results.py and
tests/test_symbolic.py compare the two.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# An atom: ("m", i, j) is b^i s^j; ("f", inner, d) is floor(inner / d), inner a frozen Sym (its terms).
Atom = tuple[Any, ...]
Terms = tuple[tuple[Atom, int], ...]
_ONE: Atom = ("m", 0, 0)


class NotTraceable(Exception):
    """The traced code asked something that depends on the values of the symbols (a branch, a float, ...)."""


class Sym:
    """An integer expression in b and s: sum of coefficient x atom (see the module docstring)."""

    __slots__ = ("terms",)

    def __init__(self, terms: Mapping[Atom, int]) -> None:
        self.terms: dict[Atom, int] = {atom: c for atom, c in terms.items() if c}

    @staticmethod
    def of(value: Any) -> Sym:
        if isinstance(value, Sym):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return Sym({_ONE: value})
        raise NotTraceable(f"{type(value).__name__} in a traced size")

    def _scaled(self, k: int) -> Sym:
        return Sym({atom: c * k for atom, c in self.terms.items()})

    def __add__(self, other: Any) -> Sym:
        out = dict(self.terms)
        for atom, c in Sym.of(other).terms.items():
            out[atom] = out.get(atom, 0) + c
        return Sym(out)

    __radd__ = __add__

    def __neg__(self) -> Sym:
        return self._scaled(-1)

    def __sub__(self, other: Any) -> Sym:
        return self + -Sym.of(other)

    def __rsub__(self, other: Any) -> Sym:
        return Sym.of(other) + -self

    def __mul__(self, other: Any) -> Sym:
        if isinstance(other, int) and not isinstance(other, bool):
            return self._scaled(other)
        other = Sym.of(other)
        if not (self._polynomial() and other._polynomial()):
            raise NotTraceable("a product with a floor")
        out: dict[Atom, int] = {}
        for (_, i, j), c in self.terms.items():
            for (_, k, m), d in other.terms.items():
                atom = ("m", i + k, j + m)
                out[atom] = out.get(atom, 0) + c * d
        return Sym(out)

    __rmul__ = __mul__

    def __floordiv__(self, other: Any) -> Sym:
        if not isinstance(other, int) or isinstance(other, bool) or other < 1:
            raise NotTraceable("floor division by something other than a positive int")
        if all(c % other == 0 for c in self.terms.values()):   # exact for every integer b and s
            return Sym({atom: c // other for atom, c in self.terms.items()})
        return Sym({("f", self.frozen(), other): 1})

    def _polynomial(self) -> bool:
        return all(atom[0] == "m" for atom in self.terms)

    def frozen(self) -> Terms:
        return tuple(sorted(self.terms.items(), key=repr))

    def _refuse(self, *_: Any) -> Any:
        raise NotTraceable("the traced code depends on the value of b or s")

    __bool__ = __lt__ = __le__ = __gt__ = __ge__ = __eq__ = __ne__ = _refuse
    __int__ = __index__ = __float__ = __format__ = __truediv__ = __rtruediv__ = _refuse
    __mod__ = __rmod__ = __pow__ = __rfloordiv__ = __round__ = __abs__ = _refuse
    __hash__ = None   # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Sym({_expression(self.frozen(), {}, [])})"


BATCH, SEQ = Sym({("m", 1, 0): 1}), Sym({("m", 0, 1): 1})


@dataclass(frozen=True, slots=True)
class Compiled:
    """sizes(b, s) -> the traced function's values by name: its numbers from the generated function, its texts
    (a formula string cannot depend on b or s: formatting a symbol raises) as traced; `source` for reading."""

    names: tuple[Any, ...]
    evaluate: Callable[[int, int], tuple[int, ...]]
    texts: dict[Any, str]
    source: str

    def __call__(self, batch: int, seq: int) -> dict[Any, Any]:
        out: dict[Any, Any] = dict(zip(self.names, self.evaluate(batch, seq)))
        out.update(self.texts)
        return out


def compile_sizes(trace: Callable[[Any, Any], Mapping[Any, Any]]) -> Compiled | None:
    """`trace(b, s)` run once on the symbols b and s, compiled; None when it cannot be traced (NotTraceable,
    or a TypeError from an operation the symbols do not define), so the caller evaluates directly."""
    try:
        traced = trace(BATCH, SEQ)
        sizes = {name: Sym.of(value) for name, value in traced.items() if not isinstance(value, str)}
    except (NotTraceable, TypeError):
        return None
    floors: dict[Atom, str] = {}
    lines: list[str] = []
    outputs = [_expression(value.frozen(), floors, lines) for value in sizes.values()]
    source = "def sizes(b, s):\n" + "".join(f"    {line}\n" for line in lines) + \
        "    return (" + "".join(f"{out}, " for out in outputs) + ")\n"
    namespace: dict[str, Any] = {}
    exec(compile(source, "<vramfit.memory.symbolic>", "exec"), namespace)   # noqa: S102 - our own generated arithmetic
    return Compiled(names=tuple(sizes), evaluate=namespace["sizes"], source=source,
                    texts={name: value for name, value in traced.items() if isinstance(value, str)})


def _expression(terms: Terms, floors: dict[Atom, str], lines: list[str]) -> str:
    """Python source for sum(coefficient x atom); each distinct floor atom becomes one local (f0, f1, ...),
    defined in `lines` before its first use."""
    parts = []
    for atom, c in terms:
        if atom[0] == "m":
            factors = ["b"] * atom[1] + ["s"] * atom[2]
            parts.append("*".join([str(c), *factors]) if factors else str(c))
        else:
            if atom not in floors:
                inner = _expression(atom[1], floors, lines)
                floors[atom] = f"f{len(floors)}"
                lines.append(f"{floors[atom]} = ({inner}) // {atom[2]}")
            parts.append(f"{c}*{floors[atom]}")
    return " + ".join(parts) if parts else "0"
