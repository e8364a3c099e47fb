"""L-BFGS with a Moré-Thuente strong-Wolfe line search, and the shell of whole-vector methods.

Quasi-Newton and Newton methods are not elementwise: the direction couples every
parameter, and a line search re-evaluates the objective. So these optimizers treat all
parameters of all param groups as one flat vector x and take a closure that re-evaluates
the loss. Three pieces live here:

* :func:`more_thuente_line_search`: the line search of Moré and Thuente (1994), the
  MINPACK-2 ``dcsrch`` that scipy's L-BFGS-B uses, as a pure function of scalars and a
  callback ``step -> (loss, slope)``;
* :func:`lbfgs_direction`: the two-loop recursion, d = -H g, a pure function of tensors;
* :class:`ClosureOptimizer`, the shell shared with :mod:`steepest.rules.newton` (flat views,
  closure evaluations counted, per-group learning rates), and :class:`LBFGS` on top of it.

Per-group learning rates. torch.optim.LBFGS refuses several param groups; here every
group's parameters join the one flat vector (so the curvature pairs see all of them) and
each group's ``lr`` scales its part of the direction. Write lr_max for the largest lr and
R = diag(lr of each entry's group / lr_max). The methods run in the rescaled variables
z = R^{-1/2} x (frozen entries, lr = 0, left out), and the step is multiplied by lr_max:

* one lr for all groups (R = I): exactly the usual method, direction times lr;
* different lrs: the first L-BFGS direction is -diag(lr) g, each group's gradient scaled
  by its lr, and later curvature pairs refine that scaling (H0 = gamma R: a diagonal
  preconditioner). Scaling the finished direction instead (d = -R^{1/2} H R^{1/2} g, the
  first version of this class) fights the curvature pairs for ever: on softmax regression
  (breast cancer) with lrs 1 and 0.05 it took 881 evaluations to max|g| <= 1e-10, this
  way 139 (107 with one lr);
* lr = 0 freezes a group, and the others see the method restricted to them.

Newton's method is invariant to rescaling the variables, so for Newton and NewtonCG the
ratios of the lrs matter only for freezing and through the damping of an indefinite
Hessian: lr_max, the first trial step, is what counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from steepest.engine import Optimizer, validation
from steepest.engine.optimizer import ParamsT

__all__ = [
    "LBFGS",
    "ClosureOptimizer",
    "LineSearchResult",
    "lbfgs_direction",
    "more_thuente_line_search",
]

Closure = Callable[[], Any]

# Constants of scipy's L-BFGS-B (lnsrlb): sufficient decrease c1 = 1e-3, curvature c2 = 0.9,
# relative width of an interval of uncertainty that ends the search 0.1, at most 20 trials
# per search and a largest step of 1e10. Matching them is what makes the number of function
# evaluations match scipy's (Nocedal & Wright suggest c1 = 1e-4, a looser test that changes
# little in practice).
SUFFICIENT_DECREASE = 1e-3
CURVATURE = 0.9
STEP_TOLERANCE = 0.1
MAX_LINE_SEARCH_EVALUATIONS = 20
MAX_STEP = 1e10


# -- the line search ---------------------------------------------------------------------
@dataclass(frozen=True)
class LineSearchResult:
    """Where a line search stopped: the last trial, which is also the best one it accepts.

    ``status`` is ``"converged"`` (both strong Wolfe conditions hold), ``"warning"`` (no
    further progress is possible, e.g. rounding errors or the interval shrank below
    tolerance; the step still satisfies sufficient decrease when one was found), or
    ``"failed"`` (out of evaluations, or only non-finite values were seen).
    """

    step: float
    loss: float
    slope: float
    evaluations: int
    status: str
    message: str = ""


def _cubic_minimizer_step(
    stx: float, fx: float, dx: float, sty: float, fy: float, dy: float,
    stp: float, fp: float, dp: float, bracketed: bool, stpmin: float, stpmax: float,
) -> tuple[float, float, float, float, float, float, float, bool]:
    """One safeguarded step of Moré-Thuente (MINPACK-2 ``dcstep``); returns the new state.

    stx is the best step so far (function fx, derivative dx), sty the other end of the
    interval of uncertainty, stp the current trial. The new trial is a cubic or quadratic
    (secant) interpolation of these, chosen case by case as in the paper's section 4, so
    that the interval shrinks and the trial never lands too close to an end.
    """

    def cubic_gamma(theta: float, d1: float, d2: float) -> float:
        s = max(abs(theta), abs(d1), abs(d2))
        return s * math.sqrt(max(0.0, (theta / s) ** 2 - (d1 / s) * (d2 / s)))

    same_sign = math.copysign(1.0, dp) * math.copysign(1.0, dx) if dp != 0 and dx != 0 else 0.0
    if fp > fx:
        # Case 1: a higher value; the minimum is bracketed. Take the cubic step if it is
        # closer to stx than the quadratic step, else their average.
        theta = 3.0 * (fx - fp) / (stp - stx) + dx + dp
        gamma = cubic_gamma(theta, dx, dp)
        if stp < stx:
            gamma = -gamma
        p = (gamma - dx) + theta
        q = ((gamma - dx) + gamma) + dp
        stpc = stx + (p / q) * (stp - stx)
        stpq = stx + ((dx / ((fx - fp) / (stp - stx) + dx)) / 2.0) * (stp - stx)
        stpf = stpc if abs(stpc - stx) <= abs(stpq - stx) else stpc + (stpq - stpc) / 2.0
        bracketed = True
    elif same_sign < 0.0:
        # Case 2: lower value, derivatives of opposite sign; bracketed. Take the cubic step
        # if it is farther from stp than the secant step, else the secant step.
        theta = 3.0 * (fx - fp) / (stp - stx) + dx + dp
        gamma = cubic_gamma(theta, dx, dp)
        if stp > stx:
            gamma = -gamma
        p = (gamma - dp) + theta
        q = ((gamma - dp) + gamma) + dx
        stpc = stp + (p / q) * (stx - stp)
        stpq = stp + (dp / (dp - dx)) * (stx - stp)
        stpf = stpc if abs(stpc - stp) > abs(stpq - stp) else stpq
        bracketed = True
    elif abs(dp) < abs(dx):
        # Case 3: lower value, same sign, the derivative shrinks in magnitude. The cubic step
        # is used only if the cubic tends to infinity in the step's direction or its
        # minimum lies beyond stp; otherwise the secant step.
        theta = 3.0 * (fx - fp) / (stp - stx) + dx + dp
        gamma = cubic_gamma(theta, dx, dp)
        if stp > stx:
            gamma = -gamma
        p = (gamma - dp) + theta
        q = (gamma + (dx - dp)) + gamma
        r = p / q
        if r < 0.0 and gamma != 0.0:
            stpc = stp + r * (stx - stp)
        elif stp > stx:
            stpc = stpmax
        else:
            stpc = stpmin
        stpq = stp + (dp / (dp - dx)) * (stx - stp)
        if bracketed:
            # Closer of the two, but never beyond 0.66 of the way to sty.
            stpf = stpc if abs(stpc - stp) < abs(stpq - stp) else stpq
            if stp > stx:
                stpf = min(stp + 0.66 * (sty - stp), stpf)
            else:
                stpf = max(stp + 0.66 * (sty - stp), stpf)
        else:
            stpf = stpc if abs(stpc - stp) > abs(stpq - stp) else stpq
            stpf = min(stpmax, max(stpmin, stpf))
    else:
        # Case 4: lower value, same sign, the derivative does not shrink. Unbracketed, go to
        # the bound; bracketed, take the cubic step between stp and sty.
        if bracketed:
            theta = 3.0 * (fp - fy) / (sty - stp) + dy + dp
            gamma = cubic_gamma(theta, dy, dp)
            if stp > sty:
                gamma = -gamma
            p = (gamma - dp) + theta
            q = ((gamma - dp) + gamma) + dy
            stpf = stp + (p / q) * (sty - stp)
        elif stp > stx:
            stpf = stpmax
        else:
            stpf = stpmin

    # Update the interval of uncertainty.
    if fp > fx:
        sty, fy, dy = stp, fp, dp
    else:
        if same_sign < 0.0:
            sty, fy, dy = stx, fx, dx
        stx, fx, dx = stp, fp, dp
    return stx, fx, dx, sty, fy, dy, stpf, bracketed


def more_thuente_line_search(
    evaluate: Callable[[float], tuple[float, float]],
    loss: float,
    slope: float,
    step: float = 1.0,
    *,
    sufficient_decrease: float = SUFFICIENT_DECREASE,
    curvature: float = CURVATURE,
    step_tolerance: float = STEP_TOLERANCE,
    min_step: float = 0.0,
    max_step: float = MAX_STEP,
    max_evaluations: int = MAX_LINE_SEARCH_EVALUATIONS,
) -> LineSearchResult:
    """Find a step satisfying the strong Wolfe conditions (Moré and Thuente 1994).

    phi(t) = f(x + t d): finds t with phi(t) <= phi(0) + c1 t phi'(0) and
    |phi'(t)| <= c2 |phi'(0)|, by safeguarded cubic interpolation over an interval of
    uncertainty that is extrapolated until it brackets such a step, then shrunk. This is
    MINPACK-2's ``dcsrch``, as in scipy's L-BFGS-B, so it takes the same trial steps.

    Args:
        evaluate: ``t -> (phi(t), phi'(t))``; each call is one function+gradient evaluation.
        loss: phi(0).
        slope: phi'(0), which must be negative (a descent direction).
        step: the first trial step, > 0.
        sufficient_decrease: c1 of the Armijo condition (default 1e-3, scipy's).
        curvature: c2 of the strong curvature condition (default 0.9).
        step_tolerance: stop when the interval of uncertainty is this narrow, relative.
        min_step, max_step: bounds on the step.
        max_evaluations: most calls of ``evaluate``.

    Returns:
        A :class:`LineSearchResult`; its step is the last one evaluated.

    Example:
        >>> phi = lambda t: ((t - 2) ** 2, 2 * (t - 2))  # value and derivative
        >>> result = more_thuente_line_search(phi, 4.0, -4.0, step=10.0)
        >>> result.step, result.status, result.evaluations  # 10 overshoots; interpolation
        (2.0, 'converged', 2)

    Non-finite values (an overflow far along d) are not interpolated: the search restarts
    from half the step with that step as its new upper bound.

    Reference: J. J. Moré and D. J. Thuente, "Line search algorithms with guaranteed
    sufficient decrease", ACM TOMS 20(3), 1994; Nocedal & Wright, Numerical Optimization,
    2nd ed., section 3.5.
    """
    if not slope < 0:
        raise ValueError(f"slope must be negative (a descent direction), got {slope!r}")
    if not min_step <= step <= max_step:
        raise ValueError(f"step must be in [{min_step}, {max_step}], got {step!r}")
    finit, ginit = loss, slope
    gtest = sufficient_decrease * ginit
    evaluations = 0
    last_trial = (0.0, finit, ginit)  # (step, phi, phi') of the last evaluation
    while True:  # one pass per (re)start; only a non-finite value leads to a restart
        bracketed = False
        stage = 1
        width = max_step - min_step
        width_before = 2.0 * width
        stx, fx, gx = 0.0, finit, ginit
        sty, fy, gy = 0.0, finit, ginit
        stmin, stmax = 0.0, step + 4.0 * step
        while True:
            if evaluations >= max_evaluations:
                return LineSearchResult(*last_trial, evaluations, "failed", "out of evaluations")
            f, g = evaluate(step)
            evaluations += 1
            last_trial = (step, f, g)
            if not (math.isfinite(f) and math.isfinite(g)):
                if step <= min_step:
                    return LineSearchResult(step, f, g, evaluations, "failed", "non-finite values")
                # Restart below the step that overflowed, which becomes the upper bound.
                max_step, step = step, 0.5 * (stx + step)
                break
            ftest = finit + step * gtest
            if stage == 1 and f <= ftest and g >= 0.0:
                stage = 2
            message = ""
            if bracketed and (step <= stmin or step >= stmax):
                message = "rounding errors prevent progress"
            if bracketed and stmax - stmin <= step_tolerance * stmax:
                message = "interval of uncertainty below step_tolerance"
            if step == max_step and f <= ftest and g <= gtest:
                message = "step is at max_step"
            if step == min_step and (f > ftest or g >= gtest):
                message = "step is at min_step"
            if f <= ftest and abs(g) <= curvature * -ginit:
                return LineSearchResult(step, f, g, evaluations, "converged")
            if message:
                return LineSearchResult(step, f, g, evaluations, "warning", message)

            if stage == 1 and f <= fx and f > ftest:
                # A lower value without sufficient decrease: interpolate the modified
                # function psi(t) = phi(t) - phi(0) - c1 t phi'(0), whose minimiser is
                # bracketed more reliably in this stage.
                stx, fxm, gxm, sty, fym, gym, step, bracketed = _cubic_minimizer_step(
                    stx, fx - stx * gtest, gx - gtest, sty, fy - sty * gtest, gy - gtest,
                    step, f - step * gtest, g - gtest, bracketed, stmin, stmax,
                )
                fx, fy = fxm + stx * gtest, fym + sty * gtest
                gx, gy = gxm + gtest, gym + gtest
            else:
                stx, fx, gx, sty, fy, gy, step, bracketed = _cubic_minimizer_step(
                    stx, fx, gx, sty, fy, gy, step, f, g, bracketed, stmin, stmax
                )
            if bracketed:
                # Bisect when the interval did not shrink enough over two trials.
                if abs(sty - stx) >= 0.66 * width_before:
                    step = stx + 0.5 * (sty - stx)
                width_before = width
                width = abs(sty - stx)
                stmin, stmax = min(stx, sty), max(stx, sty)
            else:
                stmin = step + 1.1 * (step - stx)
                stmax = step + 4.0 * (step - stx)
            step = min(max(step, min_step), max_step)
            if (bracketed and (step <= stmin or step >= stmax)) or (
                bracketed and stmax - stmin <= step_tolerance * stmax
            ):
                step = stx  # no further progress possible: end at the best step


# -- the two-loop recursion -------------------------------------------------------------
def lbfgs_direction(
    gradient: Tensor,
    steps: Sequence[Tensor],
    gradient_changes: Sequence[Tensor],
    curvatures: Sequence[float],
    initial_scale: float | Tensor,
) -> Tensor:
    """The L-BFGS direction -H g by the two-loop recursion (Nocedal & Wright, Algorithm 7.4).

    H is the inverse-Hessian approximation obtained from the diagonal H0 = initial_scale by
    one BFGS update per stored pair (s_i, y_i), oldest first: H <- (I - rho s y') H
    (I - rho y s') + rho s s' with rho = 1 / (y' s). Costs 4 m n operations; H is never
    formed.

    Args:
        gradient: g, a 1-D tensor.
        steps: s_i = x_{i+1} - x_i, oldest first.
        gradient_changes: y_i = g_{i+1} - g_i, oldest first.
        curvatures: y_i' s_i (> 0).
        initial_scale: the diagonal of H0: a float (H0 = gamma I, usually gamma = s'y / y'y
            of the newest pair) or a 1-D tensor.

    Returns:
        d = -H g, a new tensor.

    Example:
        >>> d = lbfgs_direction(torch.ones(3), [], [], [], 1.0)  # no pairs: d = -g
    """
    q = gradient.clone()
    alphas = []
    # Keep the coefficients as 0-d tensors: no device synchronisation inside the loops.
    for s, y, curvature in zip(reversed(steps), reversed(gradient_changes), reversed(curvatures)):
        alpha = torch.dot(s, q) / curvature
        q.sub_(y * alpha)
        alphas.append(alpha)
    r = q.mul_(initial_scale)
    for s, y, curvature, alpha in zip(steps, gradient_changes, curvatures, reversed(alphas)):
        beta = torch.dot(y, r) / curvature
        r.add_(s * (alpha - beta))
    return r.neg_()


# -- the shell shared by LBFGS, Newton and NewtonCG ----------------------------------------
positive_integer = validation.positive_integer
optional_positive_integer = validation.optional_positive_integer


class ClosureOptimizer(Optimizer):
    """Shell of the optimizers that see all parameters as one vector and need a closure.

    It keeps ``steepest.Optimizer``'s param groups, hyperparameter checks and state_dict,
    and supplies what whole-vector methods share: flat views of parameters and gradients,
    closure evaluations (counted in ``state["func_evals"]``), and per-group learning rates
    that scale each group's part of the direction symmetrically (see the module docstring).

    Settings listed in ``_shared_settings`` (iteration limits, tolerances, ...) describe the
    method, not a group, so every group must use the same value; only ``lr`` may differ.
    State lives in ``optimizer.state[first parameter]``, as in torch.optim.LBFGS.
    """

    requires_closure: ClassVar[bool] = True
    #: Why the last ``step`` gave up without moving, when it failed (L-BFGS: no decrease found
    #: even from steepest descent); None when it moved or stopped for any other reason.
    #: ``minimize`` reads it to report a failure rather than a convergence of ftol.
    gave_up: str | None = None

    def _check_params(self, params: list[Tensor], first_index: int) -> None:
        """Floating point, and one dtype and device for all: the parameters form one vector."""
        super()._check_params(params, first_index)
        if not params:
            return
        first = next(iter(self._parameters()), params[0])
        for index, p in enumerate(params, start=first_index):
            if p.dtype != first.dtype or p.device != first.device:
                raise ValueError(
                    f"{type(self).__name__} treats all parameters as one vector, so they must "
                    f"share dtype and device; parameter 0 is {first.dtype} on {first.device}, "
                    f"parameter {index} is {p.dtype} on {p.device}"
                )

    # -- flat views ----------------------------------------------------------------------
    def _parameters(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    @staticmethod
    def _real(tensor: Tensor) -> Tensor:
        return torch.view_as_real(tensor) if tensor.is_complex() else tensor

    def _flat_parameters(self) -> Tensor:
        return torch.cat([self._real(p).reshape(-1) for p in self._parameters()])

    def _flat_gradient(self) -> Tensor:
        """All gradients as one vector; a parameter without gradient contributes zeros."""
        pieces = []
        for p in self._parameters():
            if p.grad is None:
                pieces.append(self._real(p).new_zeros(self._real(p).numel()))
            elif p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            else:
                pieces.append(self._real(p.grad).reshape(-1))
        return torch.cat(pieces)

    def _set_flat_parameters(self, flat: Tensor) -> None:
        offset = 0
        for p in self._parameters():
            view = self._real(p)
            view.copy_(flat[offset : offset + view.numel()].view_as(view))
            offset += view.numel()

    def _group_scaling(self) -> tuple[float, Tensor | None]:
        """(lr_max, R): the largest lr and each entry's lr / lr_max, None when all agree.

        None rather than a vector of ones keeps one group and several groups with one lr on
        exactly the same arithmetic (see the module docstring for how R is used).
        """
        rates = [float(group["lr"]) for group in self.param_groups]
        largest = max(rates)
        if all(rate == largest for rate in rates):
            return largest, None
        first = self._real(self._parameters()[0])
        relative = torch.cat([
            torch.full((self._real(p).numel(),), float(group["lr"]) / largest,
                       dtype=first.dtype, device=first.device)
            for group in self.param_groups
            for p in group["params"]
        ])
        return largest, relative

    # -- evaluations ---------------------------------------------------------------------
    def _method_state(self) -> dict[str, Any]:
        state = self.state[self._parameters()[0]]
        state.setdefault("func_evals", 0)
        state.setdefault("n_iter", 0)
        return state

    def _call_closure(self, closure: Closure) -> tuple[Any, float]:
        """Run the closure with gradients on; count it; return (its loss, the loss as a float)."""
        with torch.enable_grad():
            loss = closure()
        # (a float is a loss too, as torch.optim.LBFGS reads it; None or a vector is a mistake)
        value = validation.scalar("the closure's loss", loss, finite=False)
        state = self._method_state()
        state["func_evals"] = state["func_evals"] + 1
        return loss, value

    def _line(self, closure: Closure, x: Tensor, direction: Tensor) -> _Line:
        """phi(t) = f(x + t d) through the closure, for a line search."""
        return _Line(self, closure, x, direction)

    def _start_closure_step(self, closure: Closure | None) -> Closure:
        """Check the closure and resolve scheduled hyperparameters; returns the closure."""
        if closure is None or not callable(closure):
            raise TypeError(
                f"{type(self).__name__}.step needs a closure that re-evaluates the model and "
                "returns the loss, e.g. optimizer.step(lambda: compute_loss()); got "
                f"{closure!r}"
            )
        self._begin_step()
        return closure

    def _finish_closure_step(self) -> None:
        self._end_step()

    def _scalar_state(self, group: dict[str, Any]) -> dict[str, float]:
        return {}  # no per-parameter scalar state: everything is in the first param's dict

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's state_dict, detached from the live state.

        torch's state_dict shares its per-parameter dicts with the optimizer, so a dict kept
        in memory would change as the run goes on; these methods replace (never mutate) the
        tensors and lists they store, so a shallow copy of each dict is a true snapshot.
        """
        state_dict = super().state_dict()
        state_dict["state"] = {
            key: {name: list(value) if isinstance(value, list) else value
                  for name, value in entry.items()}
            for key, entry in state_dict["state"].items()
        }
        return state_dict


class _Line:
    """phi(t) = f(x + t d) and phi'(t) = g(x + t d)' d; remembers the last trial's gradient."""

    def __init__(
        self, optimizer: ClosureOptimizer, closure: Closure, x: Tensor, direction: Tensor
    ) -> None:
        self.optimizer, self.closure, self.x, self.direction = optimizer, closure, x, direction
        self.gradient: Tensor | None = None

    def __call__(self, t: float) -> tuple[float, float]:
        self.optimizer._set_flat_parameters(self.x + t * self.direction)
        _, value = self.optimizer._call_closure(self.closure)
        self.gradient = self.optimizer._flat_gradient()
        return value, float(torch.dot(self.gradient, self.direction))


def _from_torch_lbfgs(entry: dict[str, Any]) -> dict[str, Any]:
    """torch.optim.LBFGS's state (see :meth:`LBFGS.load_state_dict`) in steepest's names."""
    steps, changes = list(entry["old_stps"]), list(entry["old_dirs"])
    state = {
        "func_evals": entry.get("func_evals", 0),
        "n_iter": entry.get("n_iter", 0),
        "old_steps": steps,
        "old_gradient_changes": changes,
        "curvatures": [float(torch.dot(s, y)) for s, y in zip(steps, changes)],
    }
    direction, step_size, gradient = entry.get("d"), entry.get("t"), entry.get("prev_flat_grad")
    if direction is not None and step_size is not None and gradient is not None:
        step_size = float(step_size)
        state["pending_step"] = direction * step_size
        state["pending_gradient"] = gradient
        state["pending_decrease"] = -float(torch.dot(gradient, direction)) * step_size
    return state


# -- L-BFGS --------------------------------------------------------------------------------
_LBFGS_CHECKS: dict[str, validation.Check] = {
    "lr": validation.nonnegative,
    "max_iter": positive_integer,
    "max_eval": optional_positive_integer,
    "tolerance_grad": validation.nonnegative,
    "tolerance_change": validation.nonnegative,
    "history_size": positive_integer,
}


def _check_line_search_fn(name: str, value: Any) -> None:
    if value not in ("strong_wolfe", None):
        raise ValueError(f"{name} must be 'strong_wolfe' or None, got {value!r}")


class LBFGS(ClosureOptimizer):
    """L-BFGS with a Moré-Thuente strong-Wolfe line search; torch.optim.LBFGS's arguments.

    x <- x + t d,  d = -lr H g,  H = two-loop inverse-Hessian estimate from the last
    ``history_size`` pairs (s, y) and H0 = (s'y / y'y) I,  t from the line search.

    It follows scipy's L-BFGS-B on unconstrained problems, step for step: first trial step
    1 / ||g|| on the first iteration and 1 afterwards, the MINPACK-2 line search with
    scipy's constants, H0 scaling, pairs skipped when s'y <= eps * |g's|, and a restart from
    steepest descent when the line search fails. Every trial of the line search is one
    closure call (function and gradient), counted in ``state["func_evals"]``. One shortcut:
    where the first trial's predicted decrease is below the rounding of f, the step ends
    without a search (scipy's would spend up to 20 evaluations failing to see a decrease).

    Unlike torch.optim.LBFGS it accepts several param groups: all parameters form one
    vector for the curvature pairs, and each group's ``lr`` scales its part of the
    direction. With one lr for all groups, d = -lr H g exactly. With several, the first
    direction is -diag(lr) g and H0 = gamma diag(lr / lr_max): the lrs set a diagonal
    preconditioner that the curvature pairs then refine, and the largest lr scales the
    step; lr = 0 freezes a group (details in the module docstring). The line search tries
    the full step first, so lr = 1 (the default) is right for most problems; lr < 1 makes
    every first trial shorter, as in torch.

    Args:
        params: tensors or param-group dicts (all of one dtype and device).
        lr: per-group scale of the direction (default 1).
        max_iter: most iterations per ``step`` call (default 20).
        max_eval: most closure calls per ``step`` call, the first one included (default
            max_iter * 5 // 4 as in torch, at least max_iter + 1).
        tolerance_grad: stop when max |g_i| <= tolerance_grad (default 1e-7).
        tolerance_change: stop when an iteration lowers the loss by at most
            tolerance_change * max(|f|, 1) (scipy's relative test), or moves no parameter
            by more than tolerance_change (torch's test) (default 1e-9).
        history_size: number of (s, y) pairs kept (default 10, scipy's maxcor; torch's
            default is 100).
        line_search_fn: "strong_wolfe" (default) or None for fixed steps of size lr
            (the first one scaled by min(1, 1 / ||g||_1), as in torch).

    Example:
        >>> opt = steepest.LBFGS(model.parameters(), history_size=10)
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = loss_fn(model(inputs), targets)
        ...     loss.backward()
        ...     return loss
        >>> opt.step(closure)  # up to max_iter iterations

    For the fewest evaluations call ``step`` once with a large ``max_iter``: each call
    evaluates the closure at its start (the data may have changed), as torch does. Without a
    line search, as in torch, a call's last step is left unevaluated for the next call's first
    evaluation; its pair (s, y) is completed there.

    State (``optimizer.state[first parameter]``): ``func_evals``, ``n_iter``, ``old_steps``,
    ``old_gradient_changes`` (1-D tensors), ``curvatures`` (floats s'y), and without a line
    search the unevaluated last step's ``pending_step``, ``pending_gradient`` (1-D tensors)
    and ``pending_decrease``: tensors and numbers only, so ``torch.load(weights_only=True)``
    reads it.

    Reference: Nocedal & Wright, Numerical Optimization, 2nd ed., Algorithms 7.4 and 7.5;
    Liu and Nocedal 1989; Byrd, Lu, Nocedal and Zhu 1995 (L-BFGS-B); Moré and Thuente 1994.
    """

    _checks = {**_LBFGS_CHECKS, "line_search_fn": _check_line_search_fn}
    _shared_settings = (
        "max_iter", "max_eval", "tolerance_grad", "tolerance_change", "history_size",
        "line_search_fn",
    )

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1.0,
        max_iter: int = 20,
        max_eval: int | None = None,
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
        history_size: int = 10,
        line_search_fn: str | None = "strong_wolfe",
    ) -> None:
        positive_integer("max_iter", max_iter)
        if max_eval is None:
            # torch's default, but never so small that one iteration cannot take place
            # (the count includes the evaluation at the start of each step).
            max_eval = max(max_iter * 5 // 4, max_iter + 1)
        defaults = dict(
            lr=lr,
            max_iter=max_iter,
            max_eval=max_eval,
            tolerance_grad=tolerance_grad,
            tolerance_change=tolerance_change,
            history_size=history_size,
            line_search_fn=line_search_fn,
        )
        super().__init__(params, defaults)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state_dict of steepest's L-BFGS, or of torch.optim.LBFGS, translated.

        torch keeps the pairs as ``old_stps`` (s) and ``old_dirs`` (y), and the last step as
        ``d``, ``t`` and ``prev_flat_grad``, whose pair it completes at the next call: here
        they become ``old_steps``, ``old_gradient_changes`` (the newest ``history_size``)
        and the pending pair, so a run continues with the curvature it had learnt.
        """
        super().load_state_dict({**state_dict, "state": {
            key: _from_torch_lbfgs(entry) if "old_dirs" in entry and "old_steps" not in entry else entry
            for key, entry in state_dict["state"].items()
        }})
        history_size = self.param_groups[0]["history_size"]
        for state in self.state.values():
            for name in ("old_steps", "old_gradient_changes", "curvatures"):
                if name in state:
                    state[name] = list(state[name])[-history_size:]

    def _forget_history(self, state: dict[str, Any]) -> None:
        state["old_steps"] = []
        state["old_gradient_changes"] = []
        state["curvatures"] = []

    def _remember_pair(
        self, state: dict[str, Any], step_vector: Tensor, gradient_change: Tensor, decrease: float
    ) -> None:
        """Keep the pair (s, y) unless its curvature s'y is too small for a positive definite H:
        scipy's test, relative to the decrease -g's the step promised."""
        curvature = float(torch.dot(step_vector, gradient_change))
        if curvature > torch.finfo(step_vector.dtype).eps * decrease:
            history_size = self.param_groups[0]["history_size"]
            for name, item in (
                ("old_steps", step_vector),
                ("old_gradient_changes", gradient_change),
                ("curvatures", curvature),
            ):
                # New lists, never mutated ones: a state_dict taken earlier stays valid.
                state[name] = [*state[name], item][-history_size:]

    @staticmethod
    def _direction(
        state: dict[str, Any],
        gradient: Tensor,
        lr_max: float,
        relative: Tensor | None,
        first_iteration: bool,
    ) -> tuple[Tensor, float]:
        """The search direction and the line search's first trial step.

        With pairs: d = -lr_max H g, H from H0 = gamma R, gamma = s'y / (y' R y) of the newest
        pair (s'y / y'y for one lr, Nocedal & Wright (7.20)), first trial 1. Without: H0 = R
        and, on the run's first iteration, first trial 1 / ||R^{1/2} g||, scipy's 1 / ||g||
        for one lr, so that the first step is lr_max long, whatever the scale of the problem;
        after a restart from steepest descent, 1, as scipy (its ``iter > 0``).
        """
        if state["old_steps"]:
            newest_change = state["old_gradient_changes"][-1]
            weighted = newest_change if relative is None else newest_change * relative
            gamma = state["curvatures"][-1] / float(torch.dot(newest_change, weighted))
            initial_scale = gamma if relative is None else relative * gamma
            direction = lbfgs_direction(
                gradient, state["old_steps"], state["old_gradient_changes"],
                state["curvatures"], initial_scale,
            )
            first_step = 1.0
        else:
            direction = gradient.neg() if relative is None else gradient * relative.neg()
            norm = math.sqrt(max(-float(torch.dot(gradient, direction)), 0.0))
            first_step = min(1.0 / norm, MAX_STEP) if norm > 0.0 and first_iteration else 1.0
        if lr_max != 1.0:
            direction.mul_(lr_max)
        return direction, first_step

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Any:  # type: ignore[override]
        """Run up to ``max_iter`` L-BFGS iterations; return the loss at the starting point.

        Args:
            closure: re-evaluates the model (zero_grad, forward, backward) and returns the
                loss. Required.
        """
        closure = self._start_closure_step(closure)
        self.gave_up = None
        settings = self.param_groups[0]
        max_iter, max_eval = settings["max_iter"], settings["max_eval"]
        tolerance_grad = settings["tolerance_grad"]
        tolerance_change = settings["tolerance_change"]
        use_line_search = settings["line_search_fn"] == "strong_wolfe"

        state = self._method_state()
        if "old_steps" not in state:
            self._forget_history(state)
        evaluations_at_start = state["func_evals"]

        first_loss, loss = self._call_closure(closure)
        gradient = self._flat_gradient()
        if "pending_step" in state:
            # The last fixed step of the previous call was not evaluated; this is its gradient.
            step_vector, old_gradient = state.pop("pending_step"), state.pop("pending_gradient")
            self._remember_pair(state, step_vector, gradient - old_gradient, state.pop("pending_decrease"))
        if not math.isfinite(loss) or float(gradient.abs().max()) <= tolerance_grad:
            self._finish_closure_step()
            return first_loss
        lr_max, relative = self._group_scaling()
        x = self._flat_parameters()
        machine_epsilon = torch.finfo(gradient.dtype).eps

        for iteration in range(max_iter):
            state["n_iter"] = state["n_iter"] + 1
            first_iter = state["n_iter"] == 1
            taken = None  # (direction, step size, loss there, line, slope), once a step is found
            for _ in range(2):  # a failed search retries once from steepest descent, as scipy
                direction, first_step = self._direction(state, gradient, lr_max, relative, first_iter)
                slope = float(torch.dot(gradient, direction))
                if not slope < 0.0 and state["old_steps"]:
                    # H has lost positive definiteness to rounding: restart from steepest descent.
                    self._forget_history(state)
                    direction, first_step = self._direction(state, gradient, lr_max, relative, first_iter)
                    slope = float(torch.dot(gradient, direction))
                if not slope < 0.0:
                    break  # no descent direction (every lr is 0, or g vanished to rounding)
                if -slope * first_step <= 2.0 * machine_epsilon * abs(loss):
                    # The first trial's predicted decrease is below the rounding of the loss: no
                    # line search can verify a decrease any more, and would only spend its 20
                    # evaluations on rounding noise before failing.
                    break
                budget = max_eval - (state["func_evals"] - evaluations_at_start)
                if budget <= 0:
                    break
                line = self._line(closure, x, direction)
                if not use_line_search:
                    # torch's fixed step: lr (already in the direction), the first scaled down.
                    step_size = min(1.0, 1.0 / float(gradient.abs().sum())) if first_iter else 1.0
                    if iteration == max_iter - 1:
                        # As torch: the last step of a call is not evaluated, since the next call
                        # evaluates there first (a loop of step() with max_iter=1 would pay
                        # twice). Its pair waits for that gradient.
                        state["pending_step"] = direction * step_size
                        state["pending_gradient"] = gradient
                        state["pending_decrease"] = -slope * step_size
                        self._set_flat_parameters(x + state["pending_step"])
                        break
                    taken = direction, step_size, line(step_size)[0], line, slope
                    break
                limit = min(MAX_LINE_SEARCH_EVALUATIONS, budget)
                search = more_thuente_line_search(line, loss, slope, first_step, max_evaluations=limit)
                # As scipy: a search that ends on a warning (rounding, tolerance) is accepted,
                # unless it ends above the start; one that spent its 20 evaluations is not,
                # whatever it found. One cut short by max_eval keeps a sufficient decrease.
                cut_short = limit < MAX_LINE_SEARCH_EVALUATIONS and search.evaluations >= limit
                if math.isfinite(search.loss) and (
                    search.status == "converged"
                    or (search.status == "warning" and search.loss <= loss)
                    or (cut_short and search.loss <= loss + SUFFICIENT_DECREASE * search.step * slope)
                ):
                    taken = direction, search.step, search.loss, line, slope
                    break
                self._set_flat_parameters(x)
                if not state["old_steps"] or search.evaluations >= budget:
                    if not state["old_steps"]:
                        self.gave_up = (
                            f"the line search along -g found no decrease ({search.status}: "
                            f"{search.message}; scipy: ABNORMAL_TERMINATION_IN_LNSRCH)"
                        )
                    break
                self._forget_history(state)  # as scipy: retry from steepest descent, same iteration
            if taken is None:
                break
            direction, step_size, new_loss, line, slope = taken

            step_vector = direction * step_size
            self._remember_pair(state, step_vector, line.gradient - gradient, -slope * step_size)

            x = x + step_vector
            previous_loss, loss, gradient = loss, new_loss, line.gradient
            if not math.isfinite(loss):
                break
            if state["func_evals"] - evaluations_at_start >= max_eval:
                break
            if float(gradient.abs().max()) <= tolerance_grad:
                break
            # abs: without a line search the loss may rise, which is no reason to stop.
            if abs(previous_loss - loss) <= tolerance_change * max(abs(previous_loss), abs(loss), 1.0):
                break
            if float(step_vector.abs().max()) <= tolerance_change:
                break
        self._finish_closure_step()
        return first_loss
