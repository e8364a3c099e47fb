"""Readable per-tensor references of the official learning-rate-free and schedule-free algorithms.

Written from the official code (``prodigyopt``'s Prodigy, ``dadaptation``'s DAdaptAdam and
DAdaptSGD version 3, ``schedulefree``'s ``*_reference.py``): loops over tensors, Python-float
accumulation with ``.item()``, the x, y and z sequences kept explicitly.

Each reference has the signature ``reference(params, grads, states, **hyperparameters)`` of
the spec table (``tests/specs.py``): one call is one step of one param group. ``states`` holds
what the optimizer also stores per tensor (compared key by key); what only the reference
keeps (group-level d and counters, schedule-free's x and y) lives in weak dictionaries keyed
by the tensors themselves (read it with ``reference_group_state`` and ``reference_sequences``),
so a fresh set of tensors starts a fresh run. A module of its own, so that both ``specs.py``
and ``test_lr_free.py`` (which reads the spec table) can import it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils.weak import WeakIdKeyDictionary

# What a reference keeps besides the per-tensor state: per group (keyed by its first tensor)
# and per tensor (schedule-free's x and y).
_GROUP_MEMORY: WeakIdKeyDictionary = WeakIdKeyDictionary()
_TENSOR_MEMORY: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _memory(memory: WeakIdKeyDictionary, tensor: torch.Tensor, **initial: Any) -> dict[str, Any]:
    if tensor not in memory:
        memory[tensor] = dict(initial)
    return memory[tensor]


def reference_group_state(params: list[torch.Tensor]) -> dict[str, Any]:
    """The group-level values (d, k, ...) a reference keeps for the group led by params[0]."""
    return _GROUP_MEMORY[params[0]]


def reference_sequences(param: torch.Tensor) -> dict[str, torch.Tensor]:
    """Schedule-free's x and y, as the reference keeps them for ``param``."""
    return _TENSOR_MEMORY[param]


# -- references, written from the official code ------------------------------------------------
def prodigy_reference(
    params: list[torch.Tensor],
    grads: list[torch.Tensor | None],
    states: list[dict[str, torch.Tensor]],
    *,
    lr: float = 1.0,
    betas: tuple[float, float] = (0.9, 0.999),
    beta3: float | None = None,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decouple: bool = True,
    use_bias_correction: bool = False,
    safeguard_warmup: bool = False,
    d0: float = 1e-6,
    d_coef: float = 1.0,
    growth_rate: float = math.inf,
    maximize: bool = False,
) -> None:
    """One step of prodigyopt's Prodigy on one param group (its loop, one group at a time)."""
    group = _memory(_GROUP_MEMORY, params[0], d=d0, d_max=d0, d_numerator=0.0, k=0)
    beta1, beta2 = betas
    beta3 = math.sqrt(beta2) if beta3 is None else beta3
    k, d, d_max = group["k"], group["d"], group["d_max"]
    bias_correction = (1 - beta2 ** (k + 1)) ** 0.5 / (1 - beta1 ** (k + 1)) if use_bias_correction else 1
    dlr = d * lr * bias_correction
    d_numerator = group["d_numerator"] * beta3
    delta_numerator = 0.0
    d_denom = 0.0
    if lr == 0:
        return
    active = []
    for p, grad, state in zip(params, grads, states):
        if grad is None:
            continue
        grad = -grad if maximize else grad
        if weight_decay != 0 and not decouple:
            grad = grad + weight_decay * p
        if "step" not in state:
            state["step"] = torch.tensor(0.0)
            state["s"] = torch.zeros_like(p)
            state["p0"] = p.detach().clone()
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        delta_numerator += (d / d0) * dlr * torch.dot(grad.flatten(), (state["p0"] - p).flatten()).item()
        if beta1 > 0:
            state["exp_avg"].mul_(beta1).add_(grad, alpha=d * (1 - beta1))
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=d * d * (1 - beta2))
        s_scale = (d / d0) * d if safeguard_warmup else (d / d0) * dlr
        state["s"].mul_(beta3).add_(grad, alpha=s_scale)
        d_denom += state["s"].abs().sum().item()
        active.append((p, grad, state))
    if d_denom == 0:
        return
    d_numerator = d_numerator + delta_numerator
    d_hat = d_coef * d_numerator / d_denom
    if d == d0:
        d = max(d, d_hat)
    d_max = max(d_max, d_hat)
    d = min(d_max, d * growth_rate)
    group.update(d_numerator=d_numerator, d_denom=d_denom, d=d, d_max=d_max, d_hat=d_hat)
    for p, grad, state in active:
        state["step"] += 1
        denom = state["exp_avg_sq"].sqrt().add_(d * eps)
        if weight_decay != 0 and decouple:
            p.add_(p, alpha=-weight_decay * dlr)
        if beta1 > 0:
            p.addcdiv_(state["exp_avg"], denom, value=-dlr)
        else:  # no exp_avg: a step along g, with the d just estimated
            p.addcdiv_(grad, denom, value=-dlr * d)
    group["k"] = k + 1


def dadapt_adam_reference(
    params: list[torch.Tensor],
    grads: list[torch.Tensor | None],
    states: list[dict[str, torch.Tensor]],
    *,
    lr: float = 1.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decouple: bool = False,
    use_bias_correction: bool = False,
    d0: float = 1e-6,
    growth_rate: float = math.inf,
    maximize: bool = False,
) -> None:
    """One step of dadaptation's DAdaptAdam (version 3) on one param group."""
    group = _memory(_GROUP_MEMORY, params[0], d=d0, numerator_weighted=0.0, k=0)
    beta1, beta2 = betas
    k, d = group["k"], group["d"]
    bias_correction = (1 - beta2 ** (k + 1)) ** 0.5 / (1 - beta1 ** (k + 1)) if use_bias_correction else 1
    dlr = d * lr * bias_correction
    sqrt_beta2 = beta2**0.5
    numerator_acum = 0.0
    sk_l1 = 0.0
    if lr == 0:
        return
    active = []
    for p, grad, state in zip(params, grads, states):
        if grad is None:
            continue
        grad = -grad if maximize else grad
        if weight_decay != 0 and not decouple:
            grad = grad + weight_decay * p
        if "step" not in state:
            state["step"] = torch.tensor(0.0)
            state["s"] = torch.zeros_like(p)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        exp_avg, exp_avg_sq, s = state["exp_avg"], state["exp_avg_sq"], state["s"]
        denom = exp_avg_sq.sqrt().add_(eps)
        numerator_acum += dlr * torch.dot(grad.flatten(), s.div(denom).flatten()).item()
        exp_avg.mul_(beta1).add_(grad, alpha=dlr * (1 - beta1))
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        s.mul_(sqrt_beta2).add_(grad, alpha=dlr * (1 - sqrt_beta2))
        sk_l1 += s.abs().sum().item()
        active.append((p, state))
    if sk_l1 == 0:
        return
    numerator_weighted = sqrt_beta2 * group["numerator_weighted"] + (1 - sqrt_beta2) * numerator_acum
    d_hat = numerator_weighted / ((1 - sqrt_beta2) * sk_l1)
    d = max(d, min(d_hat, d * growth_rate))
    group.update(numerator_weighted=numerator_weighted, d=d)
    for p, state in active:
        state["step"] += 1
        denom = state["exp_avg_sq"].sqrt().add_(eps)
        if weight_decay != 0 and decouple:
            p.add_(p, alpha=-weight_decay * dlr)
        p.addcdiv_(state["exp_avg"], denom, value=-1)
    group["k"] = k + 1


def dadapt_sgd_reference(
    params: list[torch.Tensor],
    grads: list[torch.Tensor | None],
    states: list[dict[str, torch.Tensor]],
    *,
    lr: float = 1.0,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    d0: float = 1e-6,
    growth_rate: float = math.inf,
    maximize: bool = False,
) -> None:
    """One step of dadaptation's DAdaptSGD (version 3) on one param group.

    The package also stores z; it is x0 - s whenever it is used, so here it is a temporary.
    """
    group = _memory(_GROUP_MEMORY, params[0], d=d0, numerator_weighted=0.0, g0_norm=0.0, k=0)
    ck = 1 - momentum
    k, d = group["k"], group["d"]
    if lr == 0:
        return
    if k == 0:  # ||g_0||, without the L2 term (the package's grad.add, not grad.add_)
        g_sq = 0.0
        for grad in grads:
            if grad is not None:
                g_sq += (grad * grad).sum().item()
        group["g0_norm"] = math.sqrt(g_sq)
    dlr = d * lr / group["g0_norm"]
    numerator_weighted = group["numerator_weighted"]
    sk_sq = 0.0
    active = []
    for p, grad, state in zip(params, grads, states):
        if grad is None:
            continue
        grad = -grad if maximize else grad
        if "step" not in state:
            state["step"] = torch.tensor(0.0)
            state["s"] = torch.zeros_like(p)
            state["x0"] = p.detach().clone()
        if weight_decay != 0:
            grad = grad + weight_decay * p
        s = state["s"]
        numerator_weighted += dlr * torch.dot(grad.flatten(), s.flatten()).item()
        s.add_(grad, alpha=dlr)
        sk_sq += (s * s).sum().item()
        active.append((p, state))
    d_hat = 2 * numerator_weighted / math.sqrt(sk_sq)
    d = max(d, min(d_hat, d * growth_rate))
    group.update(numerator_weighted=numerator_weighted, d=d)
    for p, state in active:
        state["step"] += 1
        z = state["x0"] - state["s"]
        p.mul_(1 - ck).add_(z, alpha=ck)
    group["k"] = k + 1


def _schedule_free_weights(
    group: dict[str, Any], lr: float, warmup_steps: int, r: float, weight_lr_power: float, correction: float
) -> tuple[float, float]:
    """The reference's scheduled lr and averaging weight c_{k+1}; advances the group's sums."""
    k = group["k"]
    schedule = (k + 1) / warmup_steps if k < warmup_steps else 1.0
    lr = lr * schedule * correction
    group["lr_max"] = max(lr, group["lr_max"])
    weight = (k + 1) ** r * group["lr_max"] ** weight_lr_power
    group["weight_sum"] += weight
    try:
        ckp1 = weight / group["weight_sum"]
    except ZeroDivisionError:
        ckp1 = 0
    return lr, ckp1


def schedulefree_sgd_reference(
    params: list[torch.Tensor],
    grads: list[torch.Tensor | None],
    states: list[dict[str, torch.Tensor]],
    *,
    lr: float = 1.0,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    r: float = 0.0,
    weight_lr_power: float = 2.0,
    maximize: bool = False,
) -> None:
    """One step of schedulefree's SGDScheduleFreeReference on one param group (x, y, z explicit)."""
    group = _memory(_GROUP_MEMORY, params[0], k=0, weight_sum=0.0, lr_max=-1.0)
    lr, ckp1 = _schedule_free_weights(group, lr, warmup_steps, r, weight_lr_power, 1.0)
    for p, grad, state in zip(params, grads, states):
        if grad is None:
            continue
        grad = -grad if maximize else grad
        if "z" not in state:
            state["z"] = p.detach().clone()
            _memory(_TENSOR_MEMORY, p, x=p.detach().clone(), y=p.detach().clone())
        sequences = _TENSOR_MEMORY[p]
        z, x, y = state["z"], sequences["x"], sequences["y"]
        if weight_decay != 0:
            grad = grad + weight_decay * y
        z.sub_(grad, alpha=lr)
        x.mul_(1 - ckp1).add_(z, alpha=ckp1)
        y.copy_(x.mul(momentum).add_(z, alpha=1 - momentum))
        p.copy_(y)
    group["k"] += 1


def schedulefree_adamw_reference(
    params: list[torch.Tensor],
    grads: list[torch.Tensor | None],
    states: list[dict[str, torch.Tensor]],
    *,
    lr: float = 0.0025,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    r: float = 0.0,
    weight_lr_power: float = 2.0,
    maximize: bool = False,
) -> None:
    """One step of the paper's schedule-free AdamW (Algorithm 1: Adam's bias correction folded
    into the rate, and so into lr_max) on one param group: schedulefree's AdamWScheduleFreePaper,
    and its AdamWScheduleFreeReference before version 1.3."""
    group = _memory(_GROUP_MEMORY, params[0], k=0, weight_sum=0.0, lr_max=-1.0)
    beta1, beta2 = betas
    correction = math.sqrt(1 - beta2 ** (group["k"] + 1))
    lr, ckp1 = _schedule_free_weights(group, lr, warmup_steps, r, weight_lr_power, correction)
    for p, grad, state in zip(params, grads, states):
        if grad is None:
            continue
        grad = -grad if maximize else grad
        if "z" not in state:
            state["z"] = p.detach().clone()
            state["exp_avg_sq"] = torch.zeros_like(p)
            _memory(_TENSOR_MEMORY, p, x=p.detach().clone(), y=p.detach().clone())
        sequences = _TENSOR_MEMORY[p]
        z, x, y, exp_avg_sq = state["z"], sequences["x"], sequences["y"], state["exp_avg_sq"]
        if weight_decay != 0:
            z.sub_(y, alpha=lr * weight_decay)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = exp_avg_sq.sqrt().add_(eps)
        z.addcdiv_(grad, denom, value=-lr)
        x.mul_(1 - ckp1).add_(z, alpha=ckp1)
        y.copy_(x.mul(beta1).add_(z, alpha=1 - beta1))
        p.copy_(y)
    group["k"] += 1
