"""Checks for user input: each names the argument and the offending value.

User errors raise ``ValueError`` (a value out of range) or ``TypeError`` (a value of the
wrong kind), never ``AssertionError``, so a caller can catch them and a command line can
print them as one line. Every check returns the value, normalised (a float, an int), so
callers can write ``self.peak = positive("peak", peak)``. Messages read
``"lr must be >= 0, got lr=-0.1"``. The whole library (optimizers, schedules, stopping
criteria, clipping) uses these, so a message looks the same wherever it comes from.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

Check = Callable[[str, Any], Any]


def real(name: str, value: Any, *, finite: bool = True) -> float:
    """``value`` is a real number, finite unless ``finite=False``; returned as a float."""
    # bool is a numbers.Real, but lr=True is a bug, not a learning rate of 1.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {name}={value!r} ({type(value).__name__})")
    result = float(value)
    if finite and not math.isfinite(result):
        raise ValueError(f"{name} must be finite, got {name}={value!r}")
    return result


def scalar(name: str, value: Any, *, finite: bool = True) -> float:
    """``value`` is a real number or a one-element real tensor (a loss, a metric, a
    schedule's value), finite unless ``finite=False``; returned as a float.

    Reading a tensor that lives on an accelerator waits for it.
    """
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(
                f"{name} must be a real number or a one-element tensor, got a tensor of shape "
                f"{tuple(value.shape)}"
            )
        value = value.detach().item()  # a Python bool or complex for such tensors: refused below
    return real(name, value, finite=finite)


def nonnegative(name: str, value: Any) -> float:
    """``value`` is a finite real number >= 0."""
    result = real(name, value)
    if result < 0:
        raise ValueError(f"{name} must be >= 0, got {name}={value!r}")
    return result


def positive(name: str, value: Any) -> float:
    """``value`` is a finite real number > 0."""
    result = real(name, value)
    if result <= 0:
        raise ValueError(f"{name} must be > 0, got {name}={value!r}")
    return result


def unit_interval(name: str, value: Any) -> float:
    """``value`` is in [0, 1): a decay or averaging coefficient."""
    result = real(name, value)
    if not 0.0 <= result < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {name}={value!r}")
    return result


def closed_unit_interval(name: str, value: Any) -> float:
    """``value`` is in [0, 1]."""
    result = real(name, value)
    if not 0.0 <= result <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {name}={value!r}")
    return result


def betas(name: str, value: Any) -> tuple[float, float]:
    """``value`` is a pair of decay coefficients, each in [0, 1)."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a pair (beta1, beta2), got {name}={value!r}")
    return unit_interval(f"{name}[0]", value[0]), unit_interval(f"{name}[1]", value[1])


def integer(name: str, value: Any, minimum: int | None = None) -> int:
    """``value`` is an integer (not 1.5, not 2.0, not True), at least ``minimum`` if given."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {name}={value!r}")
    try:
        # operator.index accepts int, numpy integers and 0-d integer tensors, not floats.
        result = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {name}={value!r} ({type(value).__name__})") from None
    if minimum is not None and result < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {name}={result}")
    return result


def choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {name}={value!r}")
    return value


def boolean(name: str, value: Any) -> bool:
    """``value`` is True or False."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {name}={value!r}")
    return value


def optional_boolean(name: str, value: Any) -> bool | None:
    """``value`` is None (let the engine choose), True or False."""
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{name} must be None, True or False, got {name}={value!r}")
    return value


def torch_seed(name: str, value: Any) -> int:
    """``value`` is an integer seed ``torch.manual_seed`` takes: in [-2**63, 2**64 - 1] (negative
    seeds map onto the unsigned range)."""
    seed = integer(name, value)
    if not -(2**63) <= seed <= 2**64 - 1:
        raise ValueError(f"{name} must be a seed in [-2**63, 2**64 - 1] (torch's range), got {name}={seed}")
    return seed


def positive_integer(name: str, value: Any) -> int:
    """``value`` is an integer >= 1 (a count)."""
    return integer(name, value, minimum=1)


def optional_positive_integer(name: str, value: Any) -> int | None:
    """``value`` is None or an integer >= 1."""
    return None if value is None else positive_integer(name, value)


# -- the saved state of a stateful object (load_state_dict checks it whole, then loads it) --
def any_real(name: str, value: Any) -> float:
    """``value`` is a real number, inf and nan included (a recorded loss, a best-so-far)."""
    return real(name, value, finite=False)


def count(name: str, value: Any) -> int:
    """``value`` is an integer >= 0 (a counter in a saved state)."""
    return integer(name, value, minimum=0)


def optional(check: Check) -> Check:
    """``check``, letting None through."""

    def check_optional(name: str, value: Any) -> Any:
        return None if value is None else check(name, value)

    return check_optional


def list_of(check: Check) -> Check:
    """A list (or tuple) whose every item passes ``check``; returned as a new list."""

    def check_each(name: str, value: Any) -> list[Any]:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{name} must be a list, got {name}={value!r:.80} ({type(value).__name__})")
        return [check(f"{name}[{index}]", item) for index, item in enumerate(value)]

    return check_each


def mapping(name: str, value: Any) -> Mapping[str, Any]:
    """``value`` is a dict (a nested saved state, which its owner checks when loading it)."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a dict, got {name}={value!r:.80} ({type(value).__name__})")
    return value


def tensor(name: str, value: Any) -> torch.Tensor:
    """``value`` is a tensor."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {name}={value!r:.80} ({type(value).__name__})")
    return value


def state_fields(
    name: str,
    state: Any,
    owner: str,
    fields: Mapping[str, Check],
    defaults: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``fields`` of the state_dict ``state``, each checked; raises before anything is loaded.

    ``name`` is the argument's name in the messages (``state_dict['best'] must be ...``),
    ``owner`` what the state belongs to. A field in ``defaults`` may be missing (a
    checkpoint written before the field existed) and then takes its default.
    """
    defaults = defaults or {}
    if not isinstance(state, Mapping):
        raise TypeError(f"{name} must be the dict {owner}.state_dict() returns, got {type(state).__name__}")
    missing = [key for key in fields if key not in state and key not in defaults]
    if missing:
        raise ValueError(f"{name} is not the state of a {owner}: it lacks {missing}")
    return {
        key: check(f"{name}[{key!r}]", state[key]) if key in state else defaults[key]
        for key, check in fields.items()
    }
