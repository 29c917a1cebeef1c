"""Argparse types shared by every command: a numeric option is checked when the arguments are parsed.

In the foundation layer so that both the command line (:mod:`un2clip.cli`, which re-exports them as
``un2clip.cli.types``) and the flag definitions registered with the evaluations (:mod:`un2clip.eval.tasks`) use them.

Each type turns the option's text into a number or raises ``argparse.ArgumentTypeError`` with a message that
says what the value must be, so argparse prints ``argument --batch-size: must be a positive integer, not '0'``
and exits 2 before anything loads. Use them as ``type=positive_int``; for a weight list that must not be all
zero, check the parsed list with :func:`not_all_zero`.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence

OVERWRITE_HELP = ("replace OUTPUT if it exists (default: an existing file or non-empty folder is refused); an input "
                  "is never written over")

__all__ = ["positive_int", "nonneg_int", "fraction", "open_fraction", "positive_float", "nonneg_float",
           "finite_float", "positive_int_list", "int_at_least", "float_in", "not_all_zero", "template_with",
           "OVERWRITE_HELP"]


def _parse_int(text: str, what: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be {what}, not {text!r}") from None


def _parse_float(text: str, what: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be {what}, not {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be {what}, not {text!r}")
    return value


def int_at_least(low: int, what: str | None = None) -> Callable[[str], int]:
    """A type for integers ``>= low``."""
    what = what or f"an integer >= {low}"

    def parse(text: str) -> int:
        value = _parse_int(text, what)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {what}, not {text!r}")
        return value

    parse.__name__ = f"int_at_least_{low}"  # argparse names the type in some messages
    return parse


def float_in(low: float, high: float, *, low_open: bool = False, high_open: bool = False,
             what: str | None = None) -> Callable[[str], float]:
    """A type for finite floats in the interval [low, high] (an end excluded with ``low_open``/``high_open``)."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    what = what or f"a number in {interval}"

    def parse(text: str) -> float:
        value = _parse_float(text, what)
        if value < low or value > high or (low_open and value == low) or (high_open and value == high):
            raise argparse.ArgumentTypeError(f"must be {what}, not {text!r}")
        return value

    parse.__name__ = f"float_in_{interval}"
    return parse


positive_int = int_at_least(1, "a positive integer")
positive_int.__name__ = "positive_int"
nonneg_int = int_at_least(0, "an integer >= 0")
nonneg_int.__name__ = "nonneg_int"
fraction = float_in(0.0, 1.0, what="a fraction in [0, 1]")
fraction.__name__ = "fraction"
open_fraction = float_in(0.0, 1.0, low_open=True, what="a fraction in (0, 1]")
open_fraction.__name__ = "open_fraction"


def positive_float(text: str) -> float:
    """A finite float > 0."""
    value = _parse_float(text, "a finite number > 0")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, not {text!r}")
    return value


def nonneg_float(text: str) -> float:
    """A finite float >= 0."""
    value = _parse_float(text, "a finite number >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, not {text!r}")
    return value


def positive_int_list(text: str) -> list[int]:
    """``64,128,256`` -> [64, 128, 256]: comma-separated positive integers, at least one."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers, not {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"must be comma-separated positive integers, not {text!r}")
    return values


def finite_float(text: str) -> float:
    """Any finite float (no nan, inf)."""
    return _parse_float(text, "a finite number")


def not_all_zero(values: Sequence[float] | None, option: str) -> None:
    """Raise ``ValueError`` naming ``option`` when every weight in ``values`` is zero (``None``: not given)."""
    if values is not None and not any(values):
        raise ValueError(f"{option}: the weights are all zero; at least one must be non-zero")


def template_with(field: str) -> Callable[[str], str]:
    """A type for a ``str.format`` template that must hold ``{field}`` (and no other replacement field): a template
    without it would give every item the same text."""

    def parse(text: str) -> str:
        if "{" + field + "}" not in text:
            raise argparse.ArgumentTypeError(f"must contain {{{field}}} (where each item's {field} goes), "
                                             f"not {text!r}")
        try:
            text.format(**{field: ""})
        except (KeyError, IndexError, ValueError) as err:
            raise argparse.ArgumentTypeError(f"must be a template whose only field is {{{field}}} (write a literal "
                                             f"brace as {{{{ or }}}}), not {text!r}: {err!r}") from None
        return text

    parse.__name__ = f"template_with_{field}"
    return parse
