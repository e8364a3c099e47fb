"""Checks for hyperparameters: each names the argument and the offending value.

User errors raise ``ValueError`` (a value out of range) or ``TypeError`` (a value of the
wrong kind), never ``AssertionError``, so a caller can catch them and a command line can
print them as one line.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

Check = Callable[[str, Any], None]


def _real(name: str, value: Any) -> float:
    # bool is an int subclass; lr=True is a bug, not a learning rate of 1.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def nonnegative(name: str, value: Any) -> None:
    """``value`` is a finite real number >= 0."""
    if _real(name, value) < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


def positive(name: str, value: Any) -> None:
    """``value`` is a finite real number > 0."""
    if _real(name, value) <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def unit_interval(name: str, value: Any) -> None:
    """``value`` is in [0, 1): a decay or averaging coefficient."""
    if not 0.0 <= _real(name, value) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def closed_unit_interval(name: str, value: Any) -> None:
    """``value`` is in [0, 1]."""
    if not 0.0 <= _real(name, value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")


def betas(name: str, value: Any) -> None:
    """``value`` is a pair of decay coefficients, each in [0, 1)."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a pair (beta1, beta2), got {value!r}")
    for index, beta in enumerate(value):
        unit_interval(f"{name}[{index}]", beta)


def boolean(name: str, value: Any) -> None:
    """``value`` is True or False."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def optional_boolean(name: str, value: Any) -> None:
    """``value`` is None (let the engine choose), True or False."""
    if value is not None:
        boolean(name, value)
