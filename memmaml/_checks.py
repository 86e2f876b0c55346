"""Argument checks shared by the whole package: one message per kind of mistake.

Every check names the argument and the value it got, raises ``ValueError`` for a
value of the right kind but out of range and ``TypeError`` for a value of the
wrong kind, and returns the value normalised (``int``, ``float``). Checks run on
Python values only: tensors are never read (that would be a host sync).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable
from numbers import Real
from typing import Any

__all__ = ["int_at_least", "integer", "number_in", "one_of", "positive_int", "positive_number", "range_pair"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(name: str, value: Any) -> int:
    """``value`` as an ``int`` (a Python or NumPy integer, not a bool); ``TypeError`` naming ``name`` otherwise."""
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise TypeError(f"{name} must be an int, got {type(value).__name__}")


def positive_int(name: str, value: Any) -> int:
    """``value`` as an ``int`` >= 1; ``ValueError`` naming ``name`` otherwise."""
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def int_at_least(name: str, value: Any, minimum: int) -> int:
    """``value`` as an ``int`` >= ``minimum``; ``ValueError`` naming ``name`` and ``minimum`` otherwise.

    The message states the bound (``must be an integer >= 1``) whatever it is;
    use :func:`positive_int` for the plain "positive integer" wording.
    """
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def positive_number(name: str, value: Any, *, allow_inf: bool = False) -> float:
    """``value`` as a ``float`` > 0, finite unless ``allow_inf``; ``ValueError`` naming ``name`` otherwise."""
    if (
        isinstance(value, bool)
        or not isinstance(value, Real)
        or not value > 0
        or (not allow_inf and not math.isfinite(value))
    ):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def number_in(name: str, value: Any, low: float, high: float = math.inf, *, include_high: bool = False) -> float:
    """``value`` as a ``float`` with ``low <= value < high`` (``<= high`` with ``include_high``).

    NaN is never in range. The message states the range the way ``torch.optim``
    does (``0.0 <= beta1 < 1.0``).
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    upper_ok = value <= high if include_high else value < high
    if not (low <= value and upper_ok):
        if high == math.inf:
            bound = f"{low} <= {name}"
        else:
            bound = f"{low} <= {name} {'<=' if include_high else '<'} {high}"
        raise ValueError(f"{name} must satisfy {bound}, got {value!r}")
    return float(value)


def one_of(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices``; ``ValueError`` listing them otherwise."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")
    return value


def range_pair(name: str, value: Any) -> tuple[float, float]:
    """``value`` as a pair of floats ``(low, high)`` with ``low <= high``."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair of numbers (low, high), got {value!r}") from None
    if not low <= high:
        raise ValueError(f"{name} must satisfy low <= high, got {value!r}")
    return low, high
