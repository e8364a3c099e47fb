"""Tests for Newton and NewtonCG: convergence rates, scipy's Newton-CG as the oracle, closures.

References: the minimiser of L2-regularised logistic regression (steepest.problems, solved
by scipy and polished by an independent dense Newton step), torch.autograd.functional's
Hessian, and scipy.optimize.minimize(method="Newton-CG").
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import scipy.optimize
import torch

from steepest import problems
from steepest.rules.newton import (
    Newton,
    NewtonCG,
    backtracking_line_search,
    positive_definite_cholesky,
    truncated_conjugate_gradient,
)

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def logistic():
    return problems.logistic_regression("breast_cancer", l2=1e-3)


def errors_along_run(optimizer_class, problem, steps, **settings):
    """max |x_k - x*| after each of ``steps`` steps, and the optimizer."""
    x = problem.x0.requires_grad_()
    optimizer = optimizer_class([x], tolerance_grad=0.0, **settings)
    x_star = problem.x_star
    errors = []
    for _ in range(steps):
        optimizer.step(lambda: problem(x))
        errors.append(float((x.detach() - x_star).abs().max()))
    return errors, optimizer, x


# -- convergence rates -------------------------------------------------------------------------
def test_newton_converges_quadratically(logistic):
    errors, _, _ = errors_along_run(Newton, logistic, steps=14)
    # Asymptotic region: from error 1e-1 down to just above rounding (x* is exact to ~2e-15).
    pairs = [(a, b) for a, b in zip(errors, errors[1:]) if a <= 1e-1 and b >= 1e-13]
    assert len(pairs) >= 2, errors
    for before, after in pairs:
        assert after <= 10.0 * before**2, errors  # a linear rate would break this at once
    iterations_to_tolerance = next(k for k, e in enumerate(errors, start=1) if e <= 1e-12)
    assert iterations_to_tolerance <= 12, errors


def test_newton_solves_a_quadratic_in_one_step():
    bowl = problems.quadratic(dim=30, condition=1e4, seed=3)
    errors, optimizer, _ = errors_along_run(Newton, bowl, steps=1)
    assert errors[0] <= 1e-9
    assert optimizer.state[optimizer.param_groups[0]["params"][0]]["func_evals"] == 2


def test_newton_cg_converges_superlinearly(logistic):
    errors, _, _ = errors_along_run(NewtonCG, logistic, steps=14)
    ratios = [b / a for a, b in zip(errors, errors[1:]) if a <= 1e-2 and b >= 1e-13]
    assert len(ratios) >= 2, errors
    assert ratios == sorted(ratios, reverse=True), errors  # the rate keeps improving
    assert ratios[-1] <= 1e-3, errors
    assert errors[-1] <= 1e-12


# -- against references ------------------------------------------------------------------------
@pytest.mark.parametrize("dataset", ["breast_cancer", "digits"])
def test_newton_cg_reaches_scipy_newton_cg_optimum(dataset):
    problem = problems.logistic_regression(dataset, l2=1e-3)

    def value_and_gradient(values):
        x = torch.tensor(values, dtype=torch.float64, requires_grad=True)
        loss = problem(x)
        (gradient,) = torch.autograd.grad(loss, x)
        return float(loss.detach()), gradient.numpy()

    def hessian_product(values, vector):
        x = torch.tensor(values, dtype=torch.float64)
        _, product = torch.autograd.functional.hvp(problem, x, torch.tensor(vector))
        return product.numpy()

    result = scipy.optimize.minimize(
        value_and_gradient, problem.x0.numpy(), jac=True, hessp=hessian_product,
        method="Newton-CG", options={"xtol": 1e-14, "maxiter": 200},
    )
    x = problem.x0.requires_grad_()
    optimizer = NewtonCG([x], tolerance_grad=1e-13)
    for _ in range(40):
        optimizer.step(lambda: problem(x))
    ours = x.detach()
    # scipy's Newton-CG stops near max|g| = 1e-7 here (its CG loop quits once p'Hp < 3 eps,
    # an absolute threshold), so it agrees with x* to about 1e-5: compare at that accuracy,
    # and require ours to be at least as good and to reach x* itself.
    assert np.abs(ours.numpy() - result.x).max() <= 1e-4
    assert float(problem(ours)) <= result.fun + 1e-15
    assert abs(float(problem(ours)) - result.fun) <= 1e-10
    assert float((ours - problem.x_star).abs().max()) <= 1e-10


def test_undamped_newton_step_equals_dense_reference(logistic):
    # One step without line search from a point with a positive definite Hessian:
    # x1 = x0 - H^{-1} g with H from torch.autograd.functional.hessian.
    start = logistic.x0 + 0.01
    hessian = torch.autograd.functional.hessian(logistic, start)
    x_ref = start.clone().requires_grad_()
    (gradient,) = torch.autograd.grad(logistic(x_ref), x_ref)
    expected = start - torch.linalg.solve(hessian, gradient)

    x = start.clone().requires_grad_()
    optimizer = Newton([x], line_search_fn=None)
    optimizer.step(lambda: logistic(x))
    torch.testing.assert_close(x.detach(), expected, rtol=1e-12, atol=1e-13)
    assert optimizer.state[x]["damping_used"] == 0.0


def test_newton_cg_with_one_cg_iteration_takes_the_cauchy_step(logistic):
    # One CG iteration minimises the quadratic model along -g: x1 = x0 - (g'g / g'Hg) g.
    start = logistic.x0 + 0.01
    hessian = torch.autograd.functional.hessian(logistic, start)
    x_ref = start.clone().requires_grad_()
    (gradient,) = torch.autograd.grad(logistic(x_ref), x_ref)
    expected = start - (gradient @ gradient) / (gradient @ hessian @ gradient) * gradient

    x = start.clone().requires_grad_()
    optimizer = NewtonCG([x], max_cg_iter=1, line_search_fn=None)
    optimizer.step(lambda: logistic(x))
    torch.testing.assert_close(x.detach(), expected, rtol=1e-12, atol=1e-13)
    assert optimizer.state[x]["cg_iterations"] == 1


# -- non-convex problems -----------------------------------------------------------------------
@pytest.mark.parametrize("optimizer_class", [Newton, NewtonCG])
def test_descends_from_a_maximum_like_start_to_a_himmelblau_minimum(optimizer_class):
    # At (0, 0) Himmelblau's Hessian is negative definite: an undamped Newton step would
    # head for the local maximum. Each step must lower f, and the run must end at a minimum.
    problem = problems.himmelblau()
    x = problem.x0.requires_grad_()
    optimizer = optimizer_class([x], tolerance_grad=1e-12)
    losses = [float(problem(problem.x0))]
    for _ in range(30):
        optimizer.step(lambda: problem(x))
        losses.append(float(problem(x.detach())))
    assert all(after <= before for before, after in zip(losses, losses[1:]))
    distances = [float((x.detach() - minimum).abs().max()) for minimum in problem.minima]
    assert min(distances) <= 1e-10
    if optimizer_class is NewtonCG:
        assert optimizer.state[x]["negative_curvature"] >= 1


def test_newton_first_step_is_damped_where_the_hessian_is_indefinite():
    problem = problems.himmelblau()
    x = problem.x0.requires_grad_()
    optimizer = Newton([x])
    optimizer.step(lambda: problem(x))
    assert optimizer.state[x]["damping_used"] > 26.0  # the Hessian at 0 is diag(-42, -26)


def test_newton_solves_rosenbrock():
    problem = problems.rosenbrock(dim=2)
    x = problem.x0.requires_grad_()
    optimizer = Newton([x], tolerance_grad=1e-12)
    for _ in range(40):
        optimizer.step(lambda: problem(x))
    assert float((x.detach() - 1.0).abs().max()) <= 1e-10


# -- the pieces ----------------------------------------------------------------------------------
def test_truncated_cg_solves_a_positive_definite_system_exactly():
    generator = torch.Generator().manual_seed(1)
    matrix = torch.randn(12, 12, generator=generator, dtype=torch.float64)
    matrix = matrix @ matrix.T + torch.eye(12, dtype=torch.float64)
    gradient = torch.randn(12, generator=generator, dtype=torch.float64)
    direction, products, negative = truncated_conjugate_gradient(
        lambda v: matrix @ v, gradient, max_iterations=100, forcing=1e-13
    )
    torch.testing.assert_close(direction, -torch.linalg.solve(matrix, gradient), rtol=1e-9, atol=1e-11)
    assert not negative and products <= 100


def test_truncated_cg_stops_at_negative_curvature():
    matrix = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))
    # First direction -g already has negative curvature: scaled steepest descent.
    direction, products, negative = truncated_conjugate_gradient(
        lambda v: matrix @ v, torch.tensor([0.0, 2.0], dtype=torch.float64), 10
    )
    assert negative and products == 1
    torch.testing.assert_close(direction, torch.tensor([0.0, -2.0], dtype=torch.float64))
    # Positive curvature along -g, negative on the next direction: the first CG iterate.
    gradient = torch.tensor([1.0, 0.1], dtype=torch.float64)
    direction, products, negative = truncated_conjugate_gradient(
        lambda v: matrix @ v, gradient, 10, forcing=0.0
    )
    cauchy = -(gradient @ gradient) / (gradient @ matrix @ gradient) * gradient
    assert negative and products == 2
    torch.testing.assert_close(direction, cauchy)


def test_positive_definite_cholesky():
    definite = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    factor, shift = positive_definite_cholesky(definite)
    assert shift == 0.0
    torch.testing.assert_close(factor @ factor.T, definite)
    indefinite = torch.tensor([[1.0, 3.0], [3.0, 1.0]], dtype=torch.float64)  # eigenvalues 4, -2
    factor, shift = positive_definite_cholesky(indefinite)
    assert 2.0 < shift <= 4.0 + 1e-2  # at most twice the smallest working shift
    torch.testing.assert_close(factor @ factor.T, indefinite + shift * torch.eye(2, dtype=torch.float64))
    _, shift = positive_definite_cholesky(definite, damping=0.5)
    assert shift == 0.5


def test_backtracking_line_search():
    result = backtracking_line_search(lambda t: (t - 0.2) ** 2, 0.04, -0.4)
    assert result.status == "converged"
    assert result.loss <= 0.04 + 1e-4 * result.step * -0.4
    assert result.step == pytest.approx(0.2)  # the quadratic interpolation is exact here

    def overflowing(t):
        return float("inf") if t > 1e-3 else (t - 1e-4) ** 2

    result = backtracking_line_search(overflowing, 1e-8, -2e-4)
    assert result.status == "converged" and result.step <= 1e-3
    with pytest.raises(ValueError, match="slope must be negative.*1.0"):
        backtracking_line_search(lambda t: t, 0.0, 1.0)


# -- closures ------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")  # torch's advice
@pytest.mark.parametrize("optimizer_class", [Newton, NewtonCG])
def test_closure_with_create_graph_backward_gives_the_same_steps(optimizer_class, logistic):
    runs = []
    for call_backward in (False, True):
        x = logistic.x0.requires_grad_()
        optimizer = optimizer_class([x])

        def closure(optimizer=optimizer, x=x, call_backward=call_backward):
            optimizer.zero_grad()
            loss = logistic(x)
            if call_backward:
                loss.backward(create_graph=True)
            return loss

        for _ in range(3):
            optimizer.step(closure)
        if call_backward:
            assert x.grad is not None and x.grad.grad_fn is None  # the graph was released
        runs.append(x.detach())
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("optimizer_class", [Newton, NewtonCG])
def test_closure_that_frees_the_graph_is_reported(optimizer_class, logistic):
    x = logistic.x0.requires_grad_()
    optimizer = optimizer_class([x])

    def closure():
        optimizer.zero_grad()
        loss = logistic(x)
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match="create_graph=True"):
        optimizer.step(closure)


def test_closure_must_return_a_differentiable_tensor(logistic):
    x = logistic.x0.requires_grad_()
    optimizer = Newton([x])
    with pytest.raises(TypeError, match="requires grad"):
        optimizer.step(lambda: float(logistic(x).detach()))


def test_flags_for_generic_drivers():
    for optimizer_class in (Newton, NewtonCG):
        assert optimizer_class.requires_closure is True
        assert optimizer_class.closure_create_graph is True


# -- param groups and checkpoints ------------------------------------------------------------------
def split(problem):
    weights = problem.x0[:-1].requires_grad_()
    bias = problem.x0[-1:].requires_grad_()
    return weights, bias


@pytest.mark.parametrize("optimizer_class", [Newton, NewtonCG])
def test_two_groups_with_equal_lr_equal_one_group(optimizer_class, logistic):
    flat = logistic.x0.requires_grad_()
    one = optimizer_class([flat], lr=0.8)
    weights, bias = split(logistic)
    two = optimizer_class([{"params": [weights]}, {"params": [bias]}], lr=0.8)
    for _ in range(4):
        one.step(lambda: logistic(flat))
        two.step(lambda: logistic(torch.cat([weights, bias])))
    assert torch.equal(flat.detach(), torch.cat([weights.detach(), bias.detach()]))


@pytest.mark.parametrize("optimizer_class", [Newton, NewtonCG])
def test_group_with_lr_zero_is_frozen(optimizer_class, logistic):
    weights, bias = split(logistic)
    optimizer = optimizer_class([{"params": [weights]}, {"params": [bias], "lr": 0.0}],
                                tolerance_grad=1e-13)
    for _ in range(15):
        optimizer.step(lambda: logistic(torch.cat([weights, bias])))
    assert float(bias.detach()) == 0.0
    probe = weights.detach().requires_grad_()
    (gradient,) = torch.autograd.grad(logistic(torch.cat([probe, bias.detach()])), probe)
    assert float(gradient.abs().max()) <= 1e-10  # Newton on the free variables converged


def test_state_dict_round_trip(logistic):
    x = logistic.x0.requires_grad_()
    optimizer = Newton([x])
    for _ in range(2):
        optimizer.step(lambda: logistic(x))
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    resumed = Newton([x.detach().clone().requires_grad_()])
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    state = resumed.state[resumed.param_groups[0]["params"][0]]
    assert state["func_evals"] == optimizer.state[x]["func_evals"]
    assert state["n_iter"] == 2


@pytest.mark.parametrize(
    ("optimizer_class", "argument", "value"),
    [
        (Newton, "lr", -1.0),
        (Newton, "damping", -0.1),
        (Newton, "tolerance_grad", -1.0),
        (Newton, "line_search_fn", "strong_wolfe"),
        (NewtonCG, "max_cg_iter", 0),
        (NewtonCG, "lr", float("inf")),
        (NewtonCG, "line_search_fn", "wolfe"),
    ],
)
def test_bad_hyperparameters_raise_value_error_naming_them(optimizer_class, argument, value):
    x = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match=rf"{argument}.*{value}"):
        optimizer_class([x], **{argument: value})


def test_complex_parameters_are_refused():
    x = torch.zeros(2, dtype=torch.complex128, requires_grad=True)
    with pytest.raises(TypeError, match="real"):
        Newton([x])
