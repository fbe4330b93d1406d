"""A knob: a config key with its type, its allowed values (in words and as a check) and its help.

The specs below build the (types, rule, check) of the common kinds, so a table row reads as one
line: ``knob("optim.lr", number(above=0), "peak learning rate")``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

NULL = type(None)
Spec = tuple[tuple[type, ...], str, Callable[[Any], bool] | None]


@dataclass(frozen=True)
class Knob:
    # Dotted. A segment naming a class (``callbacks.JumpWatch.min_history``,
    # ``data.TextMixer.seq_len``) or a source kind (``data.TextMixer.source.world.n_domains``)
    # scopes the knob to the config nodes built from that class or of that kind.
    key: str
    types: tuple[type, ...]
    rule: str  # the allowed values, in words (also the error message)
    ok: Callable[[Any], bool] | None
    help: str


def knob(key: str, spec: Spec, help_: str) -> Knob:
    return Knob(key, *spec, help_)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _or_null(spec: Spec, null: bool) -> Spec:
    if not null:
        return spec
    types, rule, ok = spec
    return (*types, NULL), f"{rule}, or null", None if ok is None else (lambda v: v is None or ok(v))


def integer(lo: int | None = None, hi: int | None = None, null: bool = False) -> Spec:
    if lo is None and hi is None:
        return _or_null(((int,), "an integer", None), null)
    rule = f"an integer in [{lo}, {hi}]" if hi is not None else f"an integer >= {lo}"
    low, high = -math.inf if lo is None else lo, math.inf if hi is None else hi
    return _or_null(((int,), rule, lambda v: _num(v) and low <= v <= high), null)


def number(lo: float | None = None, hi: float | None = None, above: float | None = None,
           null: bool = False) -> Spec:
    if above is not None:
        rule, ok = f"a finite number > {above}", lambda v: _num(v) and v > above
    elif lo is not None and hi is not None:
        rule, ok = f"a number in [{lo}, {hi}]", lambda v: _num(v) and lo <= v <= hi
    elif lo is not None:
        rule, ok = f"a finite number >= {lo}", lambda v: _num(v) and v >= lo
    else:
        rule, ok = "a finite number", _num
    return _or_null(((float, int), rule, ok), null)


def flag() -> Spec:
    return (bool,), "true or false", None


def choice(*values: str, null: bool = False) -> Spec:
    rule = " or ".join(repr(v) for v in values)
    return _or_null(((str,), rule, lambda v: v in values), null)


def text(rule: str = "a string", null: bool = False) -> Spec:
    return _or_null(((str,), rule, None), null)


def listed(rule: str, null: bool = False, check: Callable[[Any], bool] | None = None) -> Spec:
    return _or_null(((list,), rule, check), null)


def any_of(types: tuple[type, ...], rule: str) -> Spec:
    return types, rule, None


def documented(spec: Spec) -> Spec:
    """The type is checked here; the range is the component's to check (its message names the
    key and the values it depends on, e.g. a fragment length against ``seq_len``)."""
    types, rule, _ = spec
    return types, rule, None
