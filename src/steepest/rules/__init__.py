"""Update rules, one file per family: the math, written once, and a thin optimizer shell.

Each file holds a pure function ``<rule>_update(param, grad, *, <state>, <coefficients>)``
that the engine runs per tensor, multi-tensor or fused, and the optimizer class users
construct. To add a rule: write its update function, a class declaring its state and
coefficients, export it here, and add one row to the spec table in tests/specs.py.
"""

import inspect as _inspect
from typing import Any

import torch as _torch

from steepest.rules.adagrad import Adagrad, adagrad_update
from steepest.rules.adam import Adam, AdamW, NAdam, adam_update, nadam_update
from steepest.rules.dadapt import DAdaptAdam, DAdaptSGD, dadapt_adam_update, dadapt_sgd_update
from steepest.rules.lbfgs import LBFGS
from steepest.rules.lion import Lion, lion_update
from steepest.rules.momo import MoMo, momo_update
from steepest.rules.newton import Newton, NewtonCG
from steepest.rules.prodigy import Prodigy, prodigy_update
from steepest.rules.rmsprop import RMSprop, rmsprop_update
from steepest.rules.schedulefree import (
    ScheduleFreeAdamW,
    ScheduleFreeSGD,
    evaluation_mode,
    has_modes,
    schedulefree_adamw_update,
    schedulefree_sgd_update,
)
from steepest.rules.sgd import SGD, sgd_update


def _optimizer_classes() -> dict[str, type[_torch.optim.Optimizer]]:
    found = {}
    for _name in __all__:
        value = globals()[_name]
        if isinstance(value, type) and issubclass(value, _torch.optim.Optimizer):
            found[_name.lower()] = value
    return found


# Optimizers that must re-evaluate the objective inside ``step`` when they do not declare
# ``requires_closure = True`` themselves (torch.optim.LBFGS does not).
_CLOSURE_CLASS_NAMES = frozenset({"LBFGS", "Newton", "NewtonCG"})


def requires_closure(optimizer: _torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` needs a closure that re-evaluates the objective (L-BFGS, Newton).

    Declared by the class (``requires_closure = True``, as steepest's closure optimizers do),
    or known by name (torch.optim.LBFGS), or read off a ``step`` whose ``closure`` has no
    default. The one test behind minimize and the range test.

    Example:
        >>> requires_closure(steepest.LBFGS([torch.zeros(2, requires_grad=True)]))
        True
    """
    declared = getattr(optimizer, "requires_closure", None)
    if declared is not None:
        return bool(declared)
    if isinstance(optimizer, _torch.optim.LBFGS) or type(optimizer).__name__ in _CLOSURE_CLASS_NAMES:
        return True
    try:
        parameter = _inspect.signature(optimizer.step).parameters.get("closure")
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.default is _inspect.Parameter.empty


def requires_loss(optimizer: _torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` needs this step's loss, ``step(loss=loss)`` (MoMo's Polyak step).

    Declared by the class (``requires_loss = True``). fit, minimize, the range test and
    SafeStep hand the loss they computed over, so such a rule works wherever SGD does.

    Example:
        >>> requires_loss(steepest.MoMo([torch.zeros(2, requires_grad=True)]))
        True
    """
    return bool(getattr(optimizer, "requires_loss", False))


def differentiates_twice(optimizer: _torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` differentiates the closure's loss again (Newton's
    Hessian-vector products): its closure returns the loss with its graph, without a plain
    ``loss.backward()``, which would free it.

    Declared by the class (``closure_create_graph = True``). minimize and the range test read it.

    Example:
        >>> differentiates_twice(steepest.Newton([torch.zeros(2, requires_grad=True)]))
        True
    """
    return bool(getattr(optimizer, "closure_create_graph", False))


def loss_sign(optimizer: _torch.optim.Optimizer) -> float:
    """-1 when ``optimizer`` maximizes (``maximize=True`` in every param group), 1 when it
    minimizes: what turns its objective into a loss to read, lower being better.

    The range test, ``lr="auto"`` and the regime diagnosis in minimize read losses times this.
    Groups that disagree leave no one loss to read: a ValueError.

    Example:
        >>> loss_sign(steepest.SGD([torch.zeros(2, requires_grad=True)], lr=0.1, maximize=True))
        -1.0
    """
    flags = {bool(group.get("maximize", False)) for group in optimizer.param_groups}
    if len(flags) > 1:
        raise ValueError(
            "the optimizer maximizes in some param groups and minimizes in others "
            "(maximize=True in only some): there is no one loss curve to read"
        )
    return -1.0 if flags == {True} else 1.0


def loss_keywords(optimizer: _torch.optim.Optimizer, loss: Any) -> dict[str, Any]:
    """The keyword arguments a loop passes to ``optimizer.step`` besides a closure:
    ``{"loss": loss}`` for a rule that reads it (:func:`requires_loss`), else none.

    Example:
        >>> optimizer.step(**loss_keywords(optimizer, loss))
    """
    return {"loss": loss} if requires_loss(optimizer) else {}


def by_name(name: str, argument: str = "optimizer") -> type[_torch.optim.Optimizer]:
    """The optimizer class called ``name``: any letter case, "-" and "_" ignored ("L-BFGS").

    The one lookup behind every place that takes an optimizer by name (minimize, fit, the
    range test, ``lr="auto"``, the command line). ``argument`` names the caller's argument
    in the error.

    Example:
        >>> by_name("adamw"), by_name("L-BFGS")
        (<class 'steepest.rules.adam.AdamW'>, <class 'steepest.rules.lbfgs.LBFGS'>)
    """
    key = name.lower().replace("-", "").replace("_", "")
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown {argument}={name!r}; known: {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[key]


def taking(keyword: str, names: Any = None) -> tuple[str, ...]:
    """The optimizers (of ``names``, default all, by ``by_name``'s names) whose constructor
    takes the keyword argument ``keyword``, for "adam takes no momentum (those that do: ...)".

    Example:
        >>> taking("momentum", ["sgd", "adam", "rmsprop"])
        ('sgd', 'rmsprop')
    """
    candidates = sorted(OPTIMIZERS) if names is None else list(names)
    return tuple(name for name in candidates if keyword in _inspect.signature(by_name(name)).parameters)


def not_taking(optimizer: str, keyword: str, names: Any = None) -> str | None:
    """None if the optimizer called ``optimizer`` takes ``keyword``, else why not, naming those
    (of ``names``, default all) that do.

    Example:
        >>> not_taking("adam", "momentum", ["sgd", "adam", "rmsprop"])
        'adam takes no momentum (the optimizers that do: sgd, rmsprop)'
    """
    takers = taking(keyword, names)
    if by_name(optimizer) in [by_name(name) for name in takers]:
        return None
    return f"{optimizer} takes no {keyword} (the optimizers that do: {', '.join(takers)})"


__all__ = [
    "SGD",
    "Adagrad",
    "RMSprop",
    "Adam",
    "AdamW",
    "NAdam",
    "Lion",
    "Prodigy",
    "DAdaptAdam",
    "DAdaptSGD",
    "MoMo",
    "ScheduleFreeSGD",
    "ScheduleFreeAdamW",
    "LBFGS",
    "Newton",
    "NewtonCG",
    "sgd_update",
    "adagrad_update",
    "rmsprop_update",
    "adam_update",
    "nadam_update",
    "lion_update",
    "prodigy_update",
    "dadapt_adam_update",
    "dadapt_sgd_update",
    "momo_update",
    "schedulefree_sgd_update",
    "schedulefree_adamw_update",
    "has_modes",
    "evaluation_mode",
]

#: Every optimizer of the library by lower-case class name.
OPTIMIZERS: dict[str, type[_torch.optim.Optimizer]] = _optimizer_classes()
