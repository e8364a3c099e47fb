"""AdaGrad: per-coordinate learning rates from the sum of squared gradients."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from steepest.engine import Optimizer, add_scaled, nonzero, validation
from steepest.engine.optimizer import ParamsT


def adagrad_update(
    param: Tensor,
    grad: Tensor,
    *,
    sum: Tensor,  # noqa: A002 - torch.optim.Adagrad's state key
    lr: float,
    lr_decay: float,
    eps: float,
    weight_decay: float,
    step: float,
) -> None:
    """One AdaGrad step (tensors or TensorLists, updated in place).

    s <- s + g^2;  theta <- theta - lr_t * g / (sqrt(s) + eps),  lr_t = lr / (1 + (t-1) lr_decay)
    """
    if nonzero(weight_decay):
        grad = add_scaled(grad, param, weight_decay)
    decayed_lr = lr / (1 + (step - 1) * lr_decay)
    sum.addcmul_(grad, grad, value=1)
    std = sum.sqrt().add_(eps)
    param.addcdiv_(grad, std, value=-decayed_lr)


class Adagrad(Optimizer):
    """AdaGrad; twin of torch.optim.Adagrad.

    theta <- theta - lr * g / (sqrt(sum of g^2) + eps)

    Args:
        params: tensors or param-group dicts to optimize.
        lr: learning rate (default 1e-2).
        lr_decay: learning-rate decay lr / (1 + (t-1) lr_decay) (default 0).
        weight_decay: L2 penalty (default 0).
        initial_accumulator_value: starting value of the sum of squares (default 0). A param
            group's own value is used for its tensors; torch.optim.Adagrad (2.13) fills every
            group's ``sum``, later groups included, with the constructor's value instead.
        eps: added to the denominator (default 1e-10).
        foreach: True for the multi-tensor path, False for the per-tensor reference, None (default)
            for multi-tensor on accelerators and per tensor on the CPU.
        fused: True compiles the rule into one single pass per tensor (``steepest.engine.fused``);
            None (default) does so with PyTorch's ready-made CPU kernel (Adam, AdamW, SGD,
            Adagrad) at any size, and for large parameter sets where compiling is available;
            False forces the multi-tensor path.
        state_dtype: store the state buffers in this dtype (``torch.bfloat16``: half the
            memory, updated with stochastic rounding; ``steepest.engine.precision``).
        clip_norm: clip the global gradient 2-norm to this inside ``step`` (default None).
        maximize: ascend the objective instead of descending it.

    Example:
        >>> opt = steepest.Adagrad(model.parameters(), lr=0.1)

    State: ``step``, ``sum``; created at construction, as torch.optim.Adagrad does.
    Reference: Duchi, Hazan and Singer 2011, "Adaptive Subgradient Methods".
    """

    update = staticmethod(adagrad_update)
    supports_fused = True
    _checks = {
        "lr": validation.nonnegative,
        "lr_decay": validation.nonnegative,
        "weight_decay": validation.nonnegative,
        "initial_accumulator_value": validation.nonnegative,
        "eps": validation.positive,
        "maximize": validation.boolean,
    }

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        fused: bool | None = None,
        state_dtype: torch.dtype | None = None,
        *,
        maximize: bool = False,
        clip_norm: float | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            lr_decay=lr_decay,
            weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value,
            eps=eps,
            foreach=foreach,
            fused=fused,
            state_dtype=state_dtype,
            maximize=maximize,
        )
        super().__init__(params, defaults, clip_norm=clip_norm)
        for group in self.param_groups:
            for param in group["params"]:
                self._init_state(param, group)

    def _buffer_names(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("sum",)

    def _new_buffer(self, name: str, param: Tensor, group: dict[str, Any]) -> Tensor:
        value = group["initial_accumulator_value"]
        if param.is_complex():  # each real component accumulates its own squares
            value = complex(value, value)
        return torch.full_like(param, value, memory_format=torch.preserve_format)

    def _coefficients(self, group: dict[str, Any], scalars: dict, fresh: bool) -> dict[str, Any]:
        return dict(
            lr=group["lr"],
            lr_decay=group["lr_decay"],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            step=float(scalars["step"]),
        )
