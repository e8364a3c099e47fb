"""Is the learning rate too large, too small, or good? A live diagnosis from a few numbers per step.

The source documents describe three regimes: a rate that is too large overshoots, oscillates or
diverges; one that is too small crawls; a good one moves steadily to the minimum. A
:class:`RegimeMonitor` receives, at every step, the loss and optionally the gradient norm, the
update-to-parameter norm ratio ||delta theta|| / ||theta|| and the learning rate, and once per
window of steps says which regime it sees, with the numbers it used and a sentence of advice.

The evidence, checked in this order (the first that holds decides). "This rate" is the rate
since it last jumped by 2x or more from one step to the next (a cut, not a schedule's gradual
decay); "the reference" is the loss when it took over (the run's first loss at the start). A
rise of the loss only counts once it gives back ``rise_tolerance`` of the progress this rate
made (reference minus the lowest level reached): a converged run's wobble, 1e-30 to 3e-30 or
0.02 to 0.04 in a fitted network's batch noise, is not an overshoot.

* ``too_large``
  1. the loss (or the gradient norm) is not finite: diverged; reported at once, mid-window;
  2. the loss rose within the window: the median of its second half is at least 50% above the
     median of its first half, by more than ``significance`` noise standard errors;
  3. the loss ends above the reference, clearly: by more than ``rise_tolerance``, and twice as
     high, or beyond noise, or above it at every step, or after a peak (a median over a
     quarter window) at twice the reference. A large rate does not always produce a NaN: on
     logistic regression or a small network it throws the iterate to worse places and the
     loss simply ends above where it started;
  4. the loss oscillates without net progress: at least half of the steps change direction
     (the sign of the loss's change from one step to the next, which to first order is the
     sign of the directional derivative along the step, g . delta theta: read from the loss,
     it needs no extra pass over the parameters and holds for any optimizer), the robust
     (Theil-Sen) net decrease is under 10% of the distance the loss travelled, the swings
     exceed 5% of the loss, the loss is no better than half its first value, the parameters
     are not standing still, the swings are within 10x of what the steps can do to
     the loss to first order (gradient norm x step length, when the step length is reported:
     beyond that they are the batches' noise, as at a rate far too small), the level is not a
     new low (2 standard errors below the lowest of this rate's earlier windows) under swings
     beyond the steps' effect (a run descending through its batch noise), and the rate did not
     fall 10x within the window;
  5. the loss climbed back: the window's level (median of log loss) is 2x or more the lowest
     level this rate had reached, beyond noise. A constant rate too large for a network finds
     a low and loses it again, with batch noise that drowns any single window's rise;
  6. the loss is stuck: not clearly below the reference (within ``rise_tolerance``) after this
     rate was found too large (the damage stays), or for ``patience`` windows while the
     gradient norm fell below half its value when the rate took over: the steps moved the
     weights, not the loss. That is a network killed by its rate (dead or saturated units),
     sitting at chance where it started; a rate too small leaves the gradient where it was.
* ``too_small``: ``patience`` windows in a row of a crawl: the loss fell by less than
  ``slow_rate`` (relative) per step without rising, steadily (beyond noise), or without this
  rate ever having made it fall fast (a stall after a fast fall is a noise floor, a plateau
  or convergence, not a rate too small); not near a stationary point; not while the loss, not
  falling, swings under 0.2 of what the steps could do to it (gradient norm x step length, when
  reported: it no longer follows the steps, which are not small); and either the
  parameters barely move or the loss is still above ``progress_fraction`` of its first value;
  never while the update ratio is 10x ``small_update`` or more (then the steps are large and
  slowness has another cause: a plateau, a saddle), nor while the rate rose by 1% or more over
  the window (a warm-up starts small on purpose). The parameters barely move when the update
  ratio is below ``small_update``, or when no step of the run changed the gradient norm by
  10%: in the quadratic model a step changes the stiffest direction's gradient by
  lr lambda_max, so that is lr lambda_max < 0.1 where a good rate has about 1. Near a
  stationary point: the gradient norm is below ``stationary_fraction`` of its first value and
  got there by real steps (one of them changed it by 10% or more). The stationarity guard
  separates a crawl from convergence: both decrease slowly, only a converged run has a small
  gradient; but in a valley the gradient falls 100x as the stiff direction settles, even at a
  rate 100x too small, and only the size of its steps tells that crawl apart.
* ``good``: none of the above.

Known misreads (the tests keep the measured ones as strict xfails):

* SGD at 0.99x its stable limit on least squares reads ``too_small`` near convergence: the stiff
  direction flips sign each step with almost the same size, so no step changes the gradient
  norm by 10% and the run looks linear (a crawl), where it is in fact oscillating at the edge.
* From a start at 0 the update ratio is about 1/k after k steps whatever the rate, so a rate far
  too small is called ``too_small`` some 100 steps later than from a start away from 0.
* Adam at 10-30x its good rate on the digits MLP can stall well above the good rate's loss
  without climbing back or oscillating: no rule separates that from a noise floor.
* The monitor takes one learning rate: fit and minimize report param group 0's, so with groups
  at different rates the rate to try is group 0's scaled (the factor applies to every group).

Noise: mini-batch losses jump from batch to batch and, once a large rate has damaged the
weights, jump wildly. Levels are medians, the noise is the median absolute deviation of the
step-to-step differences, and a positive loss is compared in log space, where its noise
(multiplicative, with a heavy upper tail) is closer to symmetric.

Advice sizes the change from the measurements where a model allows it, and says "~10x"
otherwise:

* divergence: per-step loss growth q; in the quadratic model the stiffest mode grows by
  |1 - lr lambda| per step and the loss by its square, so lr lambda = 1 + sqrt(q) and a good rate
  (about 1 / lambda) is lr / (1 + sqrt(q)), whatever the loss or the update ratio reached (how
  far they climbed says how long the blow-up went on, not how far the rate is from a good one);
* otherwise, a loss that ends R times above its reference: lr / sqrt(R) (quadratic model: the loss grows
  with the square of the overshoot); an update ratio u far above a healthy 10 x ``small_update``:
  lr x (10 small_update / u); the strongest cut wins, at most 100x;
* too small: in the linear regime a step changes the gradient by about lr lambda of itself, so
  1 / (relative gradient change per step) brings lr lambda to about 1; the update ratio and the
  rate of decrease give two more estimates; the largest wins, from 3x to 1000x. Past the stiff
  phase (gradient below ``stationary_fraction`` of its first value) the window's own gradient
  change only reflects the slowest directions; then 1 / (largest one-step change of the run),
  about 1 / (lr lambda_max), caps the increase, so that it does not overshoot the stable limit.

References: the three regimes and the lr < 2 / lambda_max bound: Goodfellow, Bengio and
Courville, *Deep Learning*, 2016, sec. 4.3 and 8.3; update-to-parameter ratios of about 1e-3 as
a health check: Karpathy, CS231n notes, "Neural Networks Part 3"; Theil 1950 and Sen 1968 for
the robust slope; the range test that gives the definitive answer: Smith 2017, "Cyclical
Learning Rates for Training Neural Networks" (:func:`steepest.lr.range_test`).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from steepest import clipping
from steepest.engine import validation

__all__ = ["REGIMES", "Diagnosis", "RegimeMonitor", "UpdateTracker", "measure_update_ratio"]

#: The three regimes a window can be in.
REGIMES: tuple[str, ...] = ("too_large", "too_small", "good")

# Sizes of advice.
_MAX_FACTOR = 1000.0  # never advise more than a 1000x increase from one window's evidence
_MAX_REDUCTION = 100.0  # nor more than a 100x cut: blow-ups grow faster than any model of them
_DEFAULT_FACTOR = 10.0  # when nothing measured sizes the change
_TARGET_UPDATE_MULTIPLE = 10.0  # a healthy update ratio is ~10x the "barely moves" threshold
# Thresholds of the rules (see the module docstring).
_DIVERGING_GROWTH = 2.0  # a loss that at least doubles per step is diverging exponentially
_WINDOW_RISE = 0.5  # within one window a rise counts from +50%: SGD's own wandering reaches +30%
_NO_PROGRESS = 0.1  # net decrease below 10% of the distance travelled: no progress
_OSCILLATION_AMPLITUDE = 0.05  # swings below 5% of the loss are not called an oscillation
_NEW_RATE = 2.0  # a jump of the learning rate by 2x from one observation to the next: a new rate
_PEAK = 2.0  # a window whose level peaked at 2x the reference clearly overshot
_CLIMB_BACK = 2.0  # a window level 2x the lowest this rate had reached: its progress was undone
_GRADIENT_COLLAPSE = 0.5  # the gradient norm fell below half its value when the rate took over
_RISING = 1.01  # a window over which the learning rate grew by 1% or more: a warm-up is raising it
_FALLING = 0.1  # a window over which the learning rate fell 10x or more: a decay is ending
_LINEAR_STEP = 0.1  # no step changed the gradient norm by 10%: lr * lambda_max <~ 0.1, a crawl
_MEDIAN_EFFICIENCY = 1.2533  # standard error of a median / that of a mean (sqrt(pi/2), Gaussian)
_FLOAT_COLUMNS = ("losses", "grad_norms", "update_ratios", "update_norms", "lrs")  # saved in state_dict
# Loss swings this many times what the steps could cause to first order (gradient norm x step
# length) are the batches' noise, not an oscillation the rate drives. Measured through fit on
# digits, wine and the synthetic sets: rates 10-1000x too small swing 14-150x their steps' effect
# (Lion at 1e-3 on wine, read "too large: try 5e-5"), rates 10-300x too large 0.3-7.5x.
_NOISE_OVER_STEPS = 10.0
# Swings beyond the steps' effect over a level this many standard errors below the lowest of the
# earlier windows at this rate: the run descends through its batch noise. Default rates on the
# label-noise synthetic classification set swung 3-9x their steps' effect while still making new
# lows by 2.3-4.6 standard errors, and read "too large" (Adagrad at 3e-2, 66.5% test accuracy:
# "try 2e-3", which ends at 33%); the oscillating windows of rates 10-200x too large on the digits
# MLP were -2.3 to 1.9 standard errors from their lowest (1.9: Adam at 200x, late in a cosine
# decay, its verdict confirmed by the next window). A new low by 1.7 (Lion at 1e-3 on the
# synthetic MLP, 72% test accuracy) still reads "too large": the two overlap there.
_DESCENT_SIGNIFICANCE = 2.0
# Loss swings under this share of what the steps could do to it to first order: the loss does
# not follow the steps, which are not small whatever the pace. Measured through fit on the digits
# networks: rates 100x too small swing 1.2-450x their steps' effect; RMSprop and Adagrad 10x too
# large on the CNN (near chance, steps of 0.4 in norm) 0.06-0.09x, and read "~200x too small".
_LOSS_IGNORES_STEPS = 0.2


@dataclass(frozen=True)
class Diagnosis:
    """The regime of one window of steps, the numbers behind it and the advice they support.

    Attributes:
        regime: ``"too_large"``, ``"too_small"`` or ``"good"``.
        window: (first step, last step) of the window, as passed to ``observe``.
        evidence: the measured quantities the decision used, by name (plain floats).
        reason: one human sentence saying what was seen.
        factor: multiply the learning rate by this (< 1 when too large, > 1 when too small,
            1 when good).
        lr: the learning rate at the end of the window, when the caller reported it.

    Example:
        >>> diagnosis.advice
        'learning rate looks ~10x too large: try 3e-4'
    """

    regime: str
    window: tuple[int, int]
    evidence: dict[str, float]
    reason: str
    factor: float = 1.0
    lr: float | None = None

    @property
    def suggested_lr(self) -> float | None:
        """``lr * factor``, or None when the learning rate was not reported."""
        return None if self.lr is None else self.lr * self.factor

    @property
    def advice(self) -> str:
        """One line of advice: the regime, the size of the change, the rate to try."""
        if self.lr == 0 and self.regime != "good":  # no factor of 0 makes a rate to try
            return "learning rate is 0: the parameters cannot move"
        target = "" if self.suggested_lr is None else f": try {_format_rate(self.suggested_lr)}"
        if self.regime == "too_large":
            return f"learning rate looks ~{_format_factor(1 / self.factor)}x too large{target}"
        if self.regime == "too_small":
            return f"learning rate looks ~{_format_factor(self.factor)}x too small{target}"
        keep = "" if self.lr is None else f": keep {_format_rate(self.lr, digits=2)}"
        return f"learning rate looks good{keep}"

    def __str__(self) -> str:
        return f"steps {self.window[0]}-{self.window[1]}: {self.advice} ({self.reason})"

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers and strings, for ``state_dict`` and logs."""
        record = asdict(self)
        record["window"] = list(self.window)
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Diagnosis:
        """Inverse of :meth:`to_dict`."""
        return cls(
            regime=str(record["regime"]),
            window=(int(record["window"][0]), int(record["window"][1])),
            evidence={str(k): float(v) for k, v in record["evidence"].items()},
            reason=str(record["reason"]),
            factor=float(record["factor"]),
            lr=None if record.get("lr") is None else float(record["lr"]),
        )


@dataclass
class _Window:
    """The observations of the window being filled."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)  # NaN where not reported
    update_ratios: list[float] = field(default_factory=list)
    update_norms: list[float] = field(default_factory=list)  # ||delta theta||, NaN where not reported
    lrs: list[float] = field(default_factory=list)
    nonfinite: tuple[str, int] | None = None  # what became non-finite, at which position


class RegimeMonitor:
    """Classify each window of steps as ``too_large``, ``too_small`` or ``good``, live.

    Rule: too_large if the loss diverges, rises, ends above its start, oscillates without
    progress, climbs back to 2x its lowest, or stays stuck where the rate took over although
    the weights moved; too_small if it crawls (falls by < ``slow_rate`` per step, steadily) for
    ``patience`` windows with small steps and a gradient that is not small, or got small only
    by crawling; good otherwise (the module docstring has the details).

    Feed it one observation per step (or every k-th step); it returns a :class:`Diagnosis`
    when a window is complete (or at once when the loss is not finite) and None otherwise.
    The monitor holds only plain numbers, so ``state_dict`` goes into a checkpoint and a
    resumed run continues the same window.

    Args:
        window: observations per diagnosis (default 20, at least 4).
        patience: consecutive slow windows before ``too_small`` is reported (default 3): a
            crawl is only a crawl over a long stretch.
        rise_tolerance: relative change of the loss that counts (default 0.1): a rise above
            the reference that counts as "went up", a fall below it that counts as progress,
            and the share of the progress made that a later rise must give back.
        slow_rate: relative decrease per step below which progress is slow (default 1e-2).
        small_update: update ratio ||delta theta|| / ||theta|| below which the parameters
            barely move (default 1e-3).
        stationary_fraction: gradient norm, as a fraction of its first value, below which the
            run is near a stationary point and slowness is convergence (default 0.1).
        progress_fraction: without a small update ratio, a slow run is only called too slow
            while its loss is above this fraction of its first value (default 0.25; assumes a
            non-negative loss).
        significance: how many noise standard errors a rise must exceed (default 3).
        floor: the lowest the loss can go (default 0, as for a training loss). The rules compare
            losses relatively ("ends 2x above where it started", "within 10% of the
            reference"), so they read ``loss - floor``; an objective with a constant offset or
            negative values (a log-likelihood, a quadratic plus 1e5) needs its lower bound here,
            else a good rate can read as too large. A loss below the floor warns once.

    Example:
        >>> monitor = RegimeMonitor(window=20)
        >>> tracker = UpdateTracker(optimizer)
        >>> for step, (x, y) in enumerate(loader):
        ...     optimizer.zero_grad(); loss = loss_fn(model(x), y); loss.backward()
        ...     grad_norm = steepest.clipping.global_norm([p.grad for p in model.parameters()])
        ...     tracker.snapshot(); optimizer.step()
        ...     diagnosis = monitor.observe(step, loss.item(), float(grad_norm), tracker.ratio(),
        ...                                 lr=optimizer.param_groups[0]["lr"])
        ...     if diagnosis is not None and diagnosis.regime != "good":
        ...         print(diagnosis.advice)
    """

    def __init__(
        self,
        window: int = 20,
        *,
        patience: int = 3,
        rise_tolerance: float = 0.1,
        slow_rate: float = 1e-2,
        small_update: float = 1e-3,
        stationary_fraction: float = 0.1,
        progress_fraction: float = 0.25,
        significance: float = 3.0,
        floor: float = 0.0,
    ) -> None:
        self.window = _check_int("window", window, minimum=4)
        self.patience = _check_int("patience", patience, minimum=1)
        self.rise_tolerance = validation.positive("rise_tolerance", rise_tolerance)
        self.slow_rate = validation.positive("slow_rate", slow_rate)
        self.small_update = validation.positive("small_update", small_update)
        self.stationary_fraction = validation.closed_unit_interval("stationary_fraction", stationary_fraction)
        self.progress_fraction = validation.closed_unit_interval("progress_fraction", progress_fraction)
        self.significance = validation.nonnegative("significance", significance)
        self.floor = validation.real("floor", floor)
        self._below_floor_warned = False
        self._healthy_update = _TARGET_UPDATE_MULTIPLE * self.small_update
        self.reset()

    def reset(self) -> None:
        """Forget everything observed (the settings stay)."""
        self._current = _Window()
        self._first_loss: float | None = None  # of the run
        self._first_grad_norm: float | None = None
        self._last_grad_norm: float | None = None  # the latest finite, positive one
        self._largest_gradient_step: float | None = None  # the largest |log(g_k / g_{k-1})| of the run
        self._previous_lr: float | None = None  # the rate at the last observation
        self._recent: list[float] = []  # the last finite losses of completed windows
        self._recent_grad_norms: list[float] = []  # and their finite, positive gradient norms
        self._history: list[Diagnosis] = []
        self._start_rate(reference_loss=None, reference_grad_norm=None)

    def _start_rate(self, reference_loss: float | None, reference_grad_norm: float | None) -> None:
        """Forget what the previous learning rate did: a new rate is judged on its own steps."""
        self._reference_loss = reference_loss  # where the run stood when the rate took over
        self._reference_grad_norm = reference_grad_norm  # and its gradient norm then
        self._slow_windows = 0  # consecutive windows of a crawl (too_small)
        self._stuck_windows = 0  # consecutive windows not clearly below the reference (rule 6)
        self._fast_seen = False  # a window fell fast, beyond noise, at this rate
        self._too_large_at: tuple[int, int] | None = None  # the first window found too large
        self._lowest_level: tuple[float, float] | None = None  # (log level, its standard error)

    # -- observing ----------------------------------------------------------------------------
    def observe(
        self,
        step: int,
        loss: float | Tensor,
        grad_norm: float | Tensor | None = None,
        update_ratio: float | Tensor | None = None,
        lr: float | Tensor | None = None,
        update_norm: float | Tensor | None = None,
    ) -> Diagnosis | None:
        """Record one step; return the window's :class:`Diagnosis` when it completes, else None.

        Args:
            step: the step number (any increasing integers; used to label windows).
            loss: the step's loss (a float or a one-element tensor; NaN and inf are allowed and
                end the window at once as a divergence).
            grad_norm: the global gradient norm at this step, if known.
            update_ratio: ||delta theta|| / ||theta|| of this step (see :class:`UpdateTracker`).
            lr: the learning rate used, to turn advice into a concrete rate.
            update_norm: ||delta theta|| of this step, if known: with the gradient norm it
                bounds what the step can do to the loss (to first order), which tells a loss
                that swings with the batches from one the rate throws about.
        """
        step = _check_int("step", step, minimum=-(2**63))
        loss = _as_float("loss", loss, allow_nonfinite=True) - self.floor
        if loss < 0 and not self._below_floor_warned:
            self._below_floor_warned = True
            warnings.warn(
                f"loss {loss + self.floor:.4g} is below floor={self.floor:g}: the regime diagnosis "
                "compares losses relatively and reads them from the floor; give "
                "RegimeMonitor(floor=<a lower bound of the loss>)",
                RuntimeWarning,
                stacklevel=2,
            )
        grad = _as_float("grad_norm", grad_norm, allow_nonfinite=True, missing=math.nan)
        ratio = _as_float("update_ratio", update_ratio, allow_nonfinite=True, missing=math.nan)
        rate = _as_float("lr", lr, allow_nonfinite=False, missing=math.nan)
        moved = _as_float("update_norm", update_norm, allow_nonfinite=True, missing=math.nan)
        checked = (("grad_norm", grad), ("update_ratio", ratio), ("lr", rate), ("update_norm", moved))
        for name, value in checked:
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {name}={value!r}")
        window = self._current
        window.steps.append(step)
        window.losses.append(loss)
        window.grad_norms.append(grad)
        window.update_ratios.append(ratio)
        window.update_norms.append(moved)
        window.lrs.append(rate)
        if lr is not None:
            self._note_rate(rate)
        if self._first_loss is None and math.isfinite(loss):
            self._first_loss = loss
        if self._reference_loss is None and math.isfinite(loss):
            self._reference_loss = loss
        if math.isfinite(grad) and grad > 0:
            self._note_gradient(grad)
        if not math.isfinite(loss):
            window.nonfinite = ("loss", len(window.losses) - 1)
        elif grad_norm is not None and not math.isfinite(grad):
            window.nonfinite = ("gradient norm", len(window.losses) - 1)
        if len(window.losses) < self.window and window.nonfinite is None:
            return None
        diagnosis = self._classify(window)
        finite_losses = [value for value in window.losses if math.isfinite(value)]
        self._recent = (self._recent + finite_losses)[-self.window :]
        self._recent_grad_norms = (self._recent_grad_norms + _positive(window.grad_norms))[-self.window :]
        self._current = _Window()
        self._history.append(diagnosis)
        return diagnosis

    def _note_rate(self, lr: float) -> None:
        """A new learning rate (a jump by 2x or more since the last observation) gets a fresh start.

        "The loss ends above where it started" asks whether *this* rate made things worse, so
        after a cut the reference is the loss when the new rate took over, not the run's first;
        a crawl at the old rate says nothing about the new one either.

        A schedule's drift is not a new rate, however far it has drifted: late in a cosine decay
        the rate halves every few windows, and each fresh reference, a median of a few
        mini-batch losses at the noise floor (0.007-0.11 on the digits networks), made the next
        window's ordinary noise read as "ends 2-3x above where this rate took over".
        """
        previous = self._previous_lr
        self._previous_lr = lr
        if previous is None or (lr != previous and not previous / _NEW_RATE < lr < previous * _NEW_RATE):
            if previous is not None:
                # Where the run stood when the new rate took over: the medians of the last
                # losses and gradient norms, robust to the wild batches a too large rate leaves.
                last = max(1, self.window // 4)
                recent = [v for v in self._recent + self._current.losses if math.isfinite(v)][-last:]
                grads = (self._recent_grad_norms + _positive(self._current.grad_norms))[-last:]
                self._start_rate(
                    reference_loss=float(np.median(recent)) if recent else None,
                    reference_grad_norm=float(np.median(grads)) if grads else None,
                )

    def _note_gradient(self, grad: float) -> None:
        """Keep the first gradient norm (of the run, of this rate) and the largest one-step change.

        In the quadratic model a step multiplies the stiffest direction's gradient by
        (1 - lr lambda_max), so the largest one-step change |log(g_k / g_{k-1})| seen over a run
        is about lr lambda_max: near 1 or above for a good rate, far below for one that crawls.
        Mini-batch noise only makes it larger (never mistaken for a crawl).
        """
        if self._first_grad_norm is None:
            self._first_grad_norm = grad
        if self._reference_grad_norm is None:
            self._reference_grad_norm = grad
        if self._last_grad_norm is not None:
            step = abs(math.log(grad / self._last_grad_norm))
            self._largest_gradient_step = max(self._largest_gradient_step or 0.0, step)
        self._last_grad_norm = grad

    @property
    def latest(self) -> Diagnosis | None:
        """The most recent diagnosis (None before the first window completes)."""
        return self._history[-1] if self._history else None

    @property
    def history(self) -> list[Diagnosis]:
        """Every diagnosis so far, oldest first (a copy)."""
        return list(self._history)

    def counts(self) -> dict[str, int]:
        """How many windows fell in each regime."""
        counted = dict.fromkeys(REGIMES, 0)
        for diagnosis in self._history:
            counted[diagnosis.regime] += 1
        return counted

    # -- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything observed, as plain numbers, lists and strings (``weights_only``-safe)."""
        return {
            "window": self.window,
            "current": {name: list(getattr(self._current, name)) for name in ("steps", *_FLOAT_COLUMNS)},
            "first_loss": self._first_loss,
            "first_grad_norm": self._first_grad_norm,
            "last_grad_norm": self._last_grad_norm,
            "largest_gradient_step": self._largest_gradient_step,
            "reference_loss": self._reference_loss,
            "reference_grad_norm": self._reference_grad_norm,
            "previous_lr": self._previous_lr,
            "slow_windows": self._slow_windows,
            "stuck_windows": self._stuck_windows,
            "fast_seen": self._fast_seen,
            "too_large_at": None if self._too_large_at is None else list(self._too_large_at),
            "lowest_level": None if self._lowest_level is None else list(self._lowest_level),
            "recent": list(self._recent),
            "recent_grad_norms": list(self._recent_grad_norms),
            "history": [diagnosis.to_dict() for diagnosis in self._history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`; the window size must match.

        Every field is checked before any is set: a bad dict raises a ValueError or TypeError
        naming the field and changes nothing.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a dict from RegimeMonitor.state_dict, got {type(state).__name__}")
        if state.get("window") != self.window:
            raise ValueError(
                f"state was saved with window={state.get('window')!r}, this monitor has window={self.window}"
            )
        if "previous_lr" not in state:  # "reference_lr" in states saved before rates were compared
            state = {**state, "previous_lr": state.get("reference_lr")}
        checked = validation.state_fields("state", state, "RegimeMonitor", _MONITOR_FIELDS, _MONITOR_DEFAULTS)
        del checked["window"]
        for name, value in checked.items():
            setattr(self, f"_{name}", value)

    # -- the decision -------------------------------------------------------------------------
    def _classify(self, window: _Window) -> Diagnosis:
        span = (window.steps[0], window.steps[-1])
        lr = window.lrs[-1] if math.isfinite(window.lrs[-1]) else None
        if window.nonfinite is not None:
            diagnosis = self._diverged(window, span, lr)
        else:
            measured = _measure(window, self._first_grad_norm, self._reference_grad_norm)
            self._count_stuck(measured)
            diagnosis = self._decide(measured, span, lr)
            self._remember(measured)
        if diagnosis.regime == "too_large" and self._too_large_at is None:
            self._too_large_at = span  # the first verdict: the evidence the later ones lean on
        return diagnosis

    def _decide(self, m: _Measured, span: tuple[int, int], lr: float | None) -> Diagnosis:
        """The rules for too_large in order (the first that holds decides), then the crawl."""
        evidence = m.evidence
        if self._first_loss is not None:
            evidence["first_loss"] = self._first_loss
        if self._largest_gradient_step is not None:
            evidence["largest_gradient_step"] = self._largest_gradient_step
        for rule in (self._rose, self._above_reference, self._oscillates, self._climbed_back, self._stuck):
            found = rule(m)
            if found is not None:
                reason, growth = found
                return self._too_large(span, evidence, reason, growth, lr)
        return self._crawl_or_good(m, span, lr)

    def _count_stuck(self, m: _Measured) -> None:
        """Count the windows in a row that end not clearly below where this rate took over."""
        reference = self._reference_loss
        stuck = reference is not None and reference > 0 and m.end >= (1.0 - self.rise_tolerance) * reference
        self._stuck_windows = self._stuck_windows + 1 if stuck else 0

    def _fell(self, m: _Measured) -> bool:
        """The loss fell over the window by more than ``significance`` standard errors."""
        return m.start - m.end > self.significance * m.decrease_error

    def _remember(self, m: _Measured) -> None:
        """What this rate has shown so far: a fast fall, and the lowest level it reached."""
        if m.decrease_per_step >= self.slow_rate and self._fell(m):
            self._fast_seen = True
        if m.level is not None and (self._lowest_level is None or m.level < self._lowest_level[0]):
            self._lowest_level = (m.level, m.level_error)

    # -- the rules, in order --------------------------------------------------------------------
    def _diverged(self, window: _Window, span: tuple[int, int], lr: float | None) -> Diagnosis:
        """Rule 1: a non-finite loss or gradient norm."""
        what, index = window.nonfinite
        value = window.losses[index] if what == "loss" else window.grad_norms[index]
        growth = _growth_per_step(np.asarray(self._recent + window.losses[:index], dtype=float))
        evidence = {"nonfinite_at": float(window.steps[index])}
        if growth is not None:
            evidence["growth_per_step"] = growth
        reason = f"the {what} became {value} at step {window.steps[index]}: diverged"
        return self._too_large(span, evidence, reason, growth, lr)

    def _gives_back(self, rise: float, low: float) -> bool:
        """A rise matters once it gives back ``rise_tolerance`` of the progress this rate made.

        Progress: from the reference (the loss when the rate took over) down to ``low``. A
        converged run's wobble (1e-30 to 3e-30, or 0.02 to 0.04 in the batch noise of a fitted
        network) is not a rate too large; a rate that has made no progress has nothing to lose.
        """
        reference = self._reference_loss
        if reference is None or reference - low <= 0:
            return True
        return rise >= self.rise_tolerance * (reference - low)

    def _rose(self, m: _Measured) -> tuple[str, float | None] | None:
        """Rule 2: the second half's median is >= 50% above the first half's, beyond noise, and
        gives back a share of the progress.

        For a positive loss the test runs on log(loss), where mini-batch noise (multiplicative,
        heavy-tailed upwards) is closer to symmetric. Halves, not quarters: a rise must hold
        over half the window, not over a few wild batches.
        """
        losses = m.losses
        half = max(1, len(losses) // 2)
        early, late = float(np.median(losses[:half])), float(np.median(losses[-half:]))
        if (losses > 0).all():
            logs = np.log(losses)
            error = _MEDIAN_EFFICIENCY * _noise(np.diff(logs)) * math.sqrt(2.0 / half)
            rise = math.log(late / early)
            rose = rise > math.log1p(_WINDOW_RISE) and rise > self.significance * error
        else:
            error = _MEDIAN_EFFICIENCY * m.noise * math.sqrt(2.0 / half)
            rose = late - early > _WINDOW_RISE * abs(early) and late - early > self.significance * error
        if not rose:
            return None
        low = early if self._lowest_level is None else min(early, math.exp(self._lowest_level[0]))
        if not self._gives_back(late - early, low):
            return None
        growth = _growth_per_step(losses)
        if growth is not None:
            m.evidence["growth_per_step"] = growth
        return f"the loss rose from {early:.4g} to {late:.4g} within the window", growth

    def _above_reference(self, m: _Measured) -> tuple[str, float | None] | None:
        """Rule 3: the loss ends clearly above where it was when the current rate took over.

        Clearly: by more than ``rise_tolerance``, and either twice as high, or beyond noise, or
        with every step of the window above it (noise would make some step dip below), or after
        peaking at twice the reference (however noisy the way back down).
        """
        reference = self._reference_loss
        if reference is None or reference <= 0:
            return None
        m.evidence["reference_loss"] = reference
        excess = m.end - reference
        # The reference is one value (noise s), the end a median of `quarter` values.
        error = m.noise * math.sqrt(1.0 + _MEDIAN_EFFICIENCY**2 / m.quarter)
        beyond_noise = excess > self.significance * error
        every_step_above = float(m.losses.min()) > reference * (1.0 + self.rise_tolerance)
        # A robust peak (a median over `quarter` steps, not one wild batch) at twice the reference
        # shows the rate throwing the loss up, however noisy the way back down.
        overshot = m.peak > _PEAK * reference
        if excess <= self.rise_tolerance * reference:
            return None
        if not (m.end > 2 * reference or beyond_noise or every_step_above or overshot):
            return None
        m.evidence["loss_vs_reference"] = m.end / reference
        since = "the run started" if reference == self._first_loss else "this learning rate took over"
        return f"the loss ({m.end:.4g}) ends above where it was when {since} ({reference:.4g})", None

    def _oscillates(self, m: _Measured) -> tuple[str, float | None] | None:
        """Rule 4: direction changes at half the steps, no net progress, real swings, params move.

        Not where a schedule cut the rate 10x or more within the window (a decay's last
        stretch): an oscillation the rate drives dies down as the rate does and leaves net
        progress, while mini-batch losses change direction at most steps whatever the rate (at
        2/3 of them for independent noise). A slower cut leaves the verdict to the rule: Adam at
        100x its good rate, under a cosine decay, still swings without progress at 0.26-0.07.
        Nor where the swings are over ``_NOISE_OVER_STEPS`` x what the steps can do to the loss
        to first order (the median of gradient norm x step length, where ``update_norm`` is
        reported): Lion at 1e-3 on wine, 100x too small, swung 15x that and read "too large".
        Nor where the swings exceed that effect while the window's level is a new low for this
        rate by ``_DESCENT_SIGNIFICANCE`` standard errors: a run descending through its batch
        noise (Adagrad at 3e-2 on the label-noise synthetic set read "too large: try 2e-3").
        """
        first = self._first_loss
        annealing = m.lr_growth is not None and m.lr_growth <= _FALLING
        # the swings against what the steps could do to the loss: far more is the batches' noise
        ratio = m.swings_over_steps
        noise_not_steps = ratio is not None and ratio > _NOISE_OVER_STEPS
        # swings beyond what the steps can do, over a level still making new lows: noisy descent
        lowest = self._lowest_level
        noisy_descent = (
            ratio is not None
            and ratio > 1
            and lowest is not None
            and m.level is not None
            and lowest[0] - m.level > _DESCENT_SIGNIFICANCE * math.hypot(m.level_error, lowest[1])
        )
        if (
            not annealing
            and not noise_not_steps
            and not noisy_descent
            and m.sign_changes >= 0.5
            and m.efficiency <= _NO_PROGRESS
            and m.net_decrease < self.rise_tolerance * m.scale
            and m.swing >= _OSCILLATION_AMPLITUDE
            and first is not None
            and first > 0
            and m.end >= 0.5 * first
            and not (m.update_ratio is not None and m.update_ratio < self.small_update)
        ):
            reason = (
                f"the loss oscillates ({m.sign_changes:.0%} of steps change direction, swings of "
                f"{m.swing:.0%}) without net progress"
            )
            return reason, None
        return None

    def _climbed_back(self, m: _Measured) -> tuple[str, float | None] | None:
        """Rule 5: the window's level is >= 2x the lowest this rate had reached, beyond noise,
        giving back at least ``rise_tolerance`` of the progress made since the rate took over.

        Levels are medians of log(loss) over whole windows; a constant rate that throws the
        iterate about finds a low and loses it again. Noise: the standard errors of both
        medians, from the step-to-step noise of log(loss).
        """
        lowest = self._lowest_level
        if lowest is None or m.level is None:
            return None
        climb = m.level - lowest[0]
        error = math.hypot(m.level_error, lowest[1])
        if not (climb > math.log(_CLIMB_BACK) and climb > self.significance * error):
            return None
        if not self._gives_back(math.exp(m.level) - math.exp(lowest[0]), math.exp(lowest[0])):
            return None
        m.evidence["loss_vs_lowest"] = math.exp(climb)
        return (
            f"the loss climbed back to {math.exp(m.level):.4g}, {math.exp(climb):.1f}x the lowest "
            f"level this learning rate had reached ({math.exp(lowest[0]):.4g})"
        ), None

    def _stuck(self, m: _Measured) -> tuple[str, float | None] | None:
        """Rule 6: the loss is not clearly below where it was when this rate took over, and
        either the rate was already found too large, or for ``patience`` windows the gradient
        norm fell below half its value then (the weights moved, the loss did not: dead or
        saturated units; a network stuck at chance).
        """
        reference = self._reference_loss
        if self._stuck_windows == 0 or reference is None:
            return None
        since = "the run started" if reference == self._first_loss else "this learning rate took over"
        m.evidence["stuck_windows"] = float(self._stuck_windows)
        if self._too_large_at is not None:
            first, last = self._too_large_at
            m.evidence["loss_vs_reference"] = m.end / reference
            m.evidence["too_large_since"] = float(first)
            return (
                f"the loss ({m.end:.4g}) is still not clearly below where it was when {since} "
                f"({reference:.4g}), and this rate was found too large at steps {first}-{last}"
            ), None
        ratio = m.grad_vs_reference
        if self._stuck_windows < self.patience or ratio is None or ratio >= _GRADIENT_COLLAPSE:
            return None
        m.evidence["loss_vs_reference"] = m.end / reference
        return (
            f"the loss has stayed at {m.end:.4g}, not clearly below where it was when {since} "
            f"({reference:.4g}), for {self._stuck_windows} windows while the gradient norm fell to "
            f"{ratio:.0%} of its value then: the steps moved the weights, not the loss"
        ), None

    def _crawl_or_good(self, m: _Measured, span: tuple[int, int], lr: float | None) -> Diagnosis:
        """``patience`` windows in a row of a crawl away from a stationary point: too small; else good."""
        first = self._first_loss
        # Slow: falling slowly or flat within noise; a loss that rose is no sign of a rate too
        # small, however noisy the rise.
        slow = m.decrease_per_step < self.slow_rate and m.relative_change <= self.rise_tolerance
        # A crawl makes slow but steady progress. A stall after this rate fell fast is something
        # else (a noise floor, a plateau, convergence): the same rate was not too small then.
        crawling = self._fell(m) or not self._fast_seen
        # The linear regime seen in the gradient: no step ever changed it by _LINEAR_STEP.
        largest = self._largest_gradient_step
        linear = largest is not None and largest < _LINEAR_STEP
        # Near a stationary point only if the gradient got small by real steps; one that
        # crawled down (the stiff directions of a valley settling at lr * lambda_max ~ 0.04
        # per step) says nothing of convergence.
        small_gradient = m.grad_fraction is not None and m.grad_fraction < self.stationary_fraction
        # a gradient of exactly 0 (started at a minimum, or a constant objective) is stationary
        # outright; no ratio to its first value exists, since the first was 0 too
        stationary = (small_gradient and not linear) or m.evidence.get("grad_norm") == 0.0
        barely_moving = (m.update_ratio is not None and m.update_ratio < self.small_update) or linear
        far = first is not None and first > 0 and m.end > self.progress_fraction * first
        # Steps that move the parameters by 10x small_update or more are not too small, whatever
        # the loss does: the slowness has another cause (a plateau, a saddle).
        moving = m.update_ratio is not None and m.update_ratio >= self._healthy_update
        # A warm-up (or one-cycle's first phase) starts small on purpose and is raising the rate
        # already: a crawl then is the schedule's plan, and "try 80x more" would be bad advice.
        rising = m.lr_growth is not None and m.lr_growth > _RISING
        # Steps that could move the loss (to first order) by several times what it swings, while
        # it does not fall beyond noise, are not small either: the loss no longer follows them (a
        # rate so large that the network sits near chance while its weights jump about, or a
        # plateau). A steady crawl on a deterministic objective swings by cos(g, step) of that,
        # which is small for Adam's sign-like steps, but it falls.
        ignored = (
            m.swings_over_steps is not None
            and m.swings_over_steps < _LOSS_IGNORES_STEPS
            and not self._fell(m)
        )
        if (
            slow
            and crawling
            and not stationary
            and not moving
            and not rising
            and not ignored
            and (barely_moving or far)
        ):
            self._slow_windows += 1
        else:
            self._slow_windows = 0
        m.evidence["slow_windows"] = float(self._slow_windows)
        if self._slow_windows >= self.patience:
            # Past the stiff phase, the window's own gradient change only reflects the slowest
            # directions; the largest one-step change seen (~ lr * lambda_max) bounds the increase.
            stiffest = largest if small_gradient and linear else None
            factor = self._too_small_factor(m.decrease_per_step, m.grad_change, m.update_ratio, stiffest)
            decrease = max(m.decrease_per_step, 0.0) + 0.0  # (+ 0.0: no '-0.0e+00')
            what = [f"the loss fell by {decrease:.1e} per step for {self._slow_windows} windows"]
            if m.grad_fraction is not None:
                what.append(f"the gradient norm is still {m.grad_fraction:.0%} of its first value")
            if linear:
                what.append(f"no step changed it by more than {largest:.0%}")
            if m.update_ratio is not None:
                what.append(f"each step moves the parameters by {m.update_ratio:.1e} of their norm")
            return Diagnosis("too_small", span, m.evidence, ", ".join(what), factor, lr)
        reason = f"the loss went from {m.start:.4g} to {m.end:.4g} ({m.relative_change:+.1%})"
        if slow:
            reason += ", slowly, near a stationary point" if stationary else ", slowly"
            if rising:
                reason += ", while the schedule raises the learning rate"
        return Diagnosis("good", span, m.evidence, reason, 1.0, lr)

    def _too_large(
        self,
        span: tuple[int, int],
        evidence: dict[str, float],
        reason: str,
        growth: float | None,
        lr: float | None,
    ) -> Diagnosis:
        self._slow_windows = 0
        if growth is not None and growth >= _DIVERGING_GROWTH:
            # Quadratic model: the loss grows by (lr*lambda - 1)^2 per step; a good rate is 1/lambda.
            # Nothing else sizes a geometric blow-up: how far the loss and the update ratio have
            # climbed says how long it went on (an update ratio of lr*lambda >= 1 already at
            # 1.2x the stable limit), not how far the rate is from a good one.
            factor = 1.0 / (1.0 + math.sqrt(growth))
        else:
            factor = 1.0 / _DEFAULT_FACTOR
            above_start = evidence.get("loss_vs_reference")
            if above_start is not None:
                # Quadratic model: the loss grows with the square of the overshoot.
                factor = min(factor, 1.0 / math.sqrt(above_start))
            update_ratio = evidence.get("update_ratio")
            if update_ratio is not None and update_ratio > 0:
                factor = min(factor, self._healthy_update / update_ratio)
        factor = min(max(factor, 1.0 / _MAX_REDUCTION), 0.5)
        return Diagnosis("too_large", span, evidence, reason, factor, lr)

    def _too_small_factor(
        self,
        decrease_per_step: float,
        grad_change: float | None,
        update_ratio: float | None,
        stiffest: float | None = None,
    ) -> float:
        estimates = [self.slow_rate / max(decrease_per_step, self.slow_rate / _MAX_FACTOR)]
        if grad_change is not None:
            # Linear regime: one step changes the gradient by ~ lr*lambda of itself; aim for ~1.
            estimates.append(1.0 / max(grad_change, 1.0 / _MAX_FACTOR))
        if update_ratio is not None and update_ratio > 0:
            estimates.append(self._healthy_update / update_ratio)
        factor = max(estimates)
        if stiffest is not None and stiffest > 0:
            # The stiffest direction moved by ~ lr * lambda_max per step: bring that to ~1, not past.
            factor = min(factor, 1.0 / stiffest)
        return float(min(max(factor, 3.0), _MAX_FACTOR))


@dataclass
class _Measured:
    """What one window's numbers say, before any rule reads them."""

    losses: np.ndarray
    quarter: int
    start: float  # median of the first quarter
    end: float  # median of the last quarter
    peak: float  # the highest median of `quarter` consecutive losses
    scale: float
    relative_change: float  # (end - start) / scale
    decrease_per_step: float
    decrease_error: float  # standard error of start - end
    noise: float
    level: float | None  # median of log(loss) over the window (a positive loss only)
    level_error: float  # its standard error
    net_decrease: float  # Theil-Sen line: robust to two noisy end points
    efficiency: float  # net decrease / distance the loss travelled
    sign_changes: float
    swing: float  # mean |step-to-step change| / mean loss
    grad_fraction: float | None
    grad_change: float | None  # |d log(grad norm)| per step
    grad_vs_reference: float | None  # median gradient norm / its value when the rate took over
    update_ratio: float | None
    step_effect: float | None  # median gradient norm x step length: the steps' first-order effect
    # mean |step-to-step change| / step_effect (inf: swings without steps; nan: neither)
    swings_over_steps: float | None
    lr_growth: float | None  # the learning rate at the window's end / at its start
    evidence: dict[str, float]


def _measure(window: _Window, first_grad_norm: float | None, reference_grad_norm: float | None) -> _Measured:
    losses = np.asarray(window.losses, dtype=float)
    grads = np.asarray(window.grad_norms, dtype=float)
    count = len(losses)
    quarter = max(1, count // 4)
    steps_between = max(count - quarter, 1)
    # Medians: a single wild batch (common once a large rate has damaged the weights) must not
    # move a level; on a smooth curve they equal the means up to curvature.
    start, end = float(np.median(losses[:quarter])), float(np.median(losses[-quarter:]))
    peak = float(np.median(np.lib.stride_tricks.sliding_window_view(losses, quarter), axis=1).max())
    differences = np.diff(losses)
    noise = _noise(differences)
    scale = max(abs(start), abs(end), np.finfo(float).tiny)
    relative_change = (end - start) / scale
    moved = float(np.abs(differences).sum())
    mean_change = moved / len(differences) if len(differences) else 0.0
    net_decrease = -_theil_sen_slope(losses) * (count - 1)
    signs = np.sign(differences[differences != 0])
    # The difference of two medians of `quarter` values each, noise s per value.
    decrease_error = _MEDIAN_EFFICIENCY * noise * math.sqrt(2.0 / quarter)
    level, level_error = None, 0.0
    if (losses > 0).all():
        logs = np.log(losses)
        level = float(np.median(logs))
        level_error = _MEDIAN_EFFICIENCY * _noise(np.diff(logs)) / math.sqrt(count)
    step_effect = _finite_median(grads * np.asarray(window.update_norms, dtype=float))
    measured = _Measured(
        losses=losses,
        quarter=quarter,
        start=start,
        end=end,
        peak=peak,
        scale=scale,
        relative_change=relative_change,
        decrease_per_step=-relative_change / steps_between,
        decrease_error=decrease_error,
        noise=noise,
        level=level,
        level_error=level_error,
        net_decrease=net_decrease,
        efficiency=net_decrease / moved if moved > 0 else 0.0,
        sign_changes=float(np.mean(signs[1:] != signs[:-1])) if len(signs) > 1 else 0.0,
        swing=mean_change / max(abs(float(losses.mean())), np.finfo(float).tiny),
        grad_fraction=None,
        grad_change=None,
        grad_vs_reference=None,
        update_ratio=_finite_median(np.asarray(window.update_ratios, dtype=float)),
        step_effect=step_effect,
        swings_over_steps=None,
        lr_growth=None,
        evidence={},
    )
    if step_effect is not None:
        measured.swings_over_steps = (
            mean_change / step_effect if step_effect > 0 else (math.inf if mean_change > 0 else math.nan)
        )
    first_lr, last_lr = window.lrs[0], window.lrs[-1]
    if math.isfinite(first_lr) and math.isfinite(last_lr) and first_lr > 0:
        measured.lr_growth = last_lr / first_lr
    grad_start, grad_end = _finite_mean(grads[:quarter]), _finite_mean(grads[-quarter:])
    if grad_end is not None:
        if first_grad_norm is not None:
            measured.grad_fraction = grad_end / first_grad_norm
        if grad_start is not None and grad_start > 0 and grad_end > 0:
            measured.grad_change = abs(math.log(grad_end / grad_start)) / steps_between
    grad_median = _finite_median(grads)
    if grad_median is not None and reference_grad_norm is not None and reference_grad_norm > 0:
        measured.grad_vs_reference = grad_median / reference_grad_norm
    evidence = {
        "loss_start": start,
        "loss_end": end,
        "loss_peak": peak,
        "relative_change": relative_change,
        "decrease_per_step": measured.decrease_per_step,
        "noise": measured.noise,
        "sign_changes": measured.sign_changes,
        "efficiency": measured.efficiency,
        "swing": measured.swing,
        "grad_norm": grad_end,
        "grad_norm_vs_first": measured.grad_fraction,
        "grad_norm_vs_reference": measured.grad_vs_reference,
        "grad_change_per_step": measured.grad_change,
        "update_ratio": measured.update_ratio,
        "step_effect": measured.step_effect,
        "lr_growth": measured.lr_growth,
    }
    measured.evidence = {name: float(value) for name, value in evidence.items() if value is not None}
    return measured


# -- checking a RegimeMonitor's state ----------------------------------------------------------
def _check_window(name: str, value: Any) -> _Window:
    """The window being filled: its steps and a float column of the same length for each of
    _FLOAT_COLUMNS (NaN where a column added later is missing)."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a dict of columns, got {name}={value!r:.80}")
    if "steps" not in value:
        raise ValueError(f"{name} lacks ['steps']")
    steps = validation.list_of(validation.integer)(f"{name}['steps']", value["steps"])
    missing = [math.nan] * len(steps)
    columns = {
        column: validation.list_of(validation.any_real)(f"{name}[{column!r}]", value.get(column, missing))
        for column in _FLOAT_COLUMNS
    }
    for column, values in columns.items():
        if len(values) != len(steps):
            raise ValueError(f"{name}[{column!r}] has {len(values)} values for {len(steps)} steps")
    return _Window(steps=steps, **columns)


def _check_diagnosis(name: str, value: Any) -> Diagnosis:
    try:
        return Diagnosis.from_dict(value)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"{name} is not a Diagnosis.to_dict() record ({error!r}), got {name}={value!r:.80}"
        ) from None


def _pair_of(check: validation.Check) -> validation.Check:
    def check_pair(name: str, value: Any) -> tuple[Any, Any]:
        items = validation.list_of(check)(name, value)
        if len(items) != 2:
            raise ValueError(f"{name} must be a pair, got {name}={value!r}")
        return items[0], items[1]

    return check_pair


# load_state_dict checks each field of the state, then sets the attribute named "_" + field.
_MONITOR_FIELDS: dict[str, validation.Check] = {
    "window": validation.positive_integer,
    "current": _check_window,
    "first_loss": validation.optional(validation.any_real),
    "first_grad_norm": validation.optional(validation.any_real),
    "last_grad_norm": validation.optional(validation.any_real),
    "largest_gradient_step": validation.optional(validation.any_real),
    "reference_loss": validation.optional(validation.any_real),
    "reference_grad_norm": validation.optional(validation.any_real),
    "previous_lr": validation.optional(validation.any_real),
    "slow_windows": validation.count,
    "stuck_windows": validation.count,
    "fast_seen": validation.boolean,
    "too_large_at": validation.optional(_pair_of(validation.integer)),
    "lowest_level": validation.optional(_pair_of(validation.any_real)),
    "recent": validation.list_of(validation.any_real),
    "recent_grad_norms": validation.list_of(validation.any_real),
    "history": validation.list_of(_check_diagnosis),
}
# Fields added later: a state saved before they existed resumes as if nothing was seen yet.
_MONITOR_DEFAULTS: dict[str, Any] = {
    "last_grad_norm": None,
    "largest_gradient_step": None,
    "reference_grad_norm": None,
    "stuck_windows": 0,
    "fast_seen": False,
    "too_large_at": None,
    "lowest_level": None,
    "recent_grad_norms": [],
}


# -- measuring the update ratio ------------------------------------------------------------------
def _parameters_of(source: torch.optim.Optimizer | Iterable[Tensor]) -> list[Tensor]:
    """The tensors of the argument ``optimizer``: an optimizer's, or the tensors themselves."""
    if isinstance(source, torch.optim.Optimizer):
        return [p for group in source.param_groups for p in group["params"]]
    if isinstance(source, Tensor):
        return [source]
    wanted = "optimizer must be an optimizer or an iterable of tensors"
    if isinstance(source, (str, bytes)) or not isinstance(source, Iterable):
        raise TypeError(f"{wanted}, got optimizer={source!r:.80} ({type(source).__name__})")
    params = list(source)
    for index, param in enumerate(params):
        if not isinstance(param, Tensor):
            raise TypeError(f"{wanted}, got optimizer[{index}]={param!r:.80} ({type(param).__name__})")
    return params


@torch.no_grad()
def measure_update_ratio(
    optimizer: torch.optim.Optimizer | Iterable[Tensor], params_before: Sequence[Tensor]
) -> float:
    """||theta_after - theta_before|| / ||theta_before|| over all parameters taken together.

    Rule: ratio = ||delta theta||_2 / ||theta||_2 (||delta theta|| / ||theta_after|| when theta
    was 0). About 1e-3 per step is typical of healthy network training (CS231n); much smaller
    means the rate barely moves anything.

    Args:
        optimizer: the optimizer (its param groups, in order) or the parameters themselves.
        params_before: copies of the same parameters taken before the step, in the same order.

    Example:
        >>> before = [p.detach().clone() for p in model.parameters()]
        >>> optimizer.step()
        >>> ratio = measure_update_ratio(optimizer, before)
    """
    params = _parameters_of(optimizer)
    before = list(params_before)
    if len(before) != len(params):
        raise ValueError(
            f"params_before has {len(before)} tensors, the optimizer has {len(params)} parameters"
        )
    for index, (param, old) in enumerate(zip(params, before)):
        if not isinstance(old, Tensor) or old.shape != param.shape:
            raise ValueError(
                f"params_before[{index}] does not match parameter {index} of shape {tuple(param.shape)}"
            )
    return _update_size(params, before)[1]


@torch.no_grad()
def _update_size(
    params: list[Tensor], before: list[Tensor], in_place: bool = False, ratio: bool = True
) -> tuple[float, float]:
    """(||theta_after - theta_before||, that over ||theta_before|| or, from 0, ||theta_after||).

    ``in_place`` turns ``before`` into the differences (no new tensors: fit measures steps);
    without ``ratio`` the second number is NaN and ||theta|| is not computed."""
    if not params:
        return 0.0, 0.0
    after = [p.detach() for p in params]
    size = float(clipping.global_norm(before)) if ratio else math.nan
    if in_place:
        torch._foreach_sub_(before, after)
        deltas = before
    else:
        deltas = torch._foreach_sub(after, before)
    change = float(clipping.global_norm(deltas))
    if not ratio:
        return change, math.nan
    if size == 0:
        size = float(clipping.global_norm(after))
    return change, (change / size if size > 0 else 0.0)


class UpdateTracker:
    """Measure every step's update ratio: ``snapshot()`` before ``optimizer.step()``, ``ratio()`` after.

    Rule: ratio = ||theta_after - theta_before|| / ||theta_before|| (see :func:`measure_update_ratio`).

    The snapshot copies the parameters into buffers allocated once, so the cost is one copy and
    two norms per monitored step; monitor every k-th step where even that matters.

    Args:
        optimizer: the optimizer whose parameters move (or the parameters themselves).

    Example:
        >>> tracker = UpdateTracker(optimizer)
        >>> tracker.snapshot(); optimizer.step(); ratio = tracker.ratio()
    """

    def __init__(self, optimizer: torch.optim.Optimizer | Iterable[Tensor]) -> None:
        # Parameters given directly are listed once (a generator such as model.parameters()
        # would be spent by the first snapshot); an optimizer is read at each snapshot, so that
        # a param group added later is measured too.
        self._source: torch.optim.Optimizer | list[Tensor] = optimizer
        if not isinstance(optimizer, torch.optim.Optimizer):
            self._source = _parameters_of(optimizer)
            if not self._source:
                raise ValueError(f"optimizer must hold at least one tensor, got optimizer={optimizer!r:.80}")
        self._buffers: list[Tensor] | None = None
        self._ready = False

    @torch.no_grad()
    def snapshot(self) -> None:
        """Copy the current parameters (call right before ``optimizer.step()``)."""
        params = [p.detach() for p in _parameters_of(self._source)]
        if self._buffers is None or [b.shape for b in self._buffers] != [p.shape for p in params]:
            self._buffers = [p.clone() for p in params]
        else:
            torch._foreach_copy_(self._buffers, params)
        self._ready = True

    def ratio(self) -> float:
        """The update ratio of the step since the last :meth:`snapshot`."""
        return self.measure()[1]

    def norm(self) -> float:
        """The length ||theta_after - theta_before|| of the step since the last :meth:`snapshot`."""
        return self.measure(ratio=False)[0]

    def measure(self, ratio: bool = True) -> tuple[float, float]:
        """(length, update ratio) of the step since the last :meth:`snapshot` (the ratio NaN,
        and one reduction saved, with ``ratio=False``)."""
        if not self._ready or self._buffers is None:
            raise RuntimeError("call UpdateTracker.snapshot() before optimizer.step(), then measure it")
        self._ready = False
        params = _parameters_of(self._source)
        if [p.shape for p in params] != [b.shape for b in self._buffers]:
            raise ValueError("the parameters changed shape or number since the snapshot")
        # in place: the buffers become the differences, and are refilled by the next snapshot
        return _update_size(params, self._buffers, in_place=True, ratio=ratio)


# -- helpers ----------------------------------------------------------------------------------
def _noise(differences: np.ndarray) -> float:
    """Robust standard deviation of the loss's step-to-step noise, from its differences.

    For a loss = trend + white noise of deviation s, the differences have deviation s*sqrt(2)
    around the trend's slope; the median absolute deviation ignores the occasional spike.
    """
    if len(differences) < 2:
        return 0.0
    centred = differences - np.median(differences)
    return float(1.4826 * np.median(np.abs(centred)) / math.sqrt(2.0))


def _theil_sen_slope(values: np.ndarray) -> float:
    """Median of the slopes between all pairs of points (robust to a few wild values)."""
    count = len(values)
    if count < 2:
        return 0.0
    first, second = np.triu_indices(count, k=1)
    return float(np.median((values[second] - values[first]) / (second - first)))


def _growth_per_step(losses: np.ndarray) -> float | None:
    """Geometric mean growth factor per step of a positive loss over its rising tail, if rising."""
    values = losses[np.isfinite(losses)]
    if len(values) < 2 or values[0] <= 0:
        return None
    lowest = int(np.argmin(values))
    tail = values[lowest:]
    if len(tail) < 2 or tail[0] <= 0 or tail[-1] <= tail[0]:
        return None
    return float((tail[-1] / tail[0]) ** (1.0 / (len(tail) - 1)))


def _positive(values: Iterable[float]) -> list[float]:
    """The finite, positive values (gradient norms a log can be taken of)."""
    return [float(v) for v in values if math.isfinite(v) and v > 0]


def _finite_mean(values: np.ndarray) -> float | None:
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else None


def _finite_median(values: np.ndarray) -> float | None:
    values = values[np.isfinite(values)]
    return float(np.median(values)) if len(values) else None


def _as_float(name: str, value: Any, allow_nonfinite: bool, missing: float | None = None) -> float:
    """``value`` as a float (a number or a one-element tensor); ``missing`` stands in for None."""
    if value is None and missing is not None:
        return missing
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a single number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {name}={value!r} ({type(value).__name__})")
    result = float(value)
    if not allow_nonfinite and not math.isfinite(result):
        raise ValueError(f"{name} must be finite, got {name}={value!r}")
    return result


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {name}={value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {name}={value!r}")
    return int(value)


def _format_factor(factor: float) -> str:
    """3.2 -> '3', 31.6 -> '30', 1000 -> '1000': one significant digit."""
    return f"{float(f'{factor:.1g}'):g}"


def _format_rate(rate: float, digits: int = 1) -> str:
    """3e-4 style: ``digits`` significant digits (trailing zeros dropped), no zero padding in the
    exponent. One for a suggestion (its size is a model's guess); two for the rate in use."""
    if rate == 0:
        return "0"
    mantissa, exponent = f"{rate:.{digits - 1}e}".split("e")
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"
