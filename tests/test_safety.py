"""SafeStep: skip is bit-identical, backoff rolls back and cuts, stop stops, raise raises,
spikes ignore noise, state_dict round trip, and the 100x-too-large acceptance test."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

import steepest
from steepest import problems
from steepest import stopping as st
from steepest.lr.safety import SafeStep
from steepest.minimize import minimize
from steepest.rules import SGD, Adam


def trained(steps: int = 3, lr: float = 0.1) -> tuple[torch.Tensor, Adam]:
    w = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    opt = Adam([w], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        (w**2).sum().backward()
        opt.step()
    return w, opt


def bad_loss(w: torch.Tensor) -> torch.Tensor:
    loss = (w**2).sum() * float("nan")
    loss.backward()
    return loss


def test_good_step_steps():
    w, opt = trained(0)
    guard = SafeStep(opt)
    (w**2).sum().backward()
    verdict = guard.step((w**2).sum())
    assert verdict.stepped and opt.step_count == 1


def test_skip_leaves_params_and_state_bit_identical():
    w, opt = trained()
    guard = SafeStep(opt, on_nonfinite="skip")
    before_w, before_state = w.detach().clone(), opt.state_dict()
    saved = {k: v.clone() for k, v in before_state["state"][0].items()}
    verdict = guard.step(bad_loss(w))
    assert verdict.action == "skip" and verdict.event == "nonfinite"
    assert torch.equal(w, before_w) and w.grad is None
    assert opt.step_count == 3
    for key, value in opt.state_dict()["state"][0].items():
        assert torch.equal(value, saved[key]), key
    assert guard.counts["skips"] == 1 and guard.counts["nonfinite"] == 1


def test_nonfinite_gradient_with_finite_loss_is_caught():
    w, opt = trained()
    guard = SafeStep(opt, on_nonfinite="skip")
    loss = (w**2).sum()
    loss.backward()
    w.grad[0] = math.inf
    assert guard.step(loss).action == "skip"


def test_skip_stops_once_an_update_has_made_the_parameters_non_finite():
    # lr=1e308 on a finite loss overflows the parameters: every later loss is NaN, and skipping
    # them would run out the clock and report a NaN model as done.
    w = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    opt = SGD([w], lr=1e308)
    guard = SafeStep(opt, on_nonfinite="skip")
    (w**2).sum().backward()
    assert guard.step((w**2).sum()).stepped
    assert not torch.isfinite(w).all()
    opt.zero_grad()
    verdict = guard.step(bad_loss(w))
    assert verdict.should_stop and verdict.event == "nonfinite"
    assert "parameters are not finite" in verdict.reason and "backoff" in verdict.reason
    assert guard.counts["skips"] == 0 and guard.counts["nonfinite"] == 1


def test_raise_names_the_step():
    w, opt = trained()
    guard = SafeStep(opt, on_nonfinite="raise")
    with pytest.raises(FloatingPointError, match="step 3"):
        guard.step(bad_loss(w))


def test_stop_says_stop_without_stepping():
    w, opt = trained()
    guard = SafeStep(opt, on_nonfinite="stop")
    before = w.detach().clone()
    verdict = guard.step(bad_loss(w))
    assert verdict.should_stop and "non-finite" in verdict.reason
    assert torch.equal(w, before) and opt.step_count == 3


def test_backoff_restores_snapshot_and_cuts_cumulatively():
    w, opt = trained(0, lr=0.1)
    guard = SafeStep(opt, on_nonfinite="backoff", snapshot_every=100)
    start = w.detach().clone()
    loss = (w**2).sum()
    loss.backward()
    guard.step(loss)  # good step 0: snapshot taken here, before the update
    for _ in range(2):
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        guard.step(loss)
    assert opt.step_count == 3
    verdict = guard.step(bad_loss(w))
    assert verdict.action == "backoff"
    assert torch.equal(w, start) and opt.step_count == 0 and not opt.state
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    guard.step(bad_loss(w))  # a second backoff to a snapshot taken with the cut rate
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025)
    assert guard.backoffs == 2


def test_a_backoff_never_returns_to_a_soaring_loss():
    """A run that blows up gradually passes finite but soaring losses before the first inf: a
    snapshot is not taken among them, so the backoff goes back to before the blow-up began."""
    w = torch.zeros(1, requires_grad=True)
    opt = SGD([w], lr=0.1)
    guard = SafeStep(opt, on_nonfinite="backoff", snapshot_every=1)
    for step, value in enumerate([1.0, 1.0, 1.0, 1.0, 50.0, 5e3, 5e5]):
        with torch.no_grad():
            w.fill_(step)  # the parameter names the step it was checked at
        w.grad = torch.ones(1)
        assert guard.check(value).action == "step"
    w.grad = torch.ones(1)
    verdict = guard.check(math.inf)
    assert verdict.action == "backoff" and float(w) == 3.0  # the last step of loss 1, not 5e5


def test_heavy_ball_past_its_stable_limit_recovers_from_a_snapshot_every_step():
    # lr 5 on f = |x|^2 / 2 with momentum 0.9 (stable below 3.8): the loss soars for ~30 steps
    # before it overflows float32. Snapshots among the soaring losses left the halved rate to
    # recover from a loss near 1e37 (921 steps to the target); from before the blow-up, 169.
    result = minimize(
        lambda x: 0.5 * (x * x).sum(),
        torch.ones(3),
        "sgd",
        lr=5.0,
        options={"momentum": 0.9},
        max_iter=400,
        gtol=None,
        on_nonfinite="backoff",
        safety={"snapshot_every": 1},
        stopping=st.target(1e-6),
    )
    assert result.status == st.Status.TARGET_REACHED and result.nit <= 250, result.message
    assert result.safety["backoffs"] == 1


def test_backoff_gives_up_after_max_backoffs():
    w, opt = trained(0)
    guard = SafeStep(opt, on_nonfinite="backoff", max_backoffs=1)
    loss = (w**2).sum()
    loss.backward()
    guard.step(loss)
    assert guard.step(bad_loss(w)).action == "backoff"
    assert guard.step(bad_loss(w)).should_stop


def test_spike_ignores_minibatch_noise_and_fires_on_a_jump():
    w, opt = trained(0)
    guard = SafeStep(opt, on_nonfinite="raise", on_spike="stop")
    rng = np.random.default_rng(0)
    for loss in 0.5 * np.exp(rng.normal(0.0, 0.5, size=500)):  # noise up to ~5x the median
        assert guard.check(float(loss)).stepped
    assert guard.spikes == 0
    verdict = guard.check(20.0)
    assert verdict.should_stop and verdict.event == "spike"


def test_spike_floor_ignores_wobble_of_a_converged_run():
    w, opt = trained(0)
    guard = SafeStep(opt, on_spike="stop")
    guard.check(1.0)
    for loss in (1e-12, 3e-11, 1e-12, 5e-10, 2e-12):
        assert guard.check(loss).stepped


def test_state_dict_round_trip():
    w, opt = trained(0)
    guard = SafeStep(opt, on_nonfinite="skip", on_spike="skip")
    for loss in (1.0, 0.9, 0.8, math.nan, 50.0, 0.7):
        guard.check(loss)
    state = guard.state_dict()
    assert all(isinstance(v, (int, float, list, type(None))) for v in state.values())
    other = SafeStep(opt, on_nonfinite="skip", on_spike="skip")
    other.load_state_dict(state)
    assert other.state_dict() == state and other.counts == guard.counts == {
        "nonfinite": 1, "spikes": 1, "skips": 2, "backoffs": 0, "scaler_skips": 0}
    assert other.check(50.0).action == guard.check(50.0).action == "skip"


def test_snapshots_and_the_diagnosis_survive_a_checkpoint():
    # A resumed guard must roll back where the uninterrupted one would, and go on diagnosing
    # from the windows it had seen (it once took a fresh snapshot after the resume instead).
    w, opt = trained(0, lr=0.1)
    guard = SafeStep(opt, on_nonfinite="backoff", snapshot_every=100, on_too_large="backoff")
    start = w.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        guard.step(loss)
    buffer = io.BytesIO()
    torch.save({"w": w.detach(), "opt": opt.state_dict(), "guard": guard.state_dict(),
                "snapshots": guard.snapshots_state()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert saved["snapshots"]["start"] == "last"  # one copy of the state where both begin
    w2 = saved["w"].clone().requires_grad_()
    opt2 = Adam([w2], lr=0.1)
    opt2.load_state_dict(saved["opt"])
    resumed = SafeStep(opt2, on_nonfinite="backoff", snapshot_every=100, on_too_large="backoff")
    resumed.load_state_dict(saved["guard"])
    resumed.load_snapshots_state(saved["snapshots"])
    assert repr(resumed._monitor.state_dict()) == repr(guard._monitor.state_dict())  # nan != nan
    for the_guard, the_w in ((guard, w), (resumed, w2)):
        assert the_guard.step(bad_loss(the_w)).action == "backoff"
        assert torch.equal(the_w, start)
    assert opt2.state_dict()["steepest"] == opt.state_dict()["steepest"]


def test_a_guard_that_never_backs_off_keeps_no_snapshot():
    # a copy of the parameters and the optimizer state every 10 steps, and in every checkpoint,
    # for a policy that skips, stops or raises and so never goes back to one
    w, opt = trained(0, lr=0.1)
    for policy in ({"on_nonfinite": "skip", "on_spike": "stop"}, {"on_too_large": "stop"}):
        guard = SafeStep(opt, **policy)
        for _ in range(12):
            opt.zero_grad()
            loss = (w**2).sum()
            loss.backward()
            assert guard.step(loss).stepped
        assert guard.snapshots_state() == {"due": True, "last": None, "start": None}


def test_snapshots_of_other_parameters_are_refused_and_change_nothing():
    w, opt = trained(0, lr=0.1)
    guard = SafeStep(opt, on_nonfinite="backoff")
    (w**2).sum().backward()
    guard.step((w**2).sum())
    state = guard.snapshots_state()
    other = SafeStep(Adam([torch.zeros(4, requires_grad=True)]), on_nonfinite="backoff")
    with pytest.raises(ValueError, match=r"state\['last'\]\['params'\] must hold tensors of the guarded"):
        other.load_snapshots_state(state)
    with pytest.raises(ValueError, match="'last'"):
        guard.load_snapshots_state({**state, "last": None})
    assert other.snapshots_state() == {"due": True, "last": None, "start": None}
    assert guard.snapshots_state()["last"] is state["last"]


def test_grad_scaler_skips_are_the_scalers_business():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    opt = SGD([w], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    guard = SafeStep(opt, on_nonfinite="raise", scaler=scaler)
    loss = (w**2).sum()
    scaler.scale(loss).backward()
    w.grad[0] = math.inf  # an fp16 overflow in the backward pass
    verdict = guard.step(loss)
    assert verdict.stepped and guard.scaler_skips == 1 and guard.nonfinite == 0
    assert torch.equal(w.detach(), torch.tensor([1.0, 2.0]))


def test_a_given_gradient_norm_is_checked_and_informs_the_diagnosis():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    (w**2).sum().backward()  # finite gradients: only the norm handed in is not
    guard = SafeStep(SGD([w], lr=0.1), on_nonfinite="skip")
    verdict = guard.check(5.0, grad_norm=math.nan)
    assert verdict.action == "skip" and "gradient norm nan" in verdict.reason

    # A network killed at chance: the loss flat at log(10), the gradient norm collapsing. With a
    # GradScaler the guard cannot check the (scaled) gradients itself, so only the norm the
    # training loop hands in (unscaled; fit does) lets the diagnosis tell this from a crawl.
    rng = np.random.default_rng(0)
    losses = 2.30 + 0.02 * rng.standard_normal(200)
    norms = np.geomspace(1.0, 0.02, 200)

    def verdicts(with_norm: bool) -> list[str]:
        scaler = torch.amp.GradScaler("cpu")
        guard = SafeStep(SGD([w], lr=0.1), scaler=scaler, on_too_large="stop")
        actions = []
        for loss, norm in zip(losses, norms):
            given = float(norm) if with_norm else None
            actions.append(guard.check(float(loss), grad_norm=given).action)
            if actions[-1] == "stop":
                break
        return actions

    assert "stop" not in verdicts(with_norm=False)
    assert verdicts(with_norm=True)[-1] == "stop"
    scaler_guard = SafeStep(SGD([w], lr=0.1), scaler=torch.amp.GradScaler("cpu"), on_nonfinite="raise")
    assert scaler_guard.check(2.3, grad_norm=math.inf).action == "step"  # an overflow: the scaler's


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"on_nonfinite": "ignore"}, ValueError),
        ({"on_spike": "warn"}, ValueError),
        ({"spike_factor": 1.0}, ValueError),
        ({"backoff_factor": 1.0}, ValueError),
        ({"snapshot_every": 0}, ValueError),
        ({"window": 2.5}, TypeError),
    ],
)
def test_bad_arguments_name_themselves(kwargs, error):
    _, opt = trained(0)
    name = next(iter(kwargs))
    with pytest.raises(error, match=name):
        SafeStep(opt, **kwargs)


def test_numpy_scalars_are_taken_as_the_optimizers_take_them():
    # np.float32 is no Python float: SafeStep once refused spike_factor=np.float32(5)
    _, opt = trained(0)
    guard = SafeStep(opt, spike_factor=np.float32(5.0), backoff_factor=np.float32(0.25))
    assert (guard.spike_factor, guard.backoff_factor) == (5.0, 0.25)
    assert guard.check(np.float32(2.0), grad_norm=np.float32(1.0)).stepped
    with pytest.raises(TypeError, match="spike_factor must be a real number, got spike_factor='5'"):
        SafeStep(opt, spike_factor="5")


# -- acceptance: a learning rate 100x too large, with backoff, still reaches the tuned target --
@pytest.mark.parametrize(
    ("make", "x0"),
    [
        (lambda: problems.quadratic(100, 1e3), None),
        (lambda: problems.logistic_regression("breast_cancer"), None),
        (lambda: problems.rosenbrock(2), torch.tensor([-1.5, 2.0], dtype=torch.float64)),
    ],
    ids=["quadratic", "logistic", "rosenbrock"],
)
def test_lr_100x_too_large_with_backoff_reaches_the_tuned_target(make, x0):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        problem = make()
        x0 = problem.x0 if x0 is None else x0
        target = problem.f_star + 1e-4 * (float(problem(x0)) - problem.f_star)
        tuned = minimize(problem, x0, "adam", lr=1.0, max_iter=3000, gtol=None, stopping=st.target(target))
        assert tuned.status == st.Status.TARGET_REACHED
        too_large = minimize(
            problem, x0, "adam", lr=100.0, max_iter=3000, gtol=None, stopping=st.target(target),
            on_nonfinite="backoff", on_spike="backoff", safety={"backoff_factor": 0.1, "spike_factor": 3.0},
        )
        assert too_large.status == st.Status.TARGET_REACHED, too_large.message
        assert too_large.safety["backoffs"] >= 1
        assert too_large.nit <= 3 * tuned.nit
    finally:
        torch.set_num_threads(threads)


# -- a too-large rate that never produces NaN or a spike -----------------------------------------
def digits_run(lr: float, guard_options: dict | None, target: float | None, steps: int):
    """Adam on an MLP over sklearn's digits, mini-batches of 64; steps to reach ``target``."""
    from torch.nn import functional as F

    from steepest.train import build_model, load_dataset

    data = load_dataset("digits")
    inputs, labels = data.train
    torch.manual_seed(0)
    model = build_model("mlp", data)
    optimizer = Adam(model.parameters(), lr=lr)
    guard = SafeStep(optimizer, **guard_options) if guard_options else None
    generator = torch.Generator().manual_seed(0)
    verdicts = []
    for step in range(steps):
        index = torch.randint(0, len(labels), (64,), generator=generator)
        loss = F.cross_entropy(model(inputs[index]), labels[index])
        optimizer.zero_grad()
        loss.backward()
        if guard is None:
            optimizer.step()
        else:
            verdicts.append(guard.step(loss.detach()))
            if verdicts[-1].should_stop:
                break
        with torch.no_grad():
            full = float(F.cross_entropy(model(inputs), labels))
        if target is not None and full <= target:
            return step + 1, full, verdicts
    return None, full, verdicts


def test_lr_100x_too_large_on_digits_backs_off_and_reaches_the_tuned_target() -> None:
    """ANCHORS.md: here a far too large rate keeps the loss at chance level, with no NaN and no
    spike; the regime trigger (on_too_large) must still bring the run to a tuned run's target."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, target, _ = digits_run(0.01, None, None, steps=200)  # the tuned rate's loss after 200 steps
        tuned_steps, _, _ = digits_run(0.01, None, target, steps=600)
        assert digits_run(1.0, None, target, steps=600)[0] is None  # unguarded: never gets there
        options = dict(on_nonfinite="backoff", on_too_large="backoff")
        steps, _, verdicts = digits_run(1.0, options, target, steps=4 * tuned_steps)
        assert steps is not None and steps <= 4 * tuned_steps
        backoffs = [v for v in verdicts if v.action == "backoff"]
        assert backoffs and all(v.event == "too_large" for v in backoffs)
        # and a well-chosen rate never triggers it
        _, _, verdicts = digits_run(0.01, options, None, steps=300)
        assert not [v for v in verdicts if v.action != "step"]
    finally:
        torch.set_num_threads(threads)


def test_on_too_large_stop_and_bad_values() -> None:
    w = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="on_too_large"):
        SafeStep(SGD([w], lr=0.1), on_too_large="skip")
    with pytest.raises(ValueError, match="regime_patience"):
        SafeStep(SGD([w], lr=0.1), on_too_large="stop", regime_patience=0)


def test_on_too_large_does_not_cut_a_rate_far_too_small_whose_batches_swing() -> None:
    # Lion at 1e-3 on softmax regression of the synthetic classification set (lr="auto" takes
    # 0.12): batch losses swing by 7-11% while each step moves the loss by ~1% at most. Read as
    # "oscillates without net progress", every window was too large, and the backoff cascaded,
    # 1e-3 -> 1e-4 -> ... -> 1e-8, each time back to step 0. The guard now measures the length
    # of every step it takes, and swings 10x beyond what such steps can do are the batches'.
    from steepest.init import initialize
    from steepest.train.data import load_dataset
    from steepest.train.models import build_model

    data = load_dataset("synthetic_classification")
    torch.manual_seed(0)
    model = build_model("softmax", data)
    initialize(model, "xavier")
    result = steepest.fit(
        model, data.train, "cross_entropy", "lion", 1e-3, epochs=20, safety={"on_too_large": "backoff"}
    )
    assert not [record.extra["safety"] for record in result.history if "safety" in record.extra]
    assert result.history[-1].lr == 1e-3
    # fit records the guard's measurement of every step rather than measuring every fifth again
    assert all(record.update_norm is not None and record.update_norm > 0 for record in result.history)
