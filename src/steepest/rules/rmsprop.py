"""RMSprop: divide the gradient by a running root mean square of recent gradients."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from steepest.engine import Optimizer, add_scaled, nonzero, validation
from steepest.engine.optimizer import ParamsT


def rmsprop_update(
    param: Tensor,
    grad: Tensor,
    *,
    square_avg: Tensor,
    grad_avg: Tensor | None = None,
    momentum_buffer: Tensor | None = None,
    lr: float,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
) -> None:
    """One RMSprop step (tensors or TensorLists, updated in place).

    v <- alpha v + (1-alpha) g^2;  theta <- theta - lr * g / (sqrt(v - mean(g)^2 if centered) + eps)
    With momentum: b <- momentum b + g / (...);  theta <- theta - lr b.
    """
    if nonzero(weight_decay):
        grad = add_scaled(grad, param, weight_decay)
    square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
    if grad_avg is not None:  # centered: subtract the squared running mean of the gradient
        grad_avg.lerp_(grad, 1 - alpha)
        avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
    else:
        avg = square_avg.sqrt()
    avg = avg.add_(eps)
    if momentum_buffer is not None:
        momentum_buffer.mul_(momentum).addcdiv_(grad, avg)
        param.add_(momentum_buffer, alpha=-lr)
    else:
        param.addcdiv_(grad, avg, value=-lr)


class RMSprop(Optimizer):
    """RMSprop, plain, centered or with momentum; twin of torch.optim.RMSprop.

    theta <- theta - lr * g / (sqrt(E[g^2]) + eps)

    Args:
        params: tensors or param-group dicts to optimize.
        lr: learning rate (default 1e-2).
        alpha: smoothing constant of the running mean of g^2 (default 0.99).
        eps: added to the denominator (default 1e-8).
        weight_decay: L2 penalty (default 0).
        momentum: momentum coefficient (default 0).
        centered: normalise by the estimated variance of the gradient instead of its
            second moment.
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
        >>> opt = steepest.RMSprop(model.parameters(), lr=1e-3, centered=True)

    State: ``step``, ``square_avg``, ``momentum_buffer`` (momentum > 0), ``grad_avg``
    (centered).
    Reference: Tieleman and Hinton 2012, Lecture 6.5; Graves 2013 (centered).
    """

    update = staticmethod(rmsprop_update)
    supports_fused = True
    _checks = {
        "lr": validation.nonnegative,
        "alpha": validation.unit_interval,
        "eps": validation.positive,
        "weight_decay": validation.nonnegative,
        "momentum": validation.nonnegative,
        "centered": validation.boolean,
        "maximize": validation.boolean,
    }

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        *,
        foreach: bool | None = None,
        fused: bool | None = None,
        state_dtype: torch.dtype | None = None,
        maximize: bool = False,
        clip_norm: float | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            alpha=alpha,
            eps=eps,
            weight_decay=weight_decay,
            momentum=momentum,
            centered=centered,
            foreach=foreach,
            fused=fused,
            state_dtype=state_dtype,
            maximize=maximize,
        )
        super().__init__(params, defaults, clip_norm=clip_norm)

    def _buffer_names(self, group: dict[str, Any]) -> tuple[str, ...]:
        names = ["square_avg"]
        if group["momentum"] > 0:
            names.append("momentum_buffer")
        if group["centered"]:
            names.append("grad_avg")
        return tuple(names)

    def _coefficients(self, group: dict[str, Any], scalars: dict, fresh: bool) -> dict[str, Any]:
        return dict(
            lr=group["lr"],
            alpha=group["alpha"],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            momentum=group["momentum"],
        )
