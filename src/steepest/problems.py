"""Built-in objectives with a standard start and a known optimum, for tests and benchmarks.

Every problem is a :class:`Problem`: call it on a 1-D tensor ``x`` of length ``dim`` (any
floating dtype, any device) to get a scalar tensor you can differentiate, start from
``x0``, and measure progress as the gap ``f(x) - f_star``::

    >>> from steepest import problems
    >>> rosen = problems.rosenbrock(dim=10)
    >>> x = rosen.x0.clone().requires_grad_()
    >>> rosen(x).backward()
    >>> rosen.gap(rosen.x_star)
    0.0

The optimum is a closed form where one exists (quadratic bowls, the test functions, least
squares). For logistic and softmax regression it is computed once per process by a trusted
solver, scipy's L-BFGS-B at a tight tolerance polished by two exact Newton steps, and cached
in memory; nothing is downloaded: the data sets ship with scikit-learn.

``PROBLEMS`` maps each name to its factory and ``by_name(name, **kwargs)`` builds one, so
scripts and command lines can choose problems by name.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "PROBLEMS",
    "Problem",
    "beale",
    "by_name",
    "himmelblau",
    "least_squares",
    "logistic_regression",
    "quadratic",
    "rosenbrock",
    "softmax_regression",
]

Objective = Callable[[Tensor, dict[str, Tensor]], Tensor]


class Problem:
    """An objective f: R^dim -> R with a standard start ``x0`` and its optimum ``f_star``.

    Attributes:
        name: what the problem is, with its settings, e.g. ``"rosenbrock(dim=10)"``.
        dim: number of variables.
        x0: the standard starting point (float64, CPU; a fresh copy on every access, so
            optimizing ``problem.x0.requires_grad_()`` in place cannot move the start).
        x_star: a minimiser (float64, CPU, a fresh copy), or None where it is not unique.
        minima: every known minimiser (Himmelblau has four); ``(x_star,)`` otherwise.
        f_star: the optimal value (a property: computed on first use where needed).

    Calling the problem on ``x`` (shape ``(dim,)``) moves its data, once per dtype and
    device, to ``x``'s dtype and device, so the same object serves float32 on a GPU and
    float64 on the CPU.
    """

    def __init__(
        self,
        name: str,
        objective: Objective,
        x0: Tensor,
        *,
        data: dict[str, Tensor] | None = None,
        f_star: float | None = None,
        x_star: Tensor | None = None,
        minima: tuple[Tensor, ...] | None = None,
        solve: Callable[[], tuple[float, Tensor | None]] | None = None,
    ) -> None:
        if f_star is None and solve is None:
            raise ValueError(f"{name}: give f_star or a solver that computes it")
        self.name = name
        self.dim = int(x0.numel())
        self._x0 = x0.detach().to(torch.float64).reshape(-1)
        self._objective = objective
        self._data = data or {}
        self._data_by_dtype_and_device: dict[tuple[torch.dtype, torch.device], dict] = {}
        self._f_star = f_star
        self._x_star = x_star
        self._solve = solve
        self._minima = minima

    @property
    def x0(self) -> Tensor:
        """The standard starting point (a copy)."""
        return self._x0.clone()

    def _solve_once(self) -> None:
        if self._f_star is None and self._solve is not None:
            self._f_star, x_star = self._solve()
            if self._x_star is None:
                self._x_star = x_star

    @property
    def f_star(self) -> float:
        """The optimal value; solved for (once per process) when there is no closed form."""
        self._solve_once()
        return float(self._f_star)  # type: ignore[arg-type]

    @property
    def x_star(self) -> Tensor | None:
        """A minimiser, or None where it is not unique (softmax's bias shift, Himmelblau)."""
        self._solve_once()
        return None if self._x_star is None else self._x_star.clone()

    @property
    def minima(self) -> tuple[Tensor, ...]:
        """Every known minimiser."""
        if self._minima is not None:
            return tuple(point.clone() for point in self._minima)
        x_star = self.x_star
        return () if x_star is None else (x_star,)

    def __call__(self, x: Tensor) -> Tensor:
        """The objective at ``x``, a scalar tensor of ``x``'s dtype and device."""
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.shape != (self.dim,):
            raise ValueError(f"x must have shape ({self.dim},) for {self.name}, got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        return self._objective(x, self._data_like(x))

    def gap(self, x: Tensor) -> float:
        """f(x) - f_star, evaluated in float64 on the CPU (no rounding of x's dtype)."""
        with torch.no_grad():
            value = self(x.detach().to(device="cpu", dtype=torch.float64))
        return float(value) - self.f_star

    def _data_like(self, x: Tensor) -> dict[str, Tensor]:
        key = (x.dtype, x.device)
        if key not in self._data_by_dtype_and_device:
            self._data_by_dtype_and_device[key] = {
                name: value.to(device=x.device, dtype=x.dtype)
                if value.is_floating_point()
                else value.to(device=x.device)
                for name, value in self._data.items()
            }
        return self._data_by_dtype_and_device[key]

    def __repr__(self) -> str:
        return f"Problem({self.name}, dim={self.dim})"


# -- argument checks (user input: ValueError/TypeError, never assert) -----------------------
def _check_integer(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def _check_real(name: str, value: Any, *, minimum: float, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    too_small = value <= minimum if strict else value < minimum
    if not math.isfinite(value) or too_small:
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be finite and {relation} {minimum:g}, got {value!r}")
    return value


def _float64(values: Any) -> Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float64))


# -- closed-form problems ------------------------------------------------------------------
def quadratic(dim: int = 100, condition: float = 1e3, seed: int = 0) -> Problem:
    """A quadratic bowl f(x) = 1/2 (x - x*)' A (x - x*) with a chosen condition number.

    A = Q diag(lambda) Q' with eigenvalues spaced geometrically from 1 to ``condition`` and a
    random rotation Q; x* is standard normal; f* = 0; x0 = 0. Both are drawn from ``seed``.

    Example:
        >>> bowl = quadratic(dim=50, condition=1e4, seed=1)
    """
    dim = _check_integer("dim", dim, 1)
    condition = _check_real("condition", condition, minimum=1.0)
    seed = _check_integer("seed", seed, 0)
    generator = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(generator.standard_normal((dim, dim)))
    eigenvalues = np.geomspace(1.0, condition, dim)
    hessian = (rotation * eigenvalues) @ rotation.T
    hessian = 0.5 * (hessian + hessian.T)  # exactly symmetric, so its quadratic form is too
    x_star = _float64(generator.standard_normal(dim))

    def objective(x: Tensor, data: dict[str, Tensor]) -> Tensor:
        error = x - data["x_star"]
        return 0.5 * error @ (data["hessian"] @ error)

    return Problem(
        f"quadratic(dim={dim}, condition={condition:g}, seed={seed})",
        objective,
        torch.zeros(dim, dtype=torch.float64),
        data={"hessian": _float64(hessian), "x_star": x_star},
        f_star=0.0,
        x_star=x_star,
    )


def rosenbrock(dim: int = 2) -> Problem:
    """The Rosenbrock valley: f(x) = sum_i 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2.

    Minimum f* = 0 at x* = (1, ..., 1); x0 = (-1.2, 1, -1.2, 1, ...), the standard start of
    Moré, Garbow and Hillstrom (1981). Same function as ``scipy.optimize.rosen``.

    Example:
        >>> valley = rosenbrock(dim=10)
    """
    dim = _check_integer("dim", dim, 2)

    def objective(x: Tensor, data: dict[str, Tensor]) -> Tensor:
        head, tail = x[:-1], x[1:]
        return (100.0 * (tail - head**2) ** 2 + (1.0 - head) ** 2).sum()

    start = torch.tensor([-1.2, 1.0], dtype=torch.float64).repeat(dim // 2 + 1)[:dim]
    return Problem(
        f"rosenbrock(dim={dim})",
        objective,
        start,
        f_star=0.0,
        x_star=torch.ones(dim, dtype=torch.float64),
    )


def beale() -> Problem:
    """Beale's function: f(x, y) = sum_k (c_k - x + x y^k)^2, c = (1.5, 2.25, 2.625).

    Minimum f* = 0 at (3, 0.5); x0 = (1, 1). A flat, curved valley with steep walls.
    """

    def objective(x: Tensor, data: dict[str, Tensor]) -> Tensor:
        u, v = x[0], x[1]
        return (
            (1.5 - u + u * v) ** 2 + (2.25 - u + u * v**2) ** 2 + (2.625 - u + u * v**3) ** 2
        )

    return Problem(
        "beale()",
        objective,
        torch.tensor([1.0, 1.0], dtype=torch.float64),
        f_star=0.0,
        x_star=torch.tensor([3.0, 0.5], dtype=torch.float64),
    )


# Himmelblau's four minimisers: (3, 2) is exact; the other three were polished by Newton's
# method in float64 until the gradient vanished to rounding (|grad| < 2e-14).
_HIMMELBLAU_MINIMA = (
    (3.0, 2.0),
    (-2.805118086952745, 3.131312518250573),
    (-3.779310253377747, -3.2831859912861696),
    (3.5844283403304917, -1.8481265269644034),
)


def himmelblau() -> Problem:
    """Himmelblau's function: f(x, y) = (x^2 + y - 11)^2 + (x + y^2 - 7)^2.

    Four minima, all with f* = 0 (``minima``); ``x_star`` is None because the minimiser is
    not unique. x0 = (0, 0), from where each method picks its own basin.
    """

    def objective(x: Tensor, data: dict[str, Tensor]) -> Tensor:
        u, v = x[0], x[1]
        return (u**2 + v - 11.0) ** 2 + (u + v**2 - 7.0) ** 2

    return Problem(
        "himmelblau()",
        objective,
        torch.zeros(2, dtype=torch.float64),
        f_star=0.0,
        minima=tuple(torch.tensor(point, dtype=torch.float64) for point in _HIMMELBLAU_MINIMA),
    )


# -- problems on scikit-learn's bundled data sets --------------------------------------------
_CLASSIFICATION_SETS = ("breast_cancer", "digits")


@functools.cache
def _load(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """Standardised features (zero mean, unit variance) and raw targets, from scikit-learn."""
    from sklearn import datasets

    loaders = {
        "breast_cancer": datasets.load_breast_cancer,
        "digits": datasets.load_digits,
        "diabetes": datasets.load_diabetes,
    }
    features, targets = loaders[dataset](return_X_y=True)
    features = np.asarray(features, dtype=np.float64)
    scale = features.std(axis=0)
    scale[scale == 0] = 1.0  # digits has pixels that are blank in every image
    return (features - features.mean(axis=0)) / scale, np.asarray(targets)


def _check_dataset(dataset: Any, allowed: tuple[str, ...]) -> str:
    if dataset not in allowed:
        raise ValueError(f"dataset must be one of {allowed}, got {dataset!r}")
    return dataset


def _split_linear(x: Tensor, features: int, outputs: int, bias: bool) -> tuple[Tensor, Any]:
    """x = [W flattened row-major (features x outputs), b (outputs)] -> (W, b or 0)."""
    weights = x[: features * outputs].reshape(features, outputs)
    return weights, (x[features * outputs :] if bias else 0.0)


@functools.cache
def _solve_smooth_problem(
    factory: str, kwargs: tuple[tuple[str, Any], ...], unique: bool
) -> tuple[float, Tensor | None]:
    """f* (and x* when unique) of a smooth convex problem, by scipy's L-BFGS-B, then Newton.

    L-BFGS-B stops when the loss no longer decreases in float64, with a gradient near 1e-10;
    the value is then exact to rounding (the gap is about |g|^2 / curvature), but the point
    only to |g| / curvature, so where the minimiser is unique two exact Newton steps polish
    it to rounding too. Cached per process: each problem is solved once.
    """
    import scipy.optimize

    problem = PROBLEMS[factory](**dict(kwargs))

    def value_and_gradient(values: np.ndarray) -> tuple[float, np.ndarray]:
        x = torch.tensor(values, dtype=torch.float64, requires_grad=True)
        loss = problem(x)
        (gradient,) = torch.autograd.grad(loss, x)
        return float(loss.detach()), gradient.numpy()

    result = scipy.optimize.minimize(
        value_and_gradient,
        problem.x0.numpy(),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 100_000, "maxfun": 100_000, "maxcor": 30, "ftol": 0.0, "gtol": 1e-13},
    )
    x = torch.tensor(result.x, dtype=torch.float64)
    f_star = float(problem(x))
    if not unique:
        return f_star, None
    for _ in range(2):
        hessian = torch.autograd.functional.hessian(problem, x)
        x_var = x.clone().requires_grad_()
        (gradient,) = torch.autograd.grad(problem(x_var), x_var)
        candidate = x - torch.linalg.solve(hessian, gradient)
        value = float(problem(candidate))
        if value > f_star:  # rounding has taken over: keep the better point
            break
        x, f_star = candidate, value
    return f_star, x


def logistic_regression(
    dataset: str = "breast_cancer", l2: float = 1e-3, bias: bool = True
) -> Problem:
    """L2-regularised logistic regression: mean log-loss + (l2 / 2) ||w||^2.

    f(w, b) = mean_i log(1 + exp(-s_i (x_i' w + b))) + l2/2 ||w||^2 with labels s_i = +-1;
    the bias is not penalised. Features are standardised. ``dataset`` is ``"breast_cancer"``
    (malignant or benign, 569 x 30) or ``"digits"`` (is the digit odd, 1797 x 64). x =
    [w, b], x0 = 0. The problem is strongly convex, so x* is unique.

    Args:
        dataset: "breast_cancer" or "digits".
        l2: strength of the penalty, > 0 (without one the minimiser need not exist).
        bias: include an unpenalised intercept b.

    Example:
        >>> problem = logistic_regression("breast_cancer", l2=1e-3)
    """
    dataset = _check_dataset(dataset, _CLASSIFICATION_SETS)
    l2 = _check_real("l2", l2, minimum=0.0, strict=True)
    if not isinstance(bias, bool):
        raise TypeError(f"bias must be True or False, got {bias!r}")
    features, targets = _load(dataset)
    labels = (targets % 2) if dataset == "digits" else targets
    count, width = features.shape

    def objective(x: Tensor, data: dict[str, Tensor]) -> Tensor:
        weights, intercept = _split_linear(x, width, 1, bias)
        logits = (data["features"] @ weights).squeeze(-1) + intercept
        loss = F.binary_cross_entropy_with_logits(logits, data["labels"])
        return loss + 0.5 * l2 * (weights**2).sum()

    kwargs = (("dataset", dataset), ("l2", l2), ("bias", bias))
    return Problem(
        f"logistic_regression(dataset={dataset!r}, l2={l2:g}, bias={bias})",
        objective,
        torch.zeros(width + int(bias), dtype=torch.float64),
        data={"features": _float64(features), "labels": _float64(labels)},
        solve=lambda: _solve_smooth_problem("logistic_regression", kwargs, unique=True),
    )


def softmax_regression(
    dataset: str = "digits", l2: float = 1e-3, bias: bool = True
) -> Problem:
    """L2-regularised softmax (multinomial logistic) regression: cross-entropy + l2/2 ||W||^2.

    f(W, b) = mean_i -log softmax(x_i' W + b)_{y_i} + l2/2 ||W||_F^2, bias unpenalised,
    standardised features. ``dataset`` is ``"digits"`` (10 classes, 1797 x 64: dim 650) or
    ``"breast_cancer"`` (2 classes: dim 62). x = [W row-major (features x classes), b], x0 = 0.

    ``x_star`` is None: adding a constant to every bias leaves f unchanged, so the minimiser
    is a line; f* is unique. (With two classes, softmax with l2 equals logistic regression
    with l2 / 2 on w = W_1 - W_0.)

    Args:
        dataset: "digits" or "breast_cancer".
        l2: strength of the penalty, > 0 (the digits set is linearly separable, so without
            one the loss has no minimiser).
        bias: include an unpenalised intercept per class.

    Example:
        >>> problem = softmax_regression("breast_cancer", l2=1e-3)
    """
    dataset = _check_dataset(dataset, _CLASSIFICATION_SETS)
    l2 = _check_real("l2", l2, minimum=0.0, strict=True)
    if not isinstance(bias, bool):
        raise TypeError(f"bias must be True or False, got {bias!r}")
    features, targets = _load(dataset)
    classes = int(targets.max()) + 1
    count, width = features.shape

    def objective(x: Tensor, data: dict[str, Tensor]) -> Tensor:
        weights, intercept = _split_linear(x, width, classes, bias)
        logits = data["features"] @ weights + intercept
        return F.cross_entropy(logits, data["labels"]) + 0.5 * l2 * (weights**2).sum()

    kwargs = (("dataset", dataset), ("l2", l2), ("bias", bias))
    return Problem(
        f"softmax_regression(dataset={dataset!r}, l2={l2:g}, bias={bias})",
        objective,
        torch.zeros(width * classes + (classes if bias else 0), dtype=torch.float64),
        data={"features": _float64(features), "labels": torch.as_tensor(targets, dtype=torch.int64)},
        solve=lambda: _solve_smooth_problem("softmax_regression", kwargs, unique=False),
    )


def least_squares(dataset: str = "diabetes", l2: float = 0.0, bias: bool = True) -> Problem:
    """(Ridge) least squares: f(w, b) = 1/(2n) ||X w + b - y||^2 + l2/2 ||w||^2.

    On scikit-learn's diabetes set (442 x 10), features and target standardised, so f* is
    half the unexplained variance. x = [w, b], x0 = 0; x* and f* in closed form (numpy's
    ``lstsq`` on the normal equations' square-root form, in float64).

    Args:
        dataset: "diabetes".
        l2: ridge penalty, >= 0 (the bias is not penalised).
        bias: include an intercept b.

    Example:
        >>> problem = least_squares(l2=1e-2)
    """
    dataset = _check_dataset(dataset, ("diabetes",))
    l2 = _check_real("l2", l2, minimum=0.0)
    if not isinstance(bias, bool):
        raise TypeError(f"bias must be True or False, got {bias!r}")
    features, targets = _load(dataset)
    targets = (targets - targets.mean()) / targets.std()
    count, width = features.shape

    def objective(x: Tensor, data: dict[str, Tensor]) -> Tensor:
        weights, intercept = _split_linear(x, width, 1, bias)
        residual = (data["features"] @ weights).squeeze(-1) + intercept - data["targets"]
        return 0.5 * (residual @ residual) / count + 0.5 * l2 * (weights**2).sum()

    # min ||A x - t||^2 with A = [X, 1; sqrt(n l2) I, 0] and t = [y; 0] is the same problem
    # times 2n; lstsq on it avoids forming (and squaring the condition of) X'X.
    design = np.hstack([features, np.ones((count, 1))]) if bias else features
    penalty = np.zeros((width, design.shape[1]))
    penalty[:, :width] = math.sqrt(count * l2) * np.eye(width)
    stacked = np.vstack([design, penalty])
    solution = np.linalg.lstsq(stacked, np.concatenate([targets, np.zeros(width)]), rcond=None)[0]
    x_star = _float64(solution)
    data = {"features": _float64(features), "targets": _float64(targets)}
    with torch.no_grad():
        f_star = float(objective(x_star, data))
    return Problem(
        f"least_squares(dataset={dataset!r}, l2={l2:g}, bias={bias})",
        objective,
        torch.zeros(width + int(bias), dtype=torch.float64),
        data=data,
        f_star=f_star,
        x_star=x_star,
    )


PROBLEMS: dict[str, Callable[..., Problem]] = {
    "quadratic": quadratic,
    "rosenbrock": rosenbrock,
    "beale": beale,
    "himmelblau": himmelblau,
    "logistic_regression": logistic_regression,
    "softmax_regression": softmax_regression,
    "least_squares": least_squares,
}


def by_name(name: str, **kwargs: Any) -> Problem:
    """Build the problem called ``name`` (a key of ``PROBLEMS``) with keyword arguments.

    Example:
        >>> problem = by_name("softmax_regression", dataset="breast_cancer", l2=1e-3)
    """
    if name not in PROBLEMS:
        raise ValueError(f"unknown problem {name!r}; choose one of {sorted(PROBLEMS)}")
    return PROBLEMS[name](**kwargs)
