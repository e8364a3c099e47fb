"""``lr="auto"``: pick a learning rate (or a learning-rate-free method) before a run, and say why.

Policy of :func:`choose_lr` (``policy="auto"``), decided from measurements:

1. **Adam family** (Adam, AdamW, NAdam, or a subclass) -> **Prodigy with lr=1**, no range test.
   The range test errs low for Adam: a sweep that raises the rate 20% per step sees Adam
   overshoot at rates a constant-rate run absorbs. Measured (Adam, 50-step sweep, 1e-5..100):
   consensus 0.027 on a condition-1e3 quadratic, 0.0037 on Rosenbrock, 0.027 on logistic
   regression, against a grid optimum of 1.0 on all three (25-270x low; even the sweep's
   ``edge`` is 2-40x low), which costs 5-20x the oracle's steps. Prodigy (lr=1) reached the
   targets in 0.84-1.02x the oracle's steps on the same problems (see the report table), with no
   evaluations spent on choosing.
2. **Everything else with a learning rate** (SGD, RMSprop, Adagrad, Lion, ...) -> the range
   test's consensus (:func:`steepest.lr.range_test`, ``steps`` per sweep; one sweep for a
   deterministic objective, ``repeats`` otherwise). When the sweep is unreliable (the repeats'
   rates spread more than ``max_spread`` x apart, or the loss never fell), it takes the lower
   of the repeats' rates and says so; the reason always names the numbers.

``policy="range_test"`` forces step 2 for every optimizer; ``policy="lr_free"`` forces Prodigy.
The sweep's own objective evaluations are reported (``LRChoice.evaluations``): they are part
of the cost of ``lr="auto"``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from steepest import rules
from steepest.lr.range_test import RangeTestResult, range_test

__all__ = ["POLICIES", "LRChoice", "choose_lr", "is_adam_family"]

#: Policies of :func:`choose_lr`.
POLICIES: tuple[str, ...] = ("auto", "range_test", "lr_free")
_ADAM_NAMES = frozenset({"adam", "adamw", "nadam", "radam", "adamax"})


@dataclass
class LRChoice:
    """The learning rate ``lr="auto"`` chose, the method it runs with, and why.

    Attributes:
        lr: the learning rate to use (1.0 for a learning-rate-free method).
        method: the optimizer class to run (the one asked for, or Prodigy).
        policy: ``"range_test"`` or ``"lr_free"``: how the rate was chosen.
        reason: the decision in words, with the numbers behind it.
        suggestions: the range test's rule -> rate (empty without a range test).
        spread: max / min of the repeats' rates (1 for one sweep; nan without a range test).
        evaluations: objective evaluations (and backward passes) the choice itself spent.
        range_test: the full :class:`~steepest.lr.RangeTestResult`, or None.
    """

    lr: float
    method: type[torch.optim.Optimizer]
    policy: str
    reason: str
    suggestions: dict[str, float] = field(default_factory=dict)
    spread: float = math.nan
    evaluations: int = 0
    range_test: RangeTestResult | None = None

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
) -> LRChoice:
    """Choose a learning rate for ``optimizer`` by a short range test, or a learning-rate-free method.

    Rule: Adam family -> Prodigy(lr=1); otherwise the range test's consensus (the lower of the
    repeats' rates when they spread more than ``max_spread`` x); see the module docstring.

    Args:
        objective_or_model: a callable objective ``f(x)`` (``f(x, batch)`` with data) or an
            ``nn.Module`` (as :func:`~steepest.lr.range_test` takes them).
        data: batches or an (X, y) pair; None for a deterministic objective.
        optimizer: the optimizer class, or a steepest method name (``"adam"``, ``"sgd"``).
        policy: ``"auto"`` (default), ``"range_test"`` or ``"lr_free"``.
        options: other keyword arguments of the optimizer, used by the sweep
            (``{"momentum": 0.9}``).
        x0: an objective's start (default ``objective.x0``).
        loss_fn: a module's loss (default cross-entropy).
        steps: steps of each sweep (default 50).
        repeats: sweeps; default 1 for a deterministic objective (no data), 3 otherwise.
        min_lr, max_lr: the swept range (default 1e-5 .. 100).
        max_spread: repeats' rates further apart than this ratio make the sweep unreliable.
        batch_size: for an (X, y) pair.
        seed: the first sweep's seed.

    Returns:
        An :class:`LRChoice`.

    Example:
        >>> choice = choose_lr(steepest.problems.rosenbrock(), optimizer="sgd")
        >>> print(choice.reason)  # doctest: +SKIP
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got policy={policy!r}")
    cls = _optimizer_class(optimizer)
    if isinstance(max_spread, bool) or not isinstance(max_spread, (int, float)) or not max_spread >= 1:
        raise ValueError(f"max_spread must be a number >= 1, got max_spread={max_spread!r}")
    from steepest.rules import Prodigy

    if policy == "lr_free" or (policy == "auto" and is_adam_family(cls)):
        why = (
            "asked for a learning-rate-free method" if policy == "lr_free" else
            f"{cls.__name__} is Adam-family: the range test picks Adam rates 25-270x below the best "
            "constant rate on measured problems, Prodigy (lr=1) estimates the step size itself and "
            "matched the best grid rate"
        )
        return LRChoice(1.0, Prodigy, "lr_free", f"Prodigy with lr=1: {why}", evaluations=0)
    if "lr" not in _parameters(cls):
        raise ValueError(f"optimizer {cls.__name__} has no lr argument to choose")
    if repeats is None:
        repeats = 1 if data is None else 3
    settings = dict(options or {})
    if "lr" in settings:
        raise ValueError(f"options must not hold lr (it is what is chosen), got options={settings!r}")

    def factory(params: list[torch.Tensor]) -> torch.optim.Optimizer:
        return cls(params, **settings, lr=min_lr)

    result = range_test(
        objective_or_model, data, factory, min_lr=min_lr, max_lr=max_lr, steps=steps, repeats=repeats,
        loss_fn=loss_fn, x0=x0, seed=seed, batch_size=batch_size,
    )
    evaluations = sum(steps if stop is None else stop + 1 for stop in result.stopped_at)
    spread = result.spread
    lr = float(result.consensus)
    reason = (
        f"range test ({result.repeats} sweep(s) x {steps} steps, {evaluations} evaluations): "
        f"consensus {lr:.3g} of rules "
        + ", ".join(f"{rule} {value:.3g}" for rule, value in result.suggestions.items())
        + f"; spread x{spread:.2g}"
    )
    if spread > max_spread:
        lowest = float(min(result.repeat_suggestions["valley"] or [lr]))
        lr = min(lr, lowest)
        reason += f" > {max_spread:g}: unreliable, took the lowest repeat's valley {lr:.3g}"
    if result.notes:
        reason += "; notes: " + "; ".join(result.notes)
    if not (np.isfinite(lr) and lr > 0):
        raise RuntimeError(f"the range test gave no usable rate ({reason})")
    return LRChoice(lr, cls, "range_test", reason, dict(result.suggestions), spread, evaluations, result)


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
