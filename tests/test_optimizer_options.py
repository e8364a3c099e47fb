"""Options every optimizer gets from the engine: scheduled hyperparameters, plateau cuts,
clipping inside the step; checked against torch.optim driven by hand."""

from __future__ import annotations

import io
import math

import pytest
import torch

import steepest
from specs import SPECS, Spec
from steepest import schedules
from steepest.plateau import reduce_on_plateau
from test_optimizers import assert_params_close, clone_params, make_params, run, set_gradients


def lr_schedule(step: int) -> float:
    """A plain callable: any function step -> float is a schedule."""
    return 0.05 * (1 + step) ** -0.5


@pytest.mark.parametrize("foreach", [False, True])
def test_callable_lr_equals_setting_lr_by_hand(foreach: bool) -> None:
    ours_params, torch_params = make_params()[:4], make_params()[:4]
    ours = steepest.Adam(ours_params, lr=lr_schedule, foreach=foreach)
    theirs = torch.optim.Adam(torch_params, lr=lr_schedule(0), foreach=foreach)
    for step in range(15):
        assert ours.param_groups[0]["lr"] == lr_schedule(step)  # the rate this step will use
        theirs.param_groups[0]["lr"] = lr_schedule(step)
        set_gradients(ours_params, step)
        set_gradients(torch_params, step)
        ours.step()
        theirs.step()
    assert_params_close(ours_params, torch_params)
    assert ours.step_count == 15


def test_schedules_for_lr_betas_and_weight_decay() -> None:
    cycle = schedules.one_cycle(peak=0.05, total=30)
    momentum = schedules.one_cycle_momentum(peak=0.05, total=30)
    decay = schedules.linear(start=0.0, end=0.1, total=30)
    ours_params, torch_params = make_params()[:4], make_params()[:4]
    ours = steepest.AdamW(ours_params, lr=cycle, betas=(momentum, 0.999), weight_decay=decay)
    theirs = torch.optim.AdamW(torch_params)
    for step in range(30):
        group = theirs.param_groups[0]
        group["lr"], group["betas"], group["weight_decay"] = cycle(step), (momentum(step), 0.999), decay(step)
        assert ours.param_groups[0]["betas"] == group["betas"]
        set_gradients(ours_params, step)
        set_gradients(torch_params, step)
        ours.step()
        theirs.step()
    assert_params_close(ours_params, torch_params)


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_every_optimizer_resumes_at_the_exact_schedule_position(spec: Spec) -> None:
    peak = spec.configs[0]["lr"]
    lr = schedules.warmup_cosine(peak=peak, warmup=4, total=20)
    kwargs = {**spec.configs[0], "lr": lr}
    if "weight_decay" in spec.cls.__init__.__code__.co_varnames:
        kwargs["weight_decay"] = schedules.linear(start=0.0, end=0.05, total=20)
    params = make_params()[:4]
    optimizer = spec.cls(params, **kwargs)
    run(optimizer, params, 9)

    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    resumed_params = clone_params(params)
    resumed = spec.cls(resumed_params, **kwargs)
    assert resumed.param_groups[0]["lr"] == lr(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.step_count == 9
    assert resumed.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"] == lr(9)

    run(optimizer, params, 11, start=9)
    run(resumed, resumed_params, 11, start=9)
    for a, b in zip(resumed_params, params):
        assert torch.equal(a, b)
    assert resumed.param_groups[0]["lr"] == lr(20)


def test_torch_state_dict_resumes_schedule_at_its_step() -> None:
    params = make_params()[:4]
    theirs = torch.optim.Adam(params, lr=1e-3)
    run(theirs, params, 6)
    ours = steepest.Adam(clone_params(params), lr=lr_schedule)
    ours.load_state_dict(theirs.state_dict())
    assert ours.step_count == 6
    assert ours.param_groups[0]["lr"] == lr_schedule(6)


def test_schedule_value_out_of_range_names_hyperparameter_and_step() -> None:
    x = torch.ones(2, requires_grad=True)
    optimizer = steepest.SGD([x], lr=lambda step: 0.1 - 0.05 * step)
    x.grad = torch.ones(2)
    optimizer.step()  # lr(0) = 0.1
    optimizer.step()  # lr(1) = 0.05
    optimizer.step()  # lr(2) = 0
    before = x.detach().clone()
    with pytest.raises(ValueError, match=r"lr must be >= 0.*step 3"):
        optimizer.step()  # lr(3) < 0: refused before anything moves
    assert torch.equal(x.detach(), before)


def test_schedule_refused_at_construction_when_its_first_value_is_bad() -> None:
    with pytest.raises(ValueError, match="lr"):
        steepest.SGD([torch.ones(1, requires_grad=True)], lr=lambda step: -1.0)


# -- plateau ------------------------------------------------------------------------------
METRICS = [1.0, 0.9, 0.95, 0.96, 0.97, 0.97, 0.8, 0.81, 0.82, 0.83, 0.84, 0.85, 0.86, 0.86, 0.9]


@pytest.mark.parametrize(
    "settings",
    [
        dict(factor=0.5, patience=2),
        dict(factor=0.1, patience=1, cooldown=2, threshold=0.05),
        dict(factor=0.5, patience=0, min_value=0.02),
    ],
)
def test_plateau_cuts_when_torch_reduce_lr_on_plateau_does(settings: dict) -> None:
    x = torch.ones(1, requires_grad=True)
    ours = steepest.SGD([x], lr=reduce_on_plateau(0.1, **settings))
    theirs = torch.optim.SGD([torch.ones(1, requires_grad=True)], lr=0.1)
    torch_settings = {("min_lr" if k == "min_value" else k): v for k, v in settings.items()}
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(theirs, **torch_settings)
    for metric in METRICS:
        ours.report(metric)
        scheduler.step(metric)
        assert ours.param_groups[0]["lr"] == pytest.approx(theirs.param_groups[0]["lr"], rel=1e-12)
    assert ours.param_groups[0]["lr"] < 0.1  # it did cut


def test_plateau_composes_with_warmup_cosine_and_resumes() -> None:
    base = schedules.warmup_cosine(peak=0.1, warmup=5, total=100)
    make_lr = lambda: reduce_on_plateau(base, factor=0.5, patience=1)  # noqa: E731
    params = make_params()[:4]
    optimizer = steepest.SGD(params, lr=make_lr(), momentum=0.9)
    for step, metric in enumerate([1.0, 0.9, 0.95, 0.95, 0.94]):
        run(optimizer, params, 1, start=step)
        optimizer.report(metric)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * base(5))

    resumed_params = clone_params(params)
    resumed = steepest.SGD(resumed_params, lr=make_lr(), momentum=0.9)
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    for step, metric in enumerate([0.96, 0.97, 0.5, 0.6, 0.7], start=5):
        for opt, ps in ((optimizer, params), (resumed, resumed_params)):
            run(opt, ps, 1, start=step)
            opt.report(metric)
        assert resumed.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    for a, b in zip(resumed_params, params):
        assert torch.equal(a, b)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.125 * base(10))  # cut at 3, 5, 9


def test_plateau_bad_arguments() -> None:
    with pytest.raises(ValueError, match="factor"):
        reduce_on_plateau(0.1, factor=1.5)
    with pytest.raises(ValueError, match="patience"):
        reduce_on_plateau(0.1, patience=-1)
    with pytest.raises(ValueError, match="mode"):
        reduce_on_plateau(0.1, mode="up")


# -- clipping inside the step -------------------------------------------------------------
@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_norm_equals_clip_grad_norm_then_step(max_norm: float) -> None:
    ours_params, torch_params = make_params()[:4], make_params()[:4]
    ours = steepest.SGD(ours_params, lr=0.1, momentum=0.9, clip_norm=max_norm)
    theirs = torch.optim.SGD(torch_params, lr=0.1, momentum=0.9)
    for step in range(10):
        set_gradients(ours_params, step)
        set_gradients(torch_params, step)
        expected = torch.nn.utils.clip_grad_norm_(torch_params, max_norm)
        ours.step()
        theirs.step()
        assert ours.last_grad_norm == pytest.approx(float(expected), rel=1e-12)
        assert ours.last_clipped == (float(expected) > max_norm)
    assert_params_close(ours_params, torch_params)


def test_clip_norm_under_grad_scaler_sees_unscaled_gradients() -> None:
    """The documented recipe (unscale_, clip, step) is what clip_norm does by itself."""
    results = []
    for use_option in (True, False):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        optimizer = steepest.SGD(model.parameters(), lr=0.1, clip_norm=0.1 if use_option else None)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
        x, y = torch.randn(16, 4), torch.randn(16, 1)
        for _ in range(5):
            optimizer.zero_grad()
            scaler.scale(torch.nn.functional.mse_loss(model(x), y)).backward()
            if not use_option:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
            scaler.step(optimizer)
            scaler.update()
        results.append([p.detach().clone() for p in model.parameters()])
        if use_option:
            assert optimizer.last_clipped and optimizer.last_grad_norm < 100  # unscaled norm
    for a, b in zip(*results):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)


def test_clip_norm_must_be_positive() -> None:
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="clip_norm"):
            steepest.Adam([torch.ones(1, requires_grad=True)], clip_norm=bad)


def test_scale_lr_cuts_fixed_and_scheduled_rates_and_survives_a_checkpoint() -> None:
    x, y = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
    optimizer = steepest.SGD([{"params": [x], "lr": lr_schedule}, {"params": [y], "lr": 0.1}])
    optimizer.scale_lr(0.5)
    assert optimizer.param_groups[0]["lr"] == 0.5 * lr_schedule(0)
    assert optimizer.param_groups[1]["lr"] == 0.05
    x.grad, y.grad = torch.ones(2), torch.ones(2)
    optimizer.step()
    assert optimizer.param_groups[0]["lr"] == 0.5 * lr_schedule(1)  # the schedule goes on, scaled
    resumed = steepest.SGD(
        [
            {"params": [x.detach().clone().requires_grad_()], "lr": lr_schedule},
            {"params": [y.detach().clone().requires_grad_()], "lr": 0.1},
        ]
    )
    resumed.load_state_dict(optimizer.state_dict())
    assert [g["lr"] for g in resumed.param_groups] == [g["lr"] for g in optimizer.param_groups]
    with pytest.raises(ValueError, match="factor"):
        optimizer.scale_lr(0.0)
