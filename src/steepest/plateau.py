"""Reduce a hyperparameter when a reported metric stops improving, on top of any schedule.

``torch.optim.lr_scheduler.ReduceLROnPlateau`` cannot sit inside ``SequentialLR`` or be
combined with a warm-up: it rewrites the optimizer's rate from the rate it finds there.
Here the plateau logic only owns a multiplier, and the value it hands the optimizer is

    value(step) = max(min_value, schedule(step) * scale),   scale <- scale * factor on a plateau

so warm-up then cosine with plateau cuts on top is one object, and its state (the scale,
the best metric, the counters) is a small dict the optimizer saves in its state_dict.

Example:
    >>> from steepest import schedules
    >>> lr = reduce_on_plateau(schedules.warmup_cosine(peak=1e-3, warmup=100, total=10_000),
    ...                        factor=0.5, patience=3)
    >>> opt = steepest.AdamW(model.parameters(), lr=lr)
    >>> ...
    >>> opt.report(validation_loss)   # once per evaluation
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

from steepest.engine import validation


class ReduceOnPlateau:
    """A schedule times a multiplier that shrinks by ``factor`` when the metric plateaus.

    Unlike the pure schedules of :mod:`steepest.schedules`, this object has state, driven
    by :meth:`report`; an optimizer holding it saves and restores that state.

    Args:
        schedule: the underlying value: a float or any schedule ``step -> float``.
        factor: multiplier applied on a plateau, in (0, 1) (default 0.1).
        patience: reports without improvement tolerated before a cut (default 10).
        threshold: minimal improvement that counts (default 1e-4).
        threshold_mode: ``"rel"`` (best * (1 -+ threshold)) or ``"abs"`` (best -+ threshold).
        cooldown: reports to wait after a cut before counting again (default 0).
        min_value: the value never goes below this (default 0).
        mode: ``"min"`` (lower metric is better) or ``"max"``.

    The decisions follow torch.optim.lr_scheduler.ReduceLROnPlateau report for report.
    """

    def __init__(
        self,
        schedule: float | Callable[[int], float],
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_value: float = 0.0,
        mode: str = "min",
    ) -> None:
        if isinstance(schedule, numbers.Real) and not isinstance(schedule, bool):
            validation.nonnegative("schedule", schedule)
            constant = float(schedule)
            schedule = lambda step: constant  # noqa: E731 - a constant base value
        elif not callable(schedule):
            raise TypeError(f"schedule must be a number or a callable step -> float, got {schedule!r}")
        validation.positive("factor", factor)
        if factor >= 1.0:
            raise ValueError(f"factor must be < 1, got {factor!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience must be an int >= 0, got {patience!r}")
        if isinstance(cooldown, bool) or not isinstance(cooldown, int) or cooldown < 0:
            raise ValueError(f"cooldown must be an int >= 0, got {cooldown!r}")
        validation.nonnegative("threshold", threshold)
        validation.nonnegative("min_value", min_value)
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        self.schedule = schedule
        self.factor = float(factor)
        self.patience = patience
        self.threshold = float(threshold)
        self.threshold_mode = threshold_mode
        self.cooldown = cooldown
        self.min_value = float(min_value)
        self.mode = mode
        self.scale = 1.0
        self.best = math.inf if mode == "min" else -math.inf
        self.bad_reports = 0
        self.cooldown_left = 0
        self.reductions = 0

    def __call__(self, step: int) -> float:
        return max(self.min_value, self.schedule(step) * self.scale)

    def _improves(self, metric: float) -> bool:
        sign = -1.0 if self.mode == "min" else 1.0  # the direction an improvement moves in
        if self.threshold_mode == "rel":
            bar = self.best * (1 + sign * self.threshold)
        else:
            bar = self.best + sign * self.threshold
        return metric < bar if self.mode == "min" else metric > bar

    def report(self, metric: float, step: int = 0) -> bool:
        """Record one evaluation of the metric; True when the value was cut.

        ``step`` is the optimizer step the cut applies from; at a floor already reached by
        ``min_value`` no cut is counted.
        """
        metric = float(metric)
        if self._improves(metric):
            self.best = metric
            self.bad_reports = 0
        else:
            self.bad_reports += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.bad_reports = 0
        if self.bad_reports > self.patience:
            before = self(step)
            self.scale *= self.factor
            self.cooldown_left = self.cooldown
            self.bad_reports = 0
            if before - self(step) > 1e-8:  # torch's eps: a cut too small to matter is none
                self.reductions += 1
                return True
            self.scale /= self.factor
        return False

    def state_dict(self) -> dict[str, Any]:
        """The plateau state as plain numbers (readable with torch.load(weights_only=True))."""
        return {
            "scale": self.scale,
            "best": self.best,
            "bad_reports": self.bad_reports,
            "cooldown_left": self.cooldown_left,
            "reductions": self.reductions,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`'s output; a bad dict raises and changes nothing."""
        checked = validation.state_fields("state", state, "ReduceOnPlateau", _STATE_FIELDS)
        for name, value in checked.items():
            setattr(self, name, value)

    def __repr__(self) -> str:
        return (
            f"reduce_on_plateau({self.schedule!r}, factor={self.factor}, patience={self.patience}, "
            f"threshold={self.threshold}, cooldown={self.cooldown}, min_value={self.min_value}, "
            f"mode={self.mode!r}; scale={self.scale})"
        )


# How load_state_dict checks each field of the state.
_STATE_FIELDS: dict[str, validation.Check] = {
    "scale": validation.nonnegative,
    "best": validation.any_real,  # +-inf before the first report
    "bad_reports": validation.count,
    "cooldown_left": validation.count,
    "reductions": validation.count,
}


def reduce_on_plateau(
    schedule: float | Callable[[int], float],
    factor: float = 0.1,
    patience: int = 10,
    threshold: float = 1e-4,
    cooldown: int = 0,
    min_value: float = 0.0,
    *,
    mode: str = "min",
    threshold_mode: str = "rel",
) -> ReduceOnPlateau:
    """``max(min_value, schedule(step) * scale)``, scale cut by ``factor`` on each plateau.

    Example:
        >>> lr = reduce_on_plateau(1e-3, factor=0.5, patience=2)
        >>> opt = steepest.SGD(params, lr=lr); opt.report(val_loss)
    """
    return ReduceOnPlateau(
        schedule,
        factor=factor,
        patience=patience,
        threshold=threshold,
        threshold_mode=threshold_mode,
        cooldown=cooldown,
        min_value=min_value,
        mode=mode,
    )
