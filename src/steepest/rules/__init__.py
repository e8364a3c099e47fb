"""Update rules, one file per family: the math, written once, and a thin optimizer shell.

Each file holds a pure function ``<rule>_update(param, grad, *, <state>, <coefficients>)``
that the engine runs per tensor, multi-tensor or fused, and the optimizer class users
construct. To add a rule: write its update function, a class declaring its state and
coefficients, export it here, and add one row to the spec table in tests/specs.py.
"""

import torch as _torch

from steepest.rules.adagrad import Adagrad, adagrad_update
from steepest.rules.adam import Adam, AdamW, NAdam, adam_update, nadam_update
from steepest.rules.dadapt import DAdaptAdam, dadapt_adam_update
from steepest.rules.lbfgs import LBFGS
from steepest.rules.lion import Lion, lion_update
from steepest.rules.newton import Newton, NewtonCG
from steepest.rules.prodigy import Prodigy, prodigy_update
from steepest.rules.rmsprop import RMSprop, rmsprop_update
from steepest.rules.schedulefree import (
    ScheduleFreeAdamW,
    ScheduleFreeSGD,
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
    "schedulefree_sgd_update",
    "schedulefree_adamw_update",
]

#: Every optimizer of the library by lower-case class name.
OPTIMIZERS: dict[str, type[_torch.optim.Optimizer]] = _optimizer_classes()
