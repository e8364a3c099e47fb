"""Learning-rate schedules as pure functions of the step.

A schedule maps an integer optimizer step (0, 1, 2, ...) to a float. It holds no hidden
state, so it can be evaluated at any step in any order: previewing a run, resuming from a
checkpoint or plotting never needs to replay the steps before. This is the opposite of
``torch.optim.lr_scheduler``, whose schedulers mutate the optimizer and compute the next
rate from the current one.

Units are optimizer steps, always. Convert epochs with :func:`steps_per_epoch` and
:func:`epochs_to_steps`, which account for gradient accumulation.

>>> from steepest import schedules
>>> lr = schedules.warmup_cosine(peak=1e-3, warmup=100, total=1000)
>>> lr(0), lr(100), lr(1000)
(0.0, 0.001, 0.0)
>>> lr.values(range(0, 101, 50))
[0.0, 0.0005, 0.001]

Building blocks:

* every schedule is a small frozen dataclass deriving from :class:`Schedule`: callable,
  comparable, picklable, with a ``repr`` that reads as the call that builds it;
* :meth:`Schedule.to_dict` / :meth:`Schedule.from_dict` turn it into a plain dict of
  numbers, strings and lists (JSON-safe), so a checkpoint can store it without pickle;
* ``join(schedules, boundaries)`` chains schedules; ``0.5 * schedule`` and
  ``schedule_a * schedule_b`` multiply them;
* :func:`as_schedule` accepts a :class:`Schedule`, a plain number (a constant) or any
  callable ``step -> float``;
* :func:`plot` draws one or several schedules to a PNG.

Command line. ``SCHEDULES`` maps each public name to its class and :func:`by_name` builds
one from keyword arguments, so a command such as::

    steepest schedule plot warmup_cosine --peak 3e-3 --warmup 500 --total 10000 -o lr.png

maps to ``by_name("warmup_cosine", peak=3e-3, warmup=500, total=10000)``. The rules:

* the positional name is a key of ``SCHEDULES``;
* ``--some-flag V`` is the argument ``some_flag`` (dashes become underscores);
* the type of each argument is ``typing.get_type_hints(SCHEDULES[name])[argument]``
  (the dataclass fields, in order, are ``dataclasses.fields(SCHEDULES[name])``; a field
  without a default is required): ``int`` for step counts (``warmup``,
  ``total``, ``every``, ``period``, ``decay``, ``period_mult``), ``float`` for values
  (``peak``, ``floor``, ``start``, ``end``, ``gamma``, ``power``, ``value``), ``str`` for
  a choice (``shape``, ``anneal``: a ``Literal`` listing the options), ``bool`` for a
  switch (``--three-phase``);
* ``--milestones 1000,2000`` is the tuple of ints ``milestones=(1000, 2000)``;
* an argument left out takes the field's default.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from steepest.engine import validation
from steepest.plateau import ReduceOnPlateau, reduce_on_plateau

__all__ = [
    "SCHEDULES",
    "Schedule",
    "ScheduleLike",
    "Constant",
    "StepDecay",
    "MultiStep",
    "Exponential",
    "Cosine",
    "CosineRestarts",
    "Linear",
    "WarmupCosine",
    "OneCycle",
    "OneCycleMomentum",
    "Polynomial",
    "WarmupStableDecay",
    "InverseSqrt",
    "Join",
    "Product",
    "FunctionSchedule",
    "constant",
    "step_decay",
    "multistep",
    "exponential",
    "cosine",
    "cosine_restarts",
    "linear",
    "warmup_cosine",
    "one_cycle",
    "one_cycle_momentum",
    "polynomial",
    "wsd",
    "inverse_sqrt",
    "join",
    "as_schedule",
    "by_name",
    "steps_per_epoch",
    "epochs_to_steps",
    "plot",
    "ReduceOnPlateau",
    "reduce_on_plateau",
]


# --------------------------------------------------------------------------- validation
# User errors raise ValueError / TypeError naming the argument and its value, never assert.


# One set of checks for the whole library (steepest.engine.validation), under short names.
_check_real = validation.real
_check_positive = validation.positive
_check_integer = validation.integer
_check_choice = validation.choice


def _check_step(step: Any) -> int:
    return validation.integer("step", step, minimum=0)


def _steps_to_sample(steps: Any) -> list[int]:
    """The steps of ``values`` and ``plot``, each checked: an int n means ``range(n)``."""
    if isinstance(steps, Iterable) and not isinstance(steps, (str, bytes)):
        return [_check_step(step) for step in steps]
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
        raise TypeError(
            f"steps must be a number of steps (an int) or an iterable of int steps, got "
            f"steps={steps!r} ({type(steps).__name__})"
        )
    return list(range(_check_integer("steps", steps, minimum=0)))


def _check_not_after(first: str, first_value: int, second: str, second_value: int) -> None:
    if first_value > second_value:
        raise ValueError(
            f"{first} must be <= {second}, got {first}={first_value}, {second}={second_value}"
        )


def _check_sequence(name: str, value: Any, what: str = "a sequence") -> tuple[Any, ...]:
    """``value`` as a tuple: a list, tuple, range or other ordered collection of items. Not a
    string, nor a dict or a set: their order is not one the caller wrote down."""
    if isinstance(value, (str, bytes, Mapping, AbstractSet)) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be {what}, got {name}={value!r}")
    return tuple(value)


def _set(instance: object, name: str, value: Any) -> None:
    # Frozen dataclasses refuse attribute assignment; __post_init__ normalises arguments
    # (int -> float, list -> tuple) through object.__setattr__, the documented way.
    object.__setattr__(instance, name, value)


# ------------------------------------------------------------------- shared closed forms
# Each shape is written once and reused by every schedule that has it.


def _clamp_between(value: float, bound: float, other_bound: float) -> float:
    # A blend such as floor + (peak - floor) * 1.0 can round one ulp past peak (or, with a
    # subnormal peak, far past it relatively); a schedule promises to stay within its
    # endpoints, so the rounding is clipped. Inside the bounds nothing changes.
    return min(max(value, min(bound, other_bound)), max(bound, other_bound))


def _interpolate_linear(
    start: float, end: float, elapsed: float, duration: float, clamp: bool = True
) -> float:
    """``start`` at ``elapsed = 0``, ``end`` at ``elapsed = duration``, a straight line between."""
    value = start + (end - start) * elapsed / duration
    return _clamp_between(value, start, end) if clamp else value


def _interpolate_cosine(
    start: float, end: float, elapsed: float, duration: float, clamp: bool = True
) -> float:
    """``start`` at ``elapsed = 0``, ``end`` at ``elapsed = duration``, half a cosine between."""
    # Same operation order as torch's closed form (pi * t / T, then (1 + cos) / 2), so the
    # parity tests agree to the last bits, not merely to 1e-12.
    value = end + (start - end) * (1.0 + math.cos(math.pi * elapsed / duration)) / 2.0
    return _clamp_between(value, start, end) if clamp else value


# --------------------------------------------------------------------------- base class


class Schedule:
    """A pure function from an integer step >= 0 to a float.

    Subclasses are frozen dataclasses that set ``name`` (their key in ``SCHEDULES``) and
    implement ``_closed_form(step)``; ``__call__`` validates the step once for all of them.
    """

    name: ClassVar[str]

    # Makes numpy scalars defer to Schedule.__rmul__ (np.float64(0.5) * schedule) instead
    # of trying to broadcast the schedule as an object array.
    __array_ufunc__ = None

    def __call__(self, step: int) -> float:
        """The value at ``step`` (an int >= 0; TypeError for 1.5, ValueError for -1)."""
        return self._closed_form(_check_step(step))

    def _closed_form(self, step: int) -> float:
        raise NotImplementedError

    def values(self, steps: int | Iterable[int]) -> list[float]:
        """The values at each of ``steps`` (a range or any iterable of ints), as floats; an
        int n means ``range(n)``, as in :func:`plot`."""
        return [self._closed_form(step) for step in _steps_to_sample(steps)]

    def __mul__(self, other: ScheduleLike) -> Product:
        if not _is_schedule_like(other):
            return NotImplemented
        return Product(self, as_schedule(other))

    def __rmul__(self, other: ScheduleLike) -> Product:
        if not _is_schedule_like(other):
            return NotImplemented
        return Product(as_schedule(other), self)

    def __repr__(self) -> str:
        # Reads as the call that builds the schedule: cosine(peak=1.0, total=100, floor=0.0)
        arguments = ", ".join(
            f"{field.name}={getattr(self, field.name)!r}" for field in dataclasses.fields(self)
        )
        return f"{self.name}({arguments})"

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (numbers, strings, lists, nested dicts) that :meth:`from_dict` reverses.

        >>> cosine(peak=1.0, total=10).to_dict()
        {'name': 'cosine', 'peak': 1.0, 'total': 10, 'floor': 0.0}
        """
        data: dict[str, Any] = {"name": self.name}
        for field in dataclasses.fields(self):
            data[field.name] = _encode(getattr(self, field.name))
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schedule:
        """Rebuild a schedule from :meth:`to_dict`'s output; no code is executed or unpickled.

        >>> Schedule.from_dict({"name": "constant", "value": 0.1})
        constant(value=0.1)
        """
        if not isinstance(data, dict) or "name" not in data:
            raise ValueError(f"data must be a dict with a 'name' key, got data={data!r}")
        arguments = {key: value for key, value in data.items() if key != "name"}
        kind = _kind_for(data["name"], arguments, _DECODABLE)
        return kind(**{key: _decode(value) for key, value in arguments.items()})


ScheduleLike = Schedule | float | Callable[[int], float]


def _is_schedule_like(obj: object) -> bool:
    return isinstance(obj, (Schedule, numbers.Real)) or callable(obj)


def _encode(value: Any) -> Any:
    if isinstance(value, Schedule):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_encode(item) for item in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        return Schedule.from_dict(value)
    if isinstance(value, list):
        return tuple(_decode(item) for item in value)
    return value


# ----------------------------------------------------------------------------- schedules


@dataclass(frozen=True, repr=False)
class Constant(Schedule):
    """The same value at every step.

    ``value(t) = value``

    Args:
        value: the value returned at every step.

    >>> constant(0.1)(12345)
    0.1
    """

    name: ClassVar[str] = "constant"
    value: float

    def __post_init__(self) -> None:
        _set(self, "value", _check_real("value", self.value))

    def _closed_form(self, step: int) -> float:
        return self.value


@dataclass(frozen=True, repr=False)
class StepDecay(Schedule):
    """Multiply by ``gamma`` every ``every`` steps (torch's StepLR).

    ``value(t) = peak * gamma ** (t // every)``

    Args:
        peak: the value from step 0 to step ``every - 1``.
        every: the number of steps between two decays, >= 1.
        gamma: the factor applied at each decay, > 0. Default 0.1.

    >>> step_decay(peak=1.0, every=10, gamma=0.5).values([0, 9, 10, 25])
    [1.0, 1.0, 0.5, 0.25]
    """

    name: ClassVar[str] = "step_decay"
    peak: float
    every: int
    gamma: float = 0.1

    def __post_init__(self) -> None:
        _set(self, "peak", _check_real("peak", self.peak))
        _set(self, "every", _check_integer("every", self.every, minimum=1))
        _set(self, "gamma", _check_positive("gamma", self.gamma))

    def _closed_form(self, step: int) -> float:
        return self.peak * self.gamma ** (step // self.every)


@dataclass(frozen=True, repr=False)
class MultiStep(Schedule):
    """Multiply by ``gamma`` at each milestone (torch's MultiStepLR).

    ``value(t) = peak * gamma ** (number of milestones <= t)``

    Args:
        peak: the value before the first milestone.
        milestones: the steps at which the value is multiplied by ``gamma``, strictly
            increasing ints >= 0 (torch counts a repeated milestone twice; here a repeat is
            refused as a likely typo: use ``gamma ** 2`` instead).
        gamma: the factor applied at each milestone, > 0. Default 0.1.

    >>> multistep(peak=1.0, milestones=[10, 20], gamma=0.5).values([0, 10, 19, 20])
    [1.0, 0.5, 0.5, 0.25]
    """

    name: ClassVar[str] = "multistep"
    peak: float
    milestones: tuple[int, ...]
    gamma: float = 0.1

    def __post_init__(self) -> None:
        _set(self, "peak", _check_real("peak", self.peak))
        milestones = tuple(
            _check_integer("milestones", milestone, minimum=0)
            for milestone in _check_sequence("milestones", self.milestones, "a sequence of ints")
        )
        for earlier, later in itertools.pairwise(milestones):
            if later <= earlier:
                raise ValueError(
                    f"milestones must be strictly increasing, got milestones={list(milestones)}"
                )
        _set(self, "milestones", milestones)
        _set(self, "gamma", _check_positive("gamma", self.gamma))

    def _closed_form(self, step: int) -> float:
        return self.peak * self.gamma ** bisect.bisect_right(self.milestones, step)


@dataclass(frozen=True, repr=False)
class Exponential(Schedule):
    """Multiply by ``gamma`` per ``every`` steps, continuously (torch's ExponentialLR for every=1).

    ``value(t) = peak * gamma ** (t / every)``

    Args:
        peak: the value at step 0.
        gamma: the factor per ``every`` steps, > 0.
        every: the number of steps over which the value is multiplied by ``gamma``, >= 1.
            Default 1. Use :class:`StepDecay` for a staircase.

    >>> exponential(peak=1.0, gamma=0.5, every=2).values([0, 1, 2, 4])
    [1.0, 0.7071067811865476, 0.5, 0.25]
    """

    name: ClassVar[str] = "exponential"
    peak: float
    gamma: float
    every: int = 1

    def __post_init__(self) -> None:
        _set(self, "peak", _check_real("peak", self.peak))
        _set(self, "gamma", _check_positive("gamma", self.gamma))
        _set(self, "every", _check_integer("every", self.every, minimum=1))

    def _closed_form(self, step: int) -> float:
        return self.peak * self.gamma ** (step / self.every)


@dataclass(frozen=True, repr=False)
class Cosine(Schedule):
    """Half a cosine from ``peak`` down to ``floor`` over ``total`` steps, then ``floor``.

    ``value(t) = floor + (peak - floor) * (1 + cos(pi * min(t, total) / total)) / 2``

    This is the closed form of torch's CosineAnnealingLR up to ``total`` (T_max). After
    ``total`` it holds ``floor``, as optax does; torch's formula would rise again towards
    ``peak``. For restarts, use :class:`CosineRestarts`.

    Args:
        peak: the value at step 0.
        total: the number of steps of the decay, >= 1.
        floor: the value at ``total`` and after. Default 0.

    >>> cosine(peak=1.0, total=100, floor=0.0).values([0, 50, 100, 200])
    [1.0, 0.5, 0.0, 0.0]
    """

    name: ClassVar[str] = "cosine"
    peak: float
    total: int
    floor: float = 0.0

    def __post_init__(self) -> None:
        _set(self, "peak", _check_real("peak", self.peak))
        _set(self, "total", _check_integer("total", self.total, minimum=1))
        _set(self, "floor", _check_real("floor", self.floor))

    def _closed_form(self, step: int) -> float:
        return _interpolate_cosine(self.peak, self.floor, min(step, self.total), self.total)


@dataclass(frozen=True, repr=False)
class CosineRestarts(Schedule):
    """Cosine decay that restarts at ``peak``, each cycle ``period_mult`` times longer (SGDR).

    ``value(t) = floor + (peak - floor) * (1 + cos(pi * t_cycle / period_i)) / 2``, where
    cycle i lasts ``period_i = period * period_mult ** i`` steps and ``t_cycle`` counts the
    steps since the last restart (torch's CosineAnnealingWarmRestarts).

    Args:
        peak: the value at the start of every cycle.
        period: the length of the first cycle in steps, >= 1.
        period_mult: the integer factor by which each cycle is longer than the one before,
            >= 1. Default 1 (equal cycles).
        floor: the value approached at the end of each cycle. Default 0.

    Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", 2017.

    >>> cosine_restarts(peak=1.0, period=10, period_mult=2).values([0, 5, 10, 20, 30])
    [1.0, 0.5, 1.0, 0.5, 1.0]
    """

    name: ClassVar[str] = "cosine_restarts"
    peak: float
    period: int
    period_mult: int = 1
    floor: float = 0.0

    def __post_init__(self) -> None:
        _set(self, "peak", _check_real("peak", self.peak))
        _set(self, "period", _check_integer("period", self.period, minimum=1))
        _set(self, "period_mult", _check_integer("period_mult", self.period_mult, minimum=1))
        _set(self, "floor", _check_real("floor", self.floor))

    def _closed_form(self, step: int) -> float:
        # Integer arithmetic finds the cycle exactly; torch's log-based jump formula can be
        # off by one cycle at a boundary through rounding.
        period = self.period
        if self.period_mult == 1:
            elapsed = step % period
        else:
            elapsed = step
            while elapsed >= period:  # cycles grow geometrically: O(log step) iterations
                elapsed -= period
                period *= self.period_mult
        return _interpolate_cosine(self.peak, self.floor, elapsed, period)


@dataclass(frozen=True, repr=False)
class Linear(Schedule):
    """A straight line from ``start`` to ``end`` over ``total`` steps, then ``end``.

    ``value(t) = start + (end - start) * min(t, total) / total``

    A warm-up when ``start < end``, a decay when ``start > end`` (torch's LinearLR with
    ``start = base_lr * start_factor`` and ``end = base_lr * end_factor``).

    Args:
        start: the value at step 0.
        end: the value at ``total`` and after.
        total: the number of steps of the ramp, >= 1.

    >>> linear(start=0.0, end=1.0, total=4).values([0, 1, 4, 8])
    [0.0, 0.25, 1.0, 1.0]
    """

    name: ClassVar[str] = "linear"
    start: float
    end: float
    total: int

    def __post_init__(self) -> None:
        _set(self, "start", _check_real("start", self.start))
        _set(self, "end", _check_real("end", self.end))
        _set(self, "total", _check_integer("total", self.total, minimum=1))

    def _closed_form(self, step: int) -> float:
        return _interpolate_linear(self.start, self.end, min(step, self.total), self.total)


@dataclass(frozen=True, repr=False)
class WarmupCosine(Schedule):
    """Linear warm-up from ``start`` to ``peak``, then cosine decay to ``floor`` at ``total``.

    ``value(t) = start + (peak - start) * t / warmup`` for ``t < warmup``;
    ``floor + (peak - floor) * (1 + cos(pi * (t - warmup) / (total - warmup))) / 2`` for
    ``warmup <= t < total``; ``floor`` from ``total`` on.

    Args:
        peak: the value at step ``warmup``.
        warmup: the number of warm-up steps, >= 0 (0: a plain cosine decay).
        total: the step at which the decay reaches ``floor``; counts the warm-up too, so
            ``warmup <= total``.
        floor: the value at ``total`` and after. Default 0.
        start: the value at step 0. Default 0.

    >>> warmup_cosine(peak=1.0, warmup=10, total=110).values([0, 5, 10, 60, 110])
    [0.0, 0.5, 1.0, 0.5, 0.0]
    """

    name: ClassVar[str] = "warmup_cosine"
    peak: float
    warmup: int
    total: int
    floor: float = 0.0
    start: float = 0.0

    def __post_init__(self) -> None:
        _set(self, "peak", _check_real("peak", self.peak))
        _set(self, "warmup", _check_integer("warmup", self.warmup, minimum=0))
        _set(self, "total", _check_integer("total", self.total, minimum=1))
        _check_not_after("warmup", self.warmup, "total", self.total)
        _set(self, "floor", _check_real("floor", self.floor))
        _set(self, "start", _check_real("start", self.start))

    def _closed_form(self, step: int) -> float:
        if step < self.warmup:
            return _interpolate_linear(self.start, self.peak, step, self.warmup)
        if step >= self.total:
            return self.floor
        return _interpolate_cosine(
            self.peak, self.floor, step - self.warmup, self.total - self.warmup
        )


@dataclass(frozen=True, repr=False)
class Polynomial(Schedule):
    """Polynomial decay from ``peak`` to ``floor`` over ``total`` steps, then ``floor``.

    ``value(t) = (peak - floor) * (1 - min(t, total) / total) ** power + floor``

    torch's PolynomialLR when ``floor = 0``; ``power = 1`` is a linear decay.

    Args:
        peak: the value at step 0.
        total: the number of steps of the decay, >= 1.
        power: the exponent, > 0. Default 1.
        floor: the value at ``total`` and after. Default 0.

    >>> polynomial(peak=1.0, total=4, power=2.0).values([0, 2, 4, 5])
    [1.0, 0.25, 0.0, 0.0]
    """

    name: ClassVar[str] = "polynomial"
    peak: float
    total: int
    power: float = 1.0
    floor: float = 0.0

    def __post_init__(self) -> None:
        _set(self, "peak", _check_real("peak", self.peak))
        _set(self, "total", _check_integer("total", self.total, minimum=1))
        _set(self, "power", _check_positive("power", self.power))
        _set(self, "floor", _check_real("floor", self.floor))

    def _closed_form(self, step: int) -> float:
        remaining = 1.0 - min(step, self.total) / self.total
        value = (self.peak - self.floor) * remaining**self.power + self.floor
        return _clamp_between(value, self.peak, self.floor)


_WSD_SHAPES = ("linear", "cosine", "sqrt")


@dataclass(frozen=True, repr=False)
class WarmupStableDecay(Schedule):
    """Warm-up, stable, decay (WSD): a ramp to ``peak``, a plateau, a final ``decay`` to ``floor``.

    ``value(t) = start + (peak - start) * t / warmup`` for ``t < warmup``; ``peak`` until
    ``total - decay``; then ``floor + (peak - floor) * shape(p)`` with
    ``p = (t - (total - decay)) / decay`` and ``shape`` one of ``1 - p`` ("linear"),
    ``(1 + cos(pi p)) / 2`` ("cosine"), ``1 - sqrt(p)`` ("sqrt"); ``floor`` from ``total``.

    The plateau lets a run be extended or branched into a decay at any point.

    Args:
        peak: the value of the plateau.
        warmup: the number of warm-up steps, >= 0.
        total: the step at which the decay reaches ``floor``; ``warmup + decay <= total``.
        decay: the number of steps of the final decay, >= 0.
        floor: the value at ``total`` and after. Default 0.
        start: the value at step 0. Default 0.
        shape: "linear" (default), "cosine" or "sqrt" (1 - sqrt, Hägele et al. 2024).

    Hu et al., "MiniCPM", 2024; Hägele et al., "Scaling Laws and Compute-Optimal Training
    Beyond Fixed Training Durations", 2024.

    >>> wsd(peak=1.0, warmup=10, total=100, decay=20).values([0, 5, 10, 80, 90, 100])
    [0.0, 0.5, 1.0, 1.0, 0.5, 0.0]
    """

    name: ClassVar[str] = "wsd"
    peak: float
    warmup: int
    total: int
    decay: int
    floor: float = 0.0
    start: float = 0.0
    shape: Literal["linear", "cosine", "sqrt"] = "linear"

    def __post_init__(self) -> None:
        _set(self, "peak", _check_real("peak", self.peak))
        _set(self, "warmup", _check_integer("warmup", self.warmup, minimum=0))
        _set(self, "total", _check_integer("total", self.total, minimum=1))
        _set(self, "decay", _check_integer("decay", self.decay, minimum=0))
        if self.warmup + self.decay > self.total:
            raise ValueError(
                "warmup + decay must be <= total, got "
                f"warmup={self.warmup}, decay={self.decay}, total={self.total}"
            )
        _set(self, "floor", _check_real("floor", self.floor))
        _set(self, "start", _check_real("start", self.start))
        _check_choice("shape", self.shape, _WSD_SHAPES)

    def _closed_form(self, step: int) -> float:
        decay_begins = self.total - self.decay
        if step < self.warmup:
            return _interpolate_linear(self.start, self.peak, step, self.warmup)
        if step < decay_begins:
            return self.peak
        if step >= self.total:
            return self.floor
        elapsed = step - decay_begins
        if self.shape == "linear":
            return _interpolate_linear(self.peak, self.floor, elapsed, self.decay)
        if self.shape == "cosine":
            return _interpolate_cosine(self.peak, self.floor, elapsed, self.decay)
        value = self.floor + (self.peak - self.floor) * (1.0 - math.sqrt(elapsed / self.decay))
        return _clamp_between(value, self.peak, self.floor)


@dataclass(frozen=True, repr=False)
class InverseSqrt(Schedule):
    """Linear warm-up to ``peak``, then decay as one over the square root of the step.

    ``value(t) = start + (peak - start) * t / warmup`` for ``t < warmup``;
    ``peak * sqrt(warmup / t)`` from ``warmup`` on (continuous at ``warmup``).

    With ``start = peak`` there is no warm-up and ``warmup`` is only the time scale:
    ``peak / sqrt(max(t, warmup) / warmup)`` as in T5.

    Args:
        peak: the value at step ``warmup``.
        warmup: the number of warm-up steps and the decay's time scale, >= 1.
        start: the value at step 0. Default 0.

    Vaswani et al., "Attention Is All You Need", 2017.

    >>> inverse_sqrt(peak=1.0, warmup=4).values([0, 2, 4, 16])
    [0.0, 0.5, 1.0, 0.5]
    """

    name: ClassVar[str] = "inverse_sqrt"
    peak: float
    warmup: int
    start: float = 0.0

    def __post_init__(self) -> None:
        _set(self, "peak", _check_real("peak", self.peak))
        _set(self, "warmup", _check_integer("warmup", self.warmup, minimum=1))
        _set(self, "start", _check_real("start", self.start))

    def _closed_form(self, step: int) -> float:
        if step < self.warmup:
            return _interpolate_linear(self.start, self.peak, step, self.warmup)
        return self.peak * math.sqrt(self.warmup / step)


# ------------------------------------------------------------------------------ one cycle

_ANNEAL_STRATEGIES = ("cos", "linear")


@dataclass(frozen=True, repr=False)
class _OneCycleParameters(Schedule):
    """The arguments and phase arithmetic shared by the rate and the momentum of one cycle."""

    peak: float
    total: int
    warmup_fraction: float = 0.3
    anneal: Literal["cos", "linear"] = "cos"
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    three_phase: bool = False
    base_momentum: float = 0.85
    max_momentum: float = 0.95

    def __post_init__(self) -> None:
        _set(self, "peak", _check_real("peak", self.peak))
        _set(self, "total", _check_integer("total", self.total, minimum=2))
        _set(self, "warmup_fraction", _check_real("warmup_fraction", self.warmup_fraction))
        _check_choice("anneal", self.anneal, _ANNEAL_STRATEGIES)
        _set(self, "div_factor", _check_positive("div_factor", self.div_factor))
        _set(self, "final_div_factor", _check_positive("final_div_factor", self.final_div_factor))
        if not isinstance(self.three_phase, bool):
            raise TypeError(f"three_phase must be a bool, got three_phase={self.three_phase!r}")
        _set(self, "base_momentum", _check_real("base_momentum", self.base_momentum))
        _set(self, "max_momentum", _check_real("max_momentum", self.max_momentum))
        # Every phase must last more than zero steps, or its interpolation divides by zero.
        ends = self._phase_ends()
        if any(end <= start for start, end in itertools.pairwise((0.0, *ends))):
            raise ValueError(
                "every phase must last more than zero steps, got warmup_fraction="
                f"{self.warmup_fraction}, total={self.total}, three_phase={self.three_phase} "
                f"(phases end at steps {list(ends)}; need 1 < warmup_fraction * total, and "
                "warmup_fraction < 1, or < (total + 1) / (2 * total) with three_phase)"
            )

    @property
    def initial_lr(self) -> float:
        """The rate at step 0: ``peak / div_factor``."""
        return self.peak / self.div_factor

    @property
    def min_lr(self) -> float:
        """The rate at the last step: ``initial_lr / final_div_factor``."""
        return self.initial_lr / self.final_div_factor

    def _phase_ends(self) -> tuple[float, ...]:
        # torch's OneCycleLR boundaries, verbatim: the phase ending at e covers steps up to
        # e inclusive, and the next one starts interpolating from e.
        rise_end = float(self.warmup_fraction * self.total) - 1
        last = float(self.total - 1)
        if self.three_phase:
            return (rise_end, float(2 * self.warmup_fraction * self.total) - 2, last)
        return (rise_end, last)

    def _interpolate(self, step: int, anchors: tuple[float, ...]) -> float:
        """Anneal between ``anchors[i]`` and ``anchors[i + 1]`` within phase i at ``step``."""
        # After the cycle the value holds its final anchor. torch raises past total_steps
        # and, at exactly total_steps, extrapolates the last phase (a negative rate with
        # linear annealing); holding is what a resumed or extended run needs.
        step = min(step, self.total - 1)
        phase_start = 0.0
        ends = self._phase_ends()
        for phase, phase_end in enumerate(ends):
            if step <= phase_end or phase == len(ends) - 1:
                break
            phase_start = phase_end
        # The fraction of the phase is computed first, as torch does, then interpolated over
        # a unit duration (dividing by 1.0 is exact) and not clipped: this reproduces torch's
        # rounding bit for bit. It matters near the tiny min_lr, where torch's linear anneal
        # ends ~6e-12 (relative) below min_lr and clipping would differ from torch by that.
        fraction = (step - phase_start) / (phase_end - phase_start)
        interpolate = _interpolate_cosine if self.anneal == "cos" else _interpolate_linear
        return interpolate(anchors[phase], anchors[phase + 1], fraction, 1.0, clamp=False)


@dataclass(frozen=True, repr=False)
class OneCycle(_OneCycleParameters):
    """Smith's 1cycle policy: the rate rises to ``peak`` then anneals far below its start.

    Two phases (default, fastai): ``initial_lr -> peak`` over ``warmup_fraction * total``
    steps, then ``peak -> min_lr`` until ``total - 1``; ``three_phase``: ``initial_lr ->
    peak -> initial_lr`` symmetrically, then ``initial_lr -> min_lr``. Each leg is half a
    cosine (``anneal="cos"``) or a line (``"linear"``); ``initial_lr = peak / div_factor``,
    ``min_lr = initial_lr / final_div_factor``. Same closed form as torch's OneCycleLR; the
    value holds ``min_lr`` after step ``total - 1``. ``.momentum`` is the matching momentum
    schedule, cycled inversely between ``max_momentum`` and ``base_momentum``.

    Args:
        peak: the highest rate (torch: max_lr).
        total: the number of steps in the cycle, >= 2 (torch: total_steps).
        warmup_fraction: the fraction of ``total`` spent rising (torch: pct_start). 0.3.
        anneal: "cos" (default) or "linear" (torch: anneal_strategy).
        div_factor: ``initial_lr = peak / div_factor``. Default 25.
        final_div_factor: ``min_lr = initial_lr / final_div_factor``. Default 1e4.
        three_phase: use the original paper's three phases. Default False.
        base_momentum: the momentum at the peak rate. Default 0.85.
        max_momentum: the momentum at the start and end. Default 0.95.

    Smith & Topin, "Super-Convergence", 2017.

    >>> schedule = one_cycle(peak=1.0, total=100, warmup_fraction=0.5, anneal="linear")
    >>> schedule(0), schedule(49), schedule.momentum(0), schedule.momentum(49)
    (0.04, 1.0, 0.95, 0.85)
    """

    name: ClassVar[str] = "one_cycle"

    @property
    def momentum(self) -> OneCycleMomentum:
        """The momentum (or Adam's beta1) schedule that goes with this rate schedule."""
        return OneCycleMomentum(
            **{field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        )

    def _closed_form(self, step: int) -> float:
        if self.three_phase:
            anchors = (self.initial_lr, self.peak, self.initial_lr, self.min_lr)
        else:
            anchors = (self.initial_lr, self.peak, self.min_lr)
        return self._interpolate(step, anchors)


@dataclass(frozen=True, repr=False)
class OneCycleMomentum(_OneCycleParameters):
    """The momentum of Smith's 1cycle policy: ``max_momentum`` where the rate is low,
    ``base_momentum`` at the peak rate; same arguments and phases as :class:`OneCycle`.

    Usually obtained as ``one_cycle(...).momentum``; built directly, it takes the same
    arguments (so ``by_name("one_cycle_momentum", ...)`` works on the command line).

    >>> one_cycle_momentum(peak=1.0, total=100, anneal="linear").values([0, 29, 99])
    [0.95, 0.85, 0.95]
    """

    name: ClassVar[str] = "one_cycle_momentum"

    def _closed_form(self, step: int) -> float:
        low, high = self.base_momentum, self.max_momentum
        anchors = (high, low, high, high) if self.three_phase else (high, low, high)
        return self._interpolate(step, anchors)


# ---------------------------------------------------------------------------- combinators


@dataclass(frozen=True, repr=False)
class Join(Schedule):
    """Chain schedules: after each boundary the next one runs, restarted at its own step 0.

    ``value(t) = schedules[i](t - boundaries[i - 1])`` for
    ``boundaries[i - 1] <= t < boundaries[i]`` (optax's join_schedules).

    Args:
        schedules: n >= 1 schedules (or numbers, or callables ``step -> float``).
        boundaries: n - 1 strictly increasing absolute steps >= 1 where the next schedule
            takes over.

    >>> warm = linear(start=0.0, end=1.0, total=10)
    >>> lr = join([warm, cosine(peak=1.0, total=100)], boundaries=[10])
    >>> lr.values([0, 5, 10, 60, 110])
    [0.0, 0.5, 1.0, 0.5, 0.0]
    """

    name: ClassVar[str] = "join"
    schedules: tuple[Schedule, ...]
    boundaries: tuple[int, ...]

    def __post_init__(self) -> None:
        schedules = tuple(
            as_schedule(schedule) for schedule in _check_sequence("schedules", self.schedules)
        )
        boundaries = tuple(
            _check_integer("boundaries", boundary, minimum=1)
            for boundary in _check_sequence("boundaries", self.boundaries)
        )
        if not schedules:
            raise ValueError("schedules must not be empty, got schedules=()")
        if len(boundaries) != len(schedules) - 1:
            raise ValueError(
                "need one boundary fewer than schedules, got "
                f"{len(schedules)} schedules and boundaries={list(boundaries)}"
            )
        for earlier, later in itertools.pairwise(boundaries):
            if later <= earlier:
                raise ValueError(
                    f"boundaries must be strictly increasing, got boundaries={list(boundaries)}"
                )
        _set(self, "schedules", schedules)
        _set(self, "boundaries", boundaries)

    def _closed_form(self, step: int) -> float:
        index = bisect.bisect_right(self.boundaries, step)
        offset = self.boundaries[index - 1] if index > 0 else 0
        return self.schedules[index](step - offset)


@dataclass(frozen=True, repr=False)
class Product(Schedule):
    """The product of two schedules, step by step; what ``a * b`` and ``0.5 * a`` build.

    ``value(t) = left(t) * right(t)``

    >>> (0.5 * cosine(peak=1.0, total=100))(50)
    0.25
    """

    name: ClassVar[str] = "product"
    left: Schedule
    right: Schedule

    def __post_init__(self) -> None:
        _set(self, "left", as_schedule(self.left))
        _set(self, "right", as_schedule(self.right))

    def _closed_form(self, step: int) -> float:
        return self.left(step) * self.right(step)

    def __repr__(self) -> str:
        return f"{self.left!r} * {self.right!r}"


@dataclass(frozen=True, repr=False)
class FunctionSchedule(Schedule):
    """A plain callable ``step -> float`` seen as a schedule (built by :func:`as_schedule`).

    It is evaluated, but cannot be serialized: ``to_dict`` raises TypeError, since storing
    code in a checkpoint is what ``to_dict`` exists to avoid.
    """

    name: ClassVar[str] = "function"
    function: Callable[[int], float]

    def __post_init__(self) -> None:
        if not callable(self.function):
            raise TypeError(f"function must be callable, got function={self.function!r}")

    def _closed_form(self, step: int) -> float:
        return float(self.function(step))

    def to_dict(self) -> dict[str, Any]:
        raise TypeError(
            f"cannot serialize the plain callable {self.function!r}; "
            "build the schedule from steepest.schedules to store it in a checkpoint"
        )

    def __repr__(self) -> str:
        return f"as_schedule({self.function!r})"


def as_schedule(obj: ScheduleLike) -> Schedule:
    """A :class:`Schedule` from a schedule (returned as is), a number or a callable.

    >>> as_schedule(0.1)
    constant(value=0.1)
    >>> as_schedule(lambda step: 1.0 / (step + 1))(3)
    0.25
    """
    if isinstance(obj, Schedule):
        return obj
    if isinstance(obj, numbers.Real) and not isinstance(obj, bool):
        return Constant(obj)
    if callable(obj):
        return FunctionSchedule(obj)
    raise TypeError(
        f"expected a Schedule, a number or a callable step -> float, got {obj!r} "
        f"({type(obj).__name__})"
    )


# ---------------------------------------------------------------------- names and registry
# The public constructors are the classes themselves under their registry names, so that
# `cosine(...)` is what the repr prints and what a checkpoint's dict names.

constant = Constant
step_decay = StepDecay
multistep = MultiStep
exponential = Exponential
cosine = Cosine
cosine_restarts = CosineRestarts
linear = Linear
warmup_cosine = WarmupCosine
one_cycle = OneCycle
one_cycle_momentum = OneCycleMomentum
polynomial = Polynomial
wsd = WarmupStableDecay
inverse_sqrt = InverseSqrt
join = Join

#: Every schedule buildable from keyword arguments, by public name (the command line's).
SCHEDULES: dict[str, type[Schedule]] = {
    kind.name: kind
    for kind in (
        Constant,
        StepDecay,
        MultiStep,
        Exponential,
        Cosine,
        CosineRestarts,
        Linear,
        WarmupCosine,
        OneCycle,
        OneCycleMomentum,
        Polynomial,
        WarmupStableDecay,
        InverseSqrt,
    )
}

# from_dict also rebuilds the combinators, whose arguments are schedules, not flags.
_DECODABLE: dict[str, type[Schedule]] = {**SCHEDULES, Join.name: Join, Product.name: Product}


def by_name(name: str, **arguments: Any) -> Schedule:
    """Build the schedule registered as ``name`` in ``SCHEDULES`` from keyword arguments.

    >>> by_name("cosine", peak=3e-3, total=10_000)
    cosine(peak=0.003, total=10000, floor=0.0)
    """
    return _kind_for(name, arguments, SCHEDULES)(**arguments)


def _kind_for(
    name: Any, arguments: Mapping[str, Any], registry: Mapping[str, type[Schedule]]
) -> type[Schedule]:
    """The class registered as ``name``, once ``arguments`` are known to name exactly what it
    takes: each misfit (a name that is not a string, unknown, an argument too many or missing)
    gets its own message, for by_name and from_dict alike."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a schedule's name (a str), got name={name!r} ({type(name).__name__})")
    if name not in registry:
        raise ValueError(f"unknown schedule name={name!r}; known: {sorted(registry)}")
    kind = registry[name]
    known = [field.name for field in dataclasses.fields(kind)]
    unknown = sorted(set(arguments) - set(known))
    if unknown:
        raise ValueError(f"unknown argument(s) {unknown} for {name}; it takes {known}")
    missing = [
        field.name
        for field in dataclasses.fields(kind)
        if field.name not in arguments
        and field.default is dataclasses.MISSING
        and field.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ValueError(f"missing argument(s) {missing} for {name}; it takes {known}")
    return kind


# ---------------------------------------------------------------------------- step helpers


def steps_per_epoch(
    num_examples: int, batch_size: int, drop_last: bool = False, accumulation: int = 1
) -> int:
    """The number of optimizer steps in one epoch.

    ``batches = ceil(num_examples / batch_size)`` (``floor`` with ``drop_last``, as a
    DataLoader counts), and ``steps = ceil(batches / accumulation)``: a partial accumulation
    at the end of an epoch still takes a step (as Lightning does).

    Args:
        num_examples: the size of the training set, >= 0.
        batch_size: examples per batch, >= 1.
        drop_last: drop the last incomplete batch. Default False.
        accumulation: batches whose gradients are accumulated per optimizer step, >= 1.

    >>> steps_per_epoch(1000, 32), steps_per_epoch(1000, 32, drop_last=True, accumulation=4)
    (32, 8)
    """
    num_examples = _check_integer("num_examples", num_examples, minimum=0)
    batch_size = _check_integer("batch_size", batch_size, minimum=1)
    accumulation = _check_integer("accumulation", accumulation, minimum=1)
    if validation.boolean("drop_last", drop_last):
        batches = num_examples // batch_size
    else:
        batches = -(-num_examples // batch_size)  # integer ceil, no float rounding
    return -(-batches // accumulation)


def epochs_to_steps(epochs: float, batches_per_epoch: int, accumulation: int = 1) -> int:
    """The number of optimizer steps in ``epochs`` epochs (rounded to the nearest step).

    ``steps = round(epochs * ceil(batches_per_epoch / accumulation))``; ``epochs`` may be
    fractional (a warm-up of half an epoch).

    Args:
        epochs: the number of epochs, >= 0.
        batches_per_epoch: batches per epoch (``len(loader)``), >= 1.
        accumulation: batches per optimizer step, >= 1. Default 1.

    >>> epochs_to_steps(10, batches_per_epoch=100, accumulation=4), epochs_to_steps(0.5, 30)
    (250, 15)
    """
    if _check_real("epochs", epochs) < 0:
        raise ValueError(f"epochs must be >= 0, got epochs={epochs!r}")
    batches_per_epoch = _check_integer("batches_per_epoch", batches_per_epoch, minimum=1)
    accumulation = _check_integer("accumulation", accumulation, minimum=1)
    return round(epochs * -(-batches_per_epoch // accumulation))


# ------------------------------------------------------------------------------------ plot


def plot(
    schedules: ScheduleLike | Sequence[ScheduleLike],
    steps: int | Iterable[int],
    path: str | None = None,
    ax: Any = None,
    labels: Sequence[str] | None = None,
) -> Any:
    """Plot one or several schedules against the step; write a PNG to ``path`` if given.

    Args:
        schedules: a schedule (or number, or callable), or a list of them.
        steps: the steps to sample: an int n means ``range(n)``, else any iterable of ints.
        path: where to save the figure (PNG unless the extension names another format).
        ax: a matplotlib Axes to draw on; by default a new figure is made.
        labels: one legend label per schedule; by default their reprs.

    Returns:
        The matplotlib Axes drawn on.
    """
    # Imported here: matplotlib costs a noticeable import time and is needed only to draw.
    # A bare Figure (not pyplot) renders PNGs with the Agg canvas and never touches the
    # user's global backend or opens a window.
    from matplotlib.figure import Figure

    items = list(schedules) if isinstance(schedules, (list, tuple)) else [schedules]
    if not items:
        raise ValueError("schedules must not be empty, got schedules=[]")
    resolved = [as_schedule(item) for item in items]
    sampled = _steps_to_sample(steps)
    if not sampled:
        raise ValueError(f"steps must not be empty, got steps={steps!r}")
    if labels is None:
        labels = [repr(schedule) for schedule in resolved]
    elif len(labels) != len(resolved):
        raise ValueError(
            f"need one label per schedule, got {len(labels)} labels for {len(resolved)} schedules"
        )
    if ax is None:
        ax = Figure(figsize=(8, 4.5), layout="constrained").add_subplot()
    for schedule, label in zip(resolved, labels, strict=True):
        ax.plot(sampled, schedule.values(sampled), label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("value")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    if path is not None:
        ax.figure.savefig(path, dpi=120)
    return ax
