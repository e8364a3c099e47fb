"""Learning-rate-free (Prodigy, D-Adapt Adam and SGD) and schedule-free (SGD, AdamW) optimizers.

The anchor is a readable per-tensor reference of each official algorithm, written here from
the official code (``prodigyopt``'s Prodigy, ``dadaptation``'s DAdaptAdam and DAdaptSGD version 3,
``schedulefree``'s ``*_reference.py``): loops over tensors, Python-float accumulation with
``.item()``, the x, y and z sequences kept explicitly. The steepest versions must follow them
in float64 to 1e-10 relative, per tensor and multi-tensor. Then: checkpoints, train/eval
modes, the reported effective learning rate, descent without tuning, and a small "no
learning rate to choose" check on an MLP.

Each reference has the signature ``reference(params, grads, states, **hyperparameters)`` of
the spec table (``tests/specs.py``): one call is one step of one param group. ``states`` holds
what the optimizer also stores per tensor (compared key by key); what only the reference
keeps (group-level d and counters, schedule-free's x and y) lives in weak dictionaries keyed
by the tensors themselves (read it with ``reference_group_state`` and ``reference_sequences``),
so a fresh set of tensors starts a fresh run. This module imports neither
``specs`` nor ``test_optimizers``, so ``specs.py`` can import the references from here.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.utils.weak import WeakIdKeyDictionary

import steepest.rules.dadapt as dadapt_module
from problem import (  # the shared test problem
    FROZEN,
    GROUP_MEMBERS,
    clone_params,
    groups,
    make_params,
    max_relative_difference,
    run,
    set_gradients,
)
from steepest.rules.dadapt import DAdaptAdam, DAdaptSGD
from steepest.rules.prodigy import Prodigy
from steepest.rules.schedulefree import ScheduleFreeAdamW, ScheduleFreeSGD

RTOL = 1e-10

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
        state["exp_avg"].mul_(beta1).add_(grad, alpha=d * (1 - beta1))
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=d * d * (1 - beta2))
        s_scale = (d / d0) * d if safeguard_warmup else (d / d0) * dlr
        state["s"].mul_(beta3).add_(grad, alpha=s_scale)
        d_denom += state["s"].abs().sum().item()
        active.append((p, state))
    if d_denom == 0:
        return
    d_numerator = d_numerator + delta_numerator
    d_hat = d_coef * d_numerator / d_denom
    if d == d0:
        d = max(d, d_hat)
    d_max = max(d_max, d_hat)
    d = min(d_max, d * growth_rate)
    group.update(d_numerator=d_numerator, d_denom=d_denom, d=d, d_max=d_max, d_hat=d_hat)
    for p, state in active:
        state["step"] += 1
        denom = state["exp_avg_sq"].sqrt().add_(d * eps)
        if weight_decay != 0 and decouple:
            p.add_(p, alpha=-weight_decay * dlr)
        p.addcdiv_(state["exp_avg"], denom, value=-dlr)
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
    """One step of schedulefree's AdamWScheduleFreeReference on one param group."""
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


# -- the table these tests run over (and the rows proposed for specs.py) --------------------------
# The configurations keep d * lr moderate on the test problem (gradient sin(3 theta) + noise).
# At larger steps the iterates jump between the wells of cos(3 theta) and the dynamics turn
# chaotic: D-Adapt Adam at lr >= 0.5 estimates d ~ 1-4, and a one-ulp difference in d (the
# order in which the per-tensor sums are added) then grows about tenfold per step. That is a
# property of the problem, not of either implementation, so such runs cannot be compared at
# 1e-10; the configurations below agree to ~1e-12 on several problem instances.
CASES: dict[str, dict[str, Any]] = {
    "Prodigy": dict(
        cls=Prodigy,
        reference=prodigy_reference,
        configs=(
            {"lr": 1.0},
            {
                "lr": 1.0,
                "weight_decay": 0.1,
                "decouple": False,
                "use_bias_correction": True,
                "growth_rate": 1.1,
            },
            {"lr": 0.5, "weight_decay": 0.1, "safeguard_warmup": True, "beta3": 0.9, "growth_rate": 1.5},
            {"lr": 1.0, "betas": (0.8, 0.99), "d0": 1e-3, "d_coef": 0.5, "maximize": True},
        ),
        group_override={"lr": 0.5, "betas": (0.5, 0.9), "d0": 1e-4},
        group_keys=("d", "d_max", "d_numerator", "d_denom", "d_hat", "k"),
    ),
    "DAdaptAdam": dict(
        cls=DAdaptAdam,
        reference=dadapt_adam_reference,
        configs=(
            {"lr": 0.3},
            {"lr": 1.0, "weight_decay": 0.1, "use_bias_correction": True},
            {"lr": 0.5, "weight_decay": 0.1, "decouple": True, "growth_rate": 1.5},
            {"lr": 1.0, "betas": (0.8, 0.99), "d0": 1e-3, "maximize": True},
        ),
        group_override={"lr": 0.5, "betas": (0.5, 0.9), "d0": 1e-4},
        group_keys=("d", "numerator_weighted", "k"),
    ),
    "DAdaptSGD": dict(
        cls=DAdaptSGD,
        reference=dadapt_sgd_reference,
        configs=(
            {"lr": 1.0, "momentum": 0.9},
            {"lr": 0.5},
            {"lr": 1.0, "momentum": 0.8, "weight_decay": 0.1, "growth_rate": 1.5},
            {"lr": 0.3, "momentum": 0.5, "d0": 1e-3, "maximize": True},
        ),
        group_override={"lr": 0.5, "momentum": 0.5, "d0": 1e-4},
        group_keys=("d", "numerator_weighted", "g0_norm", "k"),
    ),
    "ScheduleFreeSGD": dict(
        cls=ScheduleFreeSGD,
        reference=schedulefree_sgd_reference,
        configs=(
            {"lr": 0.1},
            {"lr": 0.1, "momentum": 0.5, "weight_decay": 0.01, "warmup_steps": 5},
            {"lr": 0.05, "r": 1.0, "weight_lr_power": 0.0, "maximize": True},
        ),
        group_override={"lr": 0.02, "momentum": 0.8},
        group_keys=("k", "weight_sum", "lr_max"),
    ),
    "ScheduleFreeAdamW": dict(
        cls=ScheduleFreeAdamW,
        reference=schedulefree_adamw_reference,
        configs=(
            {"lr": 0.01},
            {"lr": 0.01, "weight_decay": 0.1, "warmup_steps": 5, "betas": (0.8, 0.99)},
            {"lr": 0.01, "r": 0.5, "weight_lr_power": 1.0, "eps": 1e-6, "maximize": True},
        ),
        group_override={"lr": 0.003, "betas": (0.5, 0.9)},
        group_keys=("k", "weight_sum", "lr_max"),
    ),
}
SCHEDULE_FREE = ("ScheduleFreeSGD", "ScheduleFreeAdamW")
LR_FREE = ("Prodigy", "DAdaptAdam")


def all_configs(names: tuple[str, ...] = tuple(CASES)) -> list:
    return [
        pytest.param(name, config, id=f"{name}-{index}")
        for name in names
        for index, config in enumerate(CASES[name]["configs"])
    ]


def relative_difference(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


def assert_params_close(ours: list[torch.Tensor], theirs: list[torch.Tensor], rtol: float) -> None:
    for index, (a, b) in enumerate(zip(ours, theirs)):
        difference = max_relative_difference(a, b)
        assert difference <= rtol, f"param {index}: max relative difference {difference:.3g}"


def make_optimizer(name: str, params: list[torch.Tensor], config: dict, **options: Any):
    case = CASES[name]
    return case["cls"](groups(params, case["group_override"]), **config, **options)


# -- correctness against the references -----------------------------------------------------------
@pytest.mark.parametrize("foreach", [False, True], ids=["per_tensor", "multi_tensor"])
@pytest.mark.parametrize(("name", "config"), all_configs())
def test_matches_official_reference_float64(name: str, config: dict, foreach: bool) -> None:
    case = CASES[name]
    ours_params, reference_params = make_params(), make_params()
    ours = make_optimizer(name, ours_params, config, foreach=foreach)
    reference_states: list[dict] = [{} for _ in reference_params]
    for step in range(25):
        set_gradients(ours_params, step)
        set_gradients(reference_params, step)
        ours.step()
        with torch.no_grad():
            for index, members in enumerate(GROUP_MEMBERS):
                settings = {**config, **(case["group_override"] if index else {})}
                case["reference"](
                    [reference_params[i] for i in members],
                    [reference_params[i].grad for i in members],
                    [reference_states[i] for i in members],
                    **settings,
                )
        assert_params_close(ours_params, reference_params, RTOL)
        for index, members in enumerate(GROUP_MEMBERS):
            expected = reference_group_state([reference_params[i] for i in members])
            for key in case["group_keys"]:
                got = ours.param_groups[index][key]
                assert relative_difference(got, expected[key]) <= RTOL, (step, index, key)
    for p, reference_state in zip(ours_params, reference_states):
        assert set(ours.state.get(p, {})) == set(reference_state)
        for key, value in reference_state.items():
            assert max_relative_difference(ours.state[p][key], value) <= RTOL, key
    assert ours_params[FROZEN] not in ours.state
    # the trajectory moved: a comparison of two frozen runs would prove nothing
    assert max_relative_difference(ours_params[2], make_params()[2]) > 1e-3


@pytest.mark.parametrize(("name", "config"), all_configs())
def test_multi_tensor_equals_per_tensor(name: str, config: dict) -> None:
    per_tensor_params, multi_tensor_params = make_params(), make_params()
    per_tensor = make_optimizer(name, per_tensor_params, config, foreach=False)
    multi_tensor = make_optimizer(name, multi_tensor_params, config, foreach=True)
    run(per_tensor, per_tensor_params, 20)
    run(multi_tensor, multi_tensor_params, 20)
    # The statistics passes sum per tensor, then over tensors, in different orders: 1e-12.
    assert_params_close(multi_tensor_params, per_tensor_params, 1e-12)
    for a, b in zip(multi_tensor_params, per_tensor_params):
        for key, value in per_tensor.state.get(b, {}).items():
            assert max_relative_difference(multi_tensor.state[a][key], value) <= 1e-12, key
    for ours, theirs in zip(multi_tensor.param_groups, per_tensor.param_groups):
        for key in CASES[name]["group_keys"]:
            assert relative_difference(ours[key], theirs[key]) <= 1e-12, key


def test_one_synchronisation_per_group_and_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """The statistics of all buckets of a group are read together, once per step."""
    calls = []
    original = dadapt_module.read_totals

    def counting(partials: list[torch.Tensor]) -> list[float]:
        calls.append(len(partials))
        return original(partials)

    monkeypatch.setattr(dadapt_module, "read_totals", counting)
    params = make_params()
    params[1].data = params[1].data.float()  # a second bucket (dtype) in the first group
    optimizer = Prodigy(groups(params, {}))
    run(optimizer, params, 3)
    assert calls == [2, 1] * 3


# -- checkpoints ------------------------------------------------------------------------------------
def _save_and_load(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> dict:
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "params": [p.detach() for p in params]}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # plain tensors and containers only


def _assert_identical(
    ours: torch.optim.Optimizer, ours_params: list, theirs: torch.optim.Optimizer, theirs_params: list
) -> None:
    for a, b in zip(ours_params, theirs_params):
        assert a.dtype == b.dtype and torch.equal(a, b)
    for a, b in zip(ours_params, theirs_params):
        for key, value in theirs.state.get(b, {}).items():
            assert torch.equal(ours.state[a][key], value), key
    for ours_group, theirs_group in zip(ours.param_groups, theirs.param_groups):
        assert {k: v for k, v in ours_group.items() if k != "params"} == {
            k: v for k, v in theirs_group.items() if k != "params"
        }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("name", "config"), all_configs())
def test_checkpoint_resumes_bit_identically(name: str, config: dict, dtype: torch.dtype) -> None:
    params = make_params(dtype)
    optimizer = make_optimizer(name, params, config)
    run(optimizer, params, 7)
    checkpoint = _save_and_load(optimizer, params)
    resumed_params = clone_params(checkpoint["params"])
    resumed = make_optimizer(name, resumed_params, config)
    resumed.load_state_dict(checkpoint["optimizer"])
    run(optimizer, params, 8, start=7)
    run(resumed, resumed_params, 8, start=7)
    _assert_identical(resumed, resumed_params, optimizer, params)


# -- schedule-free: train and eval modes ------------------------------------------------------------
@pytest.mark.parametrize(("name", "config"), all_configs(SCHEDULE_FREE))
def test_eval_puts_the_average_x_in_the_params_and_train_restores_y(name: str, config: dict) -> None:
    case = CASES[name]
    params, reference_params = make_params(), make_params()
    optimizer = make_optimizer(name, params, config)
    reference_states: list[dict] = [{} for _ in reference_params]
    for step in range(12):
        set_gradients(params, step)
        set_gradients(reference_params, step)
        optimizer.step()
        with torch.no_grad():
            for index, members in enumerate(GROUP_MEMBERS):
                settings = {**config, **(case["group_override"] if index else {})}
                case["reference"](
                    [reference_params[i] for i in members],
                    [reference_params[i].grad for i in members],
                    [reference_states[i] for i in members],
                    **settings,
                )
    active = [i for i in range(len(params)) if i != FROZEN]
    y = [params[i].detach().clone() for i in active]
    frozen = params[FROZEN].detach().clone()
    assert optimizer.training
    optimizer.eval()
    assert not optimizer.training
    # x is recovered from y and z by one interpolation, so it equals the reference's x to
    # rounding (the interpolation weight 1 - 1/b amplifies it by at most 1/b).
    x = [reference_sequences(reference_params[i])["x"] for i in active]
    assert_params_close([params[i] for i in active], x, RTOL)
    assert max(max_relative_difference(params[i], y_i) for i, y_i in zip(active, y)) > 1e-3  # x != y
    assert torch.equal(params[FROZEN], frozen)  # no state, nothing to move
    in_eval = [p.detach().clone() for p in params]
    optimizer.eval()  # idempotent
    for p, q in zip(params, in_eval):
        assert torch.equal(p, q)
    optimizer.train()
    assert optimizer.training
    assert_params_close([params[i] for i in active], y, 1e-12)  # y again, to rounding
    in_train = [p.detach().clone() for p in params]
    optimizer.train()  # idempotent
    for p, q in zip(params, in_train):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name", SCHEDULE_FREE)
def test_step_in_eval_mode_is_refused(name: str) -> None:
    params = make_params()
    optimizer = make_optimizer(name, params, CASES[name]["configs"][0])
    run(optimizer, params, 2)
    optimizer.eval()
    before = [p.detach().clone() for p in params]
    with pytest.raises(RuntimeError, match=r"eval mode.*train\(\)"):
        run(optimizer, params, 1)
    for p, q in zip(params, before):
        assert torch.equal(p, q)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("name", "config"), all_configs(SCHEDULE_FREE))
def test_checkpoint_taken_in_eval_mode_continues_identically(name: str, config: dict, dtype) -> None:
    params = make_params(dtype)
    optimizer = make_optimizer(name, params, config)
    run(optimizer, params, 7)
    optimizer.eval()  # evaluate, then save the model (x) and the optimizer
    checkpoint = _save_and_load(optimizer, params)
    resumed_params = clone_params(checkpoint["params"])
    resumed = make_optimizer(name, resumed_params, config)
    assert resumed.training
    resumed.load_state_dict(checkpoint["optimizer"])
    assert not resumed.training  # the mode travelled with the state_dict
    _assert_identical(resumed, resumed_params, optimizer, params)
    for opt, ps in ((optimizer, params), (resumed, resumed_params)):
        opt.train()
        run(opt, ps, 8, start=7)
    _assert_identical(resumed, resumed_params, optimizer, params)


def test_a_new_param_group_joins_in_the_current_mode() -> None:
    x = torch.ones(3, requires_grad=True)
    optimizer = ScheduleFreeAdamW([x], lr=0.1)
    x.grad = torch.ones(3)
    optimizer.step()
    optimizer.eval()
    late = torch.ones(2, requires_grad=True)
    optimizer.add_param_group({"params": [late]})
    assert not optimizer.training and optimizer.param_groups[1]["train_mode"] is False
    optimizer.train()
    assert optimizer.training and torch.equal(late, torch.ones(2))


# -- effective learning rate --------------------------------------------------------------------
def quadratic(x: torch.Tensor) -> torch.Tensor:
    """0.5 x^T A x with eigenvalues from 1 to 10; minimum 0 at the origin."""
    scales = torch.linspace(1.0, 10.0, x.numel(), dtype=x.dtype)
    return 0.5 * (scales * x * x).sum()


def rosenbrock(x: torch.Tensor) -> torch.Tensor:
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


def minimize(
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    objective: Callable,
    steps: int,
    record: Callable[[], Any] | None = None,
) -> list:
    records = []
    for _ in range(steps):
        optimizer.zero_grad()
        objective(x).backward()
        optimizer.step()
        if record is not None:
            records.append(record())
    return records


@pytest.mark.parametrize("name", LR_FREE)
def test_effective_lr_grows_from_d0_on_a_quadratic(name: str) -> None:
    x = torch.ones(10, dtype=torch.float64, requires_grad=True)
    lr = 0.5
    optimizer = CASES[name]["cls"]([x], lr=lr)
    assert optimizer.effective_lr == [1e-6 * lr]  # d0 * lr before the first step
    history = minimize(optimizer, x, quadratic, 100, lambda: optimizer.effective_lr[0])
    assert all(b >= a for a, b in zip(history, history[1:]))  # d never decreases
    assert history[-1] > 1e4 * 1e-6 * lr  # it found a step size of the problem's scale
    assert history[-1] == optimizer.param_groups[0]["d"] * lr
    assert 0.01 < history[-1] < 10  # ... and not an absurd one: the distance here is ~3


def test_effective_lr_includes_bias_correction() -> None:
    x = torch.ones(3, dtype=torch.float64, requires_grad=True)
    optimizer = Prodigy([x], lr=2.0, betas=(0.9, 0.99), use_bias_correction=True)
    minimize(optimizer, x, quadratic, 5)
    d = optimizer.param_groups[0]["d"]
    expected = d * 2.0 * math.sqrt(1 - 0.99**6) / (1 - 0.9**6)
    assert optimizer.effective_lr == [pytest.approx(expected, rel=1e-15)]


def test_dadapt_sgd_effective_lr_is_d_lr_over_the_first_gradient_norm() -> None:
    """Unknown (nan) until ||g_0|| is, then d * lr / ||g_0||, never decreasing."""
    x = torch.ones(10, dtype=torch.float64, requires_grad=True)
    optimizer = DAdaptSGD([x], lr=0.5, momentum=0.9)
    assert math.isnan(optimizer.effective_lr[0])
    g0_norm = float(torch.linspace(1.0, 10.0, 10, dtype=torch.float64).norm())  # grad of quadratic at 1
    history = minimize(optimizer, x, quadratic, 100, lambda: optimizer.effective_lr[0])
    group = optimizer.param_groups[0]
    assert group["g0_norm"] == pytest.approx(g0_norm, rel=1e-15)
    assert history[0] == 1e-6 * 0.5 / group["g0_norm"]  # d0 * lr / ||g_0|| after one step
    assert all(b >= a for a, b in zip(history, history[1:]))
    assert history[-1] == group["d"] * 0.5 / group["g0_norm"]
    # heavy ball at (1 - momentum) * effective_lr: stable on curvature <= 10 below 2 (1 + 0.9) / 10
    assert 0.01 < 0.1 * history[-1] < 0.38


def test_dadapt_sgd_at_a_fixed_d_is_heavy_ball_sgd() -> None:
    """growth_rate=1 freezes d at d0: then the iterates are torch's SGD with momentum, at the
    rate (1 - momentum) d0 lr / ||g_0||, as primal averaging and heavy ball coincide."""
    start = torch.linspace(-1.0, 2.0, 10, dtype=torch.float64)
    ours_x, torch_x = start.clone().requires_grad_(), start.clone().requires_grad_()
    ours = DAdaptSGD([ours_x], lr=0.5, momentum=0.9, d0=0.3, growth_rate=1.0)
    quadratic(torch_x).backward()
    rate = 0.1 * 0.3 * 0.5 / float(torch_x.grad.norm())
    theirs = torch.optim.SGD([torch_x], lr=rate, momentum=0.9)
    minimize(ours, ours_x, quadratic, 60)
    minimize(theirs, torch_x, quadratic, 60)
    assert ours.param_groups[0]["d"] == 0.3
    assert max_relative_difference(ours_x, torch_x) <= 1e-10
    assert float(quadratic(ours_x.detach())) < 0.5 * float(quadratic(start))  # it moved


def test_dadapt_sgd_waits_for_a_first_gradient_and_its_l2_term_can_set_the_norm() -> None:
    """An all-zero first gradient is skipped (no ||g_0|| to divide by); one that is zero but
    for the L2 term (the package divides by zero there) takes ||g_0|| from that term."""
    x = torch.ones(4, dtype=torch.float64, requires_grad=True)
    optimizer = DAdaptSGD([x], momentum=0.9)
    x.grad = torch.zeros(4, dtype=torch.float64)
    optimizer.step()
    group = optimizer.param_groups[0]
    assert torch.equal(x, torch.ones(4, dtype=torch.float64))
    assert group["k"] == 0 and group["g0_norm"] == 0 and math.isnan(optimizer.effective_lr[0])
    x.grad = torch.full((4,), 3.0, dtype=torch.float64)
    optimizer.step()
    assert group["k"] == 1 and group["g0_norm"] == 6.0
    assert torch.allclose(optimizer.state[x]["s"], torch.full((4,), 1e-6 * 3.0 / 6.0, dtype=torch.float64))

    y = torch.ones(4, dtype=torch.float64, requires_grad=True)
    decayed = DAdaptSGD([y], momentum=0.9, weight_decay=0.5)
    y.grad = torch.zeros(4, dtype=torch.float64)
    decayed.step()
    assert decayed.param_groups[0]["g0_norm"] == pytest.approx(0.5 * 2.0, rel=1e-15)  # ||0.5 y||
    assert torch.isfinite(y).all() and not torch.equal(y, torch.ones(4, dtype=torch.float64))


@pytest.mark.parametrize("name", SCHEDULE_FREE)
def test_schedule_free_effective_lr_is_the_warmed_up_rate(name: str) -> None:
    x = torch.ones(3, dtype=torch.float64, requires_grad=True)
    kwargs = {"betas": (0.9, 0.99)} if name == "ScheduleFreeAdamW" else {}
    optimizer = CASES[name]["cls"]([x], lr=0.01, warmup_steps=4, **kwargs)
    correction = (lambda t: math.sqrt(1 - 0.99**t)) if kwargs else (lambda t: 1.0)
    for k in range(8):
        expected = 0.01 * min((k + 1) / 4, 1.0) * correction(k + 1)
        assert optimizer.effective_lr == [pytest.approx(expected, rel=1e-15)]
        minimize(optimizer, x, quadratic, 1)
        assert optimizer.param_groups[0]["scheduled_lr"] == pytest.approx(expected, rel=1e-15)


# -- descent without tuning ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "options", "objective", "start", "steps", "factor"),
    [
        # the learning-rate-free methods at their defaults (lr = 1)
        ("Prodigy", {}, quadratic, [1.0] * 10, 300, 1e-8),
        ("Prodigy", {}, rosenbrock, [-1.5, 2.0], 2000, 1e-4),
        ("DAdaptAdam", {}, quadratic, [1.0] * 10, 300, 1e-8),
        ("DAdaptAdam", {}, rosenbrock, [-1.5, 2.0], 2000, 1e-4),
        ("DAdaptSGD", {"momentum": 0.9}, quadratic, [1.0] * 10, 300, 1e-8),
        ("DAdaptSGD", {"momentum": 0.9}, rosenbrock, [-1.5, 2.0], 2000, 1e-4),
        # schedule-free removes the schedule, not the learning rate: AdamW at its default
        # lr progresses slowly but steadily (ANCHORS: 20-30x the tuned step count) ...
        ("ScheduleFreeAdamW", {}, quadratic, [1.0] * 10, 1000, 1e-1),
        ("ScheduleFreeAdamW", {}, rosenbrock, [-1.5, 2.0], 3000, 0.5),
        # ... SGD's default lr = 1 suits the quadratic (curvature <= 10) but not Rosenbrock
        # (curvature ~1000 at the start), which needs a rate below 2 / 1000.
        ("ScheduleFreeSGD", {}, quadratic, [1.0] * 10, 300, 1e-8),
        ("ScheduleFreeSGD", {"lr": 1e-3}, rosenbrock, [-1.5, 2.0], 3000, 1e-1),
    ],
)
def test_descends(name: str, options: dict, objective, start, steps: int, factor: float) -> None:
    x = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    optimizer = CASES[name]["cls"]([x], **options)
    initial = float(objective(x.detach()))
    minimize(optimizer, x, objective, steps)
    if name in SCHEDULE_FREE:
        optimizer.eval()  # the answer of a schedule-free method is the average x
    final = float(objective(x.detach()))
    assert math.isfinite(final)
    assert final < factor * initial, (initial, final)


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "kwargs", "error", "text"),
    [
        ("Prodigy", {"lr": -1.0}, ValueError, "lr"),
        ("Prodigy", {"d0": 0.0}, ValueError, "d0"),
        ("Prodigy", {"d_coef": -1.0}, ValueError, "d_coef"),
        ("Prodigy", {"beta3": 1.0}, ValueError, "beta3"),
        ("Prodigy", {"growth_rate": 0.5}, ValueError, "growth_rate"),
        ("Prodigy", {"growth_rate": float("nan")}, ValueError, "growth_rate"),
        ("Prodigy", {"growth_rate": "fast"}, TypeError, "growth_rate"),
        ("Prodigy", {"decouple": 1}, TypeError, "decouple"),
        ("Prodigy", {"betas": (1.0, 0.999)}, ValueError, "betas[0]"),
        ("DAdaptAdam", {"eps": 0.0}, ValueError, "eps"),
        ("DAdaptAdam", {"d0": -1e-6}, ValueError, "d0"),
        ("DAdaptAdam", {"use_bias_correction": "yes"}, TypeError, "use_bias_correction"),
        ("DAdaptSGD", {"lr": -1.0}, ValueError, "lr"),
        ("DAdaptSGD", {"momentum": 1.0}, ValueError, "momentum"),
        ("DAdaptSGD", {"momentum": -0.1}, ValueError, "momentum"),
        ("DAdaptSGD", {"weight_decay": -1e-4}, ValueError, "weight_decay"),
        ("DAdaptSGD", {"d0": 0.0}, ValueError, "d0"),
        ("DAdaptSGD", {"growth_rate": 0.5}, ValueError, "growth_rate"),
        ("DAdaptSGD", {"maximize": 1}, TypeError, "maximize"),
        ("ScheduleFreeSGD", {"momentum": 0.0}, ValueError, "momentum"),
        ("ScheduleFreeSGD", {"momentum": 1.0}, ValueError, "momentum"),
        ("ScheduleFreeSGD", {"warmup_steps": 1.5}, TypeError, "warmup_steps"),
        ("ScheduleFreeSGD", {"warmup_steps": -1}, ValueError, "warmup_steps"),
        ("ScheduleFreeSGD", {"r": -1.0}, ValueError, "r"),
        ("ScheduleFreeAdamW", {"betas": (0.0, 0.999)}, ValueError, "betas[0]"),
        ("ScheduleFreeAdamW", {"weight_lr_power": -2.0}, ValueError, "weight_lr_power"),
        ("ScheduleFreeAdamW", {"lr": float("nan")}, ValueError, "lr"),
    ],
)
def test_bad_hyperparameters_are_refused(name: str, kwargs: dict, error: type, text: str) -> None:
    with pytest.raises(error) as raised:
        CASES[name]["cls"]([torch.ones(2, requires_grad=True)], **kwargs)
    message = str(raised.value)
    value = next(iter(kwargs.values()))
    assert text in message and repr(value[0] if isinstance(value, tuple) else value) in message


# -- no learning rate to choose -------------------------------------------------------------------
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    features, labels = load_digits(return_X_y=True)
    features = torch.tensor(features, dtype=torch.float32)
    features = (features - features.mean(0)) / features.std(0).clamp_min(1e-3)  # blank pixels
    return features, torch.tensor(labels)


def _steps_to_loss(make_optimizer: Callable, target: float, budget: int, batch: int = 64) -> int | None:
    """Mini-batch steps of an MLP on the digits until the full training loss is below target."""
    features, labels = _digits()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    optimizer = make_optimizer(model.parameters())
    order = torch.Generator().manual_seed(0)
    step = 0
    while step < budget:
        permutation = torch.randperm(len(labels), generator=order)
        for start in range(0, len(labels) - batch + 1, batch):
            rows = permutation[start : start + batch]
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(features[rows]), labels[rows]).backward()
            optimizer.step()
            step += 1
            if step % 5 == 0:
                with torch.no_grad():
                    loss = torch.nn.functional.cross_entropy(model(features), labels)
                if loss < target:
                    return step
            if step == budget:
                break
    return None


def test_prodigy_at_lr_1_trains_an_mlp_about_as_fast_as_a_tuned_adam() -> None:
    """The oracle is the best Adam on a log grid, measured here; Prodigy gets 3x its steps.

    Measured: the tuned Adam (lr 1e-2) reaches the target in ~75 steps, Prodigy in ~150, and
    Adam at its default lr 1e-3 not within 600 (so 1e-3 is left out of the grid to save time).
    A d estimate that stalls near d0 or overshoots misses the budget.
    """
    target = 0.02
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: threads only add contention on a busy machine
    try:
        adam_steps = [
            _steps_to_loss(lambda params, lr=lr: torch.optim.Adam(params, lr=lr), target, budget=300)
            for lr in (3e-3, 1e-2, 3e-2, 1e-1)
        ]
        oracle = min(steps for steps in adam_steps if steps is not None)
        prodigy_steps = _steps_to_loss(Prodigy, target, budget=3 * oracle)
    finally:
        torch.set_num_threads(threads)
    assert prodigy_steps is not None, f"Prodigy missed the target within 3 x {oracle} steps"
