"""Prodigy: Adam whose step size d * lr comes from an estimate of the distance to a solution.

Prodigy improves on D-Adaptation (``dadapt.py``, whose three-stage step it shares) by
weighting the estimate with d itself, so d grows geometrically from a tiny d0 to the right
scale within a few hundred steps instead of linearly.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from steepest.engine import add_scaled, validation
from steepest.engine.optimizer import ParamsT
from steepest.rules.dadapt import DISTANCE_CHECKS, DistanceEstimator, absolute_total, inner_product


def prodigy_statistics(
    param: Tensor,
    grad: Tensor,
    *,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    s: Tensor,
    p0: Tensor,
    d: float,
    beta1: float,
    beta2: float,
    beta3: float,
    s_scale: float,
    weight_decay: float,
) -> Tensor:
    """Prodigy's moment updates; returns [<g, theta_0 - theta>, ||s_new||_1].

    m <- b1 m + (1-b1) d g;  v <- b2 v + (1-b2) d^2 g^2;  s <- b3 s + s_scale g
    """
    if weight_decay != 0:
        grad = add_scaled(grad, param, weight_decay)  # coupled (L2) decay
    progress = inner_product(grad, p0.add(param, alpha=-1))
    if beta1 > 0:  # without momentum the update steps along g itself (prodigy_update)
        exp_avg.mul_(beta1).add_(grad, alpha=d * (1 - beta1))
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=d * d * (1 - beta2))
    s.mul_(beta3).add_(grad, alpha=s_scale)
    return torch.stack([progress, absolute_total(s)])


def prodigy_update(
    param: Tensor,
    grad: Tensor,
    *,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step_size: float,
    eps: float,
    decay: float,
    new_d: float | None = None,
    weight_decay: float = 0.0,
) -> None:
    """theta <- theta - decay theta - d lr * m / (sqrt(v) + d eps).

    Without momentum (b1 = 0, ``new_d`` given) m is ``new_d`` * g, with g carrying the L2 term
    ``weight_decay``: the d this step estimated, as in the prodigyopt package, where m would
    carry the d of the step before.
    """
    denom = exp_avg_sq.sqrt().add_(eps)
    direction = exp_avg
    if new_d is not None:
        direction = add_scaled(grad, param, weight_decay) if weight_decay != 0 else grad
        step_size = step_size * new_d
    if decay != 0:
        # as p - c p, not p (1 - c): with c ~ d0 lr wd tiny, 1 - c would round away the
        # digits of c that the distance estimate reads back from theta_0 - theta.
        param.add_(param, alpha=-decay)
    param.addcdiv_(direction, denom, value=-step_size)


def _optional_unit_interval(name: str, value: Any) -> None:
    if value is not None:
        validation.unit_interval(name, value)


class Prodigy(DistanceEstimator):
    """Prodigy: Adam with the step size d * lr estimated on the fly; leave lr at 1.

    theta <- theta - d lr m / (sqrt(v) + d eps),  with m, v moments of d g and
    d <- max(d, d_coef * sum_t b3^(T-t) (d_t^2 / d0) lr <g_t, theta_0 - theta_t> / ||s||_1)

    Args:
        params: tensors or param-group dicts to optimize.
        lr: multiplies the estimated step size d (default 1.0; change only if unstable, or
            give it a schedule such as cosine annealing).
        betas: decay rates of the first and second moments (default (0.9, 0.999)).
        beta3: decay of the estimate's running sums (default None: sqrt(beta2)).
        eps: added to the denominator, times d (default 1e-8).
        weight_decay: weight decay (default 0).
        decouple: AdamW-style decay theta <- theta (1 - weight_decay d lr) (default True);
            False adds an L2 term to the gradient.
        use_bias_correction: scale the step by Adam's bias correction (default False).
        safeguard_warmup: leave lr out of the estimate's denominator, for lr warm-up.
        d0: initial estimate of D (default 1e-6; rarely needs changing).
        d_coef: multiplies the estimate (default 1.0; the preferred knob to tune).
        growth_rate: largest factor by which d may grow in one step (default inf).
        maximize, foreach, clip_norm: as in :class:`~steepest.Adam`.

    Example:
        >>> opt = steepest.Prodigy(model.parameters())  # no learning rate to choose
        >>> opt.effective_lr  # [d * lr] per param group, for logging

    State: ``step``, ``s``, ``p0`` (the starting point), ``exp_avg`` (left at zero with
    betas[0] = 0, where the step follows g), ``exp_avg_sq``; per group
    ``d``, ``d_max``, ``d_numerator``, ``d_denom``, ``d_hat``, ``k`` (in ``param_groups``, as in
    the ``prodigyopt`` package). Every param group estimates its own d (the package shares
    one across groups and so cannot give groups different learning rates).
    Reference: Mishchenko and Defazio 2023, "Prodigy: An Expeditiously Adaptive
    Parameter-Free Learner"; the ``prodigyopt`` package.
    """

    statistics = staticmethod(prodigy_statistics)
    update = staticmethod(prodigy_update)
    _statistics_buffers = ("exp_avg", "exp_avg_sq", "s", "p0")
    _update_buffers = ("exp_avg", "exp_avg_sq")
    _start_buffer = "p0"
    _checks = {
        **DISTANCE_CHECKS,
        "betas": validation.betas,
        "beta3": _optional_unit_interval,
        "eps": validation.positive,
        "decouple": validation.boolean,
        "use_bias_correction": validation.boolean,
        "safeguard_warmup": validation.boolean,
        "d_coef": validation.positive,
    }

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1.0,
        betas: tuple[float, float] = (0.9, 0.999),
        beta3: float | None = None,
        eps: float = 1e-8,
        weight_decay: float = 0,
        decouple: bool = True,
        use_bias_correction: bool = False,
        safeguard_warmup: bool = False,
        d0: float = 1e-6,
        d_coef: float = 1.0,
        growth_rate: float = math.inf,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        clip_norm: float | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            beta3=beta3,
            eps=eps,
            weight_decay=weight_decay,
            decouple=decouple,
            use_bias_correction=use_bias_correction,
            safeguard_warmup=safeguard_warmup,
            d0=d0,
            d_coef=d_coef,
            growth_rate=growth_rate,
            maximize=maximize,
            foreach=foreach,
        )
        super().__init__(params, defaults, clip_norm=clip_norm)

    def _group_state(self, group: dict[str, Any]) -> dict[str, Any]:
        d0 = group["d0"]
        return {"d": d0, "d_max": d0, "d_numerator": 0.0, "k": 0}

    @staticmethod
    def _beta3(group: dict[str, Any]) -> float:
        beta3 = group["beta3"]
        return math.sqrt(group["betas"][1]) if beta3 is None else beta3

    def _statistics_coefficients(self, group: dict[str, Any], step_size: float) -> dict[str, Any]:
        beta1, beta2 = group["betas"]
        d = group["d"]
        # d / d0 keeps the running sums away from tiny numbers while d is still near d0.
        s_scale = (d / group["d0"]) * (d if group["safeguard_warmup"] else step_size)
        return dict(
            d=d,
            beta1=beta1,
            beta2=beta2,
            beta3=self._beta3(group),
            s_scale=s_scale,
            weight_decay=0.0 if group["decouple"] else group["weight_decay"],
        )

    def _estimate(self, group: dict[str, Any], totals: list[float], step_size: float) -> bool:
        progress, s_norm = totals
        if s_norm == 0:
            return False  # no gradient yet: nothing to estimate from, and nothing to step
        d, d0 = group["d"], group["d0"]
        numerator = self._beta3(group) * group["d_numerator"] + (d / d0) * step_size * progress
        d_hat = group["d_coef"] * numerator / s_norm
        if d == d0:  # the first estimate may jump past the growth limit
            d = max(d, d_hat)
        d_max = max(group["d_max"], d_hat)
        group.update(
            d_numerator=numerator,
            d_denom=s_norm,
            d_hat=d_hat,
            d_max=d_max,
            d=min(d_max, d * group["growth_rate"]),
        )
        return True

    def _update_coefficients(self, group: dict[str, Any], step_size: float) -> dict[str, Any]:
        decoupled = group["weight_decay"] if group["decouple"] else 0.0
        without_momentum = group["betas"][0] == 0
        return dict(
            step_size=step_size,
            eps=group["d"] * group["eps"],
            decay=decoupled * step_size,
            new_d=group["d"] if without_momentum else None,
            weight_decay=group["weight_decay"] - decoupled if without_momentum else 0.0,
        )
