"""Tests for steepest.problems: closed forms, optima against independent solvers, the registry.

Each f_star is checked against something other than the code that produced it: a closed
form at a known minimiser, scikit-learn's own solvers on the same objective, scipy's
Rosenbrock, or an identity between two problems (two-class softmax = logistic regression).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize
import torch
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from threadpoolctl import threadpool_limits

from steepest import problems
from steepest.problems import PROBLEMS, by_name


@pytest.fixture(autouse=True)
def one_thread():
    # Small problems: threads only add overhead, and on a busy 2-core machine much more
    # (scikit-learn's BLAS calls run 50x slower with two contending threads).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


def gradient_at(problem: problems.Problem, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_()
    (gradient,) = torch.autograd.grad(problem(x), x)
    return gradient


# Every factory with default arguments, plus the variants the benchmarks use.
ALL = [
    problems.quadratic(),
    problems.quadratic(dim=5, condition=1.0, seed=2),
    problems.rosenbrock(),
    problems.rosenbrock(dim=10),
    problems.beale(),
    problems.himmelblau(),
    problems.logistic_regression(),
    problems.logistic_regression("digits"),
    problems.softmax_regression(),
    problems.softmax_regression("breast_cancer"),
    problems.least_squares(),
    problems.least_squares(l2=0.1, bias=False),
]


@pytest.mark.parametrize("problem", ALL, ids=lambda problem: problem.name)
def test_gap_is_positive_at_the_start_and_zero_at_the_minimisers(problem):
    assert problem.gap(problem.x0) > 0.0
    assert problem.x0.shape == (problem.dim,) and problem.x0.dtype == torch.float64
    scale = max(1.0, abs(problem.f_star))
    for minimum in problem.minima:
        assert abs(problem.gap(minimum)) <= 1e-14 * scale
        assert float(gradient_at(problem, minimum).abs().max()) <= 1e-10


@pytest.mark.parametrize("problem", ALL, ids=lambda problem: problem.name)
def test_no_point_found_by_lbfgsb_beats_f_star(problem):
    # An independent run from a perturbed start must not find a lower value than f*.
    def value_and_gradient(values):
        x = torch.tensor(values, dtype=torch.float64, requires_grad=True)
        loss = problem(x)
        (gradient,) = torch.autograd.grad(loss, x)
        return float(loss.detach()), gradient.numpy()

    start = problem.x0.numpy() + 0.1
    result = scipy.optimize.minimize(value_and_gradient, start, jac=True, method="L-BFGS-B",
                                     options={"maxiter": 5000, "gtol": 1e-9})
    assert result.fun - problem.f_star >= -1e-13 * max(1.0, abs(problem.f_star))


def test_closed_forms():
    assert problems.rosenbrock(dim=7).f_star == 0.0
    assert problems.beale().f_star == 0.0
    assert problems.himmelblau().f_star == 0.0
    assert problems.quadratic().f_star == 0.0
    assert torch.equal(problems.rosenbrock(dim=3).x_star, torch.ones(3, dtype=torch.float64))
    assert torch.equal(problems.beale().x_star, torch.tensor([3.0, 0.5], dtype=torch.float64))
    assert problems.himmelblau().x_star is None
    assert len(problems.himmelblau().minima) == 4


def test_rosenbrock_is_scipys():
    generator = np.random.default_rng(0)
    problem = problems.rosenbrock(dim=6)
    for _ in range(5):
        point = generator.normal(size=6)
        value = float(problem(torch.tensor(point)))
        assert value == pytest.approx(scipy.optimize.rosen(point), rel=1e-14)
    assert problem.x0.tolist() == [-1.2, 1.0, -1.2, 1.0, -1.2, 1.0]


def test_quadratic_has_the_requested_condition_number():
    bowl = problems.quadratic(dim=40, condition=1e4, seed=1)
    hessian = torch.autograd.functional.hessian(bowl, bowl.x0)
    eigenvalues = torch.linalg.eigvalsh(hessian)
    assert float(eigenvalues.min()) == pytest.approx(1.0, rel=1e-10)
    assert float(eigenvalues.max()) == pytest.approx(1e4, rel=1e-10)
    other_seed = problems.quadratic(dim=40, condition=1e4, seed=2)
    assert not torch.equal(bowl.x_star, other_seed.x_star)


@pytest.mark.parametrize(("l2", "bias"), [(0.0, True), (0.3, True), (0.1, False)])
def test_least_squares_matches_scikit_learn(l2, bias):
    problem = problems.least_squares(l2=l2, bias=bias)
    features = problem._data["features"].numpy()
    targets = problem._data["targets"].numpy()
    count = len(targets)
    if l2 == 0.0:
        model = LinearRegression(fit_intercept=bias).fit(features, targets)
    else:  # sklearn's Ridge minimises ||Xw + b - y||^2 + alpha ||w||^2, i.e. ours times 2n
        model = Ridge(alpha=count * l2, fit_intercept=bias, solver="cholesky").fit(features, targets)
    coefficients = np.append(model.coef_, model.intercept_) if bias else model.coef_
    np.testing.assert_allclose(problem.x_star.numpy(), coefficients, rtol=1e-9, atol=1e-11)
    assert problem.gap(torch.tensor(coefficients)) == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("dataset", ["breast_cancer", "digits"])
def test_logistic_regression_matches_scikit_learn(dataset):
    # sklearn minimises C sum_i loss_i + ||w||^2 / 2 (bias free): ours times n C, C = 1/(n l2).
    l2 = 1e-3
    problem = problems.logistic_regression(dataset, l2=l2)
    features = problem._data["features"].numpy()
    labels = problem._data["labels"].numpy()
    model = LogisticRegression(C=1.0 / (len(labels) * l2), tol=1e-12, max_iter=10_000)
    model.fit(features, labels)
    theirs = torch.tensor(np.append(model.coef_.ravel(), model.intercept_))
    gap = problem.gap(theirs)
    assert -1e-15 <= gap <= 1e-10  # their point is no better than f*, and close to it
    assert float((theirs - problem.x_star).abs().max()) <= 1e-4


def test_softmax_regression_matches_scikit_learn_on_digits():
    l2 = 1e-3
    problem = problems.softmax_regression("digits", l2=l2)
    features = problem._data["features"].numpy()
    labels = problem._data["labels"].numpy()
    model = LogisticRegression(C=1.0 / (len(labels) * l2), tol=1e-10, max_iter=10_000)
    model.fit(features, labels)
    theirs = torch.tensor(np.concatenate([model.coef_.T.ravel(), model.intercept_]))
    assert -1e-15 <= problem.gap(theirs) <= 1e-9


def test_two_class_softmax_is_logistic_regression_with_half_the_penalty():
    softmax = problems.softmax_regression("breast_cancer", l2=2e-3)
    logistic = problems.logistic_regression("breast_cancer", l2=1e-3)
    assert softmax.f_star == pytest.approx(logistic.f_star, rel=1e-13)
    assert softmax.x_star is None  # a line of minimisers: the biases shift together
    w = logistic.x_star[:-1]
    b = logistic.x_star[-1]
    weights = torch.stack([-w / 2, w / 2], dim=1).reshape(-1)
    point = torch.cat([weights, torch.stack([-b / 2, b / 2])])
    assert softmax.gap(point) == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("problem", ALL[:8], ids=lambda problem: problem.name)
def test_any_dtype(problem):
    x = problem.x0 + 0.05
    value64 = problem(x)
    value32 = problem(x.float())
    assert value64.dtype == torch.float64 and value64.shape == ()
    assert value32.dtype == torch.float32
    assert float(value32) == pytest.approx(float(value64), rel=1e-5, abs=1e-6)


def test_x0_is_a_fresh_copy():
    problem = problems.rosenbrock()
    problem.x0.add_(1.0)
    problem.x_star.add_(1.0)
    assert problem.x0.tolist() == [-1.2, 1.0]
    assert problem.x_star.tolist() == [1.0, 1.0]


def test_f_star_is_computed_once_per_process():
    first = problems.logistic_regression("breast_cancer", l2=1e-3)
    second = problems.logistic_regression("breast_cancer", l2=1e-3)
    assert first.f_star == second.f_star
    assert problems._solve_smooth_problem.cache_info().hits >= 1


def test_registry():
    assert set(PROBLEMS) == {
        "quadratic", "rosenbrock", "beale", "himmelblau", "logistic_regression",
        "softmax_regression", "least_squares",
    }
    problem = by_name("rosenbrock", dim=5)
    assert problem.dim == 5 and problem.name == "rosenbrock(dim=5)"
    assert by_name("softmax_regression", dataset="breast_cancer").dim == 62
    assert by_name("softmax_regression").dim == 650
    with pytest.raises(ValueError, match="unknown problem 'rosenbrok'"):
        by_name("rosenbrok")


@pytest.mark.parametrize(
    ("name", "kwargs", "error", "pattern"),
    [
        ("quadratic", {"dim": 0}, ValueError, "dim must be >= 1, got 0"),
        ("quadratic", {"condition": 0.5}, ValueError, "condition.*0.5"),
        ("quadratic", {"dim": 2.5}, TypeError, "dim must be an integer, got 2.5"),
        ("rosenbrock", {"dim": 1}, ValueError, "dim must be >= 2, got 1"),
        ("logistic_regression", {"l2": 0.0}, ValueError, "l2.*0.0"),
        ("logistic_regression", {"dataset": "iris"}, ValueError, "dataset.*'iris'"),
        ("softmax_regression", {"l2": -1.0}, ValueError, "l2.*-1.0"),
        ("least_squares", {"l2": math.nan}, ValueError, "l2.*nan"),
        ("least_squares", {"bias": 1}, TypeError, "bias.*1"),
    ],
)
def test_bad_arguments(name, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        by_name(name, **kwargs)


def test_bad_points():
    problem = problems.beale()
    with pytest.raises(ValueError, match=r"shape \(2,\).*\(3,\)"):
        problem(torch.zeros(3))
    with pytest.raises(TypeError, match="floating-point"):
        problem(torch.zeros(2, dtype=torch.int64))
