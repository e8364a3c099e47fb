"""Schedule-free SGD and AdamW: an average of the iterates replaces the learning-rate schedule.

Three sequences (Defazio et al. 2024): z takes plain gradient steps, x is a weighted running
average of z, and the gradient is evaluated at their interpolation y::

    y_t = b x_t + (1 - b) z_t;   z_{t+1} = z_t - lr g(y_t);   x_{t+1} = (1 - c) x_t + c z_{t+1}

with c = w_{t+1} / sum_i w_i and w_t = t^r lr_max^weight_lr_power. Training evaluates the
model at y, evaluation at x, so the optimizer has a mode: ``optimizer.train()`` before
training steps, ``optimizer.eval()`` before evaluating or saving a model for inference.

Only z (and Adam's second moment) is stored, as in the official package: the parameters
hold y in train mode and x in eval mode, and each is recovered from the other and z by one
interpolation (x = (y - (1-b) z) / b). y itself is updated in place without forming x:
y <- (1-c) y + c z + lr (b (1-c) - 1) g, which is the three lines above, rearranged.
The mode lives in each param group (``train_mode``), so a state_dict records it: a
checkpoint taken in eval mode, loaded and put back in train mode continues exactly as the
original run does after its own ``train()``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from steepest.engine import Optimizer, TensorList, add_scaled, validation
from steepest.engine.optimizer import ParamsT


def has_modes(optimizer: Any) -> bool:
    """Whether ``optimizer`` has train/eval modes (``train()``, ``eval()``, ``training``).

    Duck-typed, so the ``schedulefree`` package's optimizers count too.

    Example:
        >>> has_modes(ScheduleFreeAdamW([torch.zeros(2, requires_grad=True)])), has_modes(object())
        (True, False)
    """
    return (
        callable(getattr(optimizer, "train", None))
        and callable(getattr(optimizer, "eval", None))
        and hasattr(optimizer, "training")
    )


@contextmanager
def evaluation_mode(optimizer: Any) -> Iterator[None]:
    """Inside, the parameters hold the point to evaluate: a schedule-free method's average x.

    An optimizer with modes (:func:`has_modes`) that is training is put in eval mode, and
    back in train mode on leaving, with its train-mode parameters y written back bit for
    bit: ``train()`` alone recomputes y from x and z only up to rounding, and looking at x
    must not change the run (an evaluation an interrupted run makes and the uninterrupted
    one does not must not break a bit-exact resume). Changes made to the parameters inside
    the block are undone. Other optimizers, and one already in eval mode: nothing happens.

    Example:
        >>> with evaluation_mode(optimizer):
        ...     val_loss = loss(model(X_val), y_val)  # at x; training continues at y
    """
    if not has_modes(optimizer) or not optimizer.training:
        yield
        return
    params = [param for group in optimizer.param_groups for param in group["params"]]
    with torch.no_grad():
        train_point = [param.detach().clone() for param in params]
    optimizer.eval()
    try:
        yield
    finally:
        optimizer.train()
        with torch.no_grad():
            for param, kept in zip(params, train_point, strict=True):
                param.copy_(kept)


def _step_interpolated(
    param: Tensor, z: Tensor, direction: Tensor, lr: float, beta: float, average_weight: float
) -> None:
    """y <- (1-c) y + c z + lr (b (1-c) - 1) u;  z <- z - lr u   (u: the step direction)."""
    param.lerp_(z, average_weight)
    param.add_(direction, alpha=lr * (beta * (1 - average_weight) - 1))
    z.sub_(direction, alpha=lr)


def schedulefree_sgd_update(
    param: Tensor,
    grad: Tensor,
    *,
    z: Tensor,
    lr: float,
    momentum: float,
    average_weight: float,
    weight_decay: float,
) -> None:
    """One schedule-free SGD step on y (in ``param``) and z, in place.

    u = g + weight_decay y;  z <- z - lr u;  x <- (1-c) x + c z;  y = b x + (1-b) z
    """
    if weight_decay != 0:
        grad = add_scaled(grad, param, weight_decay)
    _step_interpolated(param, z, grad, lr, momentum, average_weight)


def schedulefree_adamw_update(
    param: Tensor,
    grad: Tensor,
    *,
    z: Tensor,
    exp_avg_sq: Tensor,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    average_weight: float,
    weight_decay: float,
) -> None:
    """One schedule-free AdamW step on y (in ``param``), z and v, in place.

    v <- b2 v + (1-b2) g^2;  u = g / (sqrt(v) + eps) + weight_decay y;  z <- z - lr u;
    x <- (1-c) x + c z;  y = b1 x + (1-b1) z
    """
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    direction = grad.div(exp_avg_sq.sqrt().add_(eps))
    if weight_decay != 0:
        direction.add_(param, alpha=weight_decay)  # decay computed at y
    _step_interpolated(param, z, direction, lr, beta1, average_weight)


def _nonnegative_integer(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


def _open_unit_interval(name: str, value: Any) -> None:
    validation.unit_interval(name, value)
    if value == 0:
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")


class _ScheduleFree(Optimizer):
    """The schedule-free shell: train/eval modes, warm-up and the averaging weights.

    A subclass supplies the rule (``update``), its checks and buffers, ``_interpolation``
    (the b of y = b x + (1-b) z), ``_lr_correction`` and ``_rule_coefficients``.
    """

    # -- what a subclass declares ------------------------------------------------------------
    def _interpolation(self, group: dict[str, Any]) -> float:
        raise NotImplementedError

    def _lr_correction(self, group: dict[str, Any], step: int) -> float:
        """A factor on the scheduled lr at step ``step`` (counted from 1)."""
        return 1.0

    def _rule_coefficients(self, group: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    # -- group state -------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group, in the optimizer's current mode."""
        training = self.training if self.param_groups else True
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        # Kept in the group, as the official package does, so that a state_dict carries it.
        for name, value in dict(
            k=0, train_mode=training, weight_sum=0.0, lr_max=-1.0, scheduled_lr=0.0
        ).items():
            group.setdefault(name, value)

    def _scheduled_lr(self, group: dict[str, Any], k: int) -> float:
        """The lr of step k + 1: linear warm-up over ``warmup_steps``, times the correction."""
        warmup = group["warmup_steps"]
        schedule = (k + 1) / warmup if k < warmup else 1.0
        return group["lr"] * schedule * self._lr_correction(group, k + 1)

    @property
    def effective_lr(self) -> list[float]:
        """Per param group, the lr the next step will use (warm-up and correction included)."""
        return [self._scheduled_lr(group, group["k"]) for group in self.param_groups]

    # -- modes -------------------------------------------------------------------------------
    @property
    def training(self) -> bool:
        """True in train mode (parameters hold y), False in eval mode (they hold x)."""
        return all(group["train_mode"] for group in self.param_groups)

    @torch.no_grad()
    def train(self) -> None:
        """Put y, the point gradients are taken at, in the parameters (no-op in train mode)."""
        for group in self.param_groups:
            if not group["train_mode"]:
                self._move(group, 1 - self._interpolation(group))  # y = x + (1-b) (z - x)
                group["train_mode"] = True

    @torch.no_grad()
    def eval(self) -> None:
        """Put x, the averaged point to evaluate and save, in the parameters (no-op in eval mode)."""
        for group in self.param_groups:
            if group["train_mode"]:
                self._move(group, 1 - 1 / self._interpolation(group))  # x = (y - (1-b) z) / b
                group["train_mode"] = False

    def _move(self, group: dict[str, Any], weight: float) -> None:
        params = [p for p in group["params"] if "z" in self.state.get(p, {})]
        if params:
            TensorList(params).lerp_(TensorList(self.state[p]["z"] for p in params), weight)

    # -- the step ----------------------------------------------------------------------------
    def step(self, closure: Any = None) -> Any:
        """Perform one update (train mode only: gradients must be taken at y)."""
        if not self.training:
            raise RuntimeError(
                f"{type(self).__name__}.step() called in eval mode: call optimizer.train() "
                "before training steps (and optimizer.eval() before evaluating or saving)"
            )
        return super().step(closure)

    def _scalar_state(self, group: dict[str, Any]) -> dict[str, float]:
        return {}  # the step count k is group state, as in the official package

    def _step_group(self, group: dict[str, Any]) -> None:
        """Weights of the average once per group on the CPU, then the rule per bucket.

        The group's clock advances even when none of its parameters has a gradient, as in
        the official package.
        """
        k = group["k"]
        lr = self._scheduled_lr(group, k)
        lr_max = group["lr_max"] = max(lr, group["lr_max"])
        weight = (k + 1) ** group["r"] * lr_max ** group["weight_lr_power"]
        weight_sum = group["weight_sum"] = group["weight_sum"] + weight
        coefficients = dict(
            lr=lr,
            average_weight=weight / weight_sum if weight_sum != 0 else 0.0,
            weight_decay=group["weight_decay"],
            **self._rule_coefficients(group),
        )
        multi_tensor = group.get("foreach")  # None: chosen per device by _apply
        for bucket in self._buckets(group):
            self._apply(type(self).update, bucket, self._buffer_names(group), coefficients, multi_tensor)
        group["scheduled_lr"] = lr
        group["k"] = k + 1

    def _new_buffer(self, name: str, param: Tensor, group: dict[str, Any]) -> Tensor:
        if name == "z":  # z starts where the parameters start
            return param.detach().clone(memory_format=torch.preserve_format)
        return super()._new_buffer(name, param, group)


_COMMON_CHECKS = {
    "lr": validation.nonnegative,
    "weight_decay": validation.nonnegative,
    "warmup_steps": _nonnegative_integer,
    "r": validation.nonnegative,
    "weight_lr_power": validation.nonnegative,
    "maximize": validation.boolean,
}


class ScheduleFreeSGD(_ScheduleFree):
    """Schedule-free SGD: momentum through averaging, no learning-rate schedule to choose.

    z <- z - lr g(y);  x <- (1-c) x + c z;  y = momentum x + (1-momentum) z

    Call ``optimizer.train()`` before training and ``optimizer.eval()`` before evaluating
    or saving the model: the parameters hold y in train mode and the average x in eval mode.

    Args:
        params: tensors or param-group dicts to optimize.
        lr: learning rate of the z sequence (default 1.0).
        momentum: interpolation b between x and z, in (0, 1) (default 0.9).
        weight_decay: L2 penalty, its gradient taken at y (default 0).
        warmup_steps: steps of linear learning-rate warm-up (default 0).
        r: polynomial weighting t^r of the average (default 0).
        weight_lr_power: the average weights the iterates by lr_max^weight_lr_power, so
            warm-up iterates count less (default 2).
        maximize, foreach, clip_norm: as in :class:`~steepest.SGD`.

    Example:
        >>> opt = steepest.ScheduleFreeSGD(model.parameters(), lr=0.5, warmup_steps=100)
        >>> opt.train(); ...; opt.eval()  # evaluate and checkpoint in eval mode

    State: ``z``; per group ``k``, ``train_mode``, ``weight_sum``, ``lr_max``, ``scheduled_lr``.
    Reference: Defazio et al. 2024, "The Road Less Scheduled"; the ``schedulefree``
    package's SGDScheduleFree.
    """

    update = staticmethod(schedulefree_sgd_update)
    _checks = {**_COMMON_CHECKS, "momentum": _open_unit_interval}

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1.0,
        momentum: float = 0.9,
        weight_decay: float = 0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        clip_norm: float | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            r=r,
            weight_lr_power=weight_lr_power,
            maximize=maximize,
            foreach=foreach,
        )
        super().__init__(params, defaults, clip_norm=clip_norm)

    def _buffer_names(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("z",)

    def _interpolation(self, group: dict[str, Any]) -> float:
        return group["momentum"]

    def _rule_coefficients(self, group: dict[str, Any]) -> dict[str, Any]:
        return dict(momentum=group["momentum"])


class ScheduleFreeAdamW(_ScheduleFree):
    """Schedule-free AdamW: Adam's preconditioner on the z sequence, averaging for momentum.

    z <- z - lr (g(y) / (sqrt(v) + eps) + weight_decay y);  x <- (1-c) x + c z;
    y = b1 x + (1-b1) z

    Call ``optimizer.train()`` before training and ``optimizer.eval()`` before evaluating
    or saving the model: the parameters hold y in train mode and the average x in eval mode.

    Args:
        params: tensors or param-group dicts to optimize.
        lr: learning rate (default 0.0025); the step uses lr * sqrt(1 - b2^t), Adam's bias
            correction folded into the rate.
        betas: interpolation b1 in (0, 1) and the second moment's decay b2 (default (0.9, 0.999)).
        eps: added to the denominator (default 1e-8).
        weight_decay: decoupled weight decay, computed at y (default 0).
        warmup_steps: steps of linear learning-rate warm-up (default 0).
        r: polynomial weighting t^r of the average (default 0).
        weight_lr_power: the average weights the iterates by lr_max^weight_lr_power, so
            warm-up iterates count less (default 2).
        maximize, foreach, clip_norm: as in :class:`~steepest.Adam`.

    Example:
        >>> opt = steepest.ScheduleFreeAdamW(model.parameters(), lr=1e-3, warmup_steps=200)
        >>> opt.train(); ...; opt.eval()  # evaluate and checkpoint in eval mode

    State: ``z``, ``exp_avg_sq``; per group ``k``, ``train_mode``, ``weight_sum``, ``lr_max``,
    ``scheduled_lr``.
    This is the paper's algorithm, the ``schedulefree`` package's ``AdamWScheduleFreePaper``
    (its ``AdamWScheduleFree`` before version 1.3), to rounding. Since 1.3 the package's
    ``AdamWScheduleFree`` divides v by Adam's bias correction instead of folding it into the
    rate, so its averaging weights (lr_max) and its weight decay use lr itself: early in a run,
    and with weight decay, the two take different steps (10-15% apart in the parameters after 40
    steps at lr 0.05).

    Reference: Defazio et al. 2024, "The Road Less Scheduled" (Algorithm 1); the
    ``schedulefree`` package's AdamWScheduleFreePaper.
    """

    update = staticmethod(schedulefree_adamw_update)
    _checks = {**_COMMON_CHECKS, "betas": validation.betas, "eps": validation.positive}

    def __init__(
        self,
        params: ParamsT,
        lr: float = 0.0025,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
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
            warmup_steps=warmup_steps,
            r=r,
            weight_lr_power=weight_lr_power,
            maximize=maximize,
            foreach=foreach,
        )
        super().__init__(params, defaults, clip_norm=clip_norm)

    def _check_group(self, group: dict[str, Any]) -> None:
        betas = group.get("betas")
        if isinstance(betas, (tuple, list)) and betas and betas[0] == 0:
            raise ValueError(
                "betas[0] must be in (0, 1) for schedule-free AdamW (x is recovered as "
                f"(y - (1 - b1) z) / b1), got {betas[0]!r}"
            )

    def _buffer_names(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("z", "exp_avg_sq")

    def _interpolation(self, group: dict[str, Any]) -> float:
        return group["betas"][0]

    def _lr_correction(self, group: dict[str, Any], step: int) -> float:
        return math.sqrt(1 - group["betas"][1] ** step)

    def _rule_coefficients(self, group: dict[str, Any]) -> dict[str, Any]:
        beta1, beta2 = group["betas"]
        return dict(beta1=beta1, beta2=beta2, eps=group["eps"])
