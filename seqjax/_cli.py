"""Argument types for seqjax's command-line parsers.

Each function here is an ``argparse`` ``type=``: it turns the option's text into a
value or raises :class:`argparse.ArgumentTypeError` with a one-line message that
states the rule and repeats what was given. argparse prefixes the option's name and
exits with status 2, so a bad value ends as::

    seqjax bench: error: argument --batch: expected positive integers (>= 1), got '-1'

and never as a traceback from deep inside JAX.

Usage::

    from seqjax import _cli
    p.add_argument("--batch", type=_cli.positive_ints)
    p.add_argument("--lr", type=_cli.positive_float)
    p.add_argument("--cells", type=_cli.names(CELLS))
"""

from __future__ import annotations

import argparse
import math
from typing import Callable, Iterable, Optional

__all__ = [
    "ArgumentParser",
    "int_at_least",
    "ints_at_least",
    "positive_int",
    "nonnegative_int",
    "positive_ints",
    "positive_float",
    "nonnegative_float",
    "float_in",
    "floats_in",
    "unit_interval",
    "probability",
    "names",
    "choice_list",
]

_Error = argparse.ArgumentTypeError


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line on stderr, exit 2.

    (The full usage is one ``--help`` away; a wall of usage text above the one line
    that matters hides it.)
    """

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int(text: str, rule: str) -> int:
    try:
        return int(text.strip())
    except (ValueError, AttributeError):
        raise _Error(f"expected {rule}, got {text!r}") from None


def _float(text: str, rule: str) -> float:
    try:
        value = float(text.strip())
    except (ValueError, AttributeError):
        raise _Error(f"expected {rule}, got {text!r}") from None
    if not math.isfinite(value):
        raise _Error(f"expected {rule}, got {text!r}")
    return value


def _split(text: str, rule: str) -> list:
    parts = [p.strip() for p in text.split(",")]
    if not any(parts) or any(not p for p in parts):
        raise _Error(f"expected {rule}, got {text!r}")
    return parts


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An integer ``>= minimum``."""
    rule = f"an integer >= {minimum}"

    def parse(text: str) -> int:
        value = _int(text, rule)
        if value < minimum:
            raise _Error(f"expected {rule}, got {text!r}")
        return value

    parse.__name__ = f"int_at_least_{minimum}"
    return parse


def ints_at_least(minimum: int) -> Callable[[str], tuple]:
    """A non-empty comma list of integers, each ``>= minimum`` (``"8,16,32"``)."""
    rule = f"a comma list of integers >= {minimum}"

    def parse(text: str) -> tuple:
        values = tuple(_int(p, rule) for p in _split(text, rule))
        if min(values) < minimum:
            raise _Error(f"expected {rule}, got {text!r}")
        return values

    parse.__name__ = f"ints_at_least_{minimum}"
    return parse


def positive_int(text: str) -> int:
    """An integer ``>= 1`` (a size, a count of steps)."""
    rule = "a positive integer (>= 1)"
    value = _int(text, rule)
    if value < 1:
        raise _Error(f"expected {rule}, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    """An integer ``>= 0`` (a seed, warm-up calls, steps where 0 means none)."""
    rule = "an integer >= 0"
    value = _int(text, rule)
    if value < 0:
        raise _Error(f"expected {rule}, got {text!r}")
    return value


def positive_ints(text: str) -> tuple:
    """A non-empty comma list of integers ``>= 1`` (``"16,64"``)."""
    rule = "a comma list of positive integers (e.g. 16,64)"
    values = tuple(_int(p, rule) for p in _split(text, rule))
    if min(values) < 1:
        raise _Error(f"expected {rule}, got {text!r}")
    return values


def positive_float(text: str) -> float:
    """A finite number ``> 0`` (a learning rate)."""
    rule = "a finite number > 0"
    value = _float(text, rule)
    if value <= 0:
        raise _Error(f"expected {rule}, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    """A finite number ``>= 0`` (a weight decay, a temperature where 0 means argmax)."""
    rule = "a finite number >= 0"
    value = _float(text, rule)
    if value < 0:
        raise _Error(f"expected {rule}, got {text!r}")
    return value


def float_in(low: float, high: float, *, low_open: bool = False,
             high_open: bool = False) -> Callable[[str], float]:
    """A finite number in the interval from ``low`` to ``high`` (closed unless told)."""
    rule = (f"a number in {'(' if low_open else '['}{low:g}, {high:g}"
            f"{')' if high_open else ']'}")

    def parse(text: str) -> float:
        value = _float(text, rule)
        if value < low or value > high or (low_open and value == low) \
                or (high_open and value == high):
            raise _Error(f"expected {rule}, got {text!r}")
        return value

    parse.__name__ = "float_in"
    return parse


def floats_in(low: float, high: float, *, low_open: bool = False,
              high_open: bool = False) -> Callable[[str], tuple]:
    """A non-empty comma list of finite numbers, each in the interval of
    :func:`float_in`."""
    one = float_in(low, high, low_open=low_open, high_open=high_open)
    rule = (f"a comma list of numbers in {'(' if low_open else '['}{low:g}, {high:g}"
            f"{')' if high_open else ']'}")

    def parse(text: str) -> tuple:
        try:
            return tuple(one(p) for p in _split(text, rule))
        except _Error:
            raise _Error(f"expected {rule}, got {text!r}") from None

    parse.__name__ = "floats_in"
    return parse


unit_interval = float_in(0.0, 1.0)
unit_interval.__doc__ = "A number in ``[0, 1]`` (a fraction)."
unit_interval.__name__ = "unit_interval"

probability = float_in(0.0, 1.0, high_open=True)
probability.__doc__ = "A number in ``[0, 1)`` (a dropout rate)."
probability.__name__ = "probability"


def names(choices: Iterable[str], *, none: Optional[str] = None) -> Callable[[str], tuple]:
    """A non-empty comma list of names, each one of ``choices``.

    Args:
      choices: the allowed names.
      none: a word that stands for the empty list (``"none"``), or ``None``.
    """
    choices = tuple(choices)
    listed = ", ".join(choices) + (f" (or {none})" if none else "")

    def parse(text: str) -> tuple:
        if none is not None and text.strip() == none:
            return ()
        values = _split(text, f"a comma list from {listed}")
        unknown = [v for v in values if v not in choices]
        if unknown:
            raise _Error(f"unknown {', '.join(map(repr, unknown))}; choose from {listed}")
        return tuple(values)

    parse.__name__ = "names"
    return parse


def choice_list(text: str) -> tuple:
    """A non-empty comma list of names, validated later against a table that is only
    known once the command runs (e.g. ``lstm_x2`` stacks)."""
    return tuple(_split(text, "a comma list of names, e.g. lstm,gru"))
