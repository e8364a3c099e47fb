"""Function evaluations of L-BFGS to a tight optimum: scipy, torch.optim and steepest side by side.

Every method gets the same problem in float64 on the CPU, the same start, history 10 and
the same stopping rule: stop at max |g_i| <= 1e-10 (scipy's ``gtol``, torch's
``tolerance_grad``) or when an iteration no longer lowers the loss (``ftol=0``,
``tolerance_change=0``), whichever comes first. An evaluation is one call of the objective
with its gradient; for torch.optim and steepest that is one closure call, for scipy one
call of ``fun``. Counted, never timed. torch.optim and "steepest" run in one ``step`` call
(as scipy runs in one ``minimize`` call); "steepest 20/step" is the usual loop of ``step``
calls with ``max_iter=20``.

Columns: evaluations until the method stops, their ratio to scipy's in the same run,
evaluations until max |g_i| first falls to 1e-8 (insensitive to how each method ends in
rounding noise), the final gap f - f*, the final max |g_i|, and the distance to x*
(max |x_i - x*_i|) where the minimiser is unique.

Run from the repository root (``--device cuda`` runs the torch methods on a GPU, in float64;
scipy always runs on the CPU)::

    .venv/bin/python benchmarks/lbfgs_evaluations.py [--device cuda]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch

import steepest.problems as problems
from steepest.rules.lbfgs import LBFGS

GRADIENT_TOLERANCE = 1e-10
MILESTONE = 1e-8  # a gradient level every method reaches before rounding noise sets in
HISTORY = 10
BUDGET = 100_000  # evaluations; never reached on these problems


@dataclass
class Outcome:
    evaluations: int
    x: torch.Tensor
    gradient_norms: list[float]  # max |g_i| at each evaluation, in order

    @property
    def evaluations_to_milestone(self) -> int | None:
        for index, norm in enumerate(self.gradient_norms, start=1):
            if norm <= MILESTONE:
                return index
        return None

    def row(self, problem: problems.Problem) -> tuple[float, float, float | None]:
        x = self.x.detach().to(device="cpu", dtype=torch.float64).requires_grad_()
        loss = problem(x)
        (gradient,) = torch.autograd.grad(loss, x)
        distance = None
        if problem.x_star is not None:
            distance = float((x.detach() - problem.x_star).abs().max())
        return float(loss.detach()) - problem.f_star, float(gradient.abs().max()), distance


def run_scipy(problem: problems.Problem, start: torch.Tensor) -> Outcome:
    norms: list[float] = []

    def value_and_gradient(values: np.ndarray) -> tuple[float, np.ndarray]:
        x = torch.tensor(values, dtype=torch.float64, requires_grad=True)
        loss = problem(x)
        (gradient,) = torch.autograd.grad(loss, x)
        norms.append(float(gradient.abs().max()))
        return float(loss.detach()), gradient.numpy()

    result = scipy.optimize.minimize(
        value_and_gradient,
        start.numpy(),
        jac=True,
        method="L-BFGS-B",
        options={"maxcor": HISTORY, "gtol": GRADIENT_TOLERANCE, "ftol": 0.0,
                 "maxiter": BUDGET, "maxfun": BUDGET},
    )
    return Outcome(int(result.nfev), torch.tensor(result.x, dtype=torch.float64), norms)


def run_torch_style(
    make_optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
    problem: problems.Problem,
    start: torch.Tensor,
    device: str,
) -> Outcome:
    """One ``step`` call with a budget larger than needed: the whole run, as scipy's."""
    x = start.to(device=device, copy=True).requires_grad_()
    optimizer = make_optimizer([x])
    norms: list[float] = []

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = problem(x)
        loss.backward()
        norms.append(float(x.grad.abs().max()))
        return loss

    optimizer.step(closure)
    return Outcome(len(norms), x.detach().clone(), norms)


def run_steepest_in_steps(
    problem: problems.Problem, start: torch.Tensor, device: str, iterations_per_step: int = 20
) -> Outcome:
    """The usual loop: ``step`` with max_iter=20 until max|g| <= tolerance or no decrease.

    Each call evaluates the closure once at its start (as torch does), so this costs about
    one evaluation per 20 iterations more than a single call.
    """
    x = start.to(device=device, copy=True).requires_grad_()
    optimizer = LBFGS([x], history_size=HISTORY, max_iter=iterations_per_step,
                      tolerance_grad=GRADIENT_TOLERANCE, tolerance_change=0.0)
    norms: list[float] = []

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = problem(x)
        loss.backward()
        norms.append(float(x.grad.abs().max()))
        return loss

    while len(norms) < BUDGET:
        loss_before = float(optimizer.step(closure).detach())
        with torch.no_grad():
            loss_after = float(problem(x))
        probe = x.detach().requires_grad_()
        (gradient,) = torch.autograd.grad(problem(probe), probe)
        if float(gradient.abs().max()) <= GRADIENT_TOLERANCE or loss_after >= loss_before:
            break
    return Outcome(len(norms), x.detach().clone(), norms)


def torch_lbfgs(params: list[torch.Tensor]) -> torch.optim.Optimizer:
    return torch.optim.LBFGS(
        params, history_size=HISTORY, line_search_fn="strong_wolfe", max_iter=BUDGET,
        max_eval=BUDGET, tolerance_grad=GRADIENT_TOLERANCE, tolerance_change=0.0,
    )


def steepest_lbfgs(params: list[torch.Tensor]) -> torch.optim.Optimizer:
    return LBFGS(
        params, history_size=HISTORY, max_iter=BUDGET, max_eval=BUDGET,
        tolerance_grad=GRADIENT_TOLERANCE, tolerance_change=0.0,
    )


def cases() -> list[tuple[str, problems.Problem, torch.Tensor]]:
    """(label, problem, start); the first two are the ANCHORS.md problems."""
    listed = [
        ("softmax breast cancer l2=1e-3", problems.softmax_regression("breast_cancer", l2=1e-3)),
        ("rosenbrock 10-D from -1.2", problems.rosenbrock(dim=10)),
        ("rosenbrock 10-D (-1.2, 1, ...)", problems.rosenbrock(dim=10)),
        ("rosenbrock 2-D", problems.rosenbrock(dim=2)),
        ("logistic breast cancer l2=1e-3", problems.logistic_regression("breast_cancer")),
        ("logistic digits l2=1e-3", problems.logistic_regression("digits")),
        ("softmax digits l2=1e-3", problems.softmax_regression("digits", l2=1e-3)),
        ("quadratic d=100 cond=1e3", problems.quadratic(dim=100, condition=1e3)),
        ("least squares diabetes", problems.least_squares()),
        ("beale", problems.beale()),
        ("himmelblau", problems.himmelblau()),
    ]
    out = []
    for label, problem in listed:
        start = problem.x0
        if label == "rosenbrock 10-D from -1.2":
            start = torch.full((10,), -1.2, dtype=torch.float64)
        out.append((label, problem, start))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--device", default="cpu", help="device of the torch runs (default cpu)")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)

    print(f"float64; torch runs on {arguments.device}; stop at max|g| <= {GRADIENT_TOLERANCE:g} "
          "or no decrease; history 10")
    header = (f"{'problem':32} {'method':16} {'evals':>6} {'ratio':>6} {'to 1e-8':>8} "
              f"{'f - f*':>9} {'max|g|':>8} {'max|x-x*|':>9}")
    print(header)
    print("-" * len(header))
    worst = 0.0
    for label, problem, start in cases():
        scipy_outcome = run_scipy(problem, start)
        outcomes = [
            ("scipy L-BFGS-B", scipy_outcome),
            ("torch.optim", run_torch_style(torch_lbfgs, problem, start, arguments.device)),
            ("steepest", run_torch_style(steepest_lbfgs, problem, start, arguments.device)),
            ("steepest 20/step", run_steepest_in_steps(problem, start, arguments.device)),
        ]
        for method, outcome in outcomes:
            gap, gradient, distance = outcome.row(problem)
            ratio = outcome.evaluations / scipy_outcome.evaluations
            if method.startswith("steepest"):
                worst = max(worst, ratio)
            distance_text = "-" if distance is None else f"{distance:9.1e}"
            milestone = outcome.evaluations_to_milestone
            milestone_text = "-" if milestone is None else str(milestone)
            print(
                f"{label:32} {method:16} {outcome.evaluations:6d} {ratio:6.2f} "
                f"{milestone_text:>8} {gap:9.1e} {gradient:8.1e} {distance_text:>9}"
            )
    print(f"\nworst steepest / scipy evaluation ratio: {worst:.2f} (goal: <= 1.20)")


if __name__ == "__main__":
    main()
