"""``lr="auto"``: pick a learning rate (or a learning-rate-free method) before a run, and say why.

Policy of :func:`choose_lr` (``policy="auto"``), decided from measurements with
``benchmarks/tuning_free.py``: steps to a fixed target against "the oracle", the best of 13
constant rates 1e-4 .. 1e2 (half a decade apart) for the same optimizer, on a condition-1e3
quadratic, Rosenbrock, logistic and softmax regression (full batch, ``minimize``) and an MLP and
a CNN on digits (batch 64, ``fit``, median of 5 seeds). Ratios below are steps / oracle steps.

1. **Adam family** (Adam, AdamW, NAdam, RAdam, Adamax, or a subclass) -> **Prodigy**, no range
   test: lr=1 on a deterministic objective, lr=0.5 on mini-batches (``data`` given, or
   ``noisy``). Weight decay keeps its kind: Adam's (and NAdam's, RAdam's, Adamax's) is an L2
   term added to the gradient, so Prodigy gets ``decouple=False``; AdamW's (or
   ``decoupled_weight_decay=True``) shrinks the weights directly, ``decouple=True``.
   The range test errs low for Adam: a sweep that raises the rate 20% per step sees Adam
   overshoot at rates a constant-rate run absorbs (consensus 25-270x below the grid optimum
   of 1.0 on the quadratic, Rosenbrock and logistic regression; 5-20x the oracle's steps).
   Prodigy with lr=1 took 0.84-1.02x the Adam oracle's steps on the four objectives, at no
   cost. On mini-batches at a constant rate it settles at a higher noise floor: on the digits
   MLP lr=1 took 2.1x the oracle's steps to 97% test accuracy (on 2 of 3 seeds it never got
   there in 3000 steps), lr=0.5 1.16x; on the CNN (98%) lr=1 1.00x, lr=0.5 0.91x.
   (Constant-rate trials of Adam, as in 4., chose 0.03 on the MLP: 2.0x, at 360-600 steps of
   cost.)
2. **SGD on a deterministic objective** (steepest's or torch's SGD, any momentum, dampening,
   Nesterov; no ``data``, not ``noisy``) -> **0.9 of its stable limit at the start's
   curvature**: lr = 0.9 :func:`stable_limit` / lambda_max, where lambda_max (plus the rule's
   weight decay) comes from at most 10 power iterations on finite-difference Hessian-vector
   products at the start, stopped once two Rayleigh quotients agree to 1% (4-9 products on the
   measured objectives, plus one gradient at the start); ``LRChoice.safety`` asks the run to
   back off on a divergence (``minimize`` does so unless told otherwise), since the path may
   meet stiffer curvature than the start (Beale, Himmelblau). Heavy ball at momentum 0.9, cost
   included: 1.12x quadratic, 0.53x Rosenbrock, 1.19x logistic, 1.18x softmax regression,
   1.15x Beale, 0.97x least squares; 1.68x Himmelblau, whose start (0, 0) lies where the
   curvature is negative (|lambda| 42; 82 at the minimum reached): the rate, 26x the oracle's,
   diverges twice and backs off, and where it lands is chaotic in the rate (0.4-2.2x within
   10% of it, median 1.6x). With 10 products every time (11 gradients), before: 1.15x, 0.54x,
   1.25x, 1.21x; 1.06-1.33x on least squares, Beale, quadratics of condition 1e2 (1.30x) and
   1e4, another seed and size, logistic regression with l2=1e-2 (1.27x) and on digits; 1.70x
   Rosenbrock from (-1.2, 1) and 1.88x softmax on breast cancer, where the curvature at the
   start is far above that along the path; 0.55x 10-D Rosenbrock. Where the oracle's rate is
   larger than 0.9 of the start's limit (logistic 3.16 against 1.03, softmax 10 against 4.7),
   the curvature fell as the fit improved. A rate that follows it does not come cheap: taking
   0.9 of the limit at a fresh estimate every 10 or 20 steps (a warm-started power iteration,
   1-2 products each) diverged on logistic and softmax regression, Rosenbrock, Beale and
   Himmelblau (the estimate along the path collapses, the rate soars). The range test and
   trials (4.) took 2.1-2.3x on the short objectives, their 101-130 evaluations counted
   (0.95-1.03x without them). Measured with ``benchmarks/tuning_free.py``.
3. **SGD on mini-batches training an over-parameterized model** (an ``nn.Module`` with more
   trainable parameters than training examples, a loss known to be >= 0, no weight decay, no
   Nesterov, not maximizing) -> **MoMo** (:class:`~steepest.MoMo`) with beta = SGD's momentum
   and lr=10 (and SGD's other options that MoMo takes, clip_norm, foreach), no range test: its
   step is a Polyak step, (a model of the loss - 0) / ||d||^2, which such a model, able to fit
   its examples and drive the loss towards 0, can take; lr only caps it (caps of 10 and infinity
   ran identically on the digits networks, 3 within noise, the official default 1 1.3x slower on
   the CNN). Digits, median of 5 seeds, no cost: MLP 0.87x (100 steps against the oracle's 115
   at 0.1), CNN 1.13x (305 against 270 at 0.0316), where the range test and trials (4.) took
   1.04x and 0.76x plus 361 and 469 steps of choosing (4.2x and 2.5x with them). Not for a model
   with fewer parameters than examples: there the loss stays well above 0 and the Polyak steps
   stay too large (measured at 10 epochs against the range test's rate: linear least squares on
   diabetes 0.74 against 0.53, a linear model on random labels 2.16 against 1.43, softmax
   regression on wine 0.096 against 0.0026; MoMo's online lower bound, ``estimate_lower_bound``,
   did no better). Nor where the size of the data cannot be told (an iterator of batches). Tried
   first for the networks, and dropped: a ramp of the rate during the run itself, rolled back to
   the ceiling it found / 8-24 (the sweep's progress kept), chose 0.08-0.43 with a 2-3x spread
   over seeds and missed the CNN's target on most; the noise-scale estimate of the best step
   (McCandlish et al. 2018) fitted the MLP at initialisation (0.09-0.2) but not the CNN, which
   starts on a plateau whose curvature along the gradient is about 0 or negative.
4. **Everything else with a learning rate** (SGD on other mini-batch problems, RMSprop, Lion,
   ...) -> **a range test for a ceiling, then constant-rate trials below it**:

   a. one sweep (``steps``, ``min_lr`` .. ``max_lr``); the *ceiling* is the first rate at
      which the sweep's smoothed loss reaches 4x its start (or where it stopped, or ``max_lr``);
   b. trials at ceiling / 2, / 4, ...: each runs ``trial_steps`` steps at that constant rate
      from the start (the same batches for every trial) and scores the mean loss of its last
      quarter; a trial that blows up (1000x its lowest loss, stopped at once) or ends no lower
      than its first loss failed, and so did one of plain gradient descent (SGD without
      momentum) on a deterministic objective whose loss rose above its first value after its
      first quarter (below the stable limit 2 / L gradient descent descends). The walk stops
      at the first trial that is not better than the best so far by more than ``tolerance``,
      once that best ended 10% below its first loss (rates that kill a network all score
      near its start: Lion on the digits CNN scored 2.32 and 2.31 at 0.13 and 0.067, chance
      being 2.30, and the walk that stopped there chose 0.13; it now goes on to 0.0042);
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

A rule that sets its own step size (Prodigy, DAdaptAdam, DAdaptSGD, MoMo), asked for by name,
keeps it: no range test, its lr at its default (Prodigy's as in 1.). A range test of the factor
sweeps what the rule estimates: on the digits MLP it chose Prodigy's lr=3.2.
So does a method driven by a closure (steepest's LBFGS, Newton, NewtonCG, torch.optim.LBFGS):
its line search (or Newton step) sizes every step, and lr, only the step it tries first, stays
at its default, 1. Range tests and trials chose 50 for the three steepest methods and 0.78-1.56
for torch's LBFGS, at a cost of 539-1311 objective evaluations on Rosenbrock (L-BFGS, Newton,
torch's LBFGS: a line search evaluates several times per step), where whole runs at lr=1 took
33-100; the runs at the chosen rate then took 0.98-2.9x the evaluations of lr=1's on Rosenbrock
and the condition-1e3 quadratic.

An optimizer that maximizes (``maximize=True``) is judged on -f: the sweep, the ceiling, the
trials and their scores read the objective turned round, as for a minimizer.
``policy="range_test"`` forces step 4 for every optimizer; ``policy="lr_free"`` forces Prodigy.
Everything the choice evaluated (gradients for the curvature; sweep and trials: objective
evaluations, every call of a line search's closure included, or mini-batch steps) is reported
in ``LRChoice.evaluations``: it is part of the cost of ``lr="auto"``, since the run that
follows restarts from the start. For the range test and trials it was 101-130 evaluations on
the objectives (1.1-1.3x the oracle's whole run on the short ones) and a median of 361 and
469 mini-batch steps on the MLP and the CNN (4.2x and 2.5x the oracle with it); Prodigy, MoMo
and the closure-driven methods cost nothing.
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from steepest import clipping, rules
from steepest.engine import validation
from steepest.lr.range_test import (
    RandomState,
    RangeTestResult,
    _seed_everything,
    _Task,
    check_sweep,
    is_pair,
    range_test,
)

__all__ = ["POLICIES", "LRChoice", "choose_lr", "is_adam_family", "stable_limit"]

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
# The walk down from the ceiling stops only once its best trial ended this share below its first
# loss: trials that all end near the start are not a plateau of good rates. Lion on the digits
# CNN: the sweep reached 4x its start only at 0.27, and the trials at 0.13 and 0.067 both killed
# the network (2.32 and 2.31, chance being 2.30, the first loss 2.35); the walk stopped there,
# and the run took 0.13 and ended at 10% test accuracy.
_PROGRESS = 0.1
# The curvature policy (SGD on a deterministic objective): power iterations, one gradient each,
# and the share of the stable limit it takes (0.7 and 0.5 took 1.1-1.8x the oracle's steps
# where 0.9 took 1.0-1.25x; the power iteration's Rayleigh quotient errs low, by 3% on the
# quadratic, so 0.9 is about 0.93 of the true limit).
_POWER_ITERATIONS = 10
_STABLE_SHARE = 0.9
# The power iteration stops early once successive Rayleigh quotients agree to this relative
# tolerance (as ARPACK's tol): on logistic regression the quotient is within 0.1% of its limit
# after 4 products, on softmax regression within 1% after 7, where a fixed 10 cost 11 gradients
# on every objective; on the condition-1e3 quadratic, whose spectrum is dense at the top, it
# runs on to about 9.
_POWER_TOLERANCE = 0.01
# MoMo's cap on its Polyak step (the stand-in for SGD on mini-batches; in MoMo's units, SGD's
# rate times 1 / (1 - momentum)). On the digits networks the step rarely reaches it: caps of 10
# and infinity ran identically, 3 within noise, the official default 1 1.3x slower on the CNN.
_MOMO_CAP = 10.0
# Losses known to be >= 0, so that MoMo's lower bound 0 holds.
_NONNEGATIVE_LOSSES = frozenset(
    {
        torch.nn.functional.cross_entropy,
        torch.nn.functional.mse_loss,
        torch.nn.functional.l1_loss,
        torch.nn.functional.smooth_l1_loss,
        torch.nn.functional.huber_loss,
        torch.nn.functional.binary_cross_entropy,
        torch.nn.functional.binary_cross_entropy_with_logits,
    }
)
_NONNEGATIVE_LOSS_MODULES = (
    torch.nn.CrossEntropyLoss,
    torch.nn.MSELoss,
    torch.nn.L1Loss,
    torch.nn.SmoothL1Loss,
    torch.nn.HuberLoss,
    torch.nn.BCELoss,
    torch.nn.BCEWithLogitsLoss,
)


@dataclass
class LRChoice:
    """The learning rate ``lr="auto"`` chose, the method it runs with, and why.

    Attributes:
        lr: the learning rate to use (Prodigy's: 1.0, or 0.5 on mini-batches; MoMo's cap: 10).
        method: the optimizer class to run (the one asked for, Prodigy or MoMo).
        policy: ``"curvature"``, ``"range_test"`` or ``"lr_free"`` (Prodigy, MoMo, or a rule
            that sizes its own steps: D-Adaptation, a closure-driven method's line search): how
            the rate was chosen.
        reason: the decision in words, with the numbers behind it.
        suggestions: the range test's rule -> rate (empty without a range test).
        spread: max / min of the sweeps' ceilings (1 for one sweep; nan without a range test).
        evaluations: objective evaluations (and backward passes) the choice itself spent,
            sweep and trials together (every call of a closure-driven step's closure counts).
        range_test: the full :class:`~steepest.lr.RangeTestResult`, or None.
        trials: (rate, score) of every constant-rate trial, in the order run; the score is
            the mean loss over the trial's last quarter, inf for a trial that failed.
        curvature: the estimate of the Hessian's largest eigenvalue at the start
            (``"curvature"`` policy; nan otherwise).
        safety: the :class:`~steepest.lr.SafeStep` policy the run should use unless the caller
            chose one (``minimize`` applies it): the curvature policy asks for
            ``{"on_nonfinite": "backoff"}``, since the path may meet stiffer curvature than the
            start's.
        options: the keyword arguments, besides ``lr``, to build ``method`` with: the caller's
            options for the optimizer asked for; for a stand-in, the ones it takes (Prodigy:
            AdamW's weight_decay, betas, ...; MoMo: clip_norm, foreach, ...; the others are named
            in ``reason``) or their translation (MoMo: ``beta``, SGD's momentum; Prodigy:
            ``decouple``, the kind of the Adam-family weight decay). fit, minimize and
            ``steepest train`` build ``functools.partial(method, **options)``.
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
    curvature: float = math.nan
    safety: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"lr={self.lr:.3g} with {self.method.__name__} ({self.policy}): {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        """Plain values, safe in JSON and in a checkpoint: what ``lr_choice.json`` and fit's
        checkpoints keep of the choice (not the range test's curves).

        ``lr``, ``method`` (the class's name), ``options``, ``policy``, ``reason`` and
        ``evaluations`` (what the choice cost), then what it measured, each only when it did:
        ``suggestions`` and ``spread`` (the range test), ``trials`` (``[rate, score]``, the score
        None for a trial that failed), ``curvature`` and ``safety``.
        """
        record: dict[str, Any] = {
            "lr": float(self.lr),
            "method": self.method.__name__,
            "options": dict(self.options),
            "policy": self.policy,
            "reason": self.reason,
            "evaluations": int(self.evaluations),
        }
        if self.suggestions:
            record["suggestions"] = {rule: float(rate) for rule, rate in self.suggestions.items()}
        if math.isfinite(self.spread):
            record["spread"] = float(self.spread)
        if self.trials:
            record["trials"] = [
                [float(rate), float(score) if math.isfinite(score) else None] for rate, score in self.trials
            ]
        if math.isfinite(self.curvature):
            record["curvature"] = float(self.curvature)
        if self.safety:
            record["safety"] = dict(self.safety)
        return record

    @classmethod
    def from_dict(
        cls, record: Any, asked: type[torch.optim.Optimizer], trained_with: str | None = None
    ) -> LRChoice:
        """Inverse of :meth:`to_dict`, checked: a resumed run continues with the choice it started
        with, and never chooses again.

        ``method`` must be the class ``asked`` for or one steepest knows by name (the stand-ins
        Prodigy and MoMo), and the class ``trained_with`` names when given (a checkpoint holds
        that optimizer's state); ``lr`` a positive finite number; ``options`` a dict of keyword
        arguments, without ``lr``.

        Raises:
            ValueError: the first field that is missing or wrong, named with its value.
        """
        if not isinstance(record, Mapping):
            raise ValueError(f"it is not a record of a choice: {record!r:.80}")
        for key in ("lr", "method", "options"):
            if key not in record:
                raise ValueError(f"it has no {key}")
        name, rate, options = record["method"], record["lr"], record["options"]
        if not isinstance(name, str):
            raise ValueError(f"method must be an optimizer's name, got method={name!r}")
        method = asked if name == asked.__name__ else rules.by_name(name, "method")
        if trained_with is not None and trained_with != method.__name__:
            raise ValueError(f"method={name!r}, but the checkpoint holds the state of {trained_with}")
        if (
            isinstance(rate, bool)
            or not isinstance(rate, (int, float))
            or not (math.isfinite(rate) and rate > 0)
        ):
            raise ValueError(f"lr must be a positive finite number, got lr={rate!r}")
        if (
            not isinstance(options, Mapping)
            or not all(isinstance(key, str) for key in options)
            or "lr" in options
        ):
            raise ValueError(
                f"options must be a dict of keyword arguments other than lr, got options={options!r}"
            )
        evaluations = record.get("evaluations", 0)
        if isinstance(evaluations, bool) or not isinstance(evaluations, int) or evaluations < 0:
            raise ValueError(f"evaluations must be a whole number >= 0, got evaluations={evaluations!r}")
        try:  # what the choice measured: shown, never used to train
            measured = {
                "suggestions": {
                    str(rule): float(value) for rule, value in record.get("suggestions", {}).items()
                },
                "spread": float(record.get("spread", math.nan)),
                "trials": [
                    (float(trial), math.inf if score is None else float(score))
                    for trial, score in record.get("trials", [])
                ],
                "curvature": float(record.get("curvature", math.nan)),
                "safety": {str(key): str(value) for key, value in record.get("safety", {}).items()},
            }
        except (TypeError, ValueError, AttributeError) as error:
            raise ValueError(f"its measurements are damaged ({error})") from None
        return cls(
            float(rate),
            method,
            str(record.get("policy", "")),
            str(record.get("reason", "")),
            evaluations=evaluations,
            options=dict(options),
            **measured,
        )


def is_adam_family(optimizer: Any) -> bool:
    """True for Adam, AdamW, NAdam, RAdam, Adamax (steepest's or torch's, or a subclass), by class or name.

    These share Adam's per-coordinate scaling by a second-moment estimate, the step Prodigy
    adapts, so ``lr="auto"`` runs them all as Prodigy.

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
    noisy: bool = False,
) -> LRChoice:
    """Choose a learning rate for ``optimizer`` by a range test and trials, or a learning-rate-free method.

    Rule: Adam family -> Prodigy (lr=1; 0.5 on mini-batches); a closure-driven method (L-BFGS,
    Newton) -> its default lr, its line search sizes the steps; SGD on a deterministic objective
    -> 0.9 stable_limit / lambda_max at the start; SGD on mini-batches training a model with more
    parameters than examples -> MoMo (lr=10, beta = momentum); otherwise the largest of the rates
    ceiling / 2**k whose ``trial_steps``-step constant-rate trial scored within ``tolerance`` of
    the best trial, the ceiling read off a range test; see the module docstring.

    Args:
        objective_or_model: a callable objective ``f(x)`` (``f(x, batch)`` with data) or an
            ``nn.Module`` (as :func:`~steepest.lr.range_test` takes them).
        data: batches or an (X, y) pair; None for a deterministic objective.
        optimizer: the optimizer class, or a steepest method name (``"adam"``, ``"sgd"``).
        policy: ``"auto"`` (default), ``"range_test"`` (the sweep and trials, for any optimizer)
            or ``"lr_free"`` (Prodigy).
        options: other keyword arguments of the optimizer, used by the sweep and the trials
            (``{"momentum": 0.9}``). With ``maximize=True`` every reading is of -f.
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
        noisy: the objective draws a fresh mini-batch at every call (a stochastic objective
            whose batches cannot be handed over as ``data``): it is chosen for as mini-batches
            are (80-step trials, tolerance 1.2, Prodigy at 0.5, no curvature estimate, which
            needs the same function at every call), but its trials cannot see the same batches.

    Returns:
        An :class:`LRChoice`.

    Example:
        >>> choice = choose_lr(steepest.problems.rosenbrock(), optimizer="sgd", options={"momentum": 0.9})
        >>> print(choice.reason)  # doctest: +SKIP
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got policy={policy!r}")
    cls = _optimizer_class(optimizer)
    # Every setting is checked whichever branch ends up using it: a typo must not pass because
    # this problem happened not to need a range test.
    min_lr, max_lr, steps, _, batch_size, seed = check_sweep(
        min_lr, max_lr, steps, 1 if repeats is None else repeats, batch_size, seed
    )
    if options is not None and not isinstance(options, Mapping):
        raise TypeError(f"options must be a dict of keyword arguments or None, got options={options!r}")
    if isinstance(max_spread, bool) or not isinstance(max_spread, (int, float)) or not max_spread >= 1:
        raise ValueError(f"max_spread must be a number >= 1, got max_spread={max_spread!r}")
    if not isinstance(noisy, bool):
        raise TypeError(f"noisy must be True or False, got noisy={noisy!r}")
    # a noisy objective is mini-batches the choice cannot replay: the same short-trial biases
    # (module docstring, 4.) hold for it, so it gets the same settings
    stochastic = data is not None or noisy
    if trial_steps is None:
        trial_steps = _TRIAL_STEPS[stochastic]
    trial_steps = validation.integer("trial_steps", trial_steps, minimum=5)
    if tolerance is None:
        tolerance = _TOLERANCE[stochastic]
    tolerance = validation.real("tolerance", tolerance)
    if not tolerance >= 1:
        raise ValueError(f"tolerance must be >= 1, got tolerance={tolerance!r}")
    from steepest.rules import Prodigy

    settings = dict(options or {})
    if "lr" in settings:
        raise ValueError(f"options must not hold lr (it is what is chosen), got options={settings!r}")
    built = _check_options(cls, settings)
    own_prodigy = issubclass(cls, Prodigy)  # asked for by name: it keeps its own step, as below
    if policy == "lr_free" or (policy == "auto" and (is_adam_family(cls) or own_prodigy)):
        rate = _PRODIGY_LR[stochastic]
        if policy == "lr_free":
            why = "asked for a learning-rate-free method"
        elif own_prodigy:
            why = "Prodigy estimates its step size itself, lr is a factor on it: no range test"
        else:
            why = (
                f"{cls.__name__} is Adam-family: Prodigy estimates the step size itself and matched "
                "the best constant Adam rate of a grid on measured problems, where a range test "
                "picks rates 25-270x too small"
            )
        if stochastic:
            why += (
                "; lr=0.5 on mini-batches: at a constant rate lr=1 settles at a higher noise floor "
                "(measured on the digits MLP: 2.1x the best Adam rate's steps to 97%, lr=0.5 1.16x)"
            )
        method = cls if own_prodigy else Prodigy
        given = settings
        if not own_prodigy and is_adam_family(cls):
            given, decay = _prodigy_weight_decay(cls, settings)
            why += decay
        kept, why = _taken_by(method, given, f"{method.__name__} with lr={rate:g}: {why}")
        return LRChoice(rate, method, "lr_free", why, evaluations=0, options=kept)
    if "lr" not in _parameters(cls):
        raise ValueError(f"optimizer {cls.__name__} has no lr argument to choose")
    if policy == "auto" and rules.requires_closure(built):
        return _closure_choice(cls, settings)
    if policy == "auto" and _sets_its_own_step(cls):
        return _own_step_choice(cls, settings)
    if policy == "auto" and stochastic and _is_gradient_descent(cls):
        choice = _polyak_choice(objective_or_model, data, cls, settings, loss_fn)
        if choice is not None:
            return choice
    curvature_cost = 0  # gradients spent on a curvature estimate that gave no rate
    if policy == "auto" and not stochastic and _is_gradient_descent(cls):
        choice, curvature_cost = _curvature_choice(objective_or_model, cls, settings, x0, seed)
        if choice is not None:
            return choice
    repeats = 1 if repeats is None else repeats

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
    evaluations = curvature_cost + sum(sweep.evaluations)
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

    def trial(rate: float) -> tuple[float, float, int]:
        return _trial(objective_or_model, data, factory, rate, trial_steps, seed, common, monotone)

    trials: list[tuple[float, float]] = []
    best = math.inf
    rate = ceiling / 2
    while rate >= min_lr and len(trials) < _MAX_TRIALS:
        score, start, spent = trial(rate)
        evaluations += spent
        trials.append((rate, score))
        # (tolerances act on |best|: a loss may be negative, a log-likelihood say)
        progressed = best < start - _PROGRESS * abs(start)
        if progressed and not score < best - (1 - 1 / tolerance) * abs(best):
            break  # halving no longer clearly helps: smaller rates cannot be chosen
        best = min(best, score)
        rate /= 2
    tried = ", ".join(f"{rate:.3g}: {'failed' if math.isinf(s) else f'{s:.4g}'}" for rate, s in trials)
    if math.isfinite(best):
        lr = max(rate for rate, score in trials if score <= best + (tolerance - 1) * abs(best))
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
        float(lr),
        cls,
        "range_test",
        reason,
        dict(sweep.suggestions),
        spread,
        evaluations,
        sweep,
        trials,
        options=settings,
    )


def _polyak_choice(
    model: Any, data: Any, cls: type, settings: Mapping[str, Any], loss_fn: Any
) -> LRChoice | None:
    """SGD on mini-batches -> MoMo with SGD's momentum, its step capped at ``_MOMO_CAP``.

    None (the caller then runs the range test and trials) where MoMo cannot stand in:

    * a model that is not over-parameterized (fewer trainable parameters than training
      examples, or either count unknown): the Polyak step aims at the loss's lower bound 0,
      which a network with more parameters than examples can reach (it interpolates) and a
      small model on noisy data cannot; there MoMo's steps stay too large. Measured at 10
      epochs against the range test's rate: linear least squares on diabetes 0.74 against
      0.53, a linear model on random labels 2.16 against 1.43 (its start 1.4), softmax
      regression on wine 0.096 against 0.0026;
    * a loss not known to be >= 0 (the lower bound);
    * weight decay (MoMo decays by its cap, not by the step taken) or Nesterov momentum (MoMo
      has none);
    * ``maximize=True``: MoMo has no ascent, and its Polyak step aims at a lower bound.

    MoMo is built with the caller's options it takes (clip_norm, foreach, ...); the others
    (dampening, ...) are named in the reason.
    """
    from steepest.rules import MoMo

    examples = _training_examples(data)
    if not isinstance(model, torch.nn.Module) or examples is None:
        return None
    parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if parameters < examples or not _nonnegative(loss_fn):
        return None
    if float(settings.get("weight_decay", 0.0) or 0.0) != 0 or settings.get("nesterov", False):
        return None
    if settings.get("maximize", False):
        return None
    momentum = float(settings.get("momentum", 0.0) or 0.0)
    if not 0 <= momentum < 1:
        return None
    reason = (
        f"MoMo with lr={_MOMO_CAP:g} (beta={momentum:g}, {cls.__name__}'s momentum): the model has "
        f"more parameters ({parameters}) than training examples ({examples}), so it can fit them "
        "and drive the loss (>= 0) near 0; SGD's step size is then taken from the loss itself, "
        f"tau = (the loss model - 0) / ||d||^2 (a Polyak step), capped at {_MOMO_CAP:g}; measured "
        "0.87x and 1.13x the best constant SGD-momentum rate's steps on the digits MLP and CNN, "
        "where a range test and trials spend 361-469 steps choosing"
    )
    # momentum is translated (MoMo's beta); nesterov=False is what MoMo does: neither is dropped
    rest = {
        name: value
        for name, value in settings.items()
        if name != "momentum" and not (name == "nesterov" and not value)
    }
    kept, reason = _taken_by(MoMo, rest, reason)
    return LRChoice(_MOMO_CAP, MoMo, "lr_free", reason, options={"beta": momentum, **kept})


def _training_examples(data: Any) -> int | None:
    """Examples in ``data``: an (X, y) pair, a list of (inputs, targets) batches or a DataLoader
    over a sized dataset; None when it cannot be told (an iterator, other batches)."""
    if is_pair(data):
        return int(data[0].shape[0])
    if isinstance(data, (tuple, list)):
        sizes = [_batch_size(batch) for batch in data]
        return None if not sizes or None in sizes else sum(sizes)
    dataset = getattr(data, "dataset", None)
    if isinstance(data, torch.utils.data.DataLoader) and hasattr(dataset, "__len__"):
        return len(dataset)
    return None


def _batch_size(batch: Any) -> int | None:
    inputs = batch[0] if isinstance(batch, (tuple, list)) and batch else None
    return int(inputs.shape[0]) if isinstance(inputs, torch.Tensor) and inputs.dim() > 0 else None


def _nonnegative(loss_fn: Any) -> bool:
    """Whether the loss is known to be >= 0: the default (cross-entropy) or a standard one."""
    if loss_fn is None or loss_fn in _NONNEGATIVE_LOSSES:
        return True
    return isinstance(loss_fn, _NONNEGATIVE_LOSS_MODULES)


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
) -> tuple[float, float, int]:
    """``steps`` steps at the constant ``rate`` from the start: (score, first loss, evaluations),
    the evaluations being the objective's (a closure-driven step evaluates it several times).

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
    # (losses are -f for an optimizer that maximizes: lower is better, as for the rest)
    losses, stop, spent = result.losses[0], result.stopped_at[0], result.evaluations[0]
    start = float(losses[0])  # the same for every trial: one start, one first batch
    if stop is not None:
        return math.inf, start, spent
    quarter = max(1, steps // 4)
    score = float(np.mean(losses[-quarter:]))
    if monotone and float(np.max(losses[quarter:])) > start:
        return math.inf, start, spent
    return (score if score < start else math.inf), start, spent


def _is_gradient_descent(cls: type) -> bool:
    """SGD, steepest's or torch's (or a subclass): a step of lr times the (momentum) gradient."""
    from steepest.rules import SGD

    return issubclass(cls, (SGD, torch.optim.SGD))


def _is_plain_gradient_descent(cls: type, settings: Mapping[str, Any]) -> bool:
    """SGD without momentum."""
    return _is_gradient_descent(cls) and not settings.get("momentum", 0)


def stable_limit(momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False) -> float:
    """The largest ``lr * lambda`` at which SGD converges on a quadratic of curvature lambda.

    Heavy ball (PyTorch's SGD: b <- momentum b + (1 - dampening) g, p <- p - lr b) is stable
    for lr lambda < 2 (1 + momentum) / (1 - dampening); Nesterov's variant (step g + momentum b)
    for lr lambda < 2 (1 + momentum) / (1 + momentum (2 - dampening)); plain descent for
    lr lambda < 2. Each is where the 2x2 iteration on (p, lr b) gets the eigenvalue -1.

    Example:
        >>> stable_limit(0.9), round(stable_limit(0.9, nesterov=True), 3), stable_limit()
        (3.8, 1.357, 2.0)
    """
    if nesterov:
        return 2.0 * (1.0 + momentum) / (1.0 + momentum * (2.0 - dampening))
    return 2.0 * (1.0 + momentum) / (1.0 - dampening)


def _curvature_choice(
    objective: Any, cls: type, settings: Mapping[str, Any], x0: Any, seed: int
) -> tuple[LRChoice | None, int]:
    """SGD on a deterministic objective: ``_STABLE_SHARE`` of the stable limit at the start.

    Returns the choice and the gradient evaluations spent. The choice is None when the objective
    has no usable curvature there (flat, or not finite): the caller then runs the range test
    and trials. The estimate runs seeded and puts the torch, numpy and Python random states
    back, as a sweep does: an objective that draws (dropout) must not leave the run that follows
    on other draws than the run given the chosen rate.
    """
    momentum = float(settings.get("momentum", 0.0) or 0.0)
    dampening = float(settings.get("dampening", 0.0) or 0.0)
    nesterov = bool(settings.get("nesterov", False))
    weight_decay = float(settings.get("weight_decay", 0.0) or 0.0)
    # the range test's view of an objective (its start, its loss at a point), for gradients only
    task = _Task.build(objective, None, cls, loss_fn=None, batch_size=1, x0=x0, steps=1, min_lr=1.0)
    saved = RandomState.capture()
    try:
        _seed_everything(seed)
        curvature, evaluations = _top_curvature(task, seed)
    finally:
        saved.restore()
    curvature += weight_decay  # the rule adds weight_decay * p to the gradient
    if not (math.isfinite(curvature) and curvature > 0):
        return None, evaluations
    limit = stable_limit(momentum, dampening, nesterov)
    lr = _STABLE_SHARE * limit / curvature
    kind = "Nesterov" if nesterov else "heavy-ball" if momentum else "plain"
    reason = (
        f"curvature policy: the Hessian's largest eigenvalue at the start is about {curvature:.4g} "
        f"({evaluations - 1} power iterations on finite-difference Hessian-vector products); "
        f"{kind} SGD (momentum {momentum:g}) is stable for lr * lambda < {limit:.3g}, so lr = "
        f"{_STABLE_SHARE:g} x {limit:.3g} / {curvature:.4g} = {lr:.3g}; {evaluations} gradient "
        "evaluations; a run that meets stiffer curvature later backs off (halves the rate from "
        "its last good point)"
    )
    choice = LRChoice(
        lr,
        cls,
        "curvature",
        reason,
        evaluations=evaluations,
        curvature=curvature,
        safety={"on_nonfinite": "backoff"},
        options=dict(settings),
    )
    return choice, evaluations


def _top_curvature(task: _Task, seed: int) -> tuple[float, int]:
    """The largest |eigenvalue| of the Hessian at the start: (estimate, gradient evaluations).

    Power iteration on Hessian-vector products by forward differences, H v ~ (g(x + h v) - g(x))
    / h, one gradient each: any objective autograd differentiates once will do. It stops after
    ``_POWER_ITERATIONS`` products, or earlier once two successive Rayleigh quotients agree to
    ``_POWER_TOLERANCE``. The step h is
    sqrt(machine epsilon) (1 + ||x||), the usual balance of truncation and rounding error. The
    estimate is the last Rayleigh quotient v' H v, which errs low (by 3% after 10 iterations on
    a quadratic with eigenvalues spaced geometrically from 1 to 1000); its absolute value, so a
    start where negative curvature dominates gets a cautious rate.
    """
    point = task.start()

    def gradient(params: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(torch.autograd.grad(task.loss(params, None), params))

    at_start = gradient(point)
    evaluations = 1
    generator = torch.Generator().manual_seed(seed)
    direction = [torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in point]
    length = float(clipping.global_norm(direction))
    direction = [d / length for d in direction]
    dtype = point[0].dtype
    step = math.sqrt(torch.finfo(dtype).eps) * (
        1.0 + float(clipping.global_norm([p.detach() for p in point]))
    )
    estimate = math.nan
    for _ in range(_POWER_ITERATIONS):
        shifted = [(p.detach() + step * d).requires_grad_(True) for p, d in zip(point, direction)]
        product = [(g - g0) / step for g, g0 in zip(gradient(shifted), at_start)]
        evaluations += 1
        previous, estimate = estimate, float(sum((d * h).sum() for d, h in zip(direction, product)))
        if abs(estimate - previous) <= _POWER_TOLERANCE * abs(estimate):
            break  # converged (a nan previous never compares true)
        length = float(clipping.global_norm(product))
        if not (math.isfinite(length) and length > 0):
            break
        direction = [h / length for h in product]
    return abs(estimate), evaluations


def _sets_its_own_step(cls: type) -> bool:
    """A learning-rate-free rule: D-Adaptation and Prodigy (a distance estimate), MoMo (a Polyak
    step). Its lr is a factor on (or, MoMo's, a cap of) the step it computes."""
    from steepest.rules import MoMo
    from steepest.rules.dadapt import DistanceEstimator

    return issubclass(cls, (DistanceEstimator, MoMo))


def _own_step_choice(cls: type[torch.optim.Optimizer], settings: dict[str, Any]) -> LRChoice:
    """``lr="auto"`` for a rule that sets its own step (Prodigy aside, which the Adam family's
    branch serves): no range test, its lr at the constructor's default.

    A range test of the factor sweeps what the rule estimates: Prodigy on the digits MLP chose
    3.2 by one, and ended 3 epochs at 96.7% test accuracy.
    """
    from steepest.rules import MoMo

    rate = float(inspect.signature(cls).parameters["lr"].default)
    what = "takes a Polyak step; lr caps it" if issubclass(cls, MoMo) else "estimates its step size"
    why = f"{cls.__name__} {what}; lr at its default"
    return LRChoice(rate, cls, "lr_free", f"{why}: lr={rate:g}, no range test", options=settings)


def _closure_choice(cls: type[torch.optim.Optimizer], settings: dict[str, Any]) -> LRChoice:
    """``lr="auto"`` for a closure-driven method (L-BFGS, Newton): no rate to choose, its default lr.

    Its line search (or Newton's backtracking) sizes every step; lr only scales the step tried
    first, whose natural size is 1 (the full quasi-Newton or Newton step). A range test misreads
    such a method: it chose 50 for steepest's L-BFGS, Newton and NewtonCG, whose runs then took
    up to 2.9x the evaluations of lr=1's, and cost 539-1311 evaluations on Rosenbrock.
    """
    default = _parameters(cls).get("lr")
    has_default = default is not None and isinstance(default.default, (int, float))
    rate = float(default.default) if has_default else 1.0
    reason = (
        f"{cls.__name__} is driven by a closure: its line search (or Newton step) sizes every step, "
        f"and lr only scales the step it tries first; lr={rate:g} (its default), no range test"
    )
    return LRChoice(rate, cls, "lr_free", reason, options=settings)


def _prodigy_weight_decay(cls: type, settings: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """An Adam-family optimizer's weight decay as Prodigy's: the options and a note for the reason.

    Rule: coupled (an L2 term added to the gradient: Adam, NAdam, RAdam, Adamax) ->
    ``decouple=False``; decoupled (AdamW, or ``decoupled_weight_decay=True``) -> ``decouple=True``.
    Why: Prodigy decouples by default, which would turn the caller's L2 penalty into another
    regularizer (its effect scales with the step size, not with the gradient's). A weight_decay
    left out is the optimizer's own default (AdamW's 0.01), not Prodigy's 0: asking for AdamW
    asks for its decay.
    """
    given = dict(settings)
    # translated, not dropped: it says which kind of decay the caller's weight_decay is
    decoupled = bool(given.pop("decoupled_weight_decay", _is_adamw(cls)))
    if "weight_decay" not in given:
        default = _parameters(cls).get("weight_decay")
        if default is not None and isinstance(default.default, (int, float)) and default.default:
            given["weight_decay"] = float(default.default)
    if not float(given.get("weight_decay", 0.0) or 0.0):
        return given, ""
    given["decouple"] = decoupled
    if decoupled:
        return given, f"; {cls.__name__}'s weight decay is decoupled: so is Prodigy's (decouple=True)"
    return given, (
        f"; {cls.__name__}'s weight_decay is an L2 term added to the gradient (coupled): Prodigy "
        "adds it so too (decouple=False)"
    )


def _is_adamw(cls: type) -> bool:
    return any(klass.__name__.lower() == "adamw" for klass in cls.__mro__)


def _check_options(cls: type[torch.optim.Optimizer], settings: Mapping[str, Any]) -> torch.optim.Optimizer:
    """``cls`` takes ``settings``: a misspelt option fails here, before a stand-in (Prodigy,
    MoMo) drops the options it does not take, and so does a value out of range.

    Returns ``cls`` built with ``settings`` on a stand-in parameter (lr=1e-3 where lr has no
    default): what the run will build, for the questions only an instance answers (needs it a
    closure?).
    """
    parameters = _parameters(cls)
    if parameters and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        unknown = sorted(set(settings) - set(parameters))
        if unknown:
            taken = sorted(set(parameters) - {"params", "lr"})
            raise TypeError(f"{cls.__name__} takes no option {unknown}; its options are {taken}")
    # and their values, as the constructor checks them (a choice made for momentum=-0.9 would be
    # read off an optimizer the run can never build)
    lr = parameters.get("lr")
    needs_lr = lr is not None and lr.default is inspect.Parameter.empty
    return cls([torch.zeros(2, 2, requires_grad=True)], **({"lr": 1e-3} if needs_lr else {}), **settings)


def _taken_by(method: type, settings: Mapping[str, Any], reason: str) -> tuple[dict[str, Any], str]:
    """The caller's options a stand-in ``method`` takes, and the reason with the others named."""
    accepted = _parameters(method)
    kept = {name: value for name, value in settings.items() if name in accepted}
    dropped = sorted(set(settings) - set(kept))
    if dropped:
        reason += f" (options not taken by {method.__name__}: {dropped})"
    return kept, reason


def _optimizer_class(optimizer: Any) -> type[torch.optim.Optimizer]:
    if isinstance(optimizer, str):
        return rules.by_name(optimizer)
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        return optimizer
    raise TypeError(
        f"optimizer must be a torch.optim.Optimizer subclass or a method name, got optimizer={optimizer!r}"
    )


def _parameters(cls: type) -> Mapping[str, inspect.Parameter]:
    """The constructor's parameters by name; empty where its signature cannot be read."""
    try:
        return inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return {}
