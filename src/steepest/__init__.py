"""steepest: gradient-based optimization on PyTorch.

Optimizers are drop-in ``torch.optim`` twins whose update rules are written once and run
per tensor, multi-tensor or fused::

    import steepest
    opt = steepest.AdamW(model.parameters(), lr=1e-3)
"""

from steepest import clipping, init, lr, problems, schedules, stopping
from steepest.engine import Optimizer
from steepest.init import init_report, initialize
from steepest.minimize import EmpiricalRisk, Result, minimize
from steepest.plateau import reduce_on_plateau
from steepest.rules import (
    LBFGS,
    SGD,
    Adagrad,
    Adam,
    AdamW,
    DAdaptAdam,
    DAdaptSGD,
    Lion,
    MoMo,
    NAdam,
    Newton,
    NewtonCG,
    Prodigy,
    RMSprop,
    ScheduleFreeAdamW,
    ScheduleFreeSGD,
)
from steepest.train import fit

__version__ = "0.1.0"

__all__ = [
    "Optimizer",
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
    "minimize",
    "fit",
    "Result",
    "EmpiricalRisk",
    "problems",
    "stopping",
    "clipping",
    "lr",
    "schedules",
    "init",
    "initialize",
    "init_report",
    "reduce_on_plateau",
]
