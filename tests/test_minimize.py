"""minimize(): minima against closed forms and scipy, stop reasons, exact counts, structures,
dtypes and devices; EmpiricalRisk: chunked gradients, bookkeeping, and batch, stochastic and
mini-batch descent reaching the same minimum."""

from __future__ import annotations

import importlib.util
import math
from typing import Any

import numpy as np
import pytest
import scipy.optimize
import torch
from torch import nn
from torch.nn import functional as F

from steepest import stopping
from steepest.minimize import METHODS, EmpiricalRisk, Result, minimize
from steepest.rules import SGD, Adagrad, Adam, AdamW, Lion, MoMo, NAdam, RMSprop
from steepest.stopping import Status

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


needs_lbfgs = pytest.mark.skipif(
    not has_module("steepest.rules.lbfgs"), reason="steepest.rules.lbfgs has not landed"
)
needs_newton = pytest.mark.skipif(
    not has_module("steepest.rules.newton"), reason="steepest.rules.newton has not landed"
)


# --------------------------------------------------------------------------- problems


def spd_quadratic(dim: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A well-conditioned SPD matrix A (eigenvalues in [1, 4]) and a vector b, float64."""
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    eigenvalues = torch.linspace(1.0, 4.0, dim, dtype=torch.float64)
    matrix = basis @ torch.diag(eigenvalues) @ basis.T
    return matrix, torch.randn(dim, generator=generator, dtype=torch.float64)


A, B = spd_quadratic()
X_STAR = torch.linalg.solve(A, B)  # the minimizer of 0.5 x'Ax - b'x


def quadratic(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x @ (A.to(x) @ x) - B.to(x) @ x


def rosenbrock(x: torch.Tensor) -> torch.Tensor:
    return (100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2).sum()


class Counted:
    """Wraps an objective and counts its calls, independently of minimize's counters."""

    def __init__(self, fun: Any) -> None:
        self.fun = fun
        self.calls = 0

    def __call__(self, x: Any) -> torch.Tensor:
        self.calls += 1
        return self.fun(x)


def start(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.zeros(5, dtype=dtype)


# --------------------------------------------------------------------------- minima


def test_gradient_descent_reaches_the_closed_form_minimum() -> None:
    result = minimize(quadratic, start(), method="sgd", lr=0.25, gtol=1e-10)
    assert result.success and result.status == Status.GRADIENT_TOLERANCE
    # ||x - x*|| <= ||A^-1|| ||g||_2 <= sqrt(5) * gtol / lambda_min
    assert torch.allclose(result.x, X_STAR, rtol=0, atol=math.sqrt(5) * 1e-10)
    assert result.fun == pytest.approx(float(quadratic(X_STAR)), rel=1e-12)
    assert result.grad_norm == pytest.approx(float((A @ result.x - B).norm()), rel=1e-6)


# One row per first-order optimizer: a setting that converges on the quadratic, and the
# distance to x* it can reach (sign-based Lion only gets within about its step size).
FIRST_ORDER = [
    ("sgd", SGD, {"lr": 0.25}, 1e-6),
    ("adagrad", Adagrad, {"lr": 0.5}, 1e-6),
    ("rmsprop", RMSprop, {"lr": 0.01}, 1e-2),
    ("adam", Adam, {"lr": 0.05}, 1e-6),
    ("adamw", AdamW, {"lr": 0.05, "options": {"weight_decay": 0.0}}, 1e-6),
    ("nadam", NAdam, {"lr": 0.05}, 1e-6),
    ("lion", Lion, {"lr": lambda step: 0.1 * 0.99**step}, 1e-2),
    # MoMo's Polyak step aims at the lower bound: here the minimum, -b'A^-1 b / 2
    ("momo", MoMo, {"lr": 10.0, "options": {"lower_bound": float(-0.5 * B @ X_STAR)}}, 1e-6),
]


@pytest.mark.parametrize(("name", "cls", "settings", "tolerance"), FIRST_ORDER, ids=lambda v: str(v))
def test_every_first_order_method_by_name_reaches_the_minimum(
    name: str, cls: type, settings: dict[str, Any], tolerance: float
) -> None:
    result = minimize(quadratic, start(), method=name.upper(), max_iter=3000, gtol=1e-7, **settings)
    assert result.method == cls.__name__
    assert float((result.x - X_STAR).norm()) < tolerance


def test_package_exports_the_function_and_its_types() -> None:
    import steepest

    assert steepest.minimize is minimize
    assert steepest.EmpiricalRisk is EmpiricalRisk and steepest.Result is Result


def test_method_names_cover_every_optimizer() -> None:
    assert set(METHODS) == {
        "sgd", "adagrad", "rmsprop", "adam", "adamw", "nadam", "lion", "momo", "lbfgs", "newton",
        "newtoncg", "prodigy", "dadaptadam", "dadaptsgd", "schedulefreesgd", "schedulefreeadamw",
    }


def test_a_class_a_factory_and_a_name_run_the_same() -> None:
    by_name = minimize(quadratic, start(), method="sgd", lr=0.1, options={"momentum": 0.5}, max_iter=30)
    by_class = minimize(quadratic, start(), method=SGD, lr=0.1, options={"momentum": 0.5}, max_iter=30)
    by_factory = minimize(
        quadratic, start(), method=lambda params: SGD(params, lr=0.1, momentum=0.5), max_iter=30
    )
    assert torch.equal(by_name.x, by_class.x) and torch.equal(by_name.x, by_factory.x)
    assert by_name.history == by_factory.history


def test_torch_optim_classes_work_too() -> None:
    ours = minimize(quadratic, start(), method=Adam, lr=0.05, max_iter=50)
    theirs = minimize(quadratic, start(), method=torch.optim.Adam, lr=0.05, max_iter=50)
    torch.testing.assert_close(ours.x, theirs.x, rtol=1e-12, atol=1e-12)


def test_a_learning_rate_schedule_is_followed_and_recorded() -> None:
    result = minimize(quadratic, start(), method="sgd", lr=lambda step: 0.1 / (1 + step), max_iter=5)
    assert result.history["lr"] == pytest.approx([0.1 / (1 + k) for k in range(6)])


# --------------------------------------------------------------------------- closure methods


def test_closure_methods_are_driven_with_a_closure_and_counted_honestly() -> None:
    counted = Counted(rosenbrock)
    x0 = torch.tensor([-1.2, 1.0], dtype=torch.float64)
    result = minimize(counted, x0, method=torch.optim.LBFGS)
    assert result.nfev == counted.calls and result.ngev == counted.calls
    assert result.success
    assert float((result.x - 1.0).abs().max()) < 1e-4


class TwoEvaluationsPerStep(torch.optim.Optimizer):
    """A closure-driven gradient step that also evaluates at the new point, as a line search's
    last trial does; records the batch each closure call saw."""

    requires_closure = True

    def __init__(self, params: Any, lr: float = 0.1) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(p.grad, alpha=-group["lr"])
        closure()
        return loss


def test_the_closure_remembers_its_last_point() -> None:
    counted = Counted(quadratic)
    result = minimize(counted, start(), method=TwoEvaluationsPerStep, lr=0.25, max_iter=4, gtol=None)
    # Per iteration the step's first call is at the point just evaluated (remembered) and its
    # second call is at the new point, where minimize then looks (remembered): one real call.
    assert counted.calls == result.nfev == result.ngev == 1 + 4
    reference = minimize(quadratic, start(), method="sgd", lr=0.25, max_iter=4, gtol=None)
    torch.testing.assert_close(result.x, reference.x, rtol=0, atol=1e-15)


@needs_lbfgs
def test_lbfgs_on_rosenbrock_matches_scipy() -> None:
    for x0 in ([-1.2, 1.0], [-1.2, 1.0, -0.5, 0.8, 1.3]):
        ours = minimize(rosenbrock, torch.tensor(x0, dtype=torch.float64), method="L-BFGS")
        theirs = scipy.optimize.minimize(
            scipy.optimize.rosen, np.array(x0), jac=scipy.optimize.rosen_der, method="L-BFGS-B"
        )
        assert ours.success and theirs.success
        np.testing.assert_allclose(ours.x.numpy(), theirs.x, rtol=0, atol=1e-6)
        assert ours.fun == pytest.approx(theirs.fun, rel=1e-6, abs=1e-12)
        # Same algorithm, same line search, same stopping test: same path.
        assert (ours.nit, ours.nfev) == (theirs.nit, theirs.nfev)


@needs_lbfgs
def test_lbfgs_finds_the_quadratics_minimum() -> None:
    result = minimize(quadratic, start(), method="lbfgs", gtol=1e-7, ftol=None)
    assert (result.success, result.status) == (True, Status.GRADIENT_TOLERANCE)
    assert float((A @ result.x - B).abs().max()) <= 1e-7  # its own tolerance did not stop it
    torch.testing.assert_close(result.x, X_STAR, rtol=0, atol=1e-7)


@needs_lbfgs
def test_lbfgs_that_cannot_progress_stops_and_says_so() -> None:
    # gtol=1e-12 is below what a line search on f can resolve (near x*, f changes by
    # |g|^2 / lambda, under f's rounding error once |g| < 1e-8): the search finds no
    # decrease, x stays put, and with ftol off only the stall test can end the run.
    result = minimize(quadratic, start(), method="lbfgs", gtol=1e-12, ftol=None)
    assert (result.success, result.status) == (False, Status.NO_PROGRESS)
    assert result.nit < 30 and "no progress" in result.message
    torch.testing.assert_close(result.x, X_STAR, rtol=0, atol=1e-7)
    # with scipy's default ftol the same stall reads as converged, as in scipy
    assert minimize(quadratic, start(), method="lbfgs", gtol=1e-12).status == Status.FUNCTION_TOLERANCE


@needs_newton
def test_newton_solves_a_quadratic_in_one_iteration_with_exact_counts() -> None:
    counted = Counted(quadratic)
    result = minimize(counted, start(), method="newton", gtol=1e-9)
    assert (result.success, result.nit) == (True, 1)
    torch.testing.assert_close(result.x, X_STAR, rtol=0, atol=1e-12)
    # fun: at x0, then the line search's full Newton step (accepted; minimize's look there
    # reuses it). Gradients: minimize's at x0, Newton's own (with graph) at x0, minimize's
    # at x1 from the remembered graph.
    assert (result.nfev, result.ngev, counted.calls) == (2, 3, 2)


@needs_newton
@pytest.mark.parametrize("method", ["newtoncg", "Newton-CG", "newton_cg"])
def test_newton_cg_solves_a_quadratic(method: str) -> None:
    result = minimize(quadratic, start(), method=method, gtol=1e-9)
    assert result.success and result.method == "NewtonCG"
    assert result.nit <= 10  # inexact CG solves (forcing terms), then superlinear
    torch.testing.assert_close(result.x, X_STAR, rtol=0, atol=1e-9)


@needs_newton
def test_newton_on_rosenbrock_matches_scipy() -> None:
    x0 = np.array([-1.2, 1.0])
    ours = minimize(rosenbrock, torch.tensor(x0), method="newtoncg", gtol=1e-8)
    theirs = scipy.optimize.minimize(
        scipy.optimize.rosen, x0, jac=scipy.optimize.rosen_der,
        hess=scipy.optimize.rosen_hess, method="Newton-CG", options={"xtol": 1e-12},
    )
    np.testing.assert_allclose(ours.x.numpy(), theirs.x, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- why it stopped


def test_max_iter_is_a_failure() -> None:
    result = minimize(quadratic, start(), method="sgd", lr=1e-3, max_iter=7)
    assert (result.success, result.status, result.nit) == (False, Status.MAX_ITERATIONS, 7)
    assert result.message == "stopped at the iteration limit max_iter=7"


def test_gtol_is_a_success_with_scipys_inf_norm() -> None:
    result = minimize(quadratic, start(), method="sgd", lr=0.25)
    assert (result.success, result.status) == (True, Status.GRADIENT_TOLERANCE)
    gradient = A @ result.x - B
    assert float(gradient.abs().max()) <= 1e-5 < float(gradient.norm())  # inf-norm, not 2-norm
    assert "gtol=1e-05" in result.message


def test_ftol_is_a_success() -> None:
    result = minimize(quadratic, start(), method="sgd", lr=0.01, gtol=None, ftol=1e-6)
    assert (result.success, result.status) == (True, Status.FUNCTION_TOLERANCE)
    last, before = result.history["fun"][-1], result.history["fun"][-2]
    assert abs(before - last) / max(abs(before), abs(last), 1.0) <= 1e-6
    before_that = result.history["fun"][-3]
    assert abs(before_that - before) / max(abs(before_that), abs(before), 1.0) > 1e-6


def test_xtol_is_a_success() -> None:
    result = minimize(quadratic, start(), method="sgd", lr=0.1, gtol=None, xtol=1e-6)
    assert (result.success, result.status) == (True, Status.STEP_TOLERANCE)
    assert "xtol=1e-06" in result.message


def test_ftol_auto_is_off_for_first_order_methods() -> None:
    # A crawl that changes f by < 2.2e-9 relative per step is not convergence for SGD.
    result = minimize(quadratic, start(), method="sgd", lr=1e-10, max_iter=20)
    assert result.status == Status.MAX_ITERATIONS


def test_target_is_a_success() -> None:
    goal = float(quadratic(X_STAR)) + 1e-3
    result = minimize(quadratic, start(), method="sgd", lr=0.1, stopping=stopping.target(goal))
    assert (result.success, result.status) == (True, Status.TARGET_REACHED)
    assert result.fun <= goal < result.history["fun"][-2]


def test_divergence_is_a_failure_and_the_nan_guard_is_always_on() -> None:
    too_large = minimize(quadratic, start(), method="sgd", lr=10.0, max_iter=5000)
    assert (too_large.success, too_large.status) == (False, Status.DIVERGED)
    assert not math.isfinite(too_large.fun) and too_large.nit < 5000
    early = minimize(quadratic, start(), method="sgd", lr=10.0, stopping=stopping.divergence(10))
    assert early.status == Status.DIVERGED and early.nit < too_large.nit and math.isfinite(early.fun)


def test_max_time_is_a_failure() -> None:
    result = minimize(quadratic, start(), method="sgd", lr=1e-3, stopping=stopping.max_time(1e-6))
    assert (result.success, result.status, result.nit) == (False, Status.MAX_TIME, 0)


def test_patience_restores_the_best_iterate() -> None:
    seen: list[torch.Tensor] = []

    def record(observation: stopping.Observation) -> None:
        seen.append(observation.params()[0].detach().clone())

    # Oscillating SGD (lr near 2 / lambda_max) on a bumpy objective, so that the best point
    # is not the last one.
    def bumpy(x: torch.Tensor) -> torch.Tensor:
        return quadratic(x) + 0.05 * torch.sin(20 * x).sum()

    result = minimize(
        bumpy, start(), method="sgd", lr=0.45, gtol=None, max_iter=500,
        stopping=stopping.any_of(record, stopping.patience(10)),
    )
    assert (result.success, result.status) == (True, Status.NO_IMPROVEMENT)
    best = int(np.argmin(result.history["fun"]))
    assert best < result.nit
    assert f"at iteration {best}" in result.message
    assert torch.equal(result.x, seen[best])
    assert result.fun == min(result.history["fun"]) == pytest.approx(float(bumpy(result.x)), abs=1e-12)


def test_a_criterion_is_reset_at_the_start() -> None:
    plateau = stopping.ftol(1e-12)
    first = minimize(quadratic, start(), method="sgd", lr=0.25, gtol=None, stopping=plateau)
    second = minimize(quadratic, start(), method="sgd", lr=0.25, gtol=None, stopping=plateau)
    assert first.nit == second.nit


# --------------------------------------------------------------------------- counts, history


def test_first_order_counts_are_one_evaluation_per_iteration_plus_the_last_point() -> None:
    counted = Counted(quadratic)
    result = minimize(counted, start(), method="adam", lr=0.01, max_iter=9)
    assert (result.nit, result.nfev, result.ngev, counted.calls) == (9, 10, 10, 10)


def test_history_holds_the_start_and_every_iteration() -> None:
    result = minimize(quadratic, start(), method="sgd", lr=0.05, max_iter=12)
    assert all(len(values) == result.nit + 1 for values in result.history.values())
    assert set(result.history) == {"fun", "grad_norm", "lr"}
    assert result.history["fun"][0] == pytest.approx(float(quadratic(start())))
    assert result.history["grad_norm"][0] == pytest.approx(float(B.norm()))
    assert result.history["fun"][-1] == result.fun
    assert result.history["lr"] == [0.05] * 13


def test_gtol_at_the_start_needs_no_iteration() -> None:
    result = minimize(quadratic, X_STAR.clone(), method="sgd", lr=0.1)
    assert (result.nit, result.nfev, result.success) == (0, 1, True)


# --------------------------------------------------------------------------- structures, dtypes


def test_dict_x0_keeps_its_structure() -> None:
    def split_quadratic(x: dict[str, torch.Tensor]) -> torch.Tensor:
        return quadratic(torch.cat([x["head"], x["tail"].reshape(-1)]))

    x0 = {"head": torch.zeros(1, dtype=torch.float64), "tail": torch.zeros(2, 2, dtype=torch.float64)}
    result = minimize(split_quadratic, x0, method="sgd", lr=0.25, gtol=1e-9)
    assert isinstance(result.x, dict) and list(result.x) == ["head", "tail"]
    assert result.x["tail"].shape == (2, 2)
    flat = torch.cat([result.x["head"], result.x["tail"].reshape(-1)])
    torch.testing.assert_close(flat, X_STAR, rtol=0, atol=1e-8)


def test_list_and_tuple_x0_keep_their_structure() -> None:
    def pair_quadratic(x: Any) -> torch.Tensor:
        return quadratic(torch.cat([x[0], x[1]]))

    zeros = torch.zeros(5, dtype=torch.float64)
    as_list = minimize(pair_quadratic, [zeros[:2], zeros[2:]], method="sgd", lr=0.25, gtol=1e-9)
    as_tuple = minimize(pair_quadratic, (zeros[:2], zeros[2:]), method="sgd", lr=0.25, gtol=1e-9)
    assert isinstance(as_list.x, list) and isinstance(as_tuple.x, tuple)
    torch.testing.assert_close(torch.cat(as_list.x), X_STAR, rtol=0, atol=1e-8)
    assert all(torch.equal(a, b) for a, b in zip(as_list.x, as_tuple.x))


def test_x0_is_left_untouched() -> None:
    x0 = torch.full((5,), 0.5, dtype=torch.float64)
    structured = {"x": x0}
    minimize(lambda x: quadratic(x["x"]), structured, method="adam", lr=0.1, max_iter=20)
    assert torch.equal(x0, torch.full((5,), 0.5, dtype=torch.float64))
    assert x0.grad is None and not x0.requires_grad and structured["x"] is x0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtype_is_kept(dtype: torch.dtype) -> None:
    result = minimize(quadratic, start(dtype), method="sgd", lr=0.1, max_iter=3)
    assert result.x.dtype == dtype and not result.x.requires_grad
    assert result.fun < float(quadratic(start()))


def test_float32_reaches_float32_precision() -> None:
    result = minimize(quadratic, start(torch.float32), method="sgd", lr=0.25, gtol=1e-5)
    assert result.success
    torch.testing.assert_close(result.x.double(), X_STAR, rtol=0, atol=1e-5)


@needs_cuda
def test_cuda_tensors_stay_on_the_device() -> None:
    x0 = {"a": torch.zeros(2, device="cuda"), "b": torch.zeros(3, device="cuda", dtype=torch.float64)}
    result = minimize(
        lambda x: quadratic(torch.cat([x["a"].double(), x["b"]])), x0, method="adam", lr=0.05,
        max_iter=2000, gtol=1e-6,
    )
    assert result.x["a"].device.type == "cuda" and result.x["b"].dtype == torch.float64
    flat = torch.cat([result.x["a"].double(), result.x["b"]]).cpu()
    torch.testing.assert_close(flat, X_STAR, rtol=0, atol=1e-4)


def test_result_prints_readably() -> None:
    text = str(minimize(quadratic, start(), method="sgd", lr=0.25))
    for label in ("message", "success", "status", "fun", "x", "nit", "nfev", "ngev", "wall_time"):
        assert f"{label}:" in text
    assert "GRADIENT_TOLERANCE" in text and "tensor([" in text
    big = minimize(lambda x: (x**2).sum(), torch.ones(100), method="sgd", lr=0.5)
    assert "shape=(100,)" in str(big)
    assert isinstance(big, Result)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "error", "text"),
    [
        (lambda: minimize(quadratic, start(), method="bfgs"), ValueError, "method='bfgs'"),
        (lambda: minimize(quadratic, start(), method=42), TypeError, "method"),
        (lambda: minimize(quadratic, start(), method=dict), TypeError, "dict"),
        (lambda: minimize(quadratic, start(), method=lambda p: SGD(p), lr=0.1), ValueError, "factory"),
        (lambda: minimize(quadratic, start(), method="sgd", lr=0.1, options={"lr": 1}), ValueError, "twice"),
        (lambda: minimize(quadratic, start(), method="sgd", lr=-1.0), ValueError, "lr"),
        (lambda: minimize(quadratic, torch.zeros(5, dtype=torch.int64)), TypeError, "floating-point"),
        (lambda: minimize(quadratic, [1.0, 2.0]), TypeError, "x0[0]"),
        (lambda: minimize(quadratic, None), ValueError, "x0 is None"),
        (lambda: minimize(quadratic, []), ValueError, "no tensor"),
        (lambda: minimize(lambda x: x * 2, start()), ValueError, "scalar"),
        (lambda: minimize(lambda x: 1.0, start()), TypeError, "scalar tensor"),
        (lambda: minimize(lambda x: torch.tensor(1.0), start()), ValueError, "no gradient"),
        (lambda: minimize(quadratic, start(), max_iter=0), ValueError, "max_iter=0"),
        (lambda: minimize(quadratic, start(), gtol=-1e-5), ValueError, "gtol=-1e-05"),
        (lambda: minimize(quadratic, start(), ftol=-1.0), ValueError, "ftol=-1.0"),
        (lambda: minimize(quadratic, start(), xtol=math.nan), ValueError, "xtol=nan"),
        (lambda: minimize(quadratic, start(), stopping="gtol"), TypeError, "stopping"),
    ],
)
def test_bad_input_names_the_argument(call: Any, error: type, text: str) -> None:
    with pytest.raises(error) as raised:
        call()
    assert text in str(raised.value)


def test_an_unknown_method_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown method='bfgs'.*'lbfgs'"):
        minimize(quadratic, start(), method="bfgs")


# --------------------------------------------------------------------------- EmpiricalRisk


def linear(w: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    return inputs @ w


def regression_data(n: int = 200, d: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, d, generator=generator, dtype=torch.float64)
    weights = torch.randn(d, generator=generator, dtype=torch.float64)
    targets = inputs @ weights + 0.5 * torch.randn(n, generator=generator, dtype=torch.float64)
    return inputs, targets


def gradient_of(objective: Any, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    value = objective(x)
    (grad,) = torch.autograd.grad(value, x)
    return float(value.detach()), grad


def test_chunked_full_batch_gradient_equals_the_one_shot_gradient() -> None:
    inputs, targets = regression_data(n=103)
    w = torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    one_shot = EmpiricalRisk(linear, F.mse_loss, (inputs, targets))
    chunked = EmpiricalRisk(linear, F.mse_loss, (inputs, targets), chunk_size=10)  # 11 chunks
    value, grad = gradient_of(one_shot, w)
    chunked_value, chunked_grad = gradient_of(chunked, w)
    assert chunked_value == pytest.approx(value, rel=1e-12)
    torch.testing.assert_close(chunked_grad, grad, rtol=0, atol=1e-12)
    explicit = 2 * inputs.T @ (inputs @ w - targets) / len(inputs)  # d/dw mean (Xw - y)^2
    torch.testing.assert_close(grad, explicit, rtol=0, atol=1e-12)


def test_chunked_gradient_of_a_module_equals_the_one_shot_gradient() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    inputs = torch.randn(50, 4, dtype=torch.float64)
    labels = torch.randint(3, (50,))
    params = {name: p.detach().clone().requires_grad_(True) for name, p in model.named_parameters()}
    grads = []
    for chunk_size in (None, 7):
        risk = EmpiricalRisk(model, F.cross_entropy, (inputs, labels), chunk_size=chunk_size)
        grads.append(torch.autograd.grad(risk(params), list(params.values())))
    for one_shot, chunked in zip(*grads):
        torch.testing.assert_close(chunked, one_shot, rtol=0, atol=1e-12)


def test_chunked_second_derivatives_are_exact_too() -> None:
    inputs, targets = regression_data(n=23)
    risk = EmpiricalRisk(linear, F.mse_loss, (inputs, targets), chunk_size=5)
    w = torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    hessian = torch.autograd.functional.hessian(risk, w)
    torch.testing.assert_close(hessian, 2 * inputs.T @ inputs / len(inputs), rtol=0, atol=1e-12)


@needs_newton
def test_newton_on_a_chunked_risk_solves_least_squares_in_one_iteration() -> None:
    inputs, targets = regression_data(n=60)
    risk = EmpiricalRisk(linear, F.mse_loss, (inputs, targets), chunk_size=7)
    result = minimize(risk, torch.zeros(5, dtype=torch.float64), method="newton", gtol=1e-10)
    exact = torch.linalg.lstsq(inputs, targets.unsqueeze(1)).solution.squeeze(1)
    assert (result.success, result.nit) == (True, 1)
    torch.testing.assert_close(result.x, exact, rtol=0, atol=1e-10)


def test_without_replacement_every_example_once_per_epoch() -> None:
    n, batch_size = 10, 3
    seen: list[list[int]] = []

    def record(w: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        seen.append(inputs[:, 0].long().tolist())
        return inputs @ w

    inputs = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    risk = EmpiricalRisk(record, F.mse_loss, (inputs, torch.zeros(n, dtype=torch.float64)), batch_size,
                         generator=torch.Generator().manual_seed(0))
    assert risk.batches_per_epoch == 4
    w = torch.zeros(1, dtype=torch.float64)
    for _ in range(8):
        risk.next_batch()
        risk(w)
    assert [len(batch) for batch in seen] == [3, 3, 3, 1] * 2
    for epoch in range(2):
        assert sorted(sum(seen[4 * epoch : 4 * epoch + 4], [])) == list(range(n))
    assert seen[:4] != seen[4:]  # a fresh permutation each epoch
    assert (risk.epoch, risk.step_in_epoch, risk.examples_seen, risk.steps) == (2, 0, 20, 8)
    risk.next_batch()
    assert (risk.epoch, risk.step_in_epoch, risk.examples_seen) == (2, 1, 23)


def test_with_replacement_bookkeeping() -> None:
    inputs, targets = regression_data(n=10)
    risk = EmpiricalRisk(linear, F.mse_loss, (inputs, targets), 4, replacement=True)
    for _ in range(7):
        risk.next_batch()
    assert risk.batches_per_epoch == 3  # ceil(10 / 4)
    assert (risk.steps, risk.epoch, risk.step_in_epoch, risk.examples_seen) == (7, 2, 1, 28)


def test_full_batch_is_one_epoch_per_iteration() -> None:
    inputs, targets = regression_data(n=30)
    risk = EmpiricalRisk(linear, F.mse_loss, (inputs, targets))
    result = minimize(risk, torch.zeros(5, dtype=torch.float64), method="sgd", lr=0.1, max_iter=9)
    assert not risk.is_stochastic
    assert (risk.epoch, risk.examples_seen) == (result.nit + 1, 30 * (result.nit + 1))


def test_closure_evaluations_of_one_iteration_share_its_batch() -> None:
    batches: list[tuple[int, ...]] = []

    def record(w: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        batches.append(tuple(inputs[:, 0].tolist()))
        return inputs @ w

    inputs, targets = regression_data(n=40)
    risk = EmpiricalRisk(record, F.mse_loss, (inputs, targets), batch_size=8,
                         generator=torch.Generator().manual_seed(0))
    result = minimize(risk, torch.zeros(5, dtype=torch.float64), method=TwoEvaluationsPerStep, lr=0.1,
                      max_iter=6, gtol=None)
    # Start: one evaluation. Each iteration: the step's second call (new point, same batch),
    # then minimize's look at the new point on the next batch (new batch: not remembered).
    assert result.nfev == 1 + 2 * 6 == len(batches)
    for iteration in range(6):
        looked, stepped = batches[2 * iteration], batches[2 * iteration + 1]
        assert looked == stepped  # the step's evaluation used the batch of its iteration
        assert batches[2 * iteration + 2] != stepped  # the next iteration draws anew
    assert risk.steps == 7


def test_x0_none_starts_from_the_modules_parameters_and_leaves_it_alone() -> None:
    inputs, targets = regression_data()
    model = nn.Linear(5, 1).double()
    before = {name: p.detach().clone() for name, p in model.state_dict().items()}
    risk = EmpiricalRisk(model, lambda prediction, y: F.mse_loss(prediction.squeeze(1), y), (inputs, targets))
    result = minimize(risk, method="sgd", lr=0.2, gtol=1e-10)
    assert result.success and set(result.x) == {"weight", "bias"}
    assert all(torch.equal(model.state_dict()[name], value) for name, value in before.items())
    design = torch.cat([inputs, torch.ones(len(inputs), 1, dtype=torch.float64)], dim=1)
    exact = torch.linalg.lstsq(design, targets.unsqueeze(1)).solution.squeeze(1)
    model.load_state_dict(result.x, strict=False)
    found = torch.cat([model.weight.detach().squeeze(0), model.bias.detach()])
    torch.testing.assert_close(found, exact, rtol=0, atol=1e-8)


def test_a_dataset_gives_the_same_values_as_tensors() -> None:
    inputs, targets = regression_data(n=30)

    class Pairs(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(inputs)

        def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
            return inputs[index], targets[index]

    w = torch.ones(5, dtype=torch.float64)
    from_tensors = EmpiricalRisk(linear, F.mse_loss, (inputs, targets), chunk_size=7)
    from_dataset = EmpiricalRisk(linear, F.mse_loss, Pairs(), chunk_size=7)
    from_tensor_dataset = EmpiricalRisk(linear, F.mse_loss, torch.utils.data.TensorDataset(inputs, targets))
    expected = float(F.mse_loss(inputs @ w, targets))
    for risk in (from_tensors, from_dataset, from_tensor_dataset):
        assert float(risk.full_risk(w)) == pytest.approx(expected, rel=1e-12)


def test_the_generator_makes_stochastic_runs_reproducible() -> None:
    inputs, targets = regression_data(n=50)

    def run(seed: int) -> torch.Tensor:
        risk = EmpiricalRisk(linear, F.mse_loss, (inputs, targets), 5,
                             generator=torch.Generator().manual_seed(seed))
        return minimize(risk, torch.zeros(5, dtype=torch.float64), method="sgd", lr=0.01, max_iter=30).x

    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))


# Batch, stochastic and mini-batch gradient descent on least squares, n = 200, d = 5, against
# the closed form. Full batch: constant lr = 1 / L converges linearly to the gtol floor. The
# stochastic modes use lr_k = 2 / (mu (k + k0)), the classic O(1/k) schedule for strongly
# convex objectives (mu: smallest Hessian eigenvalue), with k0 keeping the first steps
# stable; their error after a fixed budget is noise-limited, hence the wider tolerances
# (measured errors: about 5e-4 relative for SGD after 30 epochs, 2e-4 for mini-batches).
@pytest.mark.parametrize(
    ("batch_size", "epochs", "k0", "relative_tolerance"),
    [("full", None, None, 1e-9), (20, 60, 40, 3e-3), (1, 30, 200, 5e-3)],
)
def test_batch_stochastic_and_mini_batch_descent_reach_the_same_minimum(
    batch_size: int | str, epochs: int | None, k0: int | None, relative_tolerance: float
) -> None:
    inputs, targets = regression_data()
    exact = torch.linalg.lstsq(inputs, targets.unsqueeze(1)).solution.squeeze(1)
    hessian_eigenvalues = torch.linalg.eigvalsh(2 * inputs.T @ inputs / len(inputs))
    mu, big_l = float(hessian_eigenvalues.min()), float(hessian_eigenvalues.max())
    risk = EmpiricalRisk(linear, F.mse_loss, (inputs, targets), batch_size,
                         generator=torch.Generator().manual_seed(1))
    x0 = torch.zeros(5, dtype=torch.float64)
    if batch_size == "full":
        result = minimize(risk, x0, method="sgd", lr=1 / big_l, gtol=1e-11)
        assert result.success
    else:
        steps = epochs * risk.batches_per_epoch
        result = minimize(risk, x0, method="sgd", lr=lambda k: 2 / (mu * (k + k0)),
                          max_iter=steps, gtol=None)
        assert risk.epoch == epochs and result.nit == steps
    error = float((result.x - exact).norm() / exact.norm())
    assert error < relative_tolerance


def test_full_batch_l2_logistic_regression_matches_scipy() -> None:
    generator = torch.Generator().manual_seed(4)
    inputs = torch.randn(150, 3, generator=generator, dtype=torch.float64)
    labels = (inputs @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 0.3 * torch.randn(
        150, generator=generator, dtype=torch.float64) > 0).double()
    l2 = 0.1

    def logistic(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x @ w

    risk = EmpiricalRisk(logistic, F.binary_cross_entropy_with_logits, (inputs, labels), chunk_size=40)

    def objective(w: torch.Tensor) -> torch.Tensor:
        return risk(w) + 0.5 * l2 * (w**2).sum()

    def objective_numpy(w: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = gradient_of(lambda v: F.binary_cross_entropy_with_logits(inputs @ v, labels)
                                  + 0.5 * l2 * (v**2).sum(), torch.from_numpy(w))
        return value, grad.numpy()

    reference = scipy.optimize.minimize(objective_numpy, np.zeros(3), jac=True, method="L-BFGS-B",
                                        options={"gtol": 1e-12, "ftol": 1e-15})
    result = minimize(objective, torch.zeros(3, dtype=torch.float64), method="sgd", lr=2.0,
                      options={"momentum": 0.5}, gtol=1e-10)
    assert result.success
    np.testing.assert_allclose(result.x.numpy(), reference.x, rtol=0, atol=1e-8)


@pytest.mark.parametrize(
    ("arguments", "error", "text"),
    [
        ({"batch_size": 0}, ValueError, "batch_size=0"),
        ({"batch_size": 11}, ValueError, "batch_size=11"),
        ({"batch_size": "half"}, TypeError, "batch_size='half'"),
        ({"replacement": True}, ValueError, "replacement"),
        ({"batch_size": 2, "replacement": "yes"}, TypeError, "replacement='yes'"),
        ({"chunk_size": 0}, ValueError, "chunk_size=0"),
        ({"generator": 3}, TypeError, "generator"),
    ],
)
def test_empirical_risk_bad_arguments(arguments: dict[str, Any], error: type, text: str) -> None:
    inputs, targets = regression_data(n=10)
    with pytest.raises(error) as raised:
        EmpiricalRisk(linear, F.mse_loss, (inputs, targets), **arguments)
    assert text in str(raised.value)


def test_empirical_risk_bad_data() -> None:
    inputs, targets = regression_data(n=10)
    with pytest.raises(ValueError, match="10 and 9"):
        EmpiricalRisk(linear, F.mse_loss, (inputs, targets[:9]))
    with pytest.raises(TypeError, match="pair of tensors"):
        EmpiricalRisk(linear, F.mse_loss, (inputs, targets, targets))
    with pytest.raises(TypeError, match="pair of tensors"):
        EmpiricalRisk(linear, F.mse_loss, inputs.numpy())


def test_built_in_problem_supplies_its_starting_point() -> None:
    from steepest import problems

    problem = problems.rosenbrock()
    result = minimize(problem, method="lbfgs", gtol=1e-8)
    assert result.success
    assert torch.allclose(result.x, torch.ones_like(result.x), atol=1e-6)
    assert torch.equal(problem.x0, problems.rosenbrock().x0)  # the start was not modified


# --------------------------------------------------------------------------- diagnosis and safety


def test_diagnose_says_too_large_for_a_rate_past_the_stability_limit():
    from steepest import problems

    problem = problems.quadratic(20, 100.0)  # largest curvature 100: SGD is stable below 0.02
    result = minimize(problem, None, "sgd", lr=0.05, max_iter=100, gtol=None, diagnose=True)
    assert result.diagnoses and result.diagnoses[0].regime == "too_large"
    assert "too large" in result.advice and "advice" in str(result)
    assert len(result.history["regime"]) == len(result.history["fun"])


def test_diagnose_reads_the_length_of_every_step():
    # SGD's step is lr x the gradient, so what a step can do to the loss to first order,
    # gradient norm x step length, is lr x ||g||^2: the monitor's window holds its median.
    from steepest import problems

    problem = problems.quadratic(20, 100.0)
    result = minimize(problem, None, "sgd", lr=0.01, max_iter=40, gtol=None, diagnose=True)
    grad_norms = np.array(result.history["grad_norm"][:20])
    expected = np.median(0.01 * grad_norms**2)
    assert result.diagnoses[0].evidence["step_effect"] == pytest.approx(expected, rel=1e-9)


def test_diagnose_says_too_small_for_a_crawling_rate():
    from steepest import problems

    problem = problems.rosenbrock(2)  # from (-1.2, 1): steps of ~1e-5 barely move the iterate
    result = minimize(problem, None, "sgd", lr=1e-6, max_iter=100, gtol=None, diagnose=True)
    assert result.diagnoses[-1].regime == "too_small"
    assert "too small" in result.advice
    assert "too_small" in result.history["regime"]


def test_diagnose_off_keeps_the_result_plain():
    result = minimize(quadratic, start(), "sgd", lr=0.25)
    assert result.advice is None and "regime" not in result.history and result.safety is None


def test_on_nonfinite_backoff_recovers_from_a_nan_region():
    calls = {"n": 0}

    def flaky(x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        value = quadratic(x)
        return value * float("nan") if calls["n"] == 15 else value

    result = minimize(flaky, start(), "sgd", lr=0.25, on_nonfinite="backoff")
    assert result.success and result.safety["backoffs"] == 1 and result.safety["nonfinite"] == 1
    assert torch.allclose(result.x, X_STAR, atol=1e-4)


def test_on_nonfinite_stop_and_raise():
    def broken(x: torch.Tensor) -> torch.Tensor:
        return quadratic(x) * float("nan")

    stopped = minimize(broken, start(), "sgd", lr=0.25, on_nonfinite="stop")
    assert not stopped.success and "safe-step" in stopped.message
    with pytest.raises(FloatingPointError, match="step 0"):
        minimize(broken, start(), "sgd", lr=0.25, on_nonfinite="raise")
