"""D-Adaptation: estimate D, the distance from the start to a solution, and step d * lr.

The learning-rate-free methods (D-Adaptation here, Prodigy in ``prodigy.py``) need a global
statistic before they can step: sums over every parameter of a group that feed the distance
estimate d. :class:`DistanceEstimator` runs each step in three stages on the engine's pieces:

1. a statistics pass: the rule ``statistics`` runs per bucket through the engine's ``_apply``,
   updates the moment buffers in place and returns partial sums as a small 1-d tensor;
2. one device-to-host synchronisation: the partial sums are added on the device and read as
   floats, and the group's d is updated on the CPU in plain Python floats;
3. an update pass: the rule ``update`` moves the parameters.

The element-wise math of both passes is written once, on tensors or TensorLists alike.

Every param group estimates its own d. With one group (the usual case) this is exactly the
official packages' algorithm; they share one d across groups and refuse groups with different
learning rates, whereas here groups are independent optimizers, each lr scaling its own d.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from steepest.engine import Optimizer, TensorList, add_scaled, validation
from steepest.engine.optimizer import ParamsT

TensorLike = Tensor | TensorList


# -- reductions the statistics passes need ----------------------------------------------------
# TensorList has no reductions yet; these compose them from per-tensor sums. They accumulate
# in float32 at least, so bfloat16 parameters still give a usable distance estimate.
def _accumulator(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def total(values: TensorLike) -> Tensor:
    """Sum of every element of a tensor or of every tensor of a TensorList (a 0-d tensor)."""
    if isinstance(values, TensorList):
        return torch.stack([total(tensor) for tensor in values]).sum()
    return values.sum(dtype=_accumulator(values.dtype))


def absolute_total(values: TensorLike) -> Tensor:
    """Sum of absolute values (the l1 norm) over a tensor or a TensorList (a 0-d tensor)."""
    if isinstance(values, TensorList):
        return torch.stack([absolute_total(tensor) for tensor in values]).sum()
    return values.abs().sum(dtype=_accumulator(values.dtype))


def inner_product(a: TensorLike, b: TensorLike) -> Tensor:
    """<a, b> summed over a tensor or a TensorList (a 0-d tensor)."""
    return total(a.mul(b))


def read_totals(partials: list[Tensor]) -> list[float]:
    """Add the buckets' partial sums and read them on the host: the step's one synchronisation."""
    dtype = functools.reduce(torch.promote_types, (partial.dtype for partial in partials))
    device = partials[0].device
    summed = torch.stack([partial.to(device=device, dtype=dtype) for partial in partials]).sum(0)
    return summed.tolist()


def adam_bias_correction(step: int, beta1: float, beta2: float) -> float:
    """sqrt(1 - beta2^t) / (1 - beta1^t) at step t = ``step`` (counted from 1)."""
    return math.sqrt(1 - beta2**step) / (1 - beta1**step)


def check_growth_rate(name: str, value: Any) -> None:
    """``value`` is a real number >= 1; ``inf`` (no limit) is allowed."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    if math.isnan(value) or value < 1:
        raise ValueError(f"{name} must be >= 1 (inf for no limit), got {value!r}")


#: The hyperparameters every distance-estimating method has (Prodigy, DAdaptAdam, DAdaptSGD).
DISTANCE_CHECKS = {
    "lr": validation.nonnegative,
    "weight_decay": validation.nonnegative,
    "d0": validation.positive,
    "growth_rate": check_growth_rate,
    "maximize": validation.boolean,
}


class DistanceEstimator(Optimizer):
    """Base of the optimizers that estimate the distance to a solution and step d * lr.

    A subclass supplies two rules and the CPU arithmetic between them:

    * ``statistics(param, grad, *, <buffers>, <coefficients>) -> Tensor``: updates the
      moment buffers in place and returns partial sums (a 1-d tensor) for the estimate;
    * ``update(param, grad, *, <buffers>, <coefficients>)``: moves the parameters;
    * :meth:`_group_state`: the group-level state and its initial values (``d``, ``k``, ...),
      kept in the param group as the official packages do, so state_dicts carry it;
    * :meth:`_statistics_coefficients`, :meth:`_estimate`, :meth:`_update_coefficients`.

    The statistics of all of a group's buckets are read in one synchronisation per group
    and step. A group at lr 0 computes nothing and moves nothing, as ``torch.optim`` groups
    at lr 0 do (the official packages compute nothing for it either, but their decoupled
    weight decay still shrinks it, at the shared d times the largest lr); a step whose
    gradients are all zero (||s||_1 = 0, so no estimate can be formed) is skipped after the
    moment updates, as there.
    """

    statistics: ClassVar[Callable[..., Tensor]]
    _statistics_buffers: ClassVar[tuple[str, ...]]
    _update_buffers: ClassVar[tuple[str, ...]]
    #: The buffer that starts as a copy of the parameter: the point the distance is measured
    #: from (Prodigy's ``p0``, D-Adapt SGD's ``x0``); None when the rule keeps none.
    _start_buffer: ClassVar[str | None] = None

    # -- what a subclass declares ----------------------------------------------------------
    def _group_state(self, group: dict[str, Any]) -> dict[str, Any]:
        """Group-level state and its initial values."""
        return {"d": group["d0"], "k": 0}

    def _statistics_coefficients(self, group: dict[str, Any], step_size: float) -> dict[str, Any]:
        raise NotImplementedError

    def _estimate(self, group: dict[str, Any], totals: list[float], step_size: float) -> bool:
        """Update the group's d from this step's totals; False when the step must be skipped."""
        raise NotImplementedError

    def _update_coefficients(self, group: dict[str, Any], step_size: float) -> dict[str, Any]:
        raise NotImplementedError

    # -- shared machinery --------------------------------------------------------------------
    def _buffer_names(self, group: dict[str, Any]) -> tuple[str, ...]:
        """Every buffer either pass reads, in order of first use."""
        return tuple(dict.fromkeys(self._statistics_buffers + self._update_buffers))

    def _new_buffer(self, name: str, param: Tensor, group: dict[str, Any]) -> Tensor:
        if name == self._start_buffer:
            return param.detach().clone(memory_format=torch.preserve_format)
        return super()._new_buffer(name, param, group)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group; its distance estimate starts at its own ``d0``."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for name, value in self._group_state(group).items():
            group.setdefault(name, value)

    def _step_size(self, group: dict[str, Any]) -> float:
        """d * lr (times Adam's bias correction when enabled): this step's scale."""
        scale = group["d"] * group["lr"]
        if group.get("use_bias_correction", False):
            beta1, beta2 = group["betas"]
            scale *= adam_bias_correction(group["k"] + 1, beta1, beta2)
        return scale

    @property
    def effective_lr(self) -> list[float]:
        """Per param group, the step size the next step will use: d * lr (* bias correction)."""
        return [self._step_size(group) for group in self.param_groups]

    def _step_group(self, group: dict[str, Any]) -> None:
        """Statistics pass, one synchronisation, CPU update of d, update pass."""
        if group["lr"] == 0:
            return
        buckets = self._buckets(group)
        if not buckets:
            return
        multi_tensor = group.get("foreach")  # None: chosen per device by _apply
        step_size = self._step_size(group)  # from the d the previous step estimated
        coefficients = self._statistics_coefficients(group, step_size)
        partials = [
            self._apply(type(self).statistics, bucket, self._statistics_buffers, coefficients, multi_tensor)
            for bucket in buckets
        ]
        if not self._estimate(group, read_totals(partials), step_size):
            return
        coefficients = self._update_coefficients(group, step_size)
        for bucket in buckets:
            self._advance(group, bucket)
            bucket.share_scalars()
            self._apply(type(self).update, bucket, self._update_buffers, coefficients, multi_tensor)
        group["k"] += 1


# -- D-Adapt Adam --------------------------------------------------------------------------------
def dadapt_adam_statistics(
    param: Tensor,
    grad: Tensor,
    *,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    s: Tensor,
    step_size: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
) -> Tensor:
    """D-Adapt Adam's moment updates; returns [<g, s / (sqrt(v) + eps)>, ||s_new||_1].

    The inner product uses s and v from before this step, as the official code does.
    m <- b1 m + (1-b1) dlr g;  v <- b2 v + (1-b2) g^2;  s <- sqrt(b2) s + (1-sqrt(b2)) dlr g
    """
    if weight_decay != 0:
        grad = add_scaled(grad, param, weight_decay)  # coupled (L2) decay
    sqrt_beta2 = beta2**0.5
    weighted = inner_product(grad, s.div(exp_avg_sq.sqrt().add_(eps)))
    exp_avg.mul_(beta1).add_(grad, alpha=step_size * (1 - beta1))
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    s.mul_(sqrt_beta2).add_(grad, alpha=step_size * (1 - sqrt_beta2))
    return torch.stack([weighted, absolute_total(s)])


def dadapt_adam_update(
    param: Tensor,
    grad: Tensor,
    *,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    eps: float,
    decay: float,
) -> None:
    """theta <- theta - decay theta - m / (sqrt(v) + eps)   (m already carries d * lr)."""
    denom = exp_avg_sq.sqrt().add_(eps)
    if decay != 0:
        # as p - c p, not p (1 - c): with c ~ d0 lr wd tiny, 1 - c would round away the
        # digits of c that the distance estimate reads back from theta_0 - theta.
        param.add_(param, alpha=-decay)
    param.addcdiv_(exp_avg, denom, value=-1)


class DAdaptAdam(DistanceEstimator):
    """Adam whose step size d * lr is set by D-Adaptation; leave lr at 1.

    m <- b1 m + (1-b1) d lr g;  theta <- theta - m / (sqrt(v) + eps);
    d <- max(d, sum_t sqrt(b2)^(T-t) d_t lr <g_t, s_t>_{A_t^-1} / ||s||_1)

    Args:
        params: tensors or param-group dicts to optimize.
        lr: multiplies the estimated step size d (default 1.0; change only if unstable).
        betas: decay rates of the first and second moments (default (0.9, 0.999)).
        eps: added to the denominator (default 1e-8).
        weight_decay: weight decay (default 0); an L2 term unless ``decouple=True``.
        decouple: AdamW-style decoupled decay, theta <- theta (1 - weight_decay d lr).
        use_bias_correction: scale the step by Adam's bias correction (default False).
        d0: initial estimate of D (default 1e-6; rarely needs changing).
        growth_rate: largest factor by which d may grow in one step (default inf).
        maximize, foreach, clip_norm: as in :class:`~steepest.Adam`.

    Example:
        >>> opt = steepest.DAdaptAdam(model.parameters())  # no learning rate to choose
        >>> opt.effective_lr  # [d * lr] per param group, for logging

    State: ``step``, ``s``, ``exp_avg``, ``exp_avg_sq``; per group ``d``,
    ``numerator_weighted``, ``k`` (in ``param_groups``, as in the ``dadaptation`` package).
    Every param group estimates its own d (the package shares one across groups).
    Reference: Defazio and Mishchenko 2023, "Learning-Rate-Free Learning by D-Adaptation";
    the ``dadaptation`` package's DAdaptAdam (version 3).
    """

    statistics = staticmethod(dadapt_adam_statistics)
    update = staticmethod(dadapt_adam_update)
    _statistics_buffers = ("exp_avg", "exp_avg_sq", "s")
    _update_buffers = ("exp_avg", "exp_avg_sq")
    _checks = {
        **DISTANCE_CHECKS,
        "betas": validation.betas,
        "eps": validation.positive,
        "decouple": validation.boolean,
        "use_bias_correction": validation.boolean,
    }

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        decouple: bool = False,
        use_bias_correction: bool = False,
        d0: float = 1e-6,
        growth_rate: float = math.inf,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        clip_norm: float | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            decouple=decouple,
            use_bias_correction=use_bias_correction,
            d0=d0,
            growth_rate=growth_rate,
            maximize=maximize,
            foreach=foreach,
        )
        super().__init__(params, defaults, clip_norm=clip_norm)

    def _group_state(self, group: dict[str, Any]) -> dict[str, Any]:
        return {"d": group["d0"], "numerator_weighted": 0.0, "k": 0}

    def _statistics_coefficients(self, group: dict[str, Any], step_size: float) -> dict[str, Any]:
        beta1, beta2 = group["betas"]
        coupled = 0.0 if group["decouple"] else group["weight_decay"]
        return dict(step_size=step_size, beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=coupled)

    def _estimate(self, group: dict[str, Any], totals: list[float], step_size: float) -> bool:
        weighted, s_norm = totals
        if s_norm == 0:
            return False  # no gradient yet: nothing to estimate from, and nothing to step
        sqrt_beta2 = group["betas"][1] ** 0.5
        numerator = sqrt_beta2 * group["numerator_weighted"] + (1 - sqrt_beta2) * step_size * weighted
        d = group["d"]
        d_hat = numerator / ((1 - sqrt_beta2) * s_norm)
        group["numerator_weighted"] = numerator
        group["d"] = max(d, min(d_hat, d * group["growth_rate"]))
        return True

    def _update_coefficients(self, group: dict[str, Any], step_size: float) -> dict[str, Any]:
        decoupled = group["weight_decay"] if group["decouple"] else 0.0
        return dict(eps=group["eps"], decay=decoupled * step_size)


# -- D-Adapt SGD ---------------------------------------------------------------------------------
def dadapt_sgd_statistics(
    param: Tensor,
    grad: Tensor,
    *,
    s: Tensor,
    step_size: float,
    weight_decay: float,
    first: bool,
) -> Tensor:
    """D-Adapt SGD's sum update; returns [<g, s>, ||s_new||^2, ||g||^2 (first step, else 0)].

    s <- s + step_size g, with g carrying the L2 term. As in the official code, the inner
    product uses s from before this step, and ||g||^2 (which sets ||g_0||) leaves the L2 term out.
    """
    square = total(grad.mul(grad)) if first else None
    if weight_decay != 0:
        grad = add_scaled(grad, param, weight_decay)  # coupled (L2) decay
    weighted = inner_product(grad, s)
    s.add_(grad, alpha=step_size)
    return torch.stack([weighted, total(s.mul(s)), weighted.new_zeros(()) if square is None else square])


def dadapt_sgd_update(
    param: Tensor,
    grad: Tensor,
    *,
    s: Tensor,
    x0: Tensor,
    momentum: float,
    s_scale: float,
) -> None:
    """theta <- momentum theta + (1 - momentum) (x0 - s)   (s already carries d lr / ||g_0||).

    ``s_scale`` is 1 / ||g_0|| at the first step, whose statistics pass ran before ||g_0|| was
    known, and 1 afterwards.
    """
    if s_scale != 1:
        s.mul_(s_scale)
    ck = 1 - momentum  # the official code's weight of z, kept so the rounding matches it
    param.mul_(1 - ck).add_(x0.add(s, alpha=-1), alpha=ck)


class DAdaptSGD(DistanceEstimator):
    """SGD whose step size d * lr / ||g_0|| is set by D-Adaptation; leave lr at 1.

    z = x0 - sum_t d_t lr g_t / ||g_0||;  theta <- momentum theta + (1-momentum) z;
    d <- max(d, 2 sum_t (d_t lr / ||g_0||) <g_t, s_t> / ||s||_2)

    Momentum is primal averaging, as in the ``dadaptation`` package: the iterates are exactly
    those of heavy-ball SGD (``torch.optim.SGD(momentum=momentum)``) at the rate
    ``(1 - momentum) * effective_lr``.

    Args:
        params: tensors or param-group dicts to optimize.
        lr: multiplies the estimated step size d (default 1.0; change only if unstable).
        momentum: averaging weight in [0, 1) (default 0, as in the ``dadaptation`` package;
            0.9 for SGD with momentum).
        weight_decay: L2 penalty added to the gradient (default 0). ||g_0|| is the norm of the
            first gradient without it, as in the package.
        d0: initial estimate of D (default 1e-6; rarely needs changing).
        growth_rate: largest factor by which d may grow in one step (default inf).
        maximize, foreach, clip_norm: as in :class:`~steepest.SGD`.

    Example:
        >>> opt = steepest.DAdaptSGD(model.parameters(), momentum=0.9)  # no rate to choose
        >>> opt.effective_lr  # [d * lr / ||g_0||] per param group, for logging

    State: ``step``, ``s`` (the weighted gradient sum), ``x0`` (the starting point); per group
    ``d``, ``numerator_weighted``, ``g0_norm`` (0 until the first step), ``k`` (in
    ``param_groups``, as in the ``dadaptation`` package, whose ``z`` = x0 - s is not stored).
    Every param group estimates its own d and ||g_0|| (the package shares them across groups).
    A first gradient that is zero but for the L2 term, where the package divides by zero,
    sets ||g_0|| from the L2 term.
    Reference: Defazio and Mishchenko 2023, "Learning-Rate-Free Learning by D-Adaptation";
    the ``dadaptation`` package's DAdaptSGD (version 3).
    """

    statistics = staticmethod(dadapt_sgd_statistics)
    update = staticmethod(dadapt_sgd_update)
    _statistics_buffers = ("s",)
    _update_buffers = ("s", "x0")
    _start_buffer = "x0"  # z = x0 - s
    _checks = {**DISTANCE_CHECKS, "momentum": validation.unit_interval}

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1.0,
        momentum: float = 0.0,
        weight_decay: float = 0,
        d0: float = 1e-6,
        growth_rate: float = math.inf,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        clip_norm: float | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            d0=d0,
            growth_rate=growth_rate,
            maximize=maximize,
            foreach=foreach,
        )
        super().__init__(params, defaults, clip_norm=clip_norm)

    def _group_state(self, group: dict[str, Any]) -> dict[str, Any]:
        return {"d": group["d0"], "numerator_weighted": 0.0, "g0_norm": 0.0, "k": 0}

    def _step_size(self, group: dict[str, Any]) -> float:
        """d * lr / ||g_0||; before the first step, d * lr (the statistics are rescaled after)."""
        scale = group["d"] * group["lr"]
        g0_norm = group["g0_norm"]
        return scale / g0_norm if g0_norm else scale

    @property
    def effective_lr(self) -> list[float]:
        """Per param group, the rate of the next step on z: d * lr / ||g_0|| (nan before the
        first step, while ||g_0|| is unknown). Times (1 - momentum): the heavy-ball rate."""
        return [self._step_size(group) if group["g0_norm"] else math.nan for group in self.param_groups]

    def _statistics_coefficients(self, group: dict[str, Any], step_size: float) -> dict[str, Any]:
        first = not group["g0_norm"]
        return dict(step_size=step_size, weight_decay=group["weight_decay"], first=first)

    def _estimate(self, group: dict[str, Any], totals: list[float], step_size: float) -> bool:
        weighted, s_square, g_square = totals
        if s_square == 0:
            return False  # no gradient yet: nothing to estimate from, and nothing to step
        s_norm = math.sqrt(s_square)
        if not group["g0_norm"]:
            # The first step ran at d lr per unit of ||g_0||: s = d lr g, since s was 0 before.
            # A first gradient that is 0 but for the L2 term gets ||g_0|| from the L2 term.
            g0_norm = math.sqrt(g_square) or s_norm / step_size
            group["g0_norm"] = g0_norm
            step_size /= g0_norm
            s_norm /= g0_norm
        numerator = group["numerator_weighted"] + step_size * weighted
        d = group["d"]
        d_hat = 2 * numerator / s_norm
        group["numerator_weighted"] = numerator
        group["d"] = max(d, min(d_hat, d * group["growth_rate"]))
        return True

    def _update_coefficients(self, group: dict[str, Any], step_size: float) -> dict[str, Any]:
        s_scale = 1 / group["g0_norm"] if group["k"] == 0 else 1.0
        return dict(momentum=group["momentum"], s_scale=s_scale)
