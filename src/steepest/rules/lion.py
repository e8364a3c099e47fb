"""Lion: sign of an interpolated momentum, found by program search."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from steepest.engine import Optimizer, nonzero, validation
from steepest.engine.optimizer import ParamsT


def lion_update(
    param: Tensor,
    grad: Tensor,
    *,
    exp_avg: Tensor,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
) -> None:
    """One Lion step (tensors or TensorLists, updated in place).

    c = b1 m + (1-b1) g;  theta <- theta - lr (sign(c) + wd theta);  m <- b2 m + (1-b2) g
    """
    if nonzero(weight_decay):
        param.mul_(1 - lr * weight_decay)
    direction = exp_avg.lerp(grad, 1 - beta1).sign_()
    param.add_(direction, alpha=-lr)
    exp_avg.lerp_(grad, 1 - beta2)


class Lion(Optimizer):
    """Lion (EvoLved Sign Momentum): every coordinate moves by exactly lr per step.

    theta <- theta - lr * (sign(b1 m + (1-b1) g) + weight_decay * theta)

    Lion's update has a larger norm than Adam's, so its learning rate is typically 3-10x
    smaller and its weight decay 3-10x larger (the paper's advice).

    Args:
        params: tensors or param-group dicts to optimize.
        lr: learning rate (default 1e-4).
        betas: interpolation for the update direction and decay of the momentum
            (default (0.9, 0.99)).
        weight_decay: decoupled weight decay (default 0).
        maximize: ascend the objective instead of descending it.
        foreach: True for the multi-tensor path, False for the per-tensor reference, None (default)
            for multi-tensor on accelerators and per tensor on the CPU.
        fused: True compiles the rule into one single pass per tensor (``steepest.engine.fused``);
            None (default) does so with PyTorch's ready-made CPU kernel (Adam, AdamW, SGD,
            Adagrad) at any size, and for large parameter sets where compiling is available;
            False forces the multi-tensor path.
        state_dtype: store the state buffers in this dtype (``torch.bfloat16``: half the
            memory, updated with stochastic rounding; ``steepest.engine.precision``).
        clip_norm: clip the global gradient 2-norm to this inside ``step`` (default None).

    Example:
        >>> opt = steepest.Lion(model.parameters(), lr=3e-4, weight_decay=0.1)

    State: ``exp_avg``.
    Reference: Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Alg. 2.
    """

    update = staticmethod(lion_update)
    supports_fused = True
    _checks = {
        "lr": validation.nonnegative,
        "betas": validation.betas,
        "weight_decay": validation.nonnegative,
        "maximize": validation.boolean,
    }

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        state_dtype: torch.dtype | None = None,
        clip_norm: float | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            weight_decay=weight_decay,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            state_dtype=state_dtype,
        )
        super().__init__(params, defaults, clip_norm=clip_norm)

    def _buffer_names(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("exp_avg",)

    def _scalar_state(self, group: dict[str, Any]) -> dict[str, float]:
        return {"step": 0.0}  # not needed by the math; kept for logging and schedules

    def _coefficients(self, group: dict[str, Any], scalars: dict, fresh: bool) -> dict[str, Any]:
        beta1, beta2 = group["betas"]
        return dict(lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"])
