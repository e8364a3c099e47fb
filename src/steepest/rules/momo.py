"""MoMo: SGD with momentum whose step size is a Polyak step on a model of the loss.

MoMo (Schaipp, Ohana, Eickenberg, Defazio and Gower 2023, "MoMo: Momentum Models for Adaptive
Learning Rates") keeps exponential averages of the losses, of the gradients (SGD-momentum's
averaged direction d) and of <g, theta>, which together make a lower model of the loss around
the current point; its step is the one that brings that model down to a known lower bound of
the loss (0 for cross-entropy or a squared error), capped at ``lr``:

    tau = min(lr, (f_avg + <d, theta> - gamma - lower_bound)_+ / ||d||^2),  theta <- theta - tau d

So the learning rate follows the loss: large while the loss is far above its bound, small near
it. It needs this step's loss: ``optimizer.step(loss=loss)`` (what ``steepest.fit``,
``steepest.minimize``, the range test and SafeStep pass), or ``optimizer.step(closure)``.

The step runs in three stages on the engine's pieces, like the distance estimators of
``dadapt.py``: a statistics pass that updates d and returns partial sums, one device-to-host
synchronisation, the Polyak step in plain floats, and an update pass. The sums run over every
param group together, as in the official ``momo`` package: the loss belongs to the whole model,
so one model serves all groups; each group's ``lr`` caps the step and its ``weight_decay`` decays.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from steepest.engine import Optimizer, validation
from steepest.engine.optimizer import ParamsT
from steepest.rules.dadapt import inner_product, read_totals


def momo_statistics(param: Tensor, grad: Tensor, *, grad_avg: Tensor, beta: float) -> Tensor:
    """d <- beta d + (1 - beta) g; returns [<g, theta>, <d, theta>, ||d||^2] (this tensor's part)."""
    at_param = inner_product(grad, param)
    grad_avg.mul_(beta).add_(grad, alpha=1 - beta)
    return torch.stack([at_param, inner_product(grad_avg, param), inner_product(grad_avg, grad_avg)])


def momo_update(param: Tensor, grad: Tensor, *, grad_avg: Tensor, step_size: float, shrink: float) -> None:
    """theta <- (theta - tau d) / (1 + lr weight_decay)."""
    param.add_(grad_avg, alpha=-step_size)
    if shrink != 1:
        param.div_(shrink)


class MoMo(Optimizer):
    """SGD with momentum and a Polyak step size from a model of the loss; lr only caps it.

    d <- beta d + (1 - beta) g;  f_avg, gamma <- the same averages of the loss and <g, theta>;
    tau = min(lr, (f_avg + <d, theta> - gamma - lower_bound)_+ / ||d||^2);  theta <- theta - tau d

    With ``weight_decay`` w: the numerator becomes (1 + lr w)(f_avg - lower_bound - gamma)
    + <d, theta>, and theta <- (theta - tau d) / (1 + lr w). With ``bias_correction`` the
    averages start at zero and the lower bound and the cap are scaled by rho = 1 - beta^k;
    without it (default) they start at the first loss and gradient.

    Args:
        params: tensors or param-group dicts to optimize.
        lr: the largest step size tau (default 1.0, the official package's); the Polyak step
            decides below it. In SGD-momentum's units (p <- p - lr b, b <- momentum b + g) a
            step tau is a rate of tau (1 - beta).
        beta: momentum, the weight of the past in every average (default 0.9; 0 is the
            stochastic Polyak step with a cap, SPS_max).
        weight_decay: decay as above (default 0).
        lower_bound: a lower bound of the loss (default 0: cross-entropy, squared errors).
        bias_correction: the averaging scheme (default False).
        estimate_lower_bound: MoMo*: estimate the lower bound online, from ``lower_bound`` up
            (the model's value after each step), for losses whose minimum is well above the
            bound given (noisy labels, regression); default False.
        foreach, clip_norm: as in :class:`~steepest.SGD`.

    Example:
        >>> opt = steepest.MoMo(model.parameters())
        >>> loss = loss_fn(model(x), y); loss.backward()
        >>> opt.step(loss=loss)  # MoMo needs the loss
        >>> opt.effective_lr  # [tau] per param group, for logging

    State: per parameter ``step`` and ``grad_avg`` (d); in the first param group, the shared
    averages ``loss_avg`` and ``grad_dot_param`` (gamma) and the step count ``k``; in every
    group, its last step size ``tau``. Reference: the official ``momo`` package (``Momo``).
    """

    #: ``step`` needs this step's loss (``step(loss=...)``) or a closure that returns it.
    requires_loss: ClassVar[bool] = True
    update = staticmethod(momo_update)
    # The one model of the loss serves every group, so every group must agree on these.
    _shared_settings = ("beta", "lower_bound", "bias_correction", "estimate_lower_bound")
    _checks: ClassVar[dict[str, validation.Check]] = {
        "lr": validation.nonnegative,
        "beta": validation.unit_interval,
        "weight_decay": validation.nonnegative,
        "lower_bound": validation.real,
        "bias_correction": validation.boolean,
        "estimate_lower_bound": validation.boolean,
    }

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1.0,
        beta: float = 0.9,
        weight_decay: float = 0.0,
        lower_bound: float = 0.0,
        bias_correction: bool = False,
        estimate_lower_bound: bool = False,
        *,
        foreach: bool | None = None,
        clip_norm: float | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            beta=beta,
            weight_decay=weight_decay,
            lower_bound=lower_bound,
            bias_correction=bias_correction,
            estimate_lower_bound=estimate_lower_bound,
            foreach=foreach,
        )
        super().__init__(params, defaults, clip_norm=clip_norm)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group; it shares the first group's model of the loss (beta, its bound, ...)."""
        super().add_param_group(param_group)
        group, first = self.param_groups[-1], self.param_groups[0]
        group.setdefault("tau", 0.0)
        if group is first:
            first.update(loss_avg=0.0, grad_dot_param=0.0, k=0, lower_bound_estimate=first["lower_bound"])

    def _buffer_names(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("grad_avg",)

    @property
    def effective_lr(self) -> list[float]:
        """Per param group, the step size tau of the last step (0 before the first)."""
        return [float(group["tau"]) for group in self.param_groups]

    @torch.no_grad()
    def step(  # type: ignore[override]
        self, closure: Callable[[], Any] | None = None, *, loss: float | Tensor | None = None
    ) -> Any:
        """One MoMo step from this step's loss (``loss=``) or a closure that returns it.

        Args:
            closure: optional; re-evaluates the model and returns the loss.
            loss: the loss at the current parameters, whose gradients are in ``.grad``: a
                real number or a one-element tensor.

        A loss (or gradient) that is not finite is applied as given, as torch.optim applies a
        non-finite gradient: the step is NaN and so are the parameters after it, which
        ``all_finite()``, ``fit`` and ``minimize`` report (a Polyak step read off such a loss
        once fell back to the full lr, and went on silently). Skipping such steps is a policy,
        for :class:`steepest.lr.SafeStep`, which checks the loss before stepping.
        """
        if closure is not None:
            if loss is not None:
                raise TypeError("pass MoMo.step either the loss or a closure, not both")
            with torch.enable_grad():
                loss = closure()
        if loss is None:
            raise TypeError("MoMo.step needs this step's loss: optimizer.step(loss=loss), or step(closure)")
        self._run_step(validation.scalar("loss", loss, finite=False))
        return loss

    def _step_groups(self, loss: float) -> None:
        """Statistics pass over every group, one synchronisation, the Polyak step, update pass.

        ``loss`` is the step's loss as a float, checked by :meth:`step`.
        """
        first = self.param_groups[0]
        beta, correct = float(first["beta"]), bool(first["bias_correction"])
        per_group = [(group, self._buckets(group)) for group in self.param_groups]
        partials = []
        for group, buckets in per_group:
            for bucket in buckets:
                # Without bias correction the averages start at the first values (d = g).
                weight = beta if correct or not bucket.fresh else 0.0
                partials.append(
                    self._apply(
                        momo_statistics, bucket, ("grad_avg",), {"beta": weight}, group.get("foreach")
                    )
                )
        if not partials:
            return
        at_param, dot, norm = read_totals(partials)
        k = first["k"] + 1
        weight = beta if correct or k > 1 else 0.0
        loss_avg = weight * first["loss_avg"] + (1 - weight) * loss
        gamma = weight * first["grad_dot_param"] + (1 - weight) * at_param
        first.update(loss_avg=loss_avg, grad_dot_param=gamma, k=k)
        rho = 1.0 - beta**k if correct else 1.0
        estimate, floor = bool(first["estimate_lower_bound"]), float(first["lower_bound"])
        for group, buckets in per_group:
            lr, decay = float(group["lr"]), float(group["weight_decay"])
            shrink = 1.0 + lr * decay
            bound = float(first["lower_bound_estimate"]) if estimate else floor
            if estimate:  # MoMo*: a bound above the model's value at this point is lowered
                model = shrink * (loss_avg - gamma) + dot
                if model < shrink * rho * bound:
                    bound = max(model / (2 * shrink * rho), floor)
            gap = shrink * (loss_avg - rho * bound - gamma) + dot
            if math.isfinite(gap) and math.isfinite(norm):
                polyak = max(gap, 0.0) / norm if norm > 0 else 0.0
                tau = min(lr / rho, polyak)
            else:  # a non-finite loss or gradient is applied as given, as torch.optim does:
                tau = math.nan  # the parameters turn non-finite, which a run's guard sees
            group["tau"] = tau
            if estimate:  # the next bound: the model's value after this step
                bound = max((loss_avg + dot - gamma - 0.5 * tau * norm) / rho, floor)
                first["lower_bound_estimate"] = bound
            for bucket in buckets:
                self._advance(group, bucket)
                bucket.share_scalars()
                self._apply(
                    momo_update,
                    bucket,
                    ("grad_avg",),
                    {"step_size": tau, "shrink": shrink},
                    group.get("foreach"),
                )
