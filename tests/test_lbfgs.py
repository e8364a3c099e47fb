"""Tests for steepest's L-BFGS: scipy as the oracle, counted evaluations, groups, checkpoints.

The anchors (ANCHORS.md) are scipy's L-BFGS-B evaluations on softmax regression (breast
cancer, L2 1e-3) and on the 10-D Rosenbrock function from -1.2: steepest must reach the
same optimum with at most 1.2x scipy's function evaluations, counted, never timed.
"""

from __future__ import annotations

import copy
import io
import math
from collections.abc import Callable

import numpy as np
import pytest
import scipy.optimize
import torch

import steepest
import steepest.rules.lbfgs as lbfgs_module
from steepest import problems
from steepest.rules.lbfgs import LBFGS, lbfgs_direction, more_thuente_line_search

GRADIENT_TOLERANCE = 1e-10
EVALUATION_RATIO_GOAL = 1.2


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


# -- helpers -------------------------------------------------------------------------------
def scipy_lbfgsb(
    problem: problems.Problem, start: torch.Tensor, norms: list[float] | None = None
) -> tuple[int, np.ndarray, float]:
    """scipy's L-BFGS-B with history 10 to max|g| <= 1e-10 or no more decrease.

    Appends max|g| of every evaluation to ``norms`` when given.
    """

    def value_and_gradient(values: np.ndarray) -> tuple[float, np.ndarray]:
        x = torch.tensor(values, dtype=torch.float64, requires_grad=True)
        loss = problem(x)
        (gradient,) = torch.autograd.grad(loss, x)
        if norms is not None:
            norms.append(float(gradient.abs().max()))
        return float(loss.detach()), gradient.numpy()

    result = scipy.optimize.minimize(
        value_and_gradient, start.numpy(), jac=True, method="L-BFGS-B",
        options={"maxcor": 10, "gtol": GRADIENT_TOLERANCE, "ftol": 0.0,
                 "maxiter": 10_000, "maxfun": 10_000},
    )
    return int(result.nfev), result.x, float(result.fun)


def run_lbfgs(
    problem: problems.Problem, start: torch.Tensor, norms: list[float] | None = None, **settings
) -> tuple[int, torch.Tensor]:
    """steepest's LBFGS in one step call; returns (closure calls, final x)."""
    x = start.clone().requires_grad_()
    optimizer = LBFGS([x], **{"max_iter": 10_000, "max_eval": 10_000,
                              "tolerance_grad": GRADIENT_TOLERANCE, "tolerance_change": 0.0,
                              **settings})
    calls = 0

    def closure() -> torch.Tensor:
        nonlocal calls
        calls += 1
        optimizer.zero_grad()
        loss = problem(x)
        loss.backward()
        if norms is not None:
            norms.append(float(x.grad.abs().max()))
        return loss

    optimizer.step(closure)
    assert optimizer.state[x]["func_evals"] == calls
    return calls, x.detach()


def first_evaluation_below(norms: list[float], level: float) -> int:
    return next(index for index, norm in enumerate(norms, start=1) if norm <= level)


def closure_for(problem: Callable, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> Callable:
    """The closure that evaluates ``problem`` at ``x`` for ``optimizer``."""

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = problem(x)
        loss.backward()
        return loss

    return closure


def resumed_from_a_checkpoint(problem, settings: dict, steps_before: int, steps_after: int):
    """An L-BFGS run of ``steps_before`` step calls, saved (torch.save, a weights_only load),
    then continued ``steps_after`` calls both in place and from the checkpoint in a fresh
    optimizer. Returns x and its optimizer, the state when saved, the resumed x and optimizer,
    and the resumed state as loaded."""
    x = problem.x0.clone().requires_grad_()
    optimizer = LBFGS([x], **settings)
    for _ in range(steps_before):
        optimizer.step(closure_for(problem, optimizer, x))
    buffer = io.BytesIO()
    torch.save({"x": x.detach(), "optimizer": optimizer.state_dict()}, buffer)
    saved_state = dict(optimizer.state[x])  # (the optimizer replaces its lists, never mutates them)
    for _ in range(steps_after):
        optimizer.step(closure_for(problem, optimizer, x))
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)  # tensors and numbers only
    resumed_x = checkpoint["x"].clone().requires_grad_()
    resumed = LBFGS([resumed_x], **settings)
    resumed.load_state_dict(checkpoint["optimizer"])
    loaded_state = dict(resumed.state[resumed_x])
    for _ in range(steps_after):
        resumed.step(closure_for(problem, resumed, resumed_x))
    return x, optimizer, saved_state, resumed_x, resumed, loaded_state


# -- the anchors -----------------------------------------------------------------------------
def test_softmax_regression_matches_scipy_optimum_within_evaluation_budget():
    # The minimiser is a line (a common shift of the biases), so agreement is in f.
    problem = problems.softmax_regression("breast_cancer", l2=1e-3)
    scipy_evaluations, _, scipy_loss = scipy_lbfgsb(problem, problem.x0)
    evaluations, x = run_lbfgs(problem, problem.x0)
    loss = float(problem(x))
    assert evaluations <= EVALUATION_RATIO_GOAL * scipy_evaluations, (evaluations, scipy_evaluations)
    assert abs(loss - scipy_loss) <= 1e-8 * max(1.0, abs(scipy_loss))
    assert abs(problem.gap(x)) <= 1e-12


def test_rosenbrock_matches_scipy_optimum_within_evaluation_budget():
    # A unique minimiser at (1, ..., 1): agreement is in x.
    problem = problems.rosenbrock(dim=10)
    start = torch.full((10,), -1.2, dtype=torch.float64)
    scipy_evaluations, scipy_x, _ = scipy_lbfgsb(problem, start)
    evaluations, x = run_lbfgs(problem, start)
    assert evaluations <= EVALUATION_RATIO_GOAL * scipy_evaluations, (evaluations, scipy_evaluations)
    assert np.abs(x.numpy() - scipy_x).max() <= 1e-8
    assert float((x - 1.0).abs().max()) <= 1e-8


@pytest.mark.parametrize(
    ("problem", "start"),
    [
        (problems.softmax_regression("breast_cancer", l2=1e-3), None),
        (problems.rosenbrock(dim=10), torch.full((10,), -1.2, dtype=torch.float64)),
    ],
    ids=["softmax", "rosenbrock"],
)
def test_same_trajectory_as_scipy_up_to_rounding(problem, start):
    # Same directions, same line search, same trial steps: each reaches max|g| <= 1e-8 at the
    # same evaluation as scipy, give or take what rounding in the two-loop recursion (scipy
    # uses the compact representation) may shift.
    start = problem.x0 if start is None else start
    scipy_norms: list[float] = []
    our_norms: list[float] = []
    scipy_lbfgsb(problem, start, scipy_norms)
    run_lbfgs(problem, start, our_norms)
    assert abs(first_evaluation_below(our_norms, 1e-8) - first_evaluation_below(scipy_norms, 1e-8)) <= 2
    assert our_norms[:20] == pytest.approx(scipy_norms[:20], rel=1e-9)


def test_first_step_has_length_lr_like_scipy():
    # Without curvature pairs the first trial is x0 - lr g / ||g||: no guess of the scale.
    problem = problems.rosenbrock(dim=4)
    points = []
    x = problem.x0.requires_grad_()
    optimizer = LBFGS([x], lr=0.5, max_iter=1)

    def closure():
        points.append(x.detach().clone())
        optimizer.zero_grad()
        loss = problem(x)
        loss.backward()
        return loss

    optimizer.step(closure)
    gradient = torch.autograd.functional.jacobian(problem, problem.x0)
    torch.testing.assert_close(points[1], problem.x0 - 0.5 * gradient / gradient.norm())


@pytest.mark.parametrize(
    "problem",
    [problems.quadratic(dim=30, condition=1e3), problems.beale(), problems.least_squares()],
    ids=lambda problem: problem.name,
)
def test_more_problems_match_scipy(problem):
    scipy_evaluations, _, scipy_loss = scipy_lbfgsb(problem, problem.x0)
    evaluations, x = run_lbfgs(problem, problem.x0)
    assert evaluations <= EVALUATION_RATIO_GOAL * scipy_evaluations
    assert problem.gap(x) <= 1e-10 * max(1.0, abs(problem.f_star))
    assert float((x - problem.x_star).abs().max()) <= 1e-6


def test_torch_optim_lbfgs_needs_more_evaluations_on_the_anchor():
    """The reason this class exists: torch.optim.LBFGS spends far more on the same problem."""
    problem = problems.softmax_regression("breast_cancer", l2=1e-3)
    ours, _ = run_lbfgs(problem, problem.x0)
    x = problem.x0.clone().requires_grad_()
    theirs = torch.optim.LBFGS(
        [x], history_size=10, line_search_fn="strong_wolfe", max_iter=10_000, max_eval=10_000,
        tolerance_grad=GRADIENT_TOLERANCE, tolerance_change=0.0,
    )

    def closure():
        theirs.zero_grad()
        loss = problem(x)
        loss.backward()
        return loss

    theirs.step(closure)
    assert theirs.state[x]["func_evals"] > 1.5 * ours


# -- the pieces against references ---------------------------------------------------------
LINE_FUNCTIONS = {
    "quadratic": (lambda t: (t - 2.0) ** 2, lambda t: 2.0 * (t - 2.0)),
    "rational": (lambda t: -t / (t * t + 2.0), lambda t: (t * t - 2.0) / (t * t + 2.0) ** 2),
    "quintic": (lambda t: (t + 0.004) ** 5 - 2.0 * (t + 0.004) ** 4,
                lambda t: 5.0 * (t + 0.004) ** 4 - 8.0 * (t + 0.004) ** 3),
    "exponential": (lambda t: math.exp(-t) + 0.1 * t * t, lambda t: -math.exp(-t) + 0.2 * t),
}


@pytest.mark.parametrize("name", sorted(LINE_FUNCTIONS))
@pytest.mark.parametrize("first_step", [1e-3, 0.1, 1.0, 10.0, 1e3])
def test_line_search_takes_the_same_trials_as_scipy_dcsrch(name, first_step):
    dcsrch = pytest.importorskip("scipy.optimize._dcsrch")
    phi, derivative = LINE_FUNCTIONS[name]
    scipy_trials: list[float] = []

    def scipy_phi(t: float) -> float:
        scipy_trials.append(t)
        return phi(t)

    search = dcsrch.DCSRCH(scipy_phi, derivative, 1e-3, 0.9, 0.1, 0.0, 1e10)
    scipy_step, *_ = search(first_step, phi(0.0), derivative(0.0), maxiter=20)

    our_trials: list[float] = []

    def evaluate(t: float) -> tuple[float, float]:
        our_trials.append(t)
        return phi(t), derivative(t)

    result = more_thuente_line_search(evaluate, phi(0.0), derivative(0.0), first_step)
    assert our_trials == scipy_trials  # same trials, bit for bit
    assert result.evaluations == len(our_trials)
    if scipy_step is not None:  # scipy reports warnings as failures (None)
        assert result.status == "converged"
        assert result.step == scipy_step
        f, g = phi(result.step), derivative(result.step)
        assert f <= phi(0.0) + 1e-3 * result.step * derivative(0.0)
        assert abs(g) <= 0.9 * abs(derivative(0.0))


def test_line_search_backs_off_from_overflow():
    # Beyond t = 1 the function is not finite: the search must restart below it and succeed.
    def evaluate(t: float) -> tuple[float, float]:
        if t > 1.0:
            return math.inf, math.nan
        return (t - 0.8) ** 2, 2.0 * (t - 0.8)

    result = more_thuente_line_search(evaluate, 0.64, -1.6, step=50.0)
    assert result.status == "converged"
    assert 0.0 < result.step <= 1.0
    assert result.loss < 0.64


def test_line_search_rejects_an_ascent_direction():
    with pytest.raises(ValueError, match="slope must be negative.*0.5"):
        more_thuente_line_search(lambda t: (t, 1.0), 0.0, 0.5)


def test_two_loop_recursion_equals_dense_bfgs_updates():
    generator = torch.Generator().manual_seed(0)
    n, pairs = 7, 5
    hessian = torch.randn(n, n, generator=generator, dtype=torch.float64)
    hessian = hessian @ hessian.T + n * torch.eye(n, dtype=torch.float64)
    steps = [torch.randn(n, generator=generator, dtype=torch.float64) for _ in range(pairs)]
    changes = [hessian @ s for s in steps]  # exact curvature pairs: s'y > 0
    curvatures = [float(s @ y) for s, y in zip(steps, changes)]
    gamma = float(steps[-1] @ changes[-1] / (changes[-1] @ changes[-1]))
    gradient = torch.randn(n, generator=generator, dtype=torch.float64)

    inverse = gamma * torch.eye(n, dtype=torch.float64)
    identity = torch.eye(n, dtype=torch.float64)
    for s, y, curvature in zip(steps, changes, curvatures):  # N&W (6.17), oldest first
        rho = 1.0 / curvature
        inverse = (identity - rho * torch.outer(s, y)) @ inverse @ (
            identity - rho * torch.outer(y, s)
        ) + rho * torch.outer(s, s)
    expected = -inverse @ gradient
    direction = lbfgs_direction(gradient, steps, changes, curvatures, gamma)
    torch.testing.assert_close(direction, expected, rtol=1e-12, atol=1e-14)
    # Secant condition of the newest pair: H y = s.
    torch.testing.assert_close(
        -lbfgs_direction(changes[-1], steps, changes, curvatures, gamma), steps[-1], rtol=1e-10, atol=0
    )


# -- param groups ------------------------------------------------------------------------------
def softmax_closure(optimizer, problem, tensors):
    def closure():
        optimizer.zero_grad()
        loss = problem(torch.cat([t.reshape(-1) for t in tensors]))
        loss.backward()
        return loss

    return closure


def split_softmax_start(problem):
    """The breast-cancer softmax problem's x0 as (weights 30x2, biases 2)."""
    weights = problem.x0[:60].reshape(30, 2).clone().requires_grad_()
    biases = problem.x0[60:].clone().requires_grad_()
    return weights, biases


def test_two_param_groups_with_equal_lr_equal_one_group():
    problem = problems.softmax_regression("breast_cancer", l2=1e-3)
    flat = problem.x0.clone().requires_grad_()
    one = LBFGS([flat], lr=0.7, max_iter=15)
    weights, biases = split_softmax_start(problem)
    two = LBFGS([{"params": [weights]}, {"params": [biases]}], lr=0.7, max_iter=15)
    for _ in range(3):
        one.step(softmax_closure(one, problem, [flat]))
        two.step(softmax_closure(two, problem, [weights, biases]))
    assert one.state[flat]["func_evals"] == two.state[weights]["func_evals"]
    assert torch.equal(flat.detach(), torch.cat([weights.detach().reshape(-1), biases.detach()]))


def test_group_with_lr_zero_is_frozen_and_others_converge():
    problem = problems.softmax_regression("breast_cancer", l2=1e-3)
    weights, biases = split_softmax_start(problem)
    start = biases.detach().clone()
    optimizer = LBFGS([{"params": [weights], "lr": 1.0}, {"params": [biases], "lr": 0.0}],
                      max_iter=500, tolerance_grad=1e-9, tolerance_change=0.0)
    optimizer.step(softmax_closure(optimizer, problem, [weights, biases]))
    assert torch.equal(biases.detach(), start)
    assert float(weights.grad.abs().max()) <= 1e-8  # optimal in the free variables


def test_unequal_group_lrs_still_reach_the_optimum():
    problem = problems.softmax_regression("breast_cancer", l2=1e-3)
    weights, biases = split_softmax_start(problem)
    optimizer = LBFGS([{"params": [weights], "lr": 1.0}, {"params": [biases], "lr": 0.05}],
                      max_iter=500, max_eval=1000, tolerance_grad=1e-10, tolerance_change=0.0)
    optimizer.step(softmax_closure(optimizer, problem, [weights, biases]))
    x = torch.cat([weights.detach().reshape(-1), biases.detach()])
    assert abs(problem.gap(x)) <= 1e-12


def test_shared_settings_must_agree_across_groups():
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="history_size.*10.*5"):
        LBFGS([{"params": [a]}, {"params": [b], "history_size": 5}])


def test_parameters_must_share_dtype():
    a = torch.zeros(2, requires_grad=True)
    b = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="float64"):
        LBFGS([a, b])


# -- checkpoints -------------------------------------------------------------------------------
def test_state_dict_round_trip_mid_run_continues_identically():
    x, optimizer, snapshot, resumed_x, resumed, loaded = resumed_from_a_checkpoint(
        problems.rosenbrock(dim=10), {"max_iter": 6, "history_size": 4}, steps_before=4, steps_after=3
    )
    assert len(loaded["old_steps"]) == len(snapshot["old_steps"]) == 4

    assert torch.equal(resumed_x.detach(), x.detach())
    assert resumed.state[resumed_x]["func_evals"] == optimizer.state[x]["func_evals"]
    assert resumed.state[resumed_x]["n_iter"] == optimizer.state[x]["n_iter"]


def test_state_dict_is_a_snapshot():
    problem = problems.rosenbrock(dim=4)
    x = problem.x0.clone().requires_grad_()
    optimizer = LBFGS([x], max_iter=3)

    def closure():
        optimizer.zero_grad()
        loss = problem(x)
        loss.backward()
        return loss

    optimizer.step(closure)
    saved = optimizer.state_dict()
    evaluations = saved["state"][0]["func_evals"]
    pairs = list(saved["state"][0]["old_steps"])
    optimizer.step(closure)
    assert saved["state"][0]["func_evals"] == evaluations
    assert all(a is b for a, b in zip(saved["state"][0]["old_steps"], pairs))
    assert len(saved["state"][0]["old_steps"]) == len(pairs)


# -- stopping, budgets, options ----------------------------------------------------------------
def test_max_eval_bounds_closure_calls_per_step():
    problem = problems.rosenbrock(dim=10)
    x = problem.x0.clone().requires_grad_()
    optimizer = LBFGS([x], max_iter=1000, max_eval=7)
    calls = 0

    def closure():
        nonlocal calls
        calls += 1
        optimizer.zero_grad()
        loss = problem(x)
        loss.backward()
        return loss

    for expected_total in (7, 14):
        optimizer.step(closure)
        assert calls <= expected_total
    assert float(problem(x.detach())) < float(problem(problem.x0))


def test_tolerance_grad_stops_without_iterating():
    problem = problems.rosenbrock(dim=2)
    x = problem.x_star.clone().requires_grad_()
    optimizer = LBFGS([x])
    def closure():
        optimizer.zero_grad()
        loss = problem(x)
        loss.backward()
        return loss

    assert float(optimizer.step(closure).detach()) == 0.0
    assert optimizer.state[x]["n_iter"] == 0
    assert torch.equal(x.detach(), problem.x_star)


def test_step_returns_the_loss_at_the_start_like_torch():
    problem = problems.beale()
    x = problem.x0.clone().requires_grad_()
    optimizer = LBFGS([x], max_iter=5)

    def closure():
        optimizer.zero_grad()
        loss = problem(x)
        loss.backward()
        return loss

    first = optimizer.step(closure)
    assert float(first.detach()) == float(problem(problem.x0))
    assert float(problem(x.detach())) < float(first.detach())


def test_fixed_step_without_line_search_follows_torch():
    # line_search_fn=None is torch's fixed-step L-BFGS: the same iterates, to rounding (12
    # iterations; later ones amplify rounding differences in the tiny gradient changes).
    problem = problems.quadratic(dim=10, condition=10.0)
    iterates = []
    for make in (LBFGS, torch.optim.LBFGS):
        x = problem.x0.requires_grad_()
        optimizer = make([x], line_search_fn=None, max_iter=12, history_size=10,
                         tolerance_grad=0.0, tolerance_change=0.0)

        def closure(optimizer=optimizer, x=x):
            optimizer.zero_grad()
            loss = problem(x)
            loss.backward()
            return loss

        optimizer.step(closure)
        iterates.append(x.detach())
    torch.testing.assert_close(iterates[0], iterates[1], rtol=1e-10, atol=1e-12)
    assert float((iterates[0] - problem.x_star).abs().max()) <= 1e-2  # and it converges


@pytest.mark.parametrize(("calls", "max_iter"), [(12, 1), (4, 3), (1, 12)])
def test_fixed_steps_over_several_calls_follow_torch_with_its_evaluations(calls: int, max_iter: int):
    # torch leaves a call's last fixed step unevaluated, for the next call's first evaluation;
    # evaluating it at once cost a loop of step() with max_iter=1 twice torch's evaluations.
    problem = problems.quadratic(dim=10, condition=10.0)
    iterates, evaluations = [], []
    for make in (LBFGS, torch.optim.LBFGS):
        x = problem.x0.requires_grad_()
        # (max_eval: torch's default max_iter * 5 // 4 stops its 3-iteration calls after 2)
        optimizer = make([x], line_search_fn=None, max_iter=max_iter, max_eval=max_iter + 1,
                         history_size=10, tolerance_grad=0.0, tolerance_change=0.0)
        counted = []

        def closure(optimizer=optimizer, x=x, counted=counted):
            counted.append(1)
            optimizer.zero_grad()
            loss = problem(x)
            loss.backward()
            return loss

        for _ in range(calls):
            optimizer.step(closure)
        iterates.append(x.detach())
        evaluations.append(len(counted))
    assert evaluations[0] == evaluations[1] == calls * max_iter
    torch.testing.assert_close(iterates[0], iterates[1], rtol=1e-10, atol=1e-12)


def test_an_unevaluated_last_step_survives_a_checkpoint():
    x, optimizer, saved, resumed_x, resumed, _ = resumed_from_a_checkpoint(
        problems.quadratic(dim=10, condition=10.0),
        {"line_search_fn": None, "max_iter": 2},
        steps_before=1,
        steps_after=3,
    )
    assert {"pending_step", "pending_gradient", "pending_decrease"} <= set(saved)
    assert torch.equal(resumed_x.detach(), x.detach())
    assert len(resumed.state[resumed_x]["old_steps"]) == len(optimizer.state[x]["old_steps"]) == 7


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_a_torch_optim_lbfgs_state_dict_keeps_its_curvature_pairs(line_search_fn):
    # It once loaded as torch's own keys, which steepest ignored: the history restarted empty.
    problem = problems.quadratic(dim=10, condition=10.0)
    settings = dict(line_search_fn=line_search_fn, max_iter=3, max_eval=4, history_size=10,
                    tolerance_grad=0.0, tolerance_change=0.0)

    x = problem.x0.clone().requires_grad_()
    theirs = torch.optim.LBFGS([x], **settings)
    for _ in range(2):
        theirs.step(closure_for(problem, theirs, x))
    saved = copy.deepcopy(theirs.state_dict())
    ours_x = x.detach().clone().requires_grad_()
    ours = LBFGS([ours_x], **settings)
    ours.load_state_dict(saved)
    state = ours.state[ours_x]
    pairs = theirs.state[x]["old_stps"]
    assert len(state["old_steps"]) == len(pairs) >= 4 and "pending_step" in state
    assert all(torch.equal(a, b) for a, b in zip(state["old_steps"], pairs))
    if line_search_fn is None:  # the same fixed steps: the same iterates as torch's own
        for _ in range(2):
            theirs.step(closure_for(problem, theirs, x))
            ours.step(closure_for(problem, ours, ours_x))
        torch.testing.assert_close(ours_x.detach(), x.detach(), rtol=1e-10, atol=1e-12)
    else:  # scipy's line search, not torch's: it goes on from the curvature learnt
        start = float(problem(ours_x.detach()))
        ours.step(closure_for(problem, ours, ours_x))
        assert len(ours.state[ours_x]["old_steps"]) > len(pairs)
        assert float(problem(ours_x.detach())) < start


# -- failed line searches: restarts from steepest descent, as scipy -----------------------------
NONSMOOTH_SEED = 0


def nonsmooth(kind: str):
    """Least squares plus a kink (l1 or max-abs): line searches there fail now and then."""
    generator = torch.Generator().manual_seed(NONSMOOTH_SEED)
    A = torch.randn(30, 10, generator=generator, dtype=torch.float64)
    b = torch.randn(30, generator=generator, dtype=torch.float64)
    if kind == "l1":
        return lambda x: 0.5 * ((A @ x - b) ** 2).sum() + 3.0 * x.abs().sum()
    return lambda x: 0.5 * ((A @ x - b) ** 2).sum() + 5.0 * x.abs().max()


def record_searches(monkeypatch: pytest.MonkeyPatch, fail_at: int | None = None) -> list:
    """Every line search's (first trial, result); the search number ``fail_at`` fails outright."""
    searches: list = []

    def recorded(evaluate, loss, slope, step=1.0, **settings):
        if len(searches) + 1 == fail_at:
            value, _ = evaluate(step)  # one trial, reported as a failure
            result = lbfgs_module.LineSearchResult(step, loss + 1.0, None, 1, "failed", "forced")
        else:
            result = more_thuente_line_search(evaluate, loss, slope, step, **settings)
        searches.append((step, result))
        return result

    monkeypatch.setattr(lbfgs_module, "more_thuente_line_search", recorded)
    return searches


@pytest.mark.parametrize("kind", ["l1", "maxabs"])
def test_failed_searches_restart_as_scipy_does(kind: str, monkeypatch: pytest.MonkeyPatch):
    # Searches fail at the kinks; scipy rejects each one, clears its memory and retries along
    # -g within the same iteration, first trial 1: the same iterations and evaluations.
    f = nonsmooth(kind)

    def value_and_gradient(values: np.ndarray) -> tuple[float, np.ndarray]:
        x = torch.tensor(values, requires_grad=True)
        loss = f(x)
        (gradient,) = torch.autograd.grad(loss, x)
        return float(loss.detach()), gradient.numpy()

    reference = scipy.optimize.minimize(value_and_gradient, np.ones(10), jac=True, method="L-BFGS-B")
    searches = record_searches(monkeypatch)
    result = steepest.minimize(f, torch.ones(10, dtype=torch.float64), method="lbfgs")
    assert sum(search.status != "converged" for _, search in searches) >= 8  # the path is taken
    assert (result.nit, result.nfev, result.success) == (reference.nit, reference.nfev, True)
    assert result.fun == pytest.approx(reference.fun, rel=1e-12)


def test_a_failed_search_retries_from_steepest_descent_in_the_same_iteration(monkeypatch):
    # Under minimize (one iteration per step call) the retry once waited for the next call,
    # x stood still for an iteration, and the default ftol read that as convergence: Rosenbrock
    # "converged" at f = 4.09.
    searches = record_searches(monkeypatch, fail_at=6)
    looks = []
    problem = problems.rosenbrock()
    result = steepest.minimize(problem, problem.x0, method="lbfgs", stopping=looks.append)
    assert result.success and result.fun < 1e-12, result.message
    assert all(look.step_norm != 0.0 for look in looks[1:])  # every iteration moved
    assert [first for first, _ in searches[5:7]] == [1.0, 1.0]  # the retry's first trial is 1, as scipy's


def test_a_search_that_spends_its_20_evaluations_is_rejected_and_the_run_fails(monkeypatch):
    # A search out of evaluations was accepted if its step, 3e-27 long, passed the sufficient
    # decrease test by rounding: x stood still and ftol reported convergence (success=True).
    # scipy rejects it (iback >= 20), retries along -g, and reports ABNORMAL if that fails too.
    Q = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)

    def noisy(x: torch.Tensor) -> torch.Tensor:  # value noise of 1e-6 the gradient knows nothing of
        return 0.5 * x @ Q @ x + 1e-6 * torch.sin(1e9 * x.detach().sum())

    searches = record_searches(monkeypatch)
    result = steepest.minimize(noisy, torch.ones(2, dtype=torch.float64), method="lbfgs", gtol=1e-12)
    exhausted = [search for _, search in searches if search.evaluations == 20]
    assert exhausted, "the noise must defeat a search"
    assert not result.success and result.status == steepest.stopping.Status.NO_PROGRESS
    assert "the line search along -g found no decrease" in result.message


def test_float32_parameters():
    problem = problems.rosenbrock(dim=2)
    x = problem.x0.float().requires_grad_()
    optimizer = LBFGS([x], max_iter=200, tolerance_grad=1e-5)

    def closure():
        optimizer.zero_grad()
        loss = problem(x)
        loss.backward()
        return loss

    optimizer.step(closure)
    assert x.dtype == torch.float32
    assert float((x.detach().double() - 1.0).abs().max()) <= 1e-3


def test_step_requires_a_closure():
    x = torch.zeros(2, requires_grad=True)
    with pytest.raises(TypeError, match="closure"):
        LBFGS([x]).step()


def test_requires_closure_flag():
    assert LBFGS.requires_closure is True


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("lr", -1.0),
        ("max_iter", 0),
        ("max_eval", 0),
        ("tolerance_grad", -1e-3),
        ("tolerance_change", float("nan")),
        ("history_size", 0),
        ("line_search_fn", "armijo"),
    ],
)
def test_bad_hyperparameters_raise_value_error_naming_them(argument, value):
    x = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match=rf"{argument}.*{value}"):
        LBFGS([x], **{argument: value})


def test_non_integer_iterations_raise_type_error():
    x = torch.zeros(2, requires_grad=True)
    with pytest.raises(TypeError, match="max_iter.*2.5"):
        LBFGS([x], max_iter=2.5)
