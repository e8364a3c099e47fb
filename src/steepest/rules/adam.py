"""Adam and its family: Adam (with AMSGrad), AdamW (decoupled weight decay), NAdam."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from steepest.engine import Optimizer, add_scaled, maximum_, nonzero, validation
from steepest.engine.optimizer import ParamsT


def _apply_weight_decay(
    param: Tensor, grad: Tensor, lr: float, weight_decay: float, decoupled: bool
) -> Tensor:
    """L2 penalty added to the gradient, or (decoupled) a shrink of the parameter."""
    if not nonzero(weight_decay):
        return grad
    if decoupled:
        param.mul_(1 - lr * weight_decay)
        return grad
    return add_scaled(grad, param, weight_decay)


def _update_moments(grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, beta1: float, beta2: float) -> None:
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)


def adam_bias_corrections(lr: float, beta1: float, beta2: float, step: float) -> dict[str, float]:
    """Adam's step-dependent scalars, computed once per step on the CPU (never per element).

    step_size = lr / (1 - b1^t);  bias_correction2_sqrt = sqrt(1 - b2^t)
    """
    return dict(step_size=lr / (1 - beta1**step), bias_correction2_sqrt=(1 - beta2**step) ** 0.5)


def adam_update(
    param: Tensor,
    grad: Tensor,
    *,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    max_exp_avg_sq: Tensor | None = None,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    step_size: float,
    bias_correction2_sqrt: float,
) -> None:
    """One Adam step (tensors or TensorLists, updated in place).

    m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;
    theta <- theta - lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
    AMSGrad uses max(v) over time in place of v. ``step_size`` and ``bias_correction2_sqrt``
    come from :func:`adam_bias_corrections`.
    """
    grad = _apply_weight_decay(param, grad, lr, weight_decay, decoupled_weight_decay)
    _update_moments(grad, exp_avg, exp_avg_sq, beta1, beta2)
    if max_exp_avg_sq is not None:
        second_moment = maximum_(max_exp_avg_sq, exp_avg_sq)
    else:
        second_moment = exp_avg_sq
    denom = second_moment.sqrt().div_(bias_correction2_sqrt).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-step_size)


_ADAM_CHECKS = {
    "lr": validation.nonnegative,
    "betas": validation.betas,
    "eps": validation.positive,
    "weight_decay": validation.nonnegative,
    "amsgrad": validation.boolean,
    "maximize": validation.boolean,
    "decoupled_weight_decay": validation.boolean,
}


class Adam(Optimizer):
    """Adam: adaptive moment estimation; twin of torch.optim.Adam.

    theta <- theta - lr * m_hat / (sqrt(v_hat) + eps), with bias-corrected moments.

    Args:
        params: tensors or param-group dicts to optimize.
        lr: learning rate (default 1e-3).
        betas: decay rates of the first and second moments (default (0.9, 0.999)).
        eps: added to the denominator for numerical stability (default 1e-8).
        weight_decay: L2 penalty (default 0); decoupled when decoupled_weight_decay=True.
        amsgrad: use the running maximum of the second moment (Reddi et al. 2018).
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
        decoupled_weight_decay: shrink parameters directly (AdamW) instead of adding an L2
            term to the gradient.

    Example:
        >>> opt = steepest.Adam(model.parameters(), lr=3e-4)

    State: ``step``, ``exp_avg``, ``exp_avg_sq`` (and ``max_exp_avg_sq`` with amsgrad).
    Reference: Kingma and Ba 2015, "Adam: A Method for Stochastic Optimization".
    """

    update = staticmethod(adam_update)
    supports_fused = True
    _checks = _ADAM_CHECKS

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        fused: bool | None = None,
        state_dtype: torch.dtype | None = None,
        maximize: bool = False,
        decoupled_weight_decay: bool = False,
        clip_norm: float | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            state_dtype=state_dtype,
            decoupled_weight_decay=decoupled_weight_decay,
        )
        super().__init__(params, defaults, clip_norm=clip_norm)

    def _buffer_names(self, group: dict[str, Any]) -> tuple[str, ...]:
        if group["amsgrad"]:
            return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
        return ("exp_avg", "exp_avg_sq")

    def _coefficients(self, group: dict[str, Any], scalars: dict, fresh: bool) -> dict[str, Any]:
        beta1, beta2 = group["betas"]
        return dict(
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            decoupled_weight_decay=group["decoupled_weight_decay"],
            **adam_bias_corrections(group["lr"], beta1, beta2, float(scalars["step"])),
        )


class AdamW(Adam):
    """AdamW: Adam with decoupled weight decay; twin of torch.optim.AdamW.

    theta <- theta (1 - lr * weight_decay) - lr * m_hat / (sqrt(v_hat) + eps)

    Same arguments as :class:`Adam`, with weight_decay defaulting to 1e-2 and the decay
    always decoupled.

    Example:
        >>> opt = steepest.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)

    Reference: Loshchilov and Hutter 2019, "Decoupled Weight Decay Regularization".
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        state_dtype: torch.dtype | None = None,
        clip_norm: float | None = None,
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            foreach=foreach,
            fused=fused,
            state_dtype=state_dtype,
            maximize=maximize,
            decoupled_weight_decay=True,
            clip_norm=clip_norm,
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A state_dict from torch.optim.Adam loaded here still decays decoupled, as AdamW must.
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True


def nadam_momentum(step: float, beta1: float, momentum_decay: float) -> float:
    """NAdam's momentum schedule: mu_t = beta1 (1 - 0.5 * 0.96^(t * momentum_decay))."""
    return beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))


def nadam_update(
    param: Tensor,
    grad: Tensor,
    *,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    bias_correction2: float,
    gradient_step: float,
    momentum_step: float,
) -> None:
    """One NAdam step: Adam with Nesterov momentum (tensors or TensorLists, in place).

    theta <- theta - lr [ (1-mu_t)/(1-prod mu) g + mu_{t+1}/(1-prod mu * mu_{t+1}) m ] / (sqrt(v_hat)+eps)
    ``gradient_step`` and ``momentum_step`` are the two (negative) coefficients in brackets,
    times lr, and ``bias_correction2`` is 1 - b2^t: scalars computed once per step.
    """
    grad = _apply_weight_decay(param, grad, lr, weight_decay, decoupled_weight_decay)
    _update_moments(grad, exp_avg, exp_avg_sq, beta1, beta2)
    denom = exp_avg_sq.div(bias_correction2).sqrt_().add_(eps)
    param.addcdiv_(grad, denom, value=gradient_step)
    param.addcdiv_(exp_avg, denom, value=momentum_step)


class NAdam(Optimizer):
    """NAdam: Adam with Nesterov momentum; twin of torch.optim.NAdam.

    Args:
        params: tensors or param-group dicts to optimize.
        lr: learning rate (default 2e-3).
        betas: decay rates of the first and second moments (default (0.9, 0.999)).
        eps: added to the denominator (default 1e-8).
        weight_decay: L2 penalty (default 0); decoupled when decoupled_weight_decay=True.
        momentum_decay: psi of the momentum schedule mu_t (default 4e-3).
        decoupled_weight_decay: shrink parameters directly (NAdamW).
        maximize, foreach, fused, state_dtype, clip_norm: as in :class:`Adam`.

    Example:
        >>> opt = steepest.NAdam(model.parameters(), lr=2e-3)

    State: ``step``, ``mu_product``, ``exp_avg``, ``exp_avg_sq``.
    Reference: Dozat 2016, "Incorporating Nesterov Momentum into Adam".
    """

    update = staticmethod(nadam_update)
    supports_fused = True
    _checks = {**_ADAM_CHECKS, "momentum_decay": validation.nonnegative}

    def __init__(
        self,
        params: ParamsT,
        lr: float = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum_decay: float = 4e-3,
        decoupled_weight_decay: bool = False,
        *,
        foreach: bool | None = None,
        fused: bool | None = None,
        state_dtype: torch.dtype | None = None,
        maximize: bool = False,
        clip_norm: float | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            momentum_decay=momentum_decay,
            decoupled_weight_decay=decoupled_weight_decay,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            state_dtype=state_dtype,
        )
        super().__init__(params, defaults, clip_norm=clip_norm)

    def _buffer_names(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def _scalar_state(self, group: dict[str, Any]) -> dict[str, float]:
        return {"step": 0.0, "mu_product": 1.0}

    def _coefficients(self, group: dict[str, Any], scalars: dict, fresh: bool) -> dict[str, Any]:
        beta1, beta2 = group["betas"]
        step = float(scalars["step"])
        mu = nadam_momentum(step, beta1, group["momentum_decay"])
        mu_next = nadam_momentum(step + 1, beta1, group["momentum_decay"])
        # Kept as a CPU tensor of torch's scalar dtype and multiplied the same way, so the
        # rounding of the running product matches torch.optim.NAdam's.
        scalars["mu_product"] *= mu
        lr, mu_product = group["lr"], float(scalars["mu_product"])
        return dict(
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            decoupled_weight_decay=group["decoupled_weight_decay"],
            bias_correction2=1 - beta2**step,
            gradient_step=-lr * (1.0 - mu) / (1.0 - mu_product),
            momentum_step=(-lr * mu_next) / (1.0 - mu_product * mu_next),
        )
