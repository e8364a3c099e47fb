"""Stopping criteria: small objects that look at one observation of a run and say stop or go.

A criterion is called once per check with an :class:`Observation` (the iteration, the
objective, the gradient and step norms, the elapsed time, accessors for the parameters and
gradients) and returns ``None`` to keep going or a :class:`Stop` that says why, whether
the run succeeded, and a status code. The same objects serve :func:`steepest.minimize.minimize`
(one check per iteration) and a training loop (one check per step, or per epoch with a
validation loss in ``Observation.metrics``): they know nothing of the loop that calls them.

Criteria combine with :func:`any_of` and :func:`all_of`, and checkpoint their state:
``state_dict()`` returns a dict of Python numbers (plus, for :func:`patience` with
``restore_best=True``, the best parameters as tensors) that ``torch.save`` writes and
``torch.load(weights_only=True)`` reads back; ``load_state_dict()`` resumes exactly.

>>> from steepest import stopping
>>> stop_when = stopping.any_of(stopping.gtol(1e-6, ord=2), stopping.max_iter(100))
>>> stop_when(stopping.Observation(iteration=3, fun=0.5, grad_norm=2e-6)) is None
True
>>> stop_when(stopping.Observation(iteration=4, fun=0.5, grad_norm=1e-7)).reason
'converged: gradient 2-norm 1e-07 <= gtol=1e-06'

Each criterion is a class (``GradientTolerance``) with a short lower-case alias named as
in scipy (``gtol``), as the schedules are; the aliases are what examples use.

Status codes (:class:`Status`) are distinct per reason; ``success`` says whether the reason
is a convergence test being met (gtol, ftol, xtol, target, patience) or a limit or failure
(max_iter, max_time, divergence, stalled).
"""

from __future__ import annotations

import math
import numbers
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar

import torch
from torch import Tensor

from steepest.clipping import global_norm
from steepest.engine import validation

__all__ = [
    "AllOf",
    "AnyOf",
    "Criterion",
    "CriterionLike",
    "Divergence",
    "FunctionTolerance",
    "GradientTolerance",
    "MaxIterations",
    "MaxTime",
    "Observation",
    "Patience",
    "Stalled",
    "Status",
    "StepTolerance",
    "Stop",
    "Target",
    "all_of",
    "any_of",
    "divergence",
    "ftol",
    "gtol",
    "max_iter",
    "max_time",
    "patience",
    "stalled",
    "target",
    "xtol",
]


class Status(IntEnum):
    """Why a run stopped, one code per reason (``Stop.status`` / ``Result.status``)."""

    GRADIENT_TOLERANCE = 0  # gtol: the gradient norm is small enough (success)
    FUNCTION_TOLERANCE = 1  # ftol: the objective stopped changing (success)
    STEP_TOLERANCE = 2  # xtol: the parameters stopped moving (success)
    TARGET_REACHED = 3  # target: the objective reached the value asked for (success)
    NO_IMPROVEMENT = 4  # patience: no improvement for n checks (success: an asked-for end)
    MAX_ITERATIONS = 5  # max_iter: the iteration budget is spent (failure)
    MAX_TIME = 6  # max_time: the time budget is spent (failure)
    DIVERGED = 7  # divergence: the objective is not finite or blew up (failure)
    NO_PROGRESS = 8  # stalled: updates leave the parameters unchanged (failure)


@dataclass(frozen=True)
class Stop:
    """A criterion's decision to stop: why, whether it is a success, and a status code.

    Args:
        reason: the reason in words, e.g. ``"converged: gradient inf-norm 3e-06 <= gtol=1e-05"``.
        success: True for a convergence test met, False for a limit reached or a failure.
        status: a :class:`Status` code (any int for a user-written criterion).
        best_iteration: set by :func:`patience` with ``restore_best=True``: the iteration
            whose parameters ``best_params`` holds.
        best_params: copies of the parameters at ``best_iteration``, in the order of
            ``Observation.params()``; the loop copies them back with :meth:`restore_best`.
    """

    reason: str
    success: bool
    status: int
    best_iteration: int | None = None
    best_params: tuple[Tensor, ...] | None = field(default=None, repr=False, compare=False)

    @torch.no_grad()
    def restore_best(self, params: Sequence[Tensor]) -> bool:
        """Copy ``best_params`` into ``params`` (in place); False when there is nothing to copy."""
        if self.best_params is None:
            return False
        if len(params) != len(self.best_params):
            raise ValueError(f"params has {len(params)} tensors but best_params has {len(self.best_params)}")
        for param, best in zip(params, self.best_params):
            param.copy_(best)
        return True


@dataclass(frozen=True)
class Observation:
    """What a criterion sees at one check of a run.

    Args:
        iteration: updates done so far (0 at the starting point).
        fun: the objective at the current parameters (a mini-batch loss in stochastic runs).
        grad_norm: Euclidean (2-)norm of the whole gradient at the current parameters, or None.
        step_norm: Euclidean norm of the last update ``x_k - x_{k-1}``; None before the first.
        elapsed: seconds since the run started.
        params: returns the live parameter tensors (for :func:`patience` to copy the best).
        gradients: returns the gradient tensors (for norms other than the 2-norm).
        metrics: other monitored values by name, e.g. ``{"val_loss": 0.31}`` in a training loop.

    Example:
        >>> seen = Observation(iteration=10, fun=0.25, gradients=lambda: [torch.tensor([3.0, -4.0])])
        >>> seen.gradient_norm(2), seen.gradient_norm(math.inf)
        (5.0, 4.0)
    """

    iteration: int
    fun: float
    grad_norm: float | None = None
    step_norm: float | None = None
    elapsed: float = 0.0
    params: Callable[[], Sequence[Tensor]] | None = field(default=None, repr=False)
    gradients: Callable[[], Sequence[Tensor]] | None = field(default=None, repr=False)
    metrics: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A training loop builds its observations by hand: an objective that is not a number
        # is refused here, named, not deep inside whichever criterion reads it first.
        fun = self.fun
        if isinstance(fun, Tensor):
            if fun.numel() != 1:
                raise ValueError(f"fun must be a single number, got a tensor of shape {tuple(fun.shape)}")
        elif isinstance(fun, bool) or not isinstance(fun, numbers.Real):
            raise TypeError(f"fun must be a real number, got fun={fun!r:.80} ({type(fun).__name__})")

    def gradient_norm(self, ord: float = 2.0) -> float | None:
        """The ``ord``-norm of the whole gradient (all tensors as one vector), None if unknown.

        The 2-norm is ``grad_norm`` when given; other orders are computed from ``gradients``.
        """
        if ord == 2 and self.grad_norm is not None:
            return float(self.grad_norm)
        if self.gradients is None:
            return None
        return float(global_norm(list(self.gradients()), ord))


# A criterion is any callable Observation -> Stop | None; the classes below also checkpoint.
CriterionLike = Callable[[Observation], "Stop | None"]


# --------------------------------------------------------------------------- validation
# User errors raise ValueError / TypeError naming the argument and its value, never assert.


_check_real = validation.any_real  # (the checks below say which non-finite values they take)


def _check_nonnegative(name: str, value: Any) -> float:
    result = _check_real(name, value)
    if not (math.isfinite(result) and result >= 0.0):
        raise ValueError(f"{name} must be a finite number >= 0, got {name}={value!r}")
    return result


def _check_positive(name: str, value: Any, allow_inf: bool = False) -> float:
    result = _check_real(name, value)
    if math.isnan(result) or result <= 0.0 or (math.isinf(result) and not allow_inf):
        bound = "> 0 (or inf)" if allow_inf else "a finite number > 0"
        raise ValueError(f"{name} must be {bound}, got {name}={value!r}")
    return result


_check_count = validation.positive_integer  # a count: floats such as 2.0 are refused


def _check_norm_order(name: str, value: Any) -> float:
    result = _check_real(name, value)
    if not (result >= 1.0):  # also refuses nan
        raise ValueError(f"{name} must be >= 1 (or inf), got {name}={value!r}")
    return result


def _norm_name(ord: float) -> str:
    return "inf" if math.isinf(ord) else f"{ord:g}"


# ----------------------------------------------------------------------------- base class


class Criterion:
    """Base class: a callable ``Observation -> Stop | None`` whose state checkpoints.

    Subclasses set ``kind`` (the name written in their state_dict) and implement
    ``__call__``; stateful ones also override :meth:`reset`, :meth:`_state` and
    :meth:`_load_state`.
    """

    kind: ClassVar[str]

    def __call__(self, observation: Observation) -> Stop | None:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget everything seen, as if freshly built (a no-op for stateless criteria)."""

    def _state(self) -> dict[str, Any]:
        return {}

    def _state_fields(self) -> dict[str, validation.Check]:
        """How each field of :meth:`_state` is checked on loading (none for stateless ones)."""
        return {}

    # Fields a state_dict may lack, with the value they then take.
    _state_defaults: ClassVar[Mapping[str, Any]] = {}

    def _checked_state(self, state_dict: Any, name: str = "state_dict") -> dict[str, Any]:
        """``state_dict``'s fields, checked: a ValueError or TypeError here leaves ``self`` as it was.

        ``name`` is what the messages call the dict (a part of a combination's is nested).
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                f"{name} must be the dict {self.kind}.state_dict() returns, got {type(state_dict).__name__}"
            )
        if state_dict.get("kind") != self.kind:
            found = state_dict.get("kind")
            raise ValueError(f"{name} is not the state of a {self.kind} criterion (kind={found!r})")
        owner = f"{self.kind} criterion"
        checked = validation.state_fields(name, state_dict, owner, self._state_fields(), self._state_defaults)
        # Over the whole dict: a subclass that declares no fields still gets its state as saved.
        return {**state_dict, **checked}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        """Set the state from :meth:`_checked_state`'s output (which cannot fail half-way)."""

    def state_dict(self) -> dict[str, Any]:
        """The state as a plain dict (``kind`` and Python numbers; tensors only for patience)."""
        return {"kind": self.kind, **self._state()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`'s output; the kinds must match.

        Every field is checked before any is set: a bad dict raises a ValueError or
        TypeError naming the field and changes nothing.
        """
        self._load_state(self._checked_state(state_dict))

    def __repr__(self) -> str:
        settings = ", ".join(f"{key}={value!r}" for key, value in self._settings().items())
        return f"{self.kind}({settings})"

    def _settings(self) -> dict[str, Any]:
        return {}


# --------------------------------------------------------------------------- limits


class MaxIterations(Criterion):
    """Stop once ``n`` iterations (updates) are done: ``iteration >= n``. A failure.

    Args:
        n: the iteration budget, an integer >= 1.

    Example:
        >>> max_iter(100)(Observation(iteration=100, fun=1.0)).reason
        'stopped at the iteration limit max_iter=100'
    """

    kind = "max_iter"

    def __init__(self, n: int) -> None:
        self.n = _check_count("n", n)

    def _settings(self) -> dict[str, Any]:
        return {"n": self.n}

    def __call__(self, observation: Observation) -> Stop | None:
        if observation.iteration >= self.n:
            return Stop(
                f"stopped at the iteration limit max_iter={self.n}",
                success=False,
                status=Status.MAX_ITERATIONS,
            )
        return None


class MaxTime(Criterion):
    """Stop once ``seconds`` have elapsed: ``elapsed >= seconds``. A failure.

    The clock is the loop's (``Observation.elapsed``), so a resumed run that adds the time
    of its earlier part keeps one budget.

    Args:
        seconds: the time budget, > 0.

    Example:
        >>> max_time(60)(Observation(iteration=7, fun=1.0, elapsed=61.0)).status
        <Status.MAX_TIME: 6>
    """

    kind = "max_time"

    def __init__(self, seconds: float) -> None:
        self.seconds = _check_positive("seconds", seconds)

    def _settings(self) -> dict[str, Any]:
        return {"seconds": self.seconds}

    def __call__(self, observation: Observation) -> Stop | None:
        if observation.elapsed >= self.seconds:
            return Stop(
                f"stopped at the time limit max_time={self.seconds:g} s "
                f"(elapsed {observation.elapsed:.3g} s)",
                success=False,
                status=Status.MAX_TIME,
            )
        return None


# --------------------------------------------------------------------------- convergence


class FunctionTolerance(Criterion):
    """Stop when the objective stops changing, relative to its size.

    ``|f_prev - f| / max(|f_prev|, |f|, 1) <= tol``: scipy's L-BFGS-B test, with the change
    taken in absolute value so that an increase (possible without a line search) is not
    mistaken for convergence; for a decreasing objective the two are the same. With
    ``window=w > 1``, ``f_prev`` and ``f`` are the means of the last ``2w`` values' two
    halves (the previous ``w`` checks against the latest ``w``), which smooths the noise of
    a stochastic objective; the test starts once ``2w`` values are in. Non-finite values
    never satisfy it.

    Args:
        tol: the relative change at or below which the run has converged, >= 0.
        window: checks averaged on each side of the comparison (default 1).

    Example:
        >>> criterion = ftol(1e-9)
        >>> criterion(Observation(iteration=0, fun=2.0)) is None
        True
        >>> criterion(Observation(iteration=1, fun=2.0)).success
        True
    """

    kind = "ftol"

    def __init__(self, tol: float, window: int = 1) -> None:
        self.tol = _check_nonnegative("tol", tol)
        self.window = _check_count("window", window)
        self._values: deque[float] = deque(maxlen=2 * self.window)

    def _settings(self) -> dict[str, Any]:
        return {"tol": self.tol, "window": self.window}

    def reset(self) -> None:
        self._values.clear()

    def _state(self) -> dict[str, Any]:
        return {"values": list(self._values)}

    def _state_fields(self) -> dict[str, validation.Check]:
        return {"values": validation.list_of(_check_real)}  # non-finite values are kept, as observed

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self._values = deque(state["values"], maxlen=2 * self.window)

    def __call__(self, observation: Observation) -> Stop | None:
        self._values.append(float(observation.fun))
        if len(self._values) < 2 * self.window:
            return None
        values = list(self._values)
        previous = math.fsum(values[: self.window]) / self.window
        latest = math.fsum(values[self.window :]) / self.window
        change = abs(previous - latest) / max(abs(previous), abs(latest), 1.0)
        if change <= self.tol:  # False for nan
            where = "" if self.window == 1 else f" (means over windows of {self.window})"
            return Stop(
                f"converged: relative change of the objective {change:.3g} <= ftol={self.tol:g}{where}",
                success=True,
                status=Status.FUNCTION_TOLERANCE,
            )
        return None


class GradientTolerance(Criterion):
    """Stop when the gradient is small: ``||grad f||_ord <= tol``.

    The norm is over all parameters as one vector. scipy's L-BFGS-B and BFGS use the
    inf-norm (largest absolute component; the projected gradient, which without bounds is
    the gradient), the default here; ``ord=2`` is the Euclidean norm of ``grad_norm``.

    Args:
        tol: the gradient norm at or below which the run has converged, >= 0.
        ord: the norm's order, >= 1 or ``math.inf`` (default inf).

    Example:
        >>> gtol(1e-5, ord=2)(Observation(iteration=4, fun=0.0, grad_norm=1e-6)).status
        <Status.GRADIENT_TOLERANCE: 0>
    """

    kind = "gtol"

    def __init__(self, tol: float, ord: float = math.inf) -> None:
        self.tol = _check_nonnegative("tol", tol)
        self.ord = _check_norm_order("ord", ord)

    def _settings(self) -> dict[str, Any]:
        return {"tol": self.tol, "ord": self.ord}

    def __call__(self, observation: Observation) -> Stop | None:
        norm = observation.gradient_norm(self.ord)
        if norm is None:
            raise ValueError(
                f"gtol(ord={_norm_name(self.ord)}) needs the gradient: the observation has "
                "neither gradients nor (for ord=2) grad_norm"
            )
        if norm <= self.tol:
            return Stop(
                f"converged: gradient {_norm_name(self.ord)}-norm {norm:.3g} <= gtol={self.tol:g}",
                success=True,
                status=Status.GRADIENT_TOLERANCE,
            )
        return None


class StepTolerance(Criterion):
    """Stop when the parameters stop moving: ``||x_k - x_{k-1}||_2 <= tol``.

    The Euclidean norm of the last update (``Observation.step_norm``) over all parameters;
    nothing is tested before the first update. Adaptive methods (Adam, ...) take steps of
    about ``lr`` whatever the gradient, so this test suits line-search and Newton methods.

    Args:
        tol: the step norm at or below which the run has converged, >= 0.

    Example:
        >>> xtol(1e-8)(Observation(iteration=9, fun=1.0, step_norm=0.0)).success
        True
    """

    kind = "xtol"

    def __init__(self, tol: float) -> None:
        self.tol = _check_nonnegative("tol", tol)

    def _settings(self) -> dict[str, Any]:
        return {"tol": self.tol}

    def __call__(self, observation: Observation) -> Stop | None:
        step = observation.step_norm
        if step is not None and step <= self.tol:
            return Stop(
                f"converged: step norm {step:.3g} <= xtol={self.tol:g}",
                success=True,
                status=Status.STEP_TOLERANCE,
            )
        return None


def monitored_value(monitor: str | Callable[[Observation], float], observation: Observation) -> float:
    """The value a criterion watches: an observation field, a metric by name, or a callable."""
    if callable(monitor):
        return float(monitor(observation))
    if monitor in observation.metrics:
        return float(observation.metrics[monitor])
    if monitor in ("fun", "grad_norm", "step_norm"):
        value = getattr(observation, monitor)
        return math.nan if value is None else float(value)
    raise ValueError(
        f"monitor={monitor!r} is neither an observation field (fun, grad_norm, "
        f"step_norm) nor a key of its metrics {sorted(observation.metrics)}"
    )


class Target(Criterion):
    """Stop when a monitored value reaches a target: ``f <= value`` (``mode="max"``: ``>=``).

    Args:
        value: the value to reach (finite).
        monitor: what to watch: ``"fun"`` (default), a metric name such as ``"val_accuracy"``,
            or a callable ``Observation -> float``.
        mode: ``"min"`` (reach from above, default) or ``"max"`` (reach from below).

    Example:
        >>> target(0.01)(Observation(iteration=5, fun=0.009)).status
        <Status.TARGET_REACHED: 3>
        >>> target(0.97, monitor="val_accuracy", mode="max")  # doctest: +SKIP
    """

    kind = "target"

    def __init__(
        self, value: float, monitor: str | Callable[[Observation], float] = "fun", mode: str = "min"
    ) -> None:
        self.value = _check_real("value", value)
        if not math.isfinite(self.value):
            raise ValueError(f"value must be finite, got value={value!r}")
        self.mode = validation.choice("mode", mode, ("min", "max"))
        if not (isinstance(monitor, str) or callable(monitor)):
            raise TypeError(
                f"monitor must be a name or a callable Observation -> float, got monitor={monitor!r}"
            )
        self.monitor = monitor

    def _settings(self) -> dict[str, Any]:
        return {"value": self.value, "monitor": self.monitor, "mode": self.mode}

    def __call__(self, observation: Observation) -> Stop | None:
        current = monitored_value(self.monitor, observation)
        reached = current <= self.value if self.mode == "min" else current >= self.value
        if reached:
            name = "objective" if self.monitor == "fun" else str(self.monitor)
            sign = "<=" if self.mode == "min" else ">="
            return Stop(
                f"reached the target: {name} {current:.6g} {sign} {self.value:g}",
                success=True,
                status=Status.TARGET_REACHED,
            )
        return None


# --------------------------------------------------------------------------- progress


class Patience(Criterion):
    """Stop after ``n`` checks in a row without improvement of a monitored value.

    Improvement (mode "min"): ``value < best - min_delta``; (mode "max"):
    ``value > best + min_delta``. Non-finite values never improve. With
    ``restore_best=True`` it keeps a copy of the parameters at the best check and hands
    them over in the :class:`Stop` (``best_params``, ``best_iteration``) for the loop to
    restore; this needs ``Observation.params``. Checks are calls: once per iteration in
    ``minimize``, once per epoch when a training loop checks a validation loss.

    Args:
        n: checks without improvement before stopping, >= 1.
        min_delta: the least change that counts as an improvement, >= 0 (default 0).
        mode: ``"min"`` (default) or ``"max"`` (an accuracy).
        restore_best: keep and hand over the best parameters (default True).
        monitor: ``"fun"`` (default), ``"grad_norm"``, a key of ``Observation.metrics``
            (``"val_loss"``), or a callable ``Observation -> float``.

    Example:
        >>> early_stop = patience(5, monitor="val_loss", restore_best=False)
        >>> early_stop(Observation(iteration=0, fun=1.0, metrics={"val_loss": 0.4})) is None
        True
    """

    kind = "patience"

    def __init__(
        self,
        n: int,
        min_delta: float = 0.0,
        mode: str = "min",
        restore_best: bool = True,
        monitor: str | Callable[[Observation], float] = "fun",
    ) -> None:
        self.n = _check_count("n", n)
        self.min_delta = _check_nonnegative("min_delta", min_delta)
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got mode={mode!r}")
        self.mode = mode
        if not isinstance(restore_best, bool):
            raise TypeError(f"restore_best must be True or False, got restore_best={restore_best!r}")
        self.restore_best = restore_best
        if not (isinstance(monitor, str) or callable(monitor)):
            raise TypeError(
                f"monitor must be a name or a callable Observation -> float, got monitor={monitor!r}"
            )
        self.monitor = monitor
        self.reset()

    def _settings(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "min_delta": self.min_delta,
            "mode": self.mode,
            "restore_best": self.restore_best,
            "monitor": self.monitor,
        }

    def reset(self) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_iteration: int | None = None
        self.checks_without_improvement = 0
        self.best_params: list[Tensor] | None = None

    def _state(self) -> dict[str, Any]:
        best_params = None
        if self.best_params is not None:
            best_params = [tensor.clone() for tensor in self.best_params]
        return {
            "best": self.best,
            "best_iteration": self.best_iteration,
            "checks_without_improvement": self.checks_without_improvement,
            "best_params": best_params,
        }

    _state_defaults = {"best_params": None}

    def _state_fields(self) -> dict[str, validation.Check]:
        return {
            "best": _check_real,  # +-inf before the first finite value
            "best_iteration": validation.optional(validation.count),
            "checks_without_improvement": validation.count,
            "best_params": validation.optional(validation.list_of(validation.tensor)),
        }

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self.best = state["best"]
        self.best_iteration = state["best_iteration"]
        self.checks_without_improvement = state["checks_without_improvement"]
        best_params = state["best_params"]
        self.best_params = None if best_params is None else [t.clone() for t in best_params]

    def _monitored(self, observation: Observation) -> float:
        return monitored_value(self.monitor, observation)

    def _improves(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    @torch.no_grad()
    def _keep_params(self, observation: Observation) -> None:
        if observation.params is None:
            raise ValueError(
                "patience(restore_best=True) needs Observation.params to copy the best "
                "parameters; pass restore_best=False to only stop"
            )
        params = list(observation.params())
        if self.best_params is None or len(self.best_params) != len(params):
            self.best_params = [p.detach().clone() for p in params]
        else:
            for kept, param in zip(self.best_params, params):
                kept.copy_(param)

    def __call__(self, observation: Observation) -> Stop | None:
        value = self._monitored(observation)
        if self._improves(value):
            self.best = value
            self.best_iteration = observation.iteration
            self.checks_without_improvement = 0
            if self.restore_best:
                self._keep_params(observation)
            return None
        self.checks_without_improvement += 1
        if self.checks_without_improvement < self.n:
            return None
        name = self.monitor if isinstance(self.monitor, str) else "the monitored value"
        reason = (
            f"no improvement of {name} by more than min_delta={self.min_delta:g} for "
            f"{self.n} checks (best {self.best:.6g} at iteration {self.best_iteration})"
        )
        restore = self.restore_best and self.best_params is not None
        if restore:
            reason += "; restored the best parameters"
        return Stop(
            reason,
            success=True,
            status=Status.NO_IMPROVEMENT,
            best_iteration=self.best_iteration if restore else None,
            best_params=tuple(t.clone() for t in self.best_params) if restore else None,
        )


class Divergence(Criterion):
    """Stop when the objective is not finite or has blown up. A failure.

    Diverged when ``f`` is nan or inf, or ``f > max(f_0, f_best + factor * |f_best|)``,
    with ``f_0`` the first value checked and ``f_best`` the lowest so far.

    Why both terms: ``f_best + factor * |f_best|`` alone measures a blow-up relative to the
    best value's size, which is sound when ``|f_best|`` sets the problem's scale but, on a
    problem whose optimum is ~0, flags the ordinary wobble of a run that has converged
    (``|f_best|`` tiny); the floor ``f_0`` keeps anything below the starting value from
    counting. Conversely, once ``f_best ~ 0``, a loss that climbs back above where it
    started is flagged, which a test scaled by ``max(|f_best|, 1)`` (scipy's ftol scale)
    would miss until ``f > factor``. A run that never improves (``f_best = f_0 > 0``) is
    flagged at ``f > (1 + factor) f_0``.

    Args:
        factor: how many times ``|f_best|`` above the best counts as a blow-up, > 0
            (default 10). ``math.inf`` flags only non-finite values.

    Example:
        >>> check = divergence(factor=10)
        >>> check(Observation(iteration=0, fun=1.0)) is None
        True
        >>> check(Observation(iteration=1, fun=12.0)).reason
        'diverged: objective 12 > max(initial 1, best 1 + factor=10 * |best|)'
    """

    kind = "divergence"

    def __init__(self, factor: float = 10.0) -> None:
        self.factor = _check_positive("factor", factor, allow_inf=True)
        self.reset()

    def _settings(self) -> dict[str, Any]:
        return {"factor": self.factor}

    def reset(self) -> None:
        self.initial: float | None = None
        self.best: float | None = None

    def _state(self) -> dict[str, Any]:
        return {"initial": self.initial, "best": self.best}

    def _state_fields(self) -> dict[str, validation.Check]:
        return {"initial": validation.optional(_check_real), "best": validation.optional(_check_real)}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self.initial = state["initial"]
        self.best = state["best"]

    def __call__(self, observation: Observation) -> Stop | None:
        value = float(observation.fun)
        if not math.isfinite(value):
            return Stop(
                f"diverged: objective is {value} at iteration {observation.iteration}",
                success=False,
                status=Status.DIVERGED,
            )
        if self.initial is None or self.best is None:
            self.initial = self.best = value
            return None
        if value < self.best:
            self.best = value
            return None
        if math.isinf(self.factor):
            return None  # inf * |best| is nan when best == 0; only non-finite values count
        threshold = max(self.initial, self.best + self.factor * abs(self.best))
        if value > threshold:
            return Stop(
                f"diverged: objective {value:.6g} > max(initial {self.initial:.6g}, "
                f"best {self.best:.6g} + factor={self.factor:g} * |best|)",
                success=False,
                status=Status.DIVERGED,
            )
        return None


class Stalled(Criterion):
    """Stop when ``n`` updates in a row left the parameters exactly unchanged. A failure.

    ``step_norm == 0`` for ``n`` consecutive checks. A line-search method (L-BFGS) that
    finds no step decreasing the objective leaves the parameters where they are (the
    objective is flat to rounding error there, or the direction is useless); repeating
    cannot help. The default ``n=2`` lets a method that restarts from steepest descent
    after one failed search (as L-BFGS does) try once more.

    Args:
        n: consecutive unchanged updates before stopping, >= 1 (default 2).

    Example:
        >>> criterion = stalled(2)
        >>> criterion(Observation(iteration=5, fun=1.0, step_norm=0.0)) is None
        True
        >>> criterion(Observation(iteration=6, fun=1.0, step_norm=0.0)).status
        <Status.NO_PROGRESS: 8>
    """

    kind = "stalled"

    def __init__(self, n: int = 2) -> None:
        self.n = _check_count("n", n)
        self.reset()

    def _settings(self) -> dict[str, Any]:
        return {"n": self.n}

    def reset(self) -> None:
        self.unchanged = 0

    def _state(self) -> dict[str, Any]:
        return {"unchanged": self.unchanged}

    def _state_fields(self) -> dict[str, validation.Check]:
        return {"unchanged": validation.count}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self.unchanged = state["unchanged"]

    def __call__(self, observation: Observation) -> Stop | None:
        if observation.step_norm is None:
            return None
        self.unchanged = self.unchanged + 1 if observation.step_norm == 0.0 else 0
        if self.unchanged >= self.n:
            return Stop(
                f"no progress: {self.n} updates in a row left the parameters unchanged (a "
                "line search found no decrease: the objective is flat to rounding error "
                "here; loosen gtol, or set ftol)",
                success=False,
                status=Status.NO_PROGRESS,
            )
        return None


# --------------------------------------------------------------------------- combinators


def _kind_of(criterion: CriterionLike) -> str:
    return getattr(criterion, "kind", None) or getattr(criterion, "__name__", type(criterion).__name__)


class _Combination(Criterion):
    """Children checked at every observation (so stateful ones never miss one)."""

    def __init__(self, *criteria: CriterionLike) -> None:
        if len(criteria) == 1 and isinstance(criteria[0], (list, tuple)):
            criteria = tuple(criteria[0])
        if not criteria:
            raise ValueError(f"{self.kind}() needs at least one criterion, got none")
        for index, criterion in enumerate(criteria):
            if not callable(criterion):
                raise TypeError(
                    f"criteria[{index}] must be a criterion (a callable Observation -> "
                    f"Stop | None), got {criterion!r}"
                )
        self.criteria: tuple[CriterionLike, ...] = tuple(criteria)
        # State is stored by name, not by position, so that reordering criteria of
        # different kinds does not load one's state into another; repeats get a suffix.
        self._names: list[str] = []
        for criterion in self.criteria:
            base = _kind_of(criterion)
            name, count = base, 1
            while name in self._names:
                name, count = f"{base}_{count}", count + 1
            self._names.append(name)

    def __repr__(self) -> str:
        return f"{self.kind}({', '.join(repr(c) for c in self.criteria)})"

    def reset(self) -> None:
        for criterion in self.criteria:
            if hasattr(criterion, "reset"):
                criterion.reset()

    def _state(self) -> dict[str, Any]:
        return {
            "criteria": {
                name: criterion.state_dict() if hasattr(criterion, "state_dict") else {}
                for name, criterion in zip(self._names, self.criteria)
            }
        }

    def _state_fields(self) -> dict[str, validation.Check]:
        return {"criteria": self._check_parts}

    def _check_parts(self, name: str, saved: Any) -> dict[str, Any]:
        """Every part checked before any is loaded: the criteria of this module in full, a
        user-written part's state taken as it is (its own load_state_dict is all it gets)."""
        if not isinstance(saved, Mapping):
            raise TypeError(f"{name} must be a dict of states by name, got {type(saved).__name__}")
        if sorted(saved) != sorted(self._names):
            raise ValueError(
                f"state_dict holds criteria {sorted(saved)}, this {self.kind} has {sorted(self._names)}"
            )
        return {
            part: criterion._checked_state(saved[part], f"{name}[{part!r}]")
            if isinstance(criterion, Criterion)
            else saved[part]
            for part, criterion in zip(self._names, self.criteria)
        }

    def _load_state(self, state: Mapping[str, Any]) -> None:
        parts = state["criteria"]
        # User-written parts first: their loading is the only check they get, so if one fails
        # the checked parts, which cannot fail, have not been loaded yet.
        for name, criterion in zip(self._names, self.criteria):
            if not isinstance(criterion, Criterion) and hasattr(criterion, "load_state_dict"):
                criterion.load_state_dict(parts[name])
        for name, criterion in zip(self._names, self.criteria):
            if isinstance(criterion, Criterion):
                criterion._load_state(parts[name])

    def _decisions(self, observation: Observation) -> list[Stop | None]:
        return [criterion(observation) for criterion in self.criteria]


class AnyOf(_Combination):
    """Stop as soon as one criterion says stop; the first in the given order speaks.

    Every criterion is called at every check, so stateful ones stay in step.

    Example:
        >>> stop_when = any_of(gtol(1e-5), ftol(1e-9), max_iter(1000))
    """

    kind = "any_of"

    def __call__(self, observation: Observation) -> Stop | None:
        decisions = self._decisions(observation)
        return next((stop for stop in decisions if stop is not None), None)


class AllOf(_Combination):
    """Stop when every criterion says stop at the same check.

    The reasons are joined with "and"; the run succeeded if every part did; the status
    is the first criterion's; best parameters come from the first criterion that has them.

    Example:
        >>> stop_when = all_of(ftol(1e-9), gtol(1e-3))  # flat *and* nearly stationary
    """

    kind = "all_of"

    def __call__(self, observation: Observation) -> Stop | None:
        decisions = self._decisions(observation)
        if any(stop is None for stop in decisions):
            return None
        stops: list[Stop] = decisions  # type: ignore[assignment]
        with_params = next((stop for stop in stops if stop.best_params is not None), None)
        return Stop(
            " and ".join(stop.reason for stop in stops),
            success=all(stop.success for stop in stops),
            status=stops[0].status,
            best_iteration=None if with_params is None else with_params.best_iteration,
            best_params=None if with_params is None else with_params.best_params,
        )


# Short names, as scipy spells the options and as the schedules are aliased.
max_iter = MaxIterations
max_time = MaxTime
ftol = FunctionTolerance
gtol = GradientTolerance
xtol = StepTolerance
target = Target
patience = Patience
divergence = Divergence
stalled = Stalled
any_of = AnyOf
all_of = AllOf
