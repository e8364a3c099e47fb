"""One table of every optimizer: drives the generic tests in test_optimizers.py.

A row names the steepest class, its torch.optim twin (None when torch has no such rule,
then ``reference`` is a readable per-tensor implementation of the paper's update), the
hyperparameter configurations that exercise each branch of the rule, per-group overrides
for the multi-group tests, and a learning rate that descends on the test problems.
Adding a rule to the library means adding one row here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

import steepest
from lr_free_references import (
    dadapt_adam_reference,
    dadapt_sgd_reference,
    prodigy_reference,
    schedulefree_adamw_reference,
    schedulefree_sgd_reference,
)
from steepest.rules.dadapt import DAdaptAdam, DAdaptSGD
from steepest.rules.prodigy import Prodigy
from steepest.rules.schedulefree import ScheduleFreeAdamW, ScheduleFreeSGD


def lion_reference(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    states: list[dict[str, torch.Tensor]],
    *,
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
    maximize: bool = False,
) -> None:
    """Lion, Algorithm 2 of Chen et al. 2023, written from the paper, one tensor at a time."""
    beta1, beta2 = betas
    for param, grad, state in zip(params, grads, states):
        if maximize:
            grad = -grad
        momentum = state.setdefault("exp_avg", torch.zeros_like(param))
        interpolated = beta1 * momentum + (1 - beta1) * grad
        update = torch.sign(interpolated) + weight_decay * param
        param.sub_(lr * update)
        state["exp_avg"] = beta2 * momentum + (1 - beta2) * grad


@dataclass(frozen=True)
class Spec:
    name: str
    cls: type[steepest.Optimizer]
    torch_cls: type[torch.optim.Optimizer] | None
    configs: tuple[dict[str, Any], ...]
    group_override: dict[str, Any]  # hyperparameters of the second param group
    descent_lr: float  # a learning rate that makes steady progress on the test problems
    reference: Callable[..., None] | None = None
    bad_inputs: tuple[tuple[dict[str, Any], type[Exception], str], ...] = field(default=())
    # capability: trains bfloat16 parameters. Prodigy cannot: its first steps (d0 * lr ~ 1e-6)
    # are below bfloat16's resolution, so the distance estimate never grows (as in prodigyopt).
    bfloat16: bool = True

    def __str__(self) -> str:
        return self.name


# Bad hyperparameters every optimizer with that argument must reject, and the text the
# error must contain (the argument's name and the value).
_LR_ERRORS = (
    ({"lr": -1e-3}, ValueError, "lr"),
    ({"lr": float("nan")}, ValueError, "nan"),
    ({"lr": float("inf")}, ValueError, "lr"),
    ({"lr": "0.1"}, TypeError, "'0.1'"),
)
_BETA_ERRORS = (
    ({"betas": (1.0, 0.999)}, ValueError, "betas[0]"),
    ({"betas": (0.9, -0.1)}, ValueError, "betas[1]"),
    ({"betas": (0.9,)}, TypeError, "betas"),
)
_EPS_ERRORS = (({"eps": 0.0}, ValueError, "eps"), ({"eps": -1e-8}, ValueError, "-1e-08"))


SPECS: tuple[Spec, ...] = (
    Spec(
        "SGD",
        steepest.SGD,
        torch.optim.SGD,
        configs=(
            {"lr": 0.1},
            {"lr": 0.05, "momentum": 0.9},
            {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01},
            {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.02},
            {"lr": 0.05, "momentum": 0.9, "maximize": True},
        ),
        group_override={"lr": 0.02},
        descent_lr=1e-3,
        bad_inputs=_LR_ERRORS
        + (
            ({"momentum": -0.5}, ValueError, "momentum"),
            ({"nesterov": True}, ValueError, "nesterov"),
            ({"nesterov": True, "momentum": 0.9, "dampening": 0.1}, ValueError, "dampening"),
            ({"weight_decay": -1.0}, ValueError, "weight_decay"),
        ),
    ),
    Spec(
        "Adagrad",
        steepest.Adagrad,
        torch.optim.Adagrad,
        configs=(
            {"lr": 0.1},
            {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.01, "initial_accumulator_value": 0.1},
            {"lr": 0.1, "maximize": True},
        ),
        group_override={"lr": 0.05, "eps": 1e-8},
        descent_lr=0.3,
        bad_inputs=_LR_ERRORS + _EPS_ERRORS + (({"lr_decay": -1.0}, ValueError, "lr_decay"),),
    ),
    Spec(
        "RMSprop",
        steepest.RMSprop,
        torch.optim.RMSprop,
        configs=(
            {"lr": 0.01},
            {"lr": 0.01, "centered": True, "weight_decay": 0.01},
            {"lr": 0.01, "momentum": 0.9},
            {"lr": 0.01, "momentum": 0.5, "centered": True, "maximize": True},
        ),
        group_override={"lr": 0.005, "alpha": 0.9},
        descent_lr=3e-3,
        bad_inputs=_LR_ERRORS
        + _EPS_ERRORS
        + (({"alpha": 1.5}, ValueError, "alpha"), ({"momentum": -0.1}, ValueError, "momentum")),
    ),
    Spec(
        "Adam",
        steepest.Adam,
        torch.optim.Adam,
        configs=(
            {"lr": 0.01},
            {"lr": 0.01, "amsgrad": True, "weight_decay": 0.1},
            {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True},
            {"lr": 0.01, "betas": (0.8, 0.99), "maximize": True},
        ),
        group_override={"lr": 0.003, "betas": (0.5, 0.9), "eps": 1e-6},
        descent_lr=0.02,
        bad_inputs=_LR_ERRORS + _BETA_ERRORS + _EPS_ERRORS,
    ),
    Spec(
        "AdamW",
        steepest.AdamW,
        torch.optim.AdamW,
        configs=(
            {"lr": 0.01},
            {"lr": 0.01, "amsgrad": True, "weight_decay": 0.1},
            {"lr": 0.01, "maximize": True, "weight_decay": 0.0},
        ),
        group_override={"lr": 0.003, "weight_decay": 0.5},
        descent_lr=0.02,
        bad_inputs=_LR_ERRORS + _BETA_ERRORS + _EPS_ERRORS,
    ),
    Spec(
        "NAdam",
        steepest.NAdam,
        torch.optim.NAdam,
        configs=(
            {"lr": 0.01},
            {"lr": 0.01, "weight_decay": 0.1, "momentum_decay": 0.01},
            {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True, "maximize": True},
        ),
        group_override={"lr": 0.003, "betas": (0.5, 0.9)},
        descent_lr=0.02,
        bad_inputs=_LR_ERRORS + _BETA_ERRORS + _EPS_ERRORS,
    ),
    Spec(
        "Lion",
        steepest.Lion,
        None,
        configs=(
            {"lr": 0.01, "betas": (0.9, 0.99), "weight_decay": 0.0},
            {"lr": 0.01, "betas": (0.95, 0.98), "weight_decay": 0.1},
            {"lr": 0.01, "betas": (0.9, 0.99), "weight_decay": 0.0, "maximize": True},
        ),
        group_override={"lr": 0.003, "betas": (0.5, 0.9), "weight_decay": 0.3},
        descent_lr=3e-3,
        reference=lion_reference,
        bad_inputs=_LR_ERRORS + _BETA_ERRORS + (({"weight_decay": -0.1}, ValueError, "weight_decay"),),
    ),
    # The learning-rate-free rows (test_lr_free.py runs them against the official algorithms
    # at 1e-10) keep d * lr moderate on the test problem (gradient sin(3 theta) + noise). At
    # larger steps the iterates jump between the wells of cos(3 theta) and the dynamics turn
    # chaotic: D-Adapt Adam at lr >= 0.5 estimates d ~ 1-4, and a one-ulp difference in d (the
    # order in which the per-tensor sums are added) then grows about tenfold per step. That is
    # a property of the problem, not of either implementation; the configurations below agree
    # to ~1e-12 on several problem instances.
    Spec(
        "Prodigy",
        Prodigy,
        None,
        configs=(
            {"lr": 1.0},
            {
                "lr": 1.0,
                "weight_decay": 0.1,
                "decouple": False,
                "use_bias_correction": True,
                "growth_rate": 1.1,
            },
            {"lr": 0.5, "weight_decay": 0.1, "safeguard_warmup": True, "beta3": 0.9, "growth_rate": 1.5},
            {"lr": 1.0, "betas": (0.8, 0.99), "d0": 1e-3, "d_coef": 0.5, "maximize": True},
            # no momentum: a step along g with the d just estimated, as prodigyopt takes it
            {"lr": 0.3, "betas": (0.0, 0.999), "weight_decay": 0.1, "decouple": False, "maximize": True},
        ),
        group_override={"lr": 0.5, "betas": (0.5, 0.9), "d0": 1e-4},
        descent_lr=1.0,
        reference=prodigy_reference,
        bfloat16=False,
        bad_inputs=_LR_ERRORS
        + _BETA_ERRORS
        + _EPS_ERRORS
        + (({"d0": 0.0}, ValueError, "d0"), ({"growth_rate": 0.5}, ValueError, "growth_rate")),
    ),
    Spec(
        "DAdaptAdam",
        DAdaptAdam,
        None,
        configs=(
            {"lr": 0.3},
            {"lr": 1.0, "weight_decay": 0.1, "use_bias_correction": True},
            {"lr": 0.5, "weight_decay": 0.1, "decouple": True, "growth_rate": 1.5},
            {"lr": 1.0, "betas": (0.8, 0.99), "d0": 1e-3, "maximize": True},
        ),
        group_override={"lr": 0.5, "betas": (0.5, 0.9), "d0": 1e-4},
        descent_lr=1.0,
        reference=dadapt_adam_reference,
        bad_inputs=_LR_ERRORS + _BETA_ERRORS + _EPS_ERRORS + (({"d0": 0.0}, ValueError, "d0"),),
    ),
    Spec(
        "DAdaptSGD",
        DAdaptSGD,
        None,
        configs=(
            {"lr": 1.0, "momentum": 0.9},
            {"lr": 0.5},
            {"lr": 1.0, "momentum": 0.8, "weight_decay": 0.1, "growth_rate": 1.5},
            {"lr": 0.3, "momentum": 0.5, "d0": 1e-3, "maximize": True},
        ),
        group_override={"lr": 0.5, "momentum": 0.5, "d0": 1e-4},
        descent_lr=1.0,
        reference=dadapt_sgd_reference,
        bad_inputs=_LR_ERRORS
        + (({"momentum": 1.0}, ValueError, "momentum"), ({"d0": 0.0}, ValueError, "d0")),
    ),
    Spec(
        "ScheduleFreeSGD",
        ScheduleFreeSGD,
        None,
        configs=(
            {"lr": 0.1},
            {"lr": 0.1, "momentum": 0.5, "weight_decay": 0.01, "warmup_steps": 5},
            {"lr": 0.05, "r": 1.0, "weight_lr_power": 0.0, "maximize": True},
        ),
        group_override={"lr": 0.02, "momentum": 0.8},
        descent_lr=4e-3,
        reference=schedulefree_sgd_reference,
        bad_inputs=_LR_ERRORS
        + (({"momentum": 1.0}, ValueError, "momentum"), ({"warmup_steps": -1}, ValueError, "warmup_steps")),
    ),
    Spec(
        "ScheduleFreeAdamW",
        ScheduleFreeAdamW,
        None,
        configs=(
            {"lr": 0.01},
            {"lr": 0.01, "weight_decay": 0.1, "warmup_steps": 5, "betas": (0.8, 0.99)},
            {"lr": 0.01, "r": 0.5, "weight_lr_power": 1.0, "eps": 1e-6, "maximize": True},
        ),
        group_override={"lr": 0.003, "betas": (0.5, 0.9)},
        descent_lr=0.05,
        reference=schedulefree_adamw_reference,
        bad_inputs=_LR_ERRORS
        + _BETA_ERRORS
        + _EPS_ERRORS
        + (({"betas": (0.0, 0.999)}, ValueError, "betas[0]"),),
    ),
)

TORCH_TWINS = tuple(spec for spec in SPECS if spec.torch_cls is not None)
