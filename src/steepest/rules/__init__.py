"""Update rules, one file per family: the math, written once, and a thin optimizer shell.

Each file holds a pure function ``<rule>_update(param, grad, *, <state>, <coefficients>)``
that the engine runs per tensor, multi-tensor or fused, and the optimizer class users
construct. To add a rule: write its update function, a class declaring its state and
coefficients, export it here, and add one row to the spec table in tests/specs.py.
"""

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
