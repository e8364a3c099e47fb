"""Learning-rate-free (Prodigy, D-Adapt Adam and SGD) and schedule-free (SGD, AdamW) optimizers.

The anchor is a readable per-tensor reference of each official algorithm
(``tests/lr_free_references.py``). The steepest versions must follow them in float64 to 1e-10
relative, per tensor and multi-tensor, over the configurations of their rows in the spec table
(``tests/specs.py``). Then: checkpoints, train/eval modes, the reported effective learning
rate, descent without tuning, and a small "no learning rate to choose" check on an MLP.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

import steepest.rules.dadapt as dadapt_module
from lr_free_references import reference_group_state, reference_sequences
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
from specs import SPECS
from steepest.rules.dadapt import DAdaptSGD
from steepest.rules.prodigy import Prodigy
from steepest.rules.schedulefree import ScheduleFreeAdamW

RTOL = 1e-10

# -- the table these tests run over: the spec table's rows, and the group-level state to compare
GROUP_KEYS: dict[str, tuple[str, ...]] = {
    "Prodigy": ("d", "d_max", "d_numerator", "d_denom", "d_hat", "k"),
    "DAdaptAdam": ("d", "numerator_weighted", "k"),
    "DAdaptSGD": ("d", "numerator_weighted", "g0_norm", "k"),
    "ScheduleFreeSGD": ("k", "weight_sum", "lr_max"),
    "ScheduleFreeAdamW": ("k", "weight_sum", "lr_max"),
}
CASES: dict[str, dict[str, Any]] = {
    spec.name: dict(
        cls=spec.cls,
        reference=spec.reference,
        configs=spec.configs,
        group_override=spec.group_override,
        group_keys=GROUP_KEYS[spec.name],
    )
    for spec in SPECS
    if spec.name in GROUP_KEYS
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
