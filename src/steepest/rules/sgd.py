"""Gradient descent: plain, heavy-ball momentum, Nesterov momentum."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from steepest.engine import Optimizer, add_scaled, nonzero, validation
from steepest.engine.optimizer import ParamsT


def sgd_update(
    param: Tensor,
    grad: Tensor,
    *,
    momentum_buffer: Tensor | None = None,
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    weight_decay: float,
    fresh: bool,
) -> None:
    """One step of gradient descent (tensors or TensorLists, updated in place).

    theta <- theta - lr * d,  where  g = grad + weight_decay * theta,
    b <- momentum * b + (1 - dampening) * g  (b = g at the first step),
    d = g + momentum * b  (Nesterov)  or  b  (heavy ball)  or  g  (momentum = 0).
    """
    if nonzero(weight_decay):
        grad = add_scaled(grad, param, weight_decay)
    if momentum_buffer is not None:
        if fresh:
            momentum_buffer.copy_(grad)
        else:
            momentum_buffer.mul_(momentum).add_(grad, alpha=1 - dampening)
        grad = add_scaled(grad, momentum_buffer, momentum) if nesterov else momentum_buffer
    param.add_(grad, alpha=-lr)


class SGD(Optimizer):
    """Stochastic gradient descent, with optional (Nesterov) momentum; twin of torch.optim.SGD.

    theta <- theta - lr * grad  (momentum=0: the update rule of the source documents)

    Args:
        params: tensors or param-group dicts to optimize.
        lr: learning rate (default 1e-3).
        momentum: heavy-ball coefficient (default 0: plain gradient descent).
        dampening: damping of the gradient's share in the momentum buffer (default 0).
        weight_decay: L2 penalty coefficient added to the gradient (default 0).
        nesterov: Nesterov momentum; needs momentum > 0 and dampening = 0.
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
        >>> opt = steepest.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)

    State: ``momentum_buffer`` (when momentum != 0), as in torch.optim.SGD.
    Reference: Polyak 1964 (heavy ball); Sutskever et al. 2013 (Nesterov form).
    """

    update = staticmethod(sgd_update)
    supports_fused = True
    _checks = {
        "lr": validation.nonnegative,
        "momentum": validation.nonnegative,
        "dampening": validation.closed_unit_interval,
        "weight_decay": validation.nonnegative,
        "nesterov": validation.boolean,
        "maximize": validation.boolean,
    }

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        state_dtype: torch.dtype | None = None,
        clip_norm: float | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            state_dtype=state_dtype,
        )
        super().__init__(params, defaults, clip_norm=clip_norm)

    def _check_group(self, group: dict[str, Any]) -> None:
        if group.get("nesterov") and (group.get("momentum", 0) <= 0 or group.get("dampening", 0) != 0):
            raise ValueError(
                "nesterov=True requires momentum > 0 and dampening = 0, got "
                f"momentum={group.get('momentum')!r}, dampening={group.get('dampening')!r}"
            )

    def _buffer_names(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("momentum_buffer",) if group["momentum"] != 0 else ()

    def _scalar_state(self, group: dict[str, Any]) -> dict[str, float]:
        return {}  # torch.optim.SGD keeps no step count; neither do we, for identical state

    def _coefficients(self, group: dict[str, Any], scalars: dict, fresh: bool) -> dict[str, Any]:
        return dict(
            lr=group["lr"],
            momentum=group["momentum"],
            dampening=group["dampening"],
            nesterov=group["nesterov"],
            weight_decay=group["weight_decay"],
            fresh=fresh,
        )
