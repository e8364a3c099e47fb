"""Run one problem with several optimizers or learning rates and draw the runs side by side.

:func:`compare` runs :func:`steepest.minimize` once per :class:`RunSpec` from the same start,
records each run's loss curve (and, on a 2-D problem, the path of ``x``) and the live regime
diagnosis of :class:`~steepest.lr.RegimeMonitor`, and returns a :class:`Comparison` that
prints a table and draws the curves (left) and the paths over the objective's contours
(right, 2-D problems only).

:func:`three_regimes` is the picture of the documents: one optimizer at a learning rate that is
too small, a good one and one too large, the good one chosen by :func:`steepest.lr.choose_lr`
unless given.

Example:
    >>> from steepest.lr import compare, three_regimes
    >>> comparison = compare("rosenbrock", [("sgd", 1e-3), ("adam", 1e-2)], steps=300)
    >>> print(comparison.summary())  # doctest: +SKIP
    >>> three_regimes("rosenbrock", "sgd", steps=300).plot("regimes.png")  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from steepest import problems, rules
from steepest.engine import validation
from steepest.lr.auto import choose_lr
from steepest.lr.diagnosis import REGIMES, Diagnosis, RegimeMonitor
from steepest.minimize import Result, minimize

__all__ = ["Comparison", "RunCurve", "RunSpec", "compare", "three_regimes"]

# The loss panel shows at most this many times the starting loss (log scale), or this many
# times the distance from the lowest loss to the start above the start (linear scale): a
# diverging run leaves the picture instead of squashing every other curve against the bottom.
_HEADROOM = 100.0
_LINEAR_HEADROOM = 2.0
# Points of the contour grid per side, and contour levels.
_GRID = 120
_LEVELS = 25
# The contour box is the region the runs explored with a loss no worse than the start, padded
# by this fraction of its size on every side.
_PADDING = 0.15


@dataclass(frozen=True)
class RunSpec:
    """One run of a comparison: an optimizer, its learning rate and other settings.

    Attributes:
        optimizer: a steepest method name (``"sgd"``, ``"adam"``, ``"L-BFGS"``) or an
            optimizer class.
        lr: the learning rate; None keeps the optimizer's default.
        options: other keyword arguments of the optimizer (``{"momentum": 0.9}``); None
            means none.
        label: the name of the run in the legend and the table (default: none; the table
            shows the optimizer and the rate anyway).

    Example:
        >>> RunSpec("sgd", 1e-3, {"momentum": 0.9}, label="heavy ball")
    """

    optimizer: str | type[torch.optim.Optimizer]
    lr: float | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    label: str | None = None

    def __post_init__(self) -> None:
        # None reads as "no options", as three_regimes(options=None) does: (optimizer, lr, None).
        if self.options is None:
            object.__setattr__(self, "options", {})
        elif not isinstance(self.options, Mapping):
            raise TypeError(
                f"options must be a dict of the optimizer's keyword arguments or None, "
                f"got options={self.options!r} ({type(self.options).__name__})"
            )

    @property
    def optimizer_name(self) -> str:
        """The optimizer as written in a table: the name given, or the class's name."""
        return self.optimizer if isinstance(self.optimizer, str) else self.optimizer.__name__

    @property
    def method(self) -> str:
        """The optimizer with its options, as a table and a legend show it: ``"sgd momentum=0.9"``."""
        settings = "".join(f" {name}={_short(value)}" for name, value in self.options.items())
        return self.optimizer_name + settings

    @property
    def title(self) -> str:
        """The legend entry: the label, else ``"<optimizer> [options] lr=<lr>"``."""
        if self.label is not None:
            return self.label
        rate = "default lr" if self.lr is None else f"lr={self.lr:.3g}"
        return f"{self.method} {rate}"


def _short(value: Any) -> str:
    """A number as ``:g`` writes it, a tuple of them in parentheses, anything else as ``str``."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "(" + ", ".join(_short(item) for item in value) + ")"
    return str(value)


@dataclass
class RunCurve:
    """What one run did: its loss at every look, its path (2-D problems) and its regime.

    Attributes:
        spec: the :class:`RunSpec` that was run.
        losses: the objective at every look at the iterate, the start first (``nit + 1``
            values; the last is inf or nan when the run diverged).
        trajectory: the iterate at every look, shape ``(len(losses), 2)``, for a 2-D problem;
            None otherwise.
        result: the :class:`steepest.minimize.Result` of the run.
        diagnoses: every window's :class:`~steepest.lr.Diagnosis` (empty without diagnosis);
            a divergence is diagnosed at once, even in the middle of a window.
    """

    spec: RunSpec
    losses: np.ndarray
    trajectory: np.ndarray | None
    result: Result
    diagnoses: list[Diagnosis] = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        """The objective where the run stopped (inf or nan when it diverged)."""
        return float(self.losses[-1])

    @property
    def diverged(self) -> bool:
        """True when the objective became inf or nan."""
        return not math.isfinite(self.final_loss)

    @property
    def steps(self) -> int:
        """Iterations done."""
        return self.result.nit

    @property
    def regime(self) -> str | None:
        """The run's verdict: the regime of most of its windows; a diverged run is ``too_large``.

        None when no window completed (a run shorter than the monitor's window). Ties go to the
        first of ``REGIMES`` (too_large, too_small, good): a warning is worth more than praise.
        """
        if self.diverged:
            return "too_large"
        if not self.diagnoses:
            return None
        counts = {regime: 0 for regime in REGIMES}
        for diagnosis in self.diagnoses:
            counts[diagnosis.regime] += 1
        return max(REGIMES, key=lambda regime: counts[regime])

    @property
    def advice(self) -> str | None:
        """The latest diagnosis's advice (``"learning rate looks ~10x too large: try 3e-4"``)."""
        return self.diagnoses[-1].advice if self.diagnoses else None


@dataclass
class Comparison:
    """Several runs of one problem from one start: a table, and a picture of the curves.

    Attributes:
        problem_name: the problem's name (``"rosenbrock(dim=2)"``).
        objective: the objective, a function of a 1-D tensor.
        x0: the common start (a detached copy).
        runs: one :class:`RunCurve` per :class:`RunSpec`, in the order given.
        minima: the problem's known minimisers (drawn as stars on the contour panel).
        notes: how the runs were chosen, in words (e.g. the range test behind the good rate).
    """

    problem_name: str
    objective: Callable[[Tensor], Tensor]
    x0: Tensor
    runs: list[RunCurve]
    minima: tuple[Tensor, ...] = ()
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A table, one line per run: optimizer, lr, final loss, steps, regime (and label).

        Example:
            >>> print(comparison.summary())  # doctest: +SKIP
            optimizer  lr        final loss  steps  regime
            sgd        1.24e-05  4.124         500  good
        """
        labelled = any(run.spec.label is not None for run in self.runs)
        header = ["optimizer", "lr", "final loss", "steps", "regime"] + (["run"] if labelled else [])
        rows = [header]
        for run in self.runs:
            rate = f"{run.spec.lr:.3g}" if run.spec.lr is not None else _default_rate(run)
            row = [run.spec.method, rate, f"{run.final_loss:.4g}", str(run.steps), run.regime or "-"]
            rows.append(row + ([run.spec.label or ""] if labelled else []))
        widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
        numeric = {2, 3}  # right-aligned, so that digits line up
        lines = [
            "  ".join(
                cell.rjust(width) if column in numeric else cell.ljust(width)
                for column, (cell, width) in enumerate(zip(row, widths))
            ).rstrip()
            for row in rows
        ]
        return "\n".join(lines)

    def plot(self, path: str | None = None) -> Any:
        """Draw the loss curves (left) and, for a 2-D problem, the paths over contours (right).

        A run that diverged is drawn up to its last finite value and marked with an ``x``;
        the loss axis is logarithmic when every finite loss is positive. matplotlib is
        imported here, and the figure is a bare ``Figure`` rendered by the Agg canvas: no
        pyplot window, and the user's backend is left alone.

        Args:
            path: where to save the figure (PNG unless the extension names another format);
                None to only return it.

        Returns:
            The matplotlib Figure.

        Example:
            >>> comparison.plot("compare.png")  # doctest: +SKIP
        """
        from matplotlib.figure import Figure

        two_d = all(run.trajectory is not None for run in self.runs)
        figure = Figure(figsize=(12.5, 5) if two_d else (7, 5), layout="constrained")
        axes = figure.subplots(1, 2 if two_d else 1, squeeze=False)[0]
        colors = [f"C{index % 10}" for index in range(len(self.runs))]
        self._plot_losses(axes[0], colors)
        if two_d:
            self._plot_paths(axes[1], colors)
        figure.suptitle(self.problem_name)
        if path is not None:
            figure.savefig(path)
        return figure

    def _plot_losses(self, ax: Any, colors: list[str]) -> None:
        finite = [run.losses[: _finite_length(run.losses)] for run in self.runs]
        values = np.concatenate([curve for curve in finite if curve.size] or [np.zeros(1)])
        log_scale = bool((values > 0).all())
        bottom, highest = float(values.min()), float(values.max())
        start = max((float(curve[0]) for curve in finite if curve.size), default=highest)
        # A diverging run would stretch the axis to 1e300; above the ceiling it leaves the picture.
        if log_scale:
            ceiling = start * _HEADROOM
            top = 2 * min(highest, ceiling)
            ax.set_yscale("log")
            ax.set_ylim(bottom / 2, top)
            beyond = 10 * top
        else:
            span = max(start - bottom, 1e-12)
            ceiling = start + _LINEAR_HEADROOM * span
            top = min(highest, ceiling) + 0.05 * span
            ax.set_ylim(bottom - 0.05 * span, top)
            beyond = top + 10 * span
        for run, curve, color in zip(self.runs, finite, colors):
            label = run.spec.title + (f" (diverged at step {len(curve)})" if run.diverged else "")
            # Values past the axis are clipped well outside it: drawing 1e300 only breaks renderers.
            ax.plot(np.arange(len(curve)), np.minimum(curve, beyond), color=color, label=label)
            if run.diverged and curve.size:
                ax.plot(
                    len(curve) - 1, min(float(curve[-1]), ceiling), "x", color=color, markersize=10, mew=2
                )
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title("loss per step")
        ax.legend(fontsize="small")

    def _plot_paths(self, ax: Any, colors: list[str]) -> None:
        low, high = self._box()
        grid_x, grid_y, heights = self._contours(low, high)
        if np.isfinite(heights).any() and np.ptp(heights[np.isfinite(heights)]) > 0:
            ax.contour(grid_x, grid_y, heights, levels=_LEVELS, colors="0.7", linewidths=0.6)
        start = self.x0.numpy()
        ax.plot(start[0], start[1], "o", color="black", label="start")
        for index, minimum in enumerate(self.minima):
            point = minimum.numpy()
            ax.plot(
                point[0],
                point[1],
                "*",
                color="gold",
                markeredgecolor="black",
                markersize=14,
                label="minimum" if index == 0 else None,
            )
        reach = (high - low) * 10
        for run, color in zip(self.runs, colors):
            path = _clip_path(run.trajectory, low - reach, high + reach)
            ax.plot(path[:, 0], path[:, 1], "-", color=color, linewidth=1.2, marker=".", markersize=3)
            ax.plot(path[-1, 0], path[-1, 1], "x" if run.diverged else "s", color=color, markersize=7)
        ax.set_xlim(low[0], high[0])
        ax.set_ylim(low[1], high[1])
        ax.set_xlabel("x[0]")
        ax.set_ylabel("x[1]")
        ax.set_title("paths over contours of the objective (log-spaced)")
        ax.legend(fontsize="small", loc="best")

    def _box(self) -> tuple[np.ndarray, np.ndarray]:
        """The region worth drawing: start, minima and every point no worse than the start."""
        start = self.x0.numpy()
        points = [start[None, :]] + [minimum.numpy()[None, :] for minimum in self.minima]
        first = float(self.runs[0].losses[0]) if self.runs else math.inf
        for run in self.runs:
            keep = np.isfinite(run.losses) & (run.losses <= first) & np.isfinite(run.trajectory).all(axis=1)
            points.append(run.trajectory[keep])
        points = np.concatenate(points)
        low, high = points.min(axis=0), points.max(axis=0)
        size = np.maximum(high - low, 0.1 * np.maximum(np.abs(high), 1.0))  # never a flat box
        return low - _PADDING * size, high + _PADDING * size

    def _contours(self, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The grid and log10(f - min f + a thousandth of the range): contours that show a valley."""
        axis_x = np.linspace(low[0], high[0], _GRID)
        axis_y = np.linspace(low[1], high[1], _GRID)
        grid_x, grid_y = np.meshgrid(axis_x, axis_y)
        points = torch.as_tensor(np.stack([grid_x.ravel(), grid_y.ravel()], axis=1), dtype=self.x0.dtype)
        with torch.no_grad():
            try:
                values = torch.func.vmap(self.objective)(points)
            except (RuntimeError, NotImplementedError, TypeError, ValueError):
                # an objective vmap cannot trace (data-dependent control flow, .item()): one by one
                values = torch.stack([self.objective(point) for point in points])
        values = values.double().numpy().reshape(grid_x.shape)
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            return grid_x, grid_y, values
        floor, span = float(finite.min()), max(float(np.ptp(finite)), 1e-300)
        # Overflowing points (inf) are drawn as the highest finite level: contour refuses inf.
        values = np.where(np.isfinite(values), values, finite.max())
        return grid_x, grid_y, np.log10(values - floor + 1e-3 * span)


def _finite_length(losses: np.ndarray) -> int:
    """How many values come before the first non-finite one."""
    bad = np.flatnonzero(~np.isfinite(losses))
    return int(bad[0]) if bad.size else len(losses)


def _clip_path(points: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """The path up to where it leaves the box [low, high] (or stops being finite).

    The segment that leaves is kept up to the box's edge, so a diverging run is seen shooting
    off in its direction; the far point itself (1e150, say) would only break the drawing.
    """
    inside = np.isfinite(points).all(axis=1) & (points >= low).all(axis=1) & (points <= high).all(axis=1)
    count = int(np.argmin(inside)) if not inside.all() else len(points)
    kept = points[: max(count, 1)]
    if 0 < count < len(points) and np.isfinite(points[count]).all():
        last, far = points[count - 1], points[count]
        direction = far - last
        with np.errstate(divide="ignore", invalid="ignore"):
            limits = np.where(direction > 0, (high - last) / direction, (low - last) / direction)
        fraction = float(np.nanmin(np.where(direction != 0, limits, np.inf)))
        kept = np.vstack([kept, last + min(max(fraction, 0.0), 1.0) * direction])
    return kept


# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class _Resolved:
    """A problem as the runs need it."""

    name: str
    objective: Callable[[Tensor], Tensor]
    x0: Tensor
    minima: tuple[Tensor, ...]


def _default_rate(run: RunCurve) -> str:
    """The rate an optimizer ran at by default, as the table shows it (``1e-3 (default)``)."""
    rates = run.result.history.get("lr") or [math.nan]
    return "default" if not math.isfinite(rates[0]) else f"{rates[0]:.3g} (default)"


def _resolve_problem(
    problem: str | problems.Problem | Callable[[Tensor], Tensor], x0: Tensor | None
) -> _Resolved:
    """The name, objective, start and minima of a problem name, a Problem, or a callable with x0."""
    if isinstance(problem, str):
        problem = problems.by_name(problem)
    if not callable(problem):
        raise TypeError(
            f"problem must be a name from steepest.problems.PROBLEMS, a Problem or a callable "
            f"objective, got problem={problem!r}"
        )
    if x0 is None:
        x0 = getattr(problem, "x0", None)
    if not isinstance(x0, Tensor) or not x0.is_floating_point() or x0.dim() != 1:
        raise TypeError(f"x0 must be a 1-D floating-point tensor (or the problem's x0), got x0={x0!r}")
    minima = tuple(problem.minima) if isinstance(problem, problems.Problem) else ()
    name = getattr(problem, "name", getattr(problem, "__name__", type(problem).__name__))
    return _Resolved(str(name), problem, x0.detach().clone(), minima)


def _check_runs(runs: Sequence[RunSpec | tuple], x0: Tensor) -> list[RunSpec]:
    """Every run as a RunSpec, its optimizer built once on a copy of x0: bad settings fail now,
    before the first run spends any time."""
    if isinstance(runs, (str, RunSpec)) or not isinstance(runs, Sequence) or not runs:
        raise ValueError(
            f"runs must be a non-empty list of RunSpec or (optimizer, lr) pairs, got runs={runs!r}"
        )
    specs = []
    for index, run in enumerate(runs):
        name = f"runs[{index}]"
        if isinstance(run, tuple) and len(run) in (2, 3):
            try:
                run = RunSpec(*run)
            except TypeError as error:
                raise TypeError(f"{name}: {error}") from None
        if not isinstance(run, RunSpec):
            raise TypeError(f"{name} must be a RunSpec or an (optimizer, lr) pair, got {name}={run!r}")
        cls = run.optimizer
        if isinstance(cls, str):
            cls = rules.by_name(cls, argument=f"{name}.optimizer")
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
            raise TypeError(f"{name}.optimizer must be a method name or an optimizer class, got {cls!r}")
        if run.lr is not None:
            validation.positive(f"{name}.lr", run.lr)
        settings = dict(run.options)
        if "lr" in settings:
            raise ValueError(f"{name}.options must not hold lr (give it as {name}.lr), got {settings!r}")
        if run.lr is not None:
            settings["lr"] = run.lr
        try:
            cls([x0.clone().requires_grad_(True)], **settings)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{name}: {cls.__name__} rejects {settings}: {error}") from error
        specs.append(run)
    return specs


def compare(
    problem: str | problems.Problem | Callable[[Tensor], Tensor],
    runs: Sequence[RunSpec | tuple],
    steps: int = 500,
    *,
    x0: Tensor | None = None,
    gtol: float | None = 1e-5,
    diagnose: bool = True,
) -> Comparison:
    """Run ``problem`` once per run spec from the same start and collect the curves.

    Each run is ``minimize(problem, x0, optimizer, lr=lr, options=options, max_iter=steps)``:
    it stops after ``steps`` iterations, at convergence (``gtol``) or when the objective stops
    being finite. All settings are checked (every optimizer is built once) before the first
    run starts.

    Args:
        problem: a name of ``steepest.problems.PROBLEMS`` (``"rosenbrock"``), a
            :class:`~steepest.problems.Problem`, or a callable objective of a 1-D tensor.
        runs: :class:`RunSpec` objects or ``(optimizer, lr)`` / ``(optimizer, lr, options)``
            tuples.
        steps: iterations per run (default 500).
        x0: the common start (default: the problem's ``x0``).
        gtol: stop a run when its gradient's inf-norm is at most this (default 1e-5, as
            minimize); None runs every run for ``steps`` iterations unless it diverges.
        diagnose: classify each run's learning-rate regime live with a
            :class:`~steepest.lr.RegimeMonitor` (default True).

    Returns:
        A :class:`Comparison`: ``print(c.summary())``, ``c.plot("out.png")``.

    Example:
        >>> c = compare("rosenbrock", [("sgd", 1e-3), ("sgd", 1e-2), ("adam", 0.1)], steps=200)
        >>> [run.diverged for run in c.runs]
        [False, True, False]
    """
    return _compare(_resolve_problem(problem, x0), runs, steps, gtol, diagnose, notes=[])


def _compare(
    resolved: _Resolved,
    runs: Sequence[RunSpec | tuple],
    steps: int,
    gtol: float | None,
    diagnose: bool,
    notes: list[str],
) -> Comparison:
    steps = validation.integer("steps", steps, minimum=1)
    if gtol is not None:
        validation.nonnegative("gtol", gtol)
    validation.boolean("diagnose", diagnose)
    specs = _check_runs(runs, resolved.x0)
    curves = [_run(resolved.objective, resolved.x0, spec, steps, gtol, diagnose) for spec in specs]
    return Comparison(resolved.name, resolved.objective, resolved.x0, curves, resolved.minima, notes)


def _run(
    objective: Callable[[Tensor], Tensor],
    x0: Tensor,
    spec: RunSpec,
    steps: int,
    gtol: float | None,
    diagnose: bool,
) -> RunCurve:
    record_path = x0.numel() == 2
    path: list[Tensor] = []

    def record(observation: Any) -> None:
        # A criterion that never stops: minimize calls every criterion at every look (the start,
        # each iteration, and the look where the objective stopped being finite), so this sees
        # exactly the points history["fun"] was evaluated at.
        if record_path:
            path.append(observation.params()[0].detach().clone())

    monitor = RegimeMonitor() if diagnose else None
    result = minimize(
        objective,
        x0,
        spec.optimizer,
        lr=spec.lr,
        options=dict(spec.options),
        max_iter=steps,
        gtol=gtol,
        stopping=record,
        diagnose=monitor if monitor is not None else False,
    )
    losses = np.asarray(result.history["fun"], dtype=float)
    if monitor is not None and not math.isfinite(losses[-1]):
        # minimize stops at a non-finite objective before feeding it to the monitor; fed now, it
        # gives the divergence its own diagnosis (and advice sized from the growth before it).
        lr = result.history["lr"][-1]
        monitor.observe(result.nit, losses[-1], result.history["grad_norm"][-1], lr=lr if lr > 0 else None)
    trajectory = torch.stack(path).double().numpy() if record_path else None
    return RunCurve(spec, losses, trajectory, result, [] if monitor is None else monitor.history)


def _best_of_the_run(
    resolved: _Resolved,
    settings: dict[str, Any],
    optimizer: Any,
    steps: int,
    gtol: float | None,
    around: float,
    why: str,
) -> tuple[float, list[str]]:
    """The good rate for a picture of ``steps`` iterations: of the rates half a decade apart
    from ``around`` / 30 to ``around`` x 10, the one whose run reaches gtol in the fewest
    steps, else ends lowest (the larger on a tie). Returns it and the note that says so."""
    rates = [around * 10 ** (k / 2) for k in range(-3, 3)]
    runs = _compare(resolved, [RunSpec(optimizer, rate, settings) for rate in rates], steps, gtol, False, [])

    def score(run: RunCurve) -> tuple[int, float, float]:
        if run.result.success:  # reached gtol: the sooner the better
            return 0, float(run.steps), -run.spec.lr
        return 1, run.final_loss if math.isfinite(run.final_loss) else math.inf, -run.spec.lr

    best = min(runs.runs, key=score)
    note = (
        f"good lr {best.spec.lr:.3g}: of {len(rates)} rates from {rates[0]:.3g} to {rates[-1]:.3g} "
        f"(half a decade apart; {why}), the one that went furthest in {steps} steps"
    )
    return best.spec.lr, [note]


def three_regimes(
    problem: str | problems.Problem | Callable[[Tensor], Tensor],
    optimizer: str | type[torch.optim.Optimizer] = "sgd",
    lr: float | None = None,
    steps: int = 500,
    *,
    factor: float = 30.0,
    options: Mapping[str, Any] | None = None,
    x0: Tensor | None = None,
    gtol: float | None = 1e-5,
) -> Comparison:
    """The three regimes of the documents in one picture: a rate too small, a good one, one too large.

    Rates: ``good / factor``, ``good`` and ``good * factor``, where ``good`` is ``lr`` or, when
    None, chosen: for SGD, the rate :func:`steepest.lr.choose_lr` picks, 0.9 of the stable
    limit at the start's curvature (a few gradients). For another optimizer (whose
    ``lr="auto"`` is a range test, or a stand-in: Prodigy for Adam), or where that rate
    diverges along the path, the best of six rates half a decade apart around this
    optimizer's own range test (or the diverging rate), each run for ``steps``: the one that
    reaches ``gtol`` soonest, else ends lowest. A range test's short trials favour large rates:
    its "good" SGD rate on logistic regression (25) ended 1.6x above the one 30x smaller after
    500 steps, RMSprop's on Rosenbrock (0.25) at 10 where one 30x smaller reached 0.58.
    With the default factor 30, gradient descent at the large rate diverges on the built-in
    test functions; Adam, whose steps are bounded by the rate, may only wander.

    Args:
        problem: as :func:`compare` takes it.
        optimizer: one method name or class (default ``"sgd"``).
        lr: the good rate; None chooses one (above).
        steps: iterations per run (default 500).
        factor: how far below and above the good rate the other two runs are (default 30, > 1).
        options: other keyword arguments of the optimizer.
        x0: the common start (default: the problem's).
        gtol: as :func:`compare` takes it.

    Returns:
        A :class:`Comparison` with runs labelled ``"too small"``, ``"good"``, ``"too large"``;
        with a chosen rate, ``notes`` holds how it was chosen.

    Example:
        >>> c = three_regimes("rosenbrock", "sgd", steps=300)
        >>> c.runs[0].final_loss > c.runs[1].final_loss, c.runs[2].diverged
        (True, True)
    """
    resolved = _resolve_problem(problem, x0)
    factor = validation.real("factor", factor)
    if factor <= 1:
        raise ValueError(f"factor must be > 1, got factor={factor!r}")
    settings = dict(options or {})

    def at(good: float, notes: list[str]) -> Comparison:
        runs = [
            RunSpec(optimizer, good / factor, settings, label="too small"),
            RunSpec(optimizer, good, settings, label="good"),
            RunSpec(optimizer, good * factor, settings, label="too large"),
        ]
        return _compare(resolved, runs, steps, gtol, diagnose=True, notes=notes)

    if lr is not None:
        comparison = at(validation.positive("lr", lr), [])
    else:
        choice = choose_lr(resolved.objective, optimizer=optimizer, options=options, x0=resolved.x0)
        if choice.policy == "curvature":
            comparison = at(choice.lr, [f"good lr {choice.lr:.3g} from {choice.reason}"])
            if comparison.runs[1].diverged:
                # The path met stiffer curvature than the start's (Himmelblau's start is a
                # saddle): lr="auto" backs off there; this picture needs a rate good all along.
                why = f"the start's curvature gave {choice.lr:.3g}, which diverged along the path"
                comparison = at(*_best_of_the_run(resolved, settings, optimizer, steps, gtol, choice.lr, why))
        else:
            # A range test's short trials favour large rates (RMSprop on Rosenbrock: 0.25, which
            # ended at 10 where a rate 30x smaller reached 0.58), and lr="auto" would run Adam
            # as Prodigy: the rates around this optimizer's own range test, run in full.
            tested = choice
            if choice.policy != "range_test":  # this optimizer's own range test, not its stand-in's
                tested = choose_lr(
                    resolved.objective,
                    optimizer=optimizer,
                    policy="range_test",
                    options=options,
                    x0=resolved.x0,
                )
            why = f"its range test chose {tested.lr:.3g}"
            comparison = at(*_best_of_the_run(resolved, settings, optimizer, steps, gtol, tested.lr, why))
    for run in comparison.runs:
        verdict = run.regime
        if verdict is not None and verdict.replace("_", " ") != run.spec.label:
            # Say so rather than let the table contradict itself silently: in a curved valley a
            # rate too small settles the stiff direction and then creeps along the floor with a
            # small, steady gradient, which its own numbers cannot tell from slow convergence.
            comparison.notes.append(
                f"the {run.spec.label!r} run (lr {run.spec.lr:.3g}) reads as {verdict!r} to the live "
                f"diagnosis, which judges a run by its own numbers: {run.diagnoses[-1].reason}"
            )
    return comparison
