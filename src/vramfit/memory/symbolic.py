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
- a comparison (`<`, `<=`, `>`, `>=`; the sliding-window mask's `seq < window`) becomes a guard: the functions
  are traced once for each outcome of each guard they meet, and the compiled function tests the guard, with
  the same integers, before taking that outcome's arithmetic (at most _MAX_GUARDS guards deep);
- anything else whose result would depend on the values of b and s, a truth test, `==`, a float, a string, a
  hash, raises NotTraceable, and the caller falls back to evaluating the functions directly.
The compiled function returns exactly what the direct evaluation returns; bench/check_same_results.py and
tests/test_symbolic.py compare the two.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

# An atom: ("m", i, j) is b^i s^j; ("f", inner, d) is floor(inner / d), inner a frozen Sym (its terms).
Atom = tuple[Any, ...]
Terms = tuple[tuple[Atom, int], ...]
_ONE: Atom = ("m", 0, 0)


class NotTraceable(Exception):
    """The traced code asked something that depends on the values of the symbols (a truth test, a float, ...)."""


class _NewGuard(Exception):
    """The trace met a comparison whose outcome it has not decided yet: compile_sizes traces both outcomes."""

    def __init__(self, guard: Terms) -> None:
        super().__init__("a new guard")
        self.guard = guard


# The outcomes decided for the trace running in this thread: guard (an expression that is >= 0 or not) -> outcome.
_TRACE = threading.local()


def _holds(expression: Sym) -> bool:
    """`expression >= 0`, as the trace running now has decided it (a constant is decided by its value)."""
    terms = expression.frozen()
    if all(atom == _ONE for atom, _ in terms):
        return sum(c for _, c in terms) >= 0
    decided: dict[Terms, bool] | None = getattr(_TRACE, "decided", None)
    if decided is None:
        raise NotTraceable("a comparison outside compile_sizes")
    if terms not in decided:
        raise _NewGuard(terms)
    return decided[terms]


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

    # Comparisons of integers as guards: x < y is y - x - 1 >= 0, x <= y is y - x >= 0, and so on.
    def __lt__(self, other: Any) -> bool:
        return _holds(Sym.of(other) - self - 1)

    def __le__(self, other: Any) -> bool:
        return _holds(Sym.of(other) - self)

    def __gt__(self, other: Any) -> bool:
        return _holds(self - Sym.of(other) - 1)

    def __ge__(self, other: Any) -> bool:
        return _holds(self - Sym.of(other))

    def _refuse(self, *_: Any) -> Any:
        raise NotTraceable("the traced code depends on the value of b or s")

    __bool__ = __eq__ = __ne__ = _refuse
    __int__ = __index__ = __float__ = __format__ = __truediv__ = __rtruediv__ = _refuse
    __mod__ = __rmod__ = __pow__ = __rfloordiv__ = __round__ = __abs__ = _refuse
    __hash__ = None   # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Sym{_expression(self.frozen(), {}, [])}"


BATCH, SEQ = Sym({("m", 1, 0): 1}), Sym({("m", 0, 1): 1})


_MAX_GUARDS = 4   # guards along one path: beyond it, the functions are evaluated directly


class Compiled:
    """sizes(b, s) -> the traced function's values by name: numbers from the generated arithmetic, texts (a
    formula string cannot depend on b or s: formatting a symbol raises) as traced; `source` for reading.
    (A plain class: this module is imported at a training stage's first compile, which pays for its classes.)"""

    __slots__ = ("evaluate", "source")

    def __init__(self, evaluate: Callable[[int, int], dict[Any, Any]], source: str) -> None:
        self.evaluate = evaluate
        self.source = source

    def __call__(self, batch: int, seq: int) -> dict[Any, Any]:
        return self.evaluate(batch, seq)


# A traced outcome: the values by name (a leaf), or (guard, outcome if it holds, outcome if not).
Outcome = Any


def compile_sizes(trace: Callable[[Any, Any], Mapping[Any, Any]]) -> Compiled | None:
    """`trace(b, s)` run on the symbols b and s, once per outcome of the guards it meets, compiled; None when it
    cannot be traced (NotTraceable, too many guards, a TypeError from an operation the symbols do not define,
    or any other error on the symbols), so the caller evaluates directly: tracing never fails an estimate
    that the direct evaluation answers. (tests/test_symbolic.py checks that the catalog's stages do compile.)"""
    try:
        outcome = _explore(trace, {})
    except Exception:   # noqa: BLE001 - any failure on the symbols falls back to the direct evaluation
        return None
    lines: list[str] = []
    _emit(outcome, lines, "    ", [0])
    source = "def sizes(b, s):\n" + "".join(f"{line}\n" for line in lines)
    namespace: dict[str, Any] = {}
    exec(compile(source, "<vramfit.memory.symbolic>", "exec"), namespace)   # noqa: S102 - our own generated arithmetic
    return Compiled(evaluate=namespace["sizes"], source=source)


def _explore(trace: Callable[[Any, Any], Mapping[Any, Any]], decided: dict[Terms, bool]) -> Outcome:
    """The trace under the outcomes `decided`; at a new guard, both of its outcomes."""
    _TRACE.decided = decided
    try:
        traced = dict(trace(BATCH, SEQ))
    except _NewGuard as new:
        if len(decided) >= _MAX_GUARDS:
            raise NotTraceable("too many guards") from None
        guard = new.guard
        return guard, _explore(trace, {**decided, guard: True}), _explore(trace, {**decided, guard: False})
    finally:
        _TRACE.decided = None
    return {name: value if isinstance(value, str) else Sym.of(value) for name, value in traced.items()}


def _emit(outcome: Outcome, lines: list[str], indent: str, counter: list[int]) -> None:
    """Python source for `outcome` at `indent`: a leaf returns its values as a dict; a guard tests itself."""
    if isinstance(outcome, dict):
        floors: dict[Atom, str] = {}
        body: list[str] = []
        items = [f"{name!r}: {value!r}" if isinstance(value, str) else
                 f"{name!r}: {_expression(value.frozen(), floors, body, counter)}" for name, value in outcome.items()]
        lines += [indent + line for line in body] + [indent + "return {" + ", ".join(items) + "}"]
        return
    guard, holds, fails = outcome
    floors, body = {}, []
    test = _expression(guard, floors, body, counter)
    lines += [indent + line for line in body] + [f"{indent}if {test} >= 0:"]
    _emit(holds, lines, indent + "    ", counter)
    lines.append(f"{indent}else:")
    _emit(fails, lines, indent + "    ", counter)


def _expression(terms: Terms, floors: dict[Atom, str], lines: list[str], counter: list[int] | None = None) -> str:
    """Python source for sum(coefficient x atom); each distinct floor atom becomes one local (f0, f1, ...,
    numbered by `counter` across the function), defined in `lines` before its first use."""
    counter = [0] if counter is None else counter
    parts = []
    for atom, c in terms:
        if atom[0] == "m":
            factors = ["b"] * atom[1] + ["s"] * atom[2]
            parts.append("*".join([str(c), *factors]) if factors else str(c))
        else:
            if atom not in floors:
                inner = _expression(atom[1], floors, lines, counter)
                floors[atom] = f"f{counter[0]}"
                counter[0] += 1
                lines.append(f"{floors[atom]} = ({inner}) // {atom[2]}")
            parts.append(f"{c}*{floors[atom]}")
    return "(" + " + ".join(parts) + ")" if parts else "0"
