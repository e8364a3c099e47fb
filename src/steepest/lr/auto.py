"""``lr="auto"``: pick a learning rate (or a learning-rate-free method) before a run, and say why.

Policy of :func:`choose_lr` (``policy="auto"``), decided from measurements with
``benchmarks/tuning_free.py``: steps to a fixed target against "the oracle", the best of 13
constant rates 1e-4 .. 1e2 (half a decade apart) for the same optimizer, on a condition-1e3
quadratic, Rosenbrock, logistic and softmax regression (full batch, ``minimize``) and an MLP and
a CNN on digits (batch 64, ``fit``, median of 5 seeds). Ratios below are steps / oracle steps.

1. **Adam family** (Adam, AdamW, NAdam, or a subclass) -> **Prodigy**, no range test: lr=1 on a
   deterministic objective, lr=0.5 on mini-batches (``data`` given).
   The range test errs low for Adam: a sweep that raises the rate 20% per step sees Adam
   overshoot at rates a constant-rate run absorbs (consensus 25-270x below the grid optimum
   of 1.0 on the quadratic, Rosenbrock and logistic regression; 5-20x the oracle's steps).
   Prodigy with lr=1 took 0.84-1.02x the Adam oracle's steps on the four objectives, at no
   cost. On mini-batches at a constant rate it settles at a higher noise floor: on the digits
   MLP lr=1 took 2.1x the oracle's steps to 97% test accuracy (on 2 of 3 seeds it never got
   there in 3000 steps), lr=0.5 1.16x; on the CNN (98%) lr=1 1.00x, lr=0.5 0.91x.
   (Constant-rate trials of Adam, as in 2., chose 0.03 on the MLP: 2.0x, at 360-600 steps of
   cost.)
2. **Everything else with a learning rate** (SGD with or without momentum, RMSprop, Lion, ...)
   -> **a range test for a ceiling, then constant-rate trials below it**:

   a. one sweep (``steps``, ``min_lr`` .. ``max_lr``); the *ceiling* is the first rate at
      which the sweep's smoothed loss reaches 4x its start (or where it stopped, or ``max_lr``);
   b. trials at ceiling / 2, / 4, ...: each runs ``trial_steps`` steps at that constant rate
      from the start (the same batches for every trial) and scores the mean loss of its last
      quarter; a trial that blows up (1000x its lowest loss, stopped at once) or ends no lower
      than its first loss failed, and so did one of plain gradient descent (SGD without
      momentum) on a deterministic objective whose loss rose above its first value after its
      first quarter (below the stable limit 2 / L gradient descent descends). The walk stops
      at the first trial that is not better than the best so far by more than ``tolerance``;
   c. the choice is the largest rate that scored within ``tolerance`` of the best trial.

   Deterministic objective: 40-step trials, tolerance 2. Mini-batches: 80-step trials,
   tolerance 1.2. A short trial is biased in opposite directions in the two cases: on an
   ill-conditioned deterministic problem, after 40 steps every stable rate scores alike or
   the larger ones a little worse (the stiff directions still ring with momentum, the slow
   ones have barely moved), yet over a whole run the slow directions reward the largest
   stable rate; on mini-batches a large rate falls fastest early and then sits at a higher
   noise floor, which 40 steps do not show (40-step trials chose SGD-momentum rates of 0.35
   on the MLP, 1.7x the oracle's steps, and 0.17 on the CNN, a miss; 80 steps chose 0.12-0.17
   and 0.07-0.08).

   Why not the sweep alone (the rule before): with momentum the sweep's loss turns up where
   the iterate starts to *oscillate*, 10-100x below any rate that fails at a constant rate
   (heavy ball is underdamped long before it is unstable), so the consensus of the sweep's
   rules chose SGD-momentum (0.9) rates 27-370x below the oracle's on the objectives (21x the
   oracle's steps on the quadratic, 29x Rosenbrock, 111x logistic regression, 48x softmax
   regression) and, on the CNN, 3-4x above it (a miss). No single reading of the curve fitted
   every problem: the rate where the sweep's loss reached 10x its start was 1.3-2.2x the
   largest stable constant rate on the objectives and 4.6x on the MLP. The sweep is cheap and
   good for one thing, an upper bound.
   Measured with this rule, SGD-momentum: 0.95x quadratic, 0.47x Rosenbrock (the grid's
   3.2e-3 diverges, its 1e-3 is slow), 0.98x logistic, 1.03x softmax, 1.04x MLP, 0.68x CNN;
   on problems the rule was not tuned on: 0.87-1.14x on quadratics of condition 1e2 and 1e4,
   other seeds and sizes, Beale, Himmelblau, least squares, logistic regression on digits,
   softmax on breast cancer; 1.24x logistic regression with l2=1e-2; 1.48x Rosenbrock from
   (-1.2, 1); on 10-D Rosenbrock the chosen 9.7e-4 ends in the local minimum at f=3.99 (1e-3
   and 9e-4 do not: that problem is chaotic in the rate).

``policy="range_test"`` forces step 2 for every optimizer; ``policy="lr_free"`` forces Prodigy.
Everything the choice evaluated (sweep and trials: objective evaluations or mini-batch steps)
is reported in ``LRChoice.evaluations``: it is part of the cost of ``lr="auto"``, since the run
that follows restarts from the start. It was 101-130 evaluations on the objectives (1.1-1.3x
the oracle's whole run on the short ones: with it, auto takes 2.1-2.3x the oracle's steps
there, 0.63x on Rosenbrock) and a median of 361 and 469 mini-batch steps on the MLP and the CNN
(4.2x and 2.5x the oracle with it).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from steepest import rules
from steepest.engine import validation
from steepest.lr.range_test import RangeTestResult, range_test

__all__ = ["POLICIES", "LRChoice", "choose_lr", "is_adam_family"]

#: Policies of :func:`choose_lr`.
POLICIES: tuple[str, ...] = ("auto", "range_test", "lr_free")
_ADAM_NAMES = frozenset({"adam", "adamw", "nadam", "radam", "adamax"})

# The ceiling of the trials: the first swept rate whose smoothed loss reaches this multiple of
# the sweep's first. Relative to the start, not to the lowest loss: with momentum the sweep's
# loss rises and falls by a few times while the iterate oscillates, long before it blows up.
_CEILING_FACTOR = 4.0
# A trial stops as diverged once its loss is this many times its lowest so far (an exponential
# blow-up reaches it in a few steps; the overshoot of a stable heavy-ball run, about 20x on
# Rosenbrock, does not).
_TRIAL_BLOW_UP = 1e3
# Steps of a trial and the tolerance of the choice, without and with mini-batches (see the
# module docstring: short trials under-reward large rates on a deterministic objective and
# over-reward them on mini-batches).
_TRIAL_STEPS = {False: 40, True: 80}
_TOLERANCE = {False: 2.0, True: 1.2}
# Prodigy's lr (a factor on its own step-size estimate) without and with mini-batches.
_PRODIGY_LR = {False: 1.0, True: 0.5}
# Most trials one choice runs (ceiling / 2 ... ceiling / 2**12 spans 3.6 decades).
_MAX_TRIALS = 12


@dataclass
class LRChoice:
    """The learning rate ``lr="auto"`` chose, the method it runs with, and why.

    Attributes:
        lr: the learning rate to use (Prodigy's: 1.0, or 0.5 on mini-batches).
        method: the optimizer class to run (the one asked for, or Prodigy).
        policy: ``"range_test"`` or ``"lr_free"``: how the rate was chosen.
        reason: the decision in words, with the numbers behind it.
        suggestions: the range test's rule -> rate (empty without a range test).
        spread: max / min of the sweeps' ceilings (1 for one sweep; nan without a range test).
        evaluations: objective evaluations (and backward passes) the choice itself spent,
            sweep and trials together.
        range_test: the full :class:`~steepest.lr.RangeTestResult`, or None.
        trials: (rate, score) of every constant-rate trial, in the order run; the score is
            the mean loss over the trial's last quarter, inf for a trial that failed.
    """

    lr: float
    method: type[torch.optim.Optimizer]
    policy: str
    reason: str
    suggestions: dict[str, float] = field(default_factory=dict)
    spread: float = math.nan
    evaluations: int = 0
    range_test: RangeTestResult | None = None
    trials: list[tuple[float, float]] = field(default_factory=list)

    def __str__(self) -> str:
        return f"lr={self.lr:.3g} with {self.method.__name__} ({self.policy}): {self.reason}"


def is_adam_family(optimizer: Any) -> bool:
    """True for Adam, AdamW, NAdam (steepest's or torch's, or a subclass), by class or name.

    Example:
        >>> is_adam_family("adamw"), is_adam_family(torch.optim.SGD)
        (True, False)
    """
    if isinstance(optimizer, str):
        return optimizer.lower().replace("-", "").replace("_", "") in _ADAM_NAMES
    if isinstance(optimizer, type):
        return any(klass.__name__.lower() in _ADAM_NAMES for klass in optimizer.__mro__)
    return False


def choose_lr(
    objective_or_model: Any,
    data: Any = None,
    optimizer: type[torch.optim.Optimizer] | str = "adam",
    *,
    policy: str = "auto",
    options: Mapping[str, Any] | None = None,
    x0: Any = None,
    loss_fn: Callable[..., Any] | None = None,
    steps: int = 50,
    repeats: int | None = None,
    min_lr: float = 1e-5,
    max_lr: float = 100.0,
    max_spread: float = 4.0,
    batch_size: int = 64,
    seed: int = 0,
    trial_steps: int | None = None,
    tolerance: float | None = None,
) -> LRChoice:
    """Choose a learning rate for ``optimizer`` by a range test and trials, or a learning-rate-free method.

    Rule: Adam family -> Prodigy (lr=1; 0.5 on mini-batches); otherwise the largest of the rates
    ceiling / 2**k whose ``trial_steps``-step constant-rate trial scored within ``tolerance`` of
    the best trial, the ceiling read off a range test; see the module docstring.

    Args:
        objective_or_model: a callable objective ``f(x)`` (``f(x, batch)`` with data) or an
            ``nn.Module`` (as :func:`~steepest.lr.range_test` takes them).
        data: batches or an (X, y) pair; None for a deterministic objective.
        optimizer: the optimizer class, or a steepest method name (``"adam"``, ``"sgd"``).
        policy: ``"auto"`` (default), ``"range_test"`` or ``"lr_free"``.
        options: other keyword arguments of the optimizer, used by the sweep and the trials
            (``{"momentum": 0.9}``).
        x0: an objective's start (default ``objective.x0``).
        loss_fn: a module's loss (default cross-entropy).
        steps: steps of each sweep (default 50).
        repeats: sweeps (default 1): the trials, not the sweep, decide the rate, so one sweep
            is enough to find the ceiling; with more, the lowest ceiling counts.
        min_lr, max_lr: the swept range (default 1e-5 .. 100).
        max_spread: with several sweeps, ceilings further apart than this ratio are reported
            as an unreliable sweep (the lowest is used either way).
        batch_size: for an (X, y) pair.
        seed: the seed of the first sweep and of every trial (the same batches for each trial).
        trial_steps: steps of each constant-rate trial; default 40 for a deterministic
            objective (four times the memory of momentum 0.9: its overshoot has settled), 80 on
            mini-batches (long enough to show a large rate's noise floor).
        tolerance: the chosen rate is the largest whose trial scored at most this times the
            best trial's score, and the walk down stops when halving the rate no longer
            improves the score by this factor; default 2 for a deterministic objective, 1.2 on
            mini-batches (1 takes the best trial's rate).

    Returns:
        An :class:`LRChoice`.

    Example:
        >>> choice = choose_lr(steepest.problems.rosenbrock(), optimizer="sgd", options={"momentum": 0.9})
        >>> print(choice.reason)  # doctest: +SKIP
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got policy={policy!r}")
    cls = _optimizer_class(optimizer)
    if isinstance(max_spread, bool) or not isinstance(max_spread, (int, float)) or not max_spread >= 1:
        raise ValueError(f"max_spread must be a number >= 1, got max_spread={max_spread!r}")
    stochastic = data is not None
    if trial_steps is None:
        trial_steps = _TRIAL_STEPS[stochastic]
    trial_steps = validation.integer("trial_steps", trial_steps, minimum=5)
    if tolerance is None:
        tolerance = _TOLERANCE[stochastic]
    tolerance = validation.real("tolerance", tolerance)
    if not tolerance >= 1:
        raise ValueError(f"tolerance must be >= 1, got tolerance={tolerance!r}")
    from steepest.rules import Prodigy

    if policy == "lr_free" or (policy == "auto" and is_adam_family(cls)):
        rate = _PRODIGY_LR[stochastic]
        why = (
            "asked for a learning-rate-free method"
            if policy == "lr_free"
            else f"{cls.__name__} is Adam-family: Prodigy estimates the step size itself and matched the "
            "best constant Adam rate of a grid on measured problems, where a range test picks rates "
            "25-270x too small"
        )
        if stochastic:
            why += (
                "; lr=0.5 on mini-batches: at a constant rate lr=1 settles at a higher noise floor "
                "(measured on the digits MLP: 2.1x the best Adam rate's steps to 97%, lr=0.5 1.16x)"
            )
        return LRChoice(rate, Prodigy, "lr_free", f"Prodigy with lr={rate:g}: {why}", evaluations=0)
    if "lr" not in _parameters(cls):
        raise ValueError(f"optimizer {cls.__name__} has no lr argument to choose")
    repeats = 1 if repeats is None else repeats
    settings = dict(options or {})
    if "lr" in settings:
        raise ValueError(f"options must not hold lr (it is what is chosen), got options={settings!r}")

    def factory(params: list[torch.Tensor]) -> torch.optim.Optimizer:
        return cls(params, **settings, lr=min_lr)

    if isinstance(data, Iterator):
        # a one-shot iterator: keep what the sweep and the trials read, so each can read it again
        data = list(itertools.islice(data, max(steps, trial_steps)))
    common = dict(loss_fn=loss_fn, x0=x0, batch_size=batch_size)
    sweep = range_test(
        objective_or_model,
        data,
        factory,
        min_lr=min_lr,
        max_lr=max_lr,
        steps=steps,
        repeats=repeats,
        seed=seed,
        **common,
    )
    evaluations = sum(steps if stop is None else stop + 1 for stop in sweep.stopped_at)
    ceilings = [_ceiling(sweep, row) for row in range(sweep.repeats)]
    ceiling, spread = min(ceilings), max(ceilings) / min(ceilings)
    reason = (
        f"range test ({sweep.repeats} sweep(s) x {steps} steps): loss {_CEILING_FACTOR:g}x its start "
        f"(or diverged) at lr {ceiling:.3g}"
    )
    if spread > max_spread:
        reason += f" (sweeps' ceilings spread x{spread:.2g} > {max_spread:g}: unreliable, took the lowest)"

    # Plain gradient descent on a deterministic objective descends at every step below the
    # stable limit 2 / L; a trial whose loss climbs back above where it started is past it.
    # (Heavy ball is not monotone: SGD-momentum's best rates on logistic and softmax regression
    # throw the loss to 2-5x its start before it settles. Nor is plain descent along a curved
    # valley: on Rosenbrock its best rate rises at some steps, staying far below the start.)
    monotone = not stochastic and _is_plain_gradient_descent(cls, settings)

    def trial(rate: float) -> tuple[float, int]:
        return _trial(objective_or_model, data, factory, rate, trial_steps, seed, common, monotone)

    trials: list[tuple[float, float]] = []
    best = math.inf
    rate = ceiling / 2
    while rate >= min_lr and len(trials) < _MAX_TRIALS:
        score, spent = trial(rate)
        evaluations += spent
        trials.append((rate, score))
        if math.isfinite(best) and not score < best / tolerance:
            break  # halving no longer clearly helps: smaller rates cannot be chosen
        best = min(best, score)
        rate /= 2
    tried = ", ".join(f"{rate:.3g}: {'failed' if math.isinf(s) else f'{s:.4g}'}" for rate, s in trials)
    if math.isfinite(best):
        lr = max(rate for rate, score in trials if score <= tolerance * best)
        reason += (
            f"; {len(trials)} trials x {trial_steps} steps at ceiling/2, /4, ... (mean loss of the "
            f"last quarter: {tried}); took the largest within {tolerance:g}x of the best"
        )
    else:
        lr = float(sweep.consensus)
        reason += f"; every trial failed ({tried}): took the sweep's consensus"
    reason += f"; {evaluations} evaluations"
    if sweep.notes:
        reason += "; notes: " + "; ".join(sweep.notes)
    if not (np.isfinite(lr) and lr > 0):
        raise RuntimeError(f"the range test gave no usable rate ({reason})")
    return LRChoice(
        float(lr), cls, "range_test", reason, dict(sweep.suggestions), spread, evaluations, sweep, trials
    )


def _ceiling(sweep: RangeTestResult, row: int) -> float:
    """The first rate whose smoothed loss is ``_CEILING_FACTOR`` x the start, else where it stopped."""
    curve = sweep.smoothed[row]
    finite = np.isfinite(curve)
    if not finite[0]:
        return float(sweep.lrs[0])
    above = np.nonzero(finite & (curve >= _CEILING_FACTOR * abs(curve[0])))[0]
    ends = [int(above[0])] if above.size else []
    stop = sweep.stopped_at[row]
    if stop is not None:
        ends.append(stop)
    elif not finite.all():
        ends.append(int(np.argmin(finite)))
    return float(sweep.lrs[min(ends)]) if ends else float(sweep.lrs[-1])


def _trial(
    objective_or_model: Any,
    data: Any,
    factory: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
    rate: float,
    steps: int,
    seed: int,
    common: Mapping[str, Any],
    monotone: bool = False,
) -> tuple[float, int]:
    """``steps`` steps at the constant ``rate`` from the start: (score, evaluations spent).

    A constant-rate run is a range test over a range of zero width: the same restored start,
    seeding and batch stream, so every trial sees the same batches. Score: the mean loss of the
    last quarter of the steps; inf when the run diverged or ended no lower than its first loss,
    or, with ``monotone`` (plain gradient descent on a deterministic objective), when the loss
    rose above its first value after the first quarter of the steps. Without that test plain
    gradient descent chose lr 50 on softmax regression (digits): its 40 steps end low between
    two bursts, and 500 steps end at a loss of 5.6; it now chooses 12.5, whose 500 end at 0.086.
    """
    result = range_test(
        objective_or_model,
        data,
        factory,
        min_lr=rate,
        max_lr=rate * (1 + 1e-12),
        steps=steps,
        mode="linear",
        repeats=1,
        smoothing=0.0,  # the divergence test then reads the raw loss against its lowest
        diverge_factor=_TRIAL_BLOW_UP,
        seed=seed,
        **common,
    )
    losses, stop = result.losses[0], result.stopped_at[0]
    if stop is not None:
        return math.inf, stop + 1
    quarter = max(1, steps // 4)
    score = float(np.mean(losses[-quarter:]))
    if monotone and float(np.max(losses[quarter:])) > losses[0]:
        return math.inf, steps
    return (score if score < losses[0] else math.inf), steps


def _is_plain_gradient_descent(cls: type, settings: Mapping[str, Any]) -> bool:
    """SGD (steepest's or torch's, or a subclass) without momentum."""
    from steepest.rules import SGD

    return issubclass(cls, (SGD, torch.optim.SGD)) and not settings.get("momentum", 0)


def _optimizer_class(optimizer: Any) -> type[torch.optim.Optimizer]:
    if isinstance(optimizer, str):
        return rules.by_name(optimizer)
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        return optimizer
    raise TypeError(
        f"optimizer must be a torch.optim.Optimizer subclass or a method name, got optimizer={optimizer!r}"
    )


def _parameters(cls: type) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(cls).parameters)
    except (TypeError, ValueError):
        return set()
