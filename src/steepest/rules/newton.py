"""Newton's method: exact Hessian (``Newton``) or Hessian-vector products (``NewtonCG``).

Both treat all parameters of all param groups as one vector x (see
:class:`~steepest.rules.lbfgs.ClosureOptimizer`), take one Newton iteration per ``step``
call and end it with a backtracking (Armijo) line search from the full step:

* :class:`Newton` forms the Hessian by double backward, one row per variable, and adds the
  smallest multiple of the identity that makes it positive definite (a Cholesky test):
  for small problems, up to a few thousand variables.
* :class:`NewtonCG` never forms it: truncated conjugate gradients on Hessian-vector
  products (double backward, about the cost of two gradients each), stopped by the usual
  forcing term or at the first direction of negative curvature: for large problems.

The closure must leave the graph of the loss usable for a second derivative: either
return the loss without calling ``backward`` (the optimizer differentiates it), or call
``loss.backward(create_graph=True)``. A closure that calls plain ``loss.backward()`` frees
the graph, and ``step`` says so. ``closure_create_graph = True`` on the classes tells
generic drivers (``minimize``) to build such a closure.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from steepest.engine import validation
from steepest.engine.optimizer import ParamsT
from steepest.rules.lbfgs import (
    Closure,
    ClosureOptimizer,
    LineSearchResult,
    optional_positive_integer,
)

__all__ = ["Newton", "NewtonCG", "backtracking_line_search", "truncated_conjugate_gradient"]

# Armijo's constant c1 = 1e-4 (Nocedal & Wright, section 3.1) and the safeguards of the
# interpolated step: never cut by more than 10x or less than 2x per trial (section 3.5).
SUFFICIENT_DECREASE = 1e-4
SHRINK_AT_MOST, SHRINK_AT_LEAST = 0.1, 0.5
MAX_BACKTRACKS = 30


def backtracking_line_search(
    evaluate: Callable[[float], float],
    loss: float,
    slope: float,
    step: float = 1.0,
    *,
    sufficient_decrease: float = SUFFICIENT_DECREASE,
    max_evaluations: int = MAX_BACKTRACKS,
    relative_rounding: float = 2.0**-52,
) -> LineSearchResult:
    """Shrink the step until the Armijo condition holds (Nocedal & Wright, Algorithm 3.1).

    phi(t) = f(x + t d): accepts the first t in step, t1, t2, ... with
    phi(t) <= phi(0) + c1 t phi'(0) + 2 eps |phi(0)| (eps = ``relative_rounding``). Each new
    t minimises the quadratic through phi(0), phi'(0) and phi(t), kept in [0.1 t, 0.5 t]
    (section 3.5).

    The rounding term lets a Newton step through when its predicted decrease is below the
    loss's rounding error (near the optimum, where |g' d| ~ |g|^2 is tiny): there no step
    can be verified to decrease f, and the full step is the right one.

    Args:
        evaluate: ``t -> phi(t)``; one closure call each.
        loss: phi(0).
        slope: phi'(0) < 0.
        step: first trial (default 1, the Newton step).
        sufficient_decrease: c1 (default 1e-4).
        max_evaluations: most trials (default 30).
        relative_rounding: relative rounding error of the loss's dtype (default float64's).

    Example:
        >>> result = backtracking_line_search(lambda t: (t - 0.2) ** 2, 0.04, -0.4)
        >>> round(result.step, 6), result.status
        (0.2, 'converged')
    """
    if not slope < 0:
        raise ValueError(f"slope must be negative (a descent direction), got {slope!r}")
    rounding = 2.0 * relative_rounding * abs(loss)
    value = loss
    for evaluation in range(1, max_evaluations + 1):
        value = evaluate(step)
        if math.isfinite(value) and value <= loss + sufficient_decrease * step * slope + rounding:
            return LineSearchResult(step, value, math.nan, evaluation, "converged")
        if math.isfinite(value):
            # Minimiser of the quadratic q(0) = loss, q'(0) = slope, q(step) = value.
            curvature_term = value - loss - slope * step
            interpolated = -slope * step * step / (2.0 * curvature_term)
        else:
            interpolated = SHRINK_AT_MOST * step  # overflow: far too long, cut hard
        step = min(max(interpolated, SHRINK_AT_MOST * step), SHRINK_AT_LEAST * step)
    return LineSearchResult(step, value, math.nan, max_evaluations, "failed", "no sufficient decrease")


def truncated_conjugate_gradient(
    hessian_vector_product: Callable[[Tensor], Tensor],
    gradient: Tensor,
    max_iterations: int,
    forcing: float | None = None,
) -> tuple[Tensor, int, bool]:
    """Approximately solve H d = -g by conjugate gradients (Nocedal & Wright, Algorithm 7.1).

    Stops when ||H d + g|| <= eta ||g|| with the forcing term eta = min(0.5, sqrt(||g||))
    (superlinear convergence of the outer Newton iteration), after ``max_iterations``, or at
    the first direction p with p' H p <= 0: then it returns the iterate so far, or on the
    first iteration the steepest-descent step -g ||g||^2 / |g' H g| (scaled by the magnitude
    of the curvature, as scipy's Newton-CG does, instead of the bare -g).

    Args:
        hessian_vector_product: ``v -> H v``.
        gradient: g.
        max_iterations: most CG iterations (Hessian-vector products).
        forcing: eta; default min(0.5, sqrt(||g||)).

    Returns:
        (d, number of Hessian-vector products, whether negative curvature was met).

    Example:
        >>> H = torch.tensor([[2.0, 0.0], [0.0, 4.0]])
        >>> d, _, _ = truncated_conjugate_gradient(lambda v: H @ v, torch.tensor([2.0, 4.0]), 5, 0.0)
        >>> d
        tensor([-1., -1.])
    """
    gradient_norm = float(gradient.norm())
    if forcing is None:
        forcing = min(0.5, math.sqrt(gradient_norm))
    tolerance = forcing * gradient_norm
    solution = torch.zeros_like(gradient)
    residual = gradient.clone()  # r = H d + g at d = 0
    search = -residual
    residual_square = float(torch.dot(residual, residual))
    for iteration in range(max_iterations):
        product = hessian_vector_product(search)
        curvature = float(torch.dot(search, product))
        if curvature <= 0.0:
            if iteration == 0:
                scale = residual_square / abs(curvature) if curvature != 0.0 else 1.0
                return -gradient * scale, 1, True
            return solution, iteration + 1, True
        alpha = residual_square / curvature
        solution.add_(search, alpha=alpha)
        residual.add_(product, alpha=alpha)
        new_residual_square = float(torch.dot(residual, residual))
        if math.sqrt(new_residual_square) <= tolerance:
            return solution, iteration + 1, False
        search.mul_(new_residual_square / residual_square).sub_(residual)
        residual_square = new_residual_square
    return solution, max_iterations, False


class _SecondOrderOptimizer(ClosureOptimizer):
    """What Newton and NewtonCG share: a differentiable gradient, and the iteration around
    a direction (line search, bookkeeping). Subclasses supply :meth:`_newton_direction`."""

    closure_create_graph: ClassVar[bool] = True
    _shared_settings = ("tolerance_grad", "line_search_fn")

    def _check_params(self, params: list[Tensor], first_index: int) -> None:
        for index, p in enumerate(params, start=first_index):
            if p.is_complex():
                raise TypeError(
                    f"{type(self).__name__} needs real parameters; parameter {index} is {p.dtype}"
                )
        super()._check_params(params, first_index)

    def _differentiable_gradient(self, closure: Closure) -> tuple[Any, float, Tensor]:
        """Evaluate the closure; return (its loss, as a float, the flat gradient with graph)."""
        loss, value = self._call_closure(closure)
        if not isinstance(loss, Tensor) or not loss.requires_grad:
            raise TypeError(
                f"{type(self).__name__}'s closure must return the loss as a tensor that "
                f"requires grad, got {type(loss).__name__}"
            )
        parameters = self._parameters()
        # step() runs under no_grad; the gradient and its flattening must stay in the graph.
        with torch.enable_grad():
            try:
                gradients = torch.autograd.grad(
                    loss, parameters, create_graph=True, allow_unused=True
                )
            except RuntimeError as error:
                raise RuntimeError(
                    f"{type(self).__name__} differentiates the loss twice, but its graph was "
                    "freed: in the closure call loss.backward(create_graph=True), or return "
                    "the loss without calling backward"
                ) from error
            flat_gradient = torch.cat([
                g.reshape(-1) if g is not None else p.new_zeros(p.numel())
                for g, p in zip(gradients, parameters)
            ])
        return loss, value, flat_gradient

    def _hessian_vector_product(self, flat_gradient: Tensor, vector: Tensor) -> Tensor:
        """H v by differentiating g' v (Pearlmutter's trick): no Hessian is formed."""
        parameters = self._parameters()
        if not flat_gradient.requires_grad:
            return torch.zeros_like(vector)  # the gradient does not depend on x: H = 0
        with torch.enable_grad():
            products = torch.autograd.grad(
                flat_gradient, parameters, grad_outputs=vector, retain_graph=True,
                allow_unused=True,
            )
        return torch.cat([
            h.reshape(-1) if h is not None else p.new_zeros(p.numel())
            for h, p in zip(products, parameters)
        ])

    def _newton_direction(
        self, flat_gradient: Tensor, gradient: Tensor, relative: Tensor | None
    ) -> Tensor:
        """-(R^{1/2} H R^{1/2})^{-1} solved in the rescaled variables, mapped back to x.

        ``relative`` is R (each entry's lr / lr_max) or None when all lrs agree.
        """
        raise NotImplementedError

    def _release_graph(self) -> None:
        # A closure that ran backward(create_graph=True) leaves gradients that hold the
        # whole graph (and a reference cycle through the parameters); keep only values.
        for p in self._parameters():
            if p.grad is not None and p.grad.grad_fn is not None:
                p.grad = p.grad.detach()

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Any:  # type: ignore[override]
        """One Newton iteration; return the loss at the starting point.

        Args:
            closure: returns the loss with its graph (see the module docstring). Required.
        """
        closure = self._start_closure_step(closure)
        try:
            first_loss = self._iterate(closure)
        finally:
            self._release_graph()
        self._finish_closure_step()
        return first_loss

    def _iterate(self, closure: Closure) -> Any:
        settings = self.param_groups[0]
        state = self._method_state()
        first_loss, loss, flat_gradient = self._differentiable_gradient(closure)
        gradient = flat_gradient.detach()
        if not math.isfinite(loss) or float(gradient.abs().max()) <= settings["tolerance_grad"]:
            return first_loss
        state["n_iter"] = state["n_iter"] + 1
        lr_max, relative = self._group_scaling()
        direction = self._newton_direction(flat_gradient, gradient, relative).mul_(lr_max)
        del flat_gradient  # the graph is no longer needed: free it before the trials
        slope = float(torch.dot(gradient, direction))
        if not slope < 0.0:
            return first_loss  # every lr is 0, or g vanished to rounding
        x = self._flat_parameters()
        if settings["line_search_fn"] is None:
            self._set_flat_parameters(x + direction)
            return first_loss

        def trial_loss(t: float) -> float:
            self._set_flat_parameters(x + t * direction)
            return self._call_closure(closure)[1]

        search = backtracking_line_search(
            trial_loss, loss, slope, relative_rounding=torch.finfo(gradient.dtype).eps
        )
        if search.status != "converged":
            self._set_flat_parameters(x)  # no acceptable step: stay where f is known
        return first_loss


def _check_backtracking(name: str, value: Any) -> None:
    if value not in ("backtracking", None):
        raise ValueError(f"{name} must be 'backtracking' or None, got {value!r}")


class Newton(_SecondOrderOptimizer):
    """Newton's method with the exact Hessian, made positive definite, and a line search.

    x <- x + t d,  d = -lr (H + tau I)^{-1} g,  tau >= damping the smallest
    shift found (doubling from 1e-3 max|H_ii|) for which H + tau I has a Cholesky factor,
    t the first of 1, ... to satisfy Armijo's condition.

    Converges quadratically near a minimiser with a positive definite Hessian; far from
    it the shift makes every step a descent step, so saddle points and maxima repel. The
    Hessian is formed by double backward over all parameters (n backward passes of the
    gradient, batched with vmap where possible), so keep n to a few thousand.

    Args:
        params: tensors or param-group dicts (real, one dtype and device).
        lr: scale of the direction (default 1: the full Newton step first); with several
            groups the largest lr scales the step and lr = 0 freezes a group (Newton is
            invariant to rescaling variables, so other ratios matter only through the
            damping; see :mod:`steepest.rules.lbfgs`).
        damping: smallest shift tau added to the Hessian's diagonal (default 0); > 0 gives
            a regularised (Levenberg-Marquardt-like) step.
        tolerance_grad: no step when max |g_i| <= tolerance_grad (default 1e-7).
        line_search_fn: "backtracking" (default) or None for the plain step x + d.

    Example:
        >>> opt = steepest.Newton([w])
        >>> for _ in range(10):
        ...     opt.step(lambda: loss_fn(w))  # the closure returns the loss, no backward

    State: ``func_evals``, ``n_iter``, ``damping_used`` (the last tau).
    Reference: Nocedal & Wright, Numerical Optimization, 2nd ed., sections 3.3-3.4
    (Algorithm 3.3, Cholesky with added multiple of the identity) and 3.5.
    """

    _checks = {
        "lr": validation.nonnegative,
        "damping": validation.nonnegative,
        "tolerance_grad": validation.nonnegative,
        "line_search_fn": _check_backtracking,
    }
    _shared_settings = (*_SecondOrderOptimizer._shared_settings, "damping")

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1.0,
        damping: float = 0.0,
        tolerance_grad: float = 1e-7,
        line_search_fn: str | None = "backtracking",
    ) -> None:
        defaults = dict(
            lr=lr, damping=damping, tolerance_grad=tolerance_grad, line_search_fn=line_search_fn
        )
        super().__init__(params, defaults)

    def _hessian(self, flat_gradient: Tensor) -> Tensor:
        """The n x n Hessian: row i is the gradient of g_i, all rows in one batched pass."""
        size = flat_gradient.numel()
        identity = torch.eye(size, dtype=flat_gradient.dtype, device=flat_gradient.device)
        if not flat_gradient.requires_grad:
            return torch.zeros_like(identity)
        try:
            parameters = self._parameters()
            with torch.enable_grad():
                rows = torch.autograd.grad(
                    flat_gradient, parameters, grad_outputs=identity, retain_graph=True,
                    allow_unused=True, is_grads_batched=True,
                )
            hessian = torch.cat([
                r.reshape(size, -1) if r is not None else identity.new_zeros(size, p.numel())
                for r, p in zip(rows, parameters)
            ], dim=1)
        except RuntimeError:
            # An operation without a vmap rule: one backward pass per row instead.
            hessian = torch.stack([
                self._hessian_vector_product(flat_gradient, row) for row in identity
            ])
        return 0.5 * (hessian + hessian.T)  # symmetric to rounding, exactly symmetric here

    def _newton_direction(
        self, flat_gradient: Tensor, gradient: Tensor, relative: Tensor | None
    ) -> Tensor:
        hessian = self._hessian(flat_gradient)
        damping = self.param_groups[0]["damping"]
        if relative is None:
            factor, shift = positive_definite_cholesky(hessian, damping)
            direction = torch.cholesky_solve(gradient.unsqueeze(1), factor).squeeze(1).neg_()
        else:
            # Newton in z = R^{-1/2} x over the free entries (lr > 0): frozen ones are left
            # out, rather than given zero rows that only a shift could make definite.
            free = torch.nonzero(relative > 0).squeeze(1)
            root = relative[free].sqrt()
            scaled = root.unsqueeze(1) * hessian[free][:, free] * root.unsqueeze(0)
            factor, shift = positive_definite_cholesky(scaled, damping)
            solution = torch.cholesky_solve((root * gradient[free]).unsqueeze(1), factor)
            direction = torch.zeros_like(gradient)
            direction[free] = -root * solution.squeeze(1)
        self._method_state()["damping_used"] = shift
        return direction


def positive_definite_cholesky(hessian: Tensor, damping: float = 0.0) -> tuple[Tensor, float]:
    """Cholesky factor of H + tau I for the smallest tau >= damping found to work.

    Nocedal & Wright, Algorithm 3.3: start from 0 when the diagonal is positive (else from
    beta - min H_ii), double from beta = 1e-3 max |H_ii| until the factorisation succeeds.

    Returns:
        (lower-triangular factor L with L L' = H + tau I, tau).

    Example:
        >>> L, tau = positive_definite_cholesky(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
        >>> tau > 1.0
        True
    """
    diagonal = hessian.diagonal()
    scale = float(diagonal.abs().max()) if diagonal.numel() else 0.0
    # beta sets the smallest nonzero shift: relative to the Hessian's own scale, so the
    # method does not depend on the units of the loss; tiny for an all-zero Hessian.
    beta = 1e-3 * scale if scale > 0.0 else 1e-3
    smallest = float(diagonal.min())
    shift = max(damping, 0.0 if smallest > 0.0 else beta - smallest)
    identity = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    while True:
        factor, info = torch.linalg.cholesky_ex(hessian + shift * identity)
        if int(info) == 0 and bool(torch.isfinite(factor).all()):
            return factor, shift
        if not math.isfinite(shift) or shift > 1e300:
            raise ValueError("the Hessian is not finite: no shift makes it positive definite")
        shift = max(2.0 * shift, beta)


class NewtonCG(_SecondOrderOptimizer):
    """Truncated Newton: conjugate gradients on Hessian-vector products, then a line search.

    x <- x + t d,  d ~ -lr H^{-1} g by CG until ||H d + g|| <= eta ||g||,
    eta = min(0.5, sqrt(||g||)), or negative curvature; t by Armijo backtracking from 1.

    Each CG iteration costs one Hessian-vector product (double backward, roughly two
    gradients); the Hessian is never stored, so this scales to large models. Like scipy's
    Newton-CG (Nocedal & Wright's line-search Newton-CG) with the same forcing term.

    Args:
        params: tensors or param-group dicts (real, one dtype and device).
        lr: scale of the direction (default 1); several groups as in :class:`Newton`.
        max_cg_iter: most CG iterations per step (default 20 x the number of variables,
            as scipy; the forcing term usually stops CG long before).
        tolerance_grad: no step when max |g_i| <= tolerance_grad (default 1e-7).
        line_search_fn: "backtracking" (default) or None for the plain step x + d.

    Example:
        >>> opt = steepest.NewtonCG(model.parameters(), max_cg_iter=50)
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = loss_fn(model(inputs), targets)
        ...     loss.backward(create_graph=True)  # keep the graph for Hessian products
        ...     return loss
        >>> opt.step(closure)

    State: ``func_evals``, ``n_iter``, ``cg_iterations`` (total Hessian-vector products),
    ``negative_curvature`` (how many steps met it).
    Reference: Nocedal & Wright, Numerical Optimization, 2nd ed., Algorithm 7.1;
    Dembo, Eisenstat and Steihaug 1982 (the forcing term).
    """

    _checks = {
        "lr": validation.nonnegative,
        "max_cg_iter": optional_positive_integer,
        "tolerance_grad": validation.nonnegative,
        "line_search_fn": _check_backtracking,
    }
    _shared_settings = (*_SecondOrderOptimizer._shared_settings, "max_cg_iter")

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1.0,
        max_cg_iter: int | None = None,
        tolerance_grad: float = 1e-7,
        line_search_fn: str | None = "backtracking",
    ) -> None:
        defaults = dict(
            lr=lr, max_cg_iter=max_cg_iter, tolerance_grad=tolerance_grad,
            line_search_fn=line_search_fn,
        )
        super().__init__(params, defaults)

    def _newton_direction(
        self, flat_gradient: Tensor, gradient: Tensor, relative: Tensor | None
    ) -> Tensor:
        state = self._method_state()
        # scipy's cap: CG in floating point can need more than n iterations on ill-conditioned H.
        max_cg_iter = self.param_groups[0]["max_cg_iter"] or 20 * gradient.numel()
        root = None if relative is None else relative.sqrt()

        def product(vector: Tensor) -> Tensor:
            # H in the rescaled variables: R^{1/2} H R^{1/2} v (zero on frozen entries).
            if root is None:
                return self._hessian_vector_product(flat_gradient, vector)
            return root * self._hessian_vector_product(flat_gradient, root * vector)

        right_side = gradient if root is None else root * gradient
        direction, products, negative = truncated_conjugate_gradient(
            product, right_side, max_cg_iter
        )
        state["cg_iterations"] = state.get("cg_iterations", 0) + products
        state["negative_curvature"] = state.get("negative_curvature", 0) + int(negative)
        return direction if root is None else direction.mul_(root)
