"""``minimize(fun, x0)``: drive any steepest optimizer to a minimum and say why it stopped.

The scipy.optimize.minimize experience on PyTorch: gradients come from autograd, ``x0`` may
be one tensor or a dict/list/tuple of tensors on any device and of any floating dtype, and
the :class:`Result` reports the point, the value, the counts and the reason for stopping.
:class:`EmpiricalRisk` turns a data set into an objective, so that batch, stochastic and
mini-batch gradient descent are one knob (``batch_size``) of the same call.

>>> import torch
>>> from steepest.minimize import minimize
>>> result = minimize(lambda x: ((x - 3.0) ** 2).sum(), torch.zeros(2), method="sgd", lr=0.25)
>>> result.success, result.nit, round(float(result.x[0]), 4)
(True, 20, 3.0)

How a run goes. Iteration ``k`` looks at ``x_k`` (``x_0`` is the start), then steps:

* first-order methods (SGD, Adam, ...): one evaluation of ``fun`` and one backward pass at
  ``x_k``, whose gradient both feeds the stopping test and makes the step; a run of
  ``nit`` iterations costs ``nfev = ngev = nit + 1``;
* methods whose ``step`` needs a closure (L-BFGS, Newton) get one that evaluates ``fun``
  and its gradient and remembers the last point, so re-evaluating where the line search
  ended costs nothing. ``nfev`` counts the real calls of ``fun``; ``ngev`` every backward
  pass from its value, the optimizer's own included (Newton differentiates the loss
  itself; its Hessian-vector products are not counted). With the same algorithm the
  counts are scipy's: L-BFGS on Rosenbrock takes scipy's L-BFGS-B's nit and nfev.

The stopping test is ``stopping.any_of(<nan/inf guard>, gtol, ftol, xtol, stopping, max_iter)``
over the shortcuts that are not None, plus ``stopping.stalled(2)`` for closure-driven
methods (two steps in a row that leave ``x`` unchanged: the line search gave up).
``history`` holds one entry per look, ``nit + 1`` entries: the start and every iteration.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from steepest import rules, stopping
from steepest.clipping import global_norm
from steepest.lr.auto import LRChoice, choose_lr
from steepest.lr.diagnosis import Diagnosis, RegimeMonitor, UpdateTracker
from steepest.lr.range_test import RandomState
from steepest.lr.safety import SafeStep, check_settings
from steepest.stopping import Status, Stop

__all__ = ["METHODS", "EmpiricalRisk", "Result", "minimize"]

#: Method names (any letter case; "-" and "_" ignored) -> optimizer class: every optimizer.
METHODS = rules.OPTIMIZERS

# Closure calls allowed in one L-BFGS iteration when minimize runs one per step: above the
# line searches' own caps (20 trials in steepest.rules.lbfgs, 25 in torch.optim.LBFGS), with
# room for the restart from steepest descent after a failed search.
_EVALUATIONS_PER_ITERATION = 100

# scipy's L-BFGS-B default: factr=1e7 times the float64 machine epsilon.
_SCIPY_LBFGSB_FTOL = 1e7 * 2.220446049250313e-16

Structure = Tensor | Mapping[str, Any] | Sequence[Any]
LearningRate = float | Callable[[int], float]


# --------------------------------------------------------------------------- the result


@dataclass(repr=False)
class Result:
    """What :func:`minimize` found, and why it stopped (scipy's OptimizeResult, typed).

    Attributes:
        x: the solution, same structure, devices and dtypes as ``x0`` (detached tensors).
        fun: the objective at ``x`` (for a stochastic objective: on the last batch).
        grad_norm: Euclidean norm of the gradient at ``x``.
        nit: iterations (updates) done.
        nfev: calls of ``fun``.
        ngev: backward passes (gradient evaluations).
        success: True when a convergence test stopped the run.
        status: a :class:`steepest.stopping.Status` code.
        message: the reason it stopped, in words.
        history: per look at the iterate (``nit + 1`` entries, the start first): ``fun``,
            ``grad_norm`` and ``lr`` (the rate of the step taken from that point; nan for an
            optimizer without one).
        wall_time: seconds the run took.
        method: the optimizer's class name.
        lr_choice: with ``lr="auto"``, what was chosen and why (an
            :class:`~steepest.lr.auto.LRChoice`; its ``evaluations`` are not in ``nfev``).
        advice: with ``diagnose=True``, the latest regime diagnosis's advice (None before
            the first complete window); ``diagnoses`` holds every
            :class:`~steepest.lr.Diagnosis` and ``history["regime"]`` the latest regime at
            each look (``""`` before the first window completes).
        safety: with ``on_nonfinite``/``on_spike``, the guard's counts (nonfinite, spikes,
            skips, backoffs, scaler_skips).
    """

    x: Any
    fun: float
    grad_norm: float
    nit: int
    nfev: int
    ngev: int
    success: bool
    status: int
    message: str
    history: dict[str, list[float]] = field(default_factory=dict)
    wall_time: float = 0.0
    method: str = ""
    lr_choice: LRChoice | None = None
    advice: str | None = None
    diagnoses: list[Diagnosis] = field(default_factory=list)
    safety: dict[str, int] | None = None

    def __str__(self) -> str:
        status = self.status
        name = stopping.Status(status).name if status in set(stopping.Status) else "USER"
        entries = len(self.history.get("fun", []))
        rows = [
            ("message", self.message),
            ("success", str(self.success)),
            ("status", f"{int(status)} ({name})"),
            ("fun", f"{self.fun:.10g}"),
            ("x", _describe(self.x)),
            ("grad_norm", f"{self.grad_norm:.3g}"),
            ("nit", str(self.nit)),
            ("nfev", str(self.nfev)),
            ("ngev", str(self.ngev)),
            ("method", self.method),
            ("wall_time", f"{self.wall_time:.3g} s"),
            ("history", f"{', '.join(self.history)} ({entries} entries each)"),
        ]
        if self.lr_choice is not None:
            rows.append(("lr_choice", str(self.lr_choice)))
            rows.append(("lr_cost", f"{self.lr_choice.evaluations} evaluations to choose"))
        if self.advice is not None:
            rows.append(("advice", self.advice))
        if self.safety is not None:
            rows.append(("safety", ", ".join(f"{k} {v}" for k, v in self.safety.items())))
        width = max(len(label) for label, _ in rows)
        return "\n".join(f"{label:>{width}}: {text}" for label, text in rows)

    __repr__ = __str__


def _describe(x: Any) -> str:
    """Small tensors in full, big ones by shape, so that printing a Result stays readable."""
    if isinstance(x, Tensor):
        if x.numel() <= 8:
            return repr(x).replace("\n", " ")
        return f"Tensor(shape={tuple(x.shape)}, dtype={x.dtype}, device={x.device})"
    if isinstance(x, Mapping):
        return "{" + ", ".join(f"{key!r}: {_describe(value)}" for key, value in x.items()) + "}"
    items = ", ".join(_describe(item) for item in x)
    return f"[{items}]" if isinstance(x, list) else f"({items})"


# --------------------------------------------------------------------------- x0 structures


def _leaves(structure: Any, path: str = "x0") -> list[Tensor]:
    """The tensors of a tensor / dict / list / tuple structure, depth first, in order."""
    if isinstance(structure, Tensor):
        if not (structure.is_floating_point() or structure.is_complex()):
            raise TypeError(f"{path} must be a floating-point tensor, got dtype {structure.dtype}")
        return [structure]
    if isinstance(structure, Mapping):
        found: list[Tensor] = []
        for key, value in structure.items():
            found += _leaves(value, f"{path}[{key!r}]")
        return found
    if isinstance(structure, (list, tuple)):
        found = []
        for index, value in enumerate(structure):
            found += _leaves(value, f"{path}[{index}]")
        return found
    raise TypeError(
        f"{path} must be a tensor, or a dict/list/tuple of tensors, got {type(structure).__name__}"
    )


def _rebuild(structure: Any, leaves: Iterator[Tensor]) -> Any:
    """``structure`` with its tensors replaced, in order, by ``leaves``."""
    if isinstance(structure, Tensor):
        return next(leaves)
    if isinstance(structure, Mapping):
        return {key: _rebuild(value, leaves) for key, value in structure.items()}
    items = [_rebuild(value, leaves) for value in structure]
    if isinstance(structure, tuple):
        return type(structure)(*items) if hasattr(structure, "_fields") else tuple(items)
    return items


# --------------------------------------------------------------------------- optimizers


def _method_class(name: str) -> type[torch.optim.Optimizer]:
    return rules.by_name(name, argument="method")


def _build_optimizer(
    method: str | type[torch.optim.Optimizer] | Callable[[list[Tensor]], torch.optim.Optimizer],
    params: list[Tensor],
    lr: LearningRate | None,
    options: Mapping[str, Any] | None,
) -> torch.optim.Optimizer:
    if isinstance(method, str):
        method = _method_class(method)
    options = dict(options or {})
    if isinstance(method, type):
        if not issubclass(method, torch.optim.Optimizer):
            raise TypeError(
                f"method must be a name, a torch.optim.Optimizer subclass or a factory "
                f"params -> optimizer, got the class {method.__name__}"
            )
        if lr is not None:
            if "lr" in options:
                raise ValueError("lr is given twice: as lr= and in options; keep one")
            options["lr"] = lr
        options = {**_one_iteration_per_step(method, options), **options}
        return method(params, **options)
    if callable(method):
        if lr is not None or options:
            raise ValueError(
                "lr and options configure a method given by name or class; a factory "
                f"builds its own optimizer, got lr={lr!r}, options={options!r}"
            )
        optimizer = method(params)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"the method factory must return a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        return optimizer
    raise TypeError(
        f"method must be a name, an optimizer class or a factory params -> optimizer, got {method!r}"
    )


def _one_iteration_per_step(cls: type, options: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults that make one ``step`` one iteration of a torch.optim.LBFGS-like method.

    LBFGS runs ``max_iter=20`` iterations per ``step`` and torch's has no line search
    unless asked; minimize counts iterations and tests convergence itself, and follows
    scipy in searching for a strong-Wolfe step. ``max_eval`` defaults to
    ``max_iter * 5 // 4``, which for one iteration would leave no evaluation for the line
    search, so it is raised to a budget no line search reaches (each caps its own trials).
    Re-evaluating at the start of every ``step`` costs nothing: minimize's closure
    remembers the last point. The optimizer's own convergence tests (``tolerance_grad``,
    ``tolerance_change``) are switched off, since minimize's criteria decide when to stop:
    left on, a ``step`` would silently do nothing once ``max |g| <= 1e-7`` while the user
    asked for ``gtol=1e-12``. Options the user gave win.
    """
    try:
        parameters = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return {}
    defaults: dict[str, Any] = {}
    if "max_iter" in parameters and "max_iter" not in options:
        defaults["max_iter"] = 1
        if "max_eval" in parameters and "max_eval" not in options:
            defaults["max_eval"] = _EVALUATIONS_PER_ITERATION
    for tolerance in ("tolerance_grad", "tolerance_change"):
        if tolerance in parameters and tolerance not in options:
            defaults[tolerance] = 0.0
    if issubclass(cls, torch.optim.LBFGS) and "line_search_fn" not in options:
        defaults["line_search_fn"] = "strong_wolfe"  # torch's default is fixed steps
    return defaults


# --------------------------------------------------------------------------- evaluations


class _Objective:
    """Evaluates ``fun`` and its gradient at the current point, counting both honestly.

    ``nfev`` counts calls of ``fun``; ``ngev`` counts backward passes from its value, by a
    hook on the value, so gradients the optimizer takes itself (Newton differentiates the
    closure's loss) count too. Hessian-vector products are not gradients: not counted.

    ``remember=True`` (closure-driven methods) keeps the last point, its value and gradient,
    so that asking again at the same point (the line search's last trial, the next step's
    first call) costs nothing. ``keep_graph=True`` (optimizers with
    ``closure_create_graph``, which differentiate the closure's loss twice) makes the
    closure return the value with its graph, without a backward pass; the remembered
    graph is reused only while the parameters are untouched (same version counters).
    """

    def __init__(
        self,
        fun: Callable[[Any], Tensor],
        x: Any,
        leaves: list[Tensor],
        remember: bool,
        keep_graph: bool = False,
    ) -> None:
        self.fun = fun
        self.x = x
        self.leaves = leaves
        self.remember = remember
        self.keep_graph = keep_graph
        self.nfev = 0
        self.ngev = 0
        self._point: list[Tensor] | None = None
        self._versions: list[int] = []
        self._value: Tensor | None = None
        self._grads: list[Tensor | None] | None = None

    def forget(self) -> None:
        """The objective changed (a new batch): the remembered point no longer applies."""
        self._point = self._value = self._grads = None

    def _count_gradient(self, grad: Tensor) -> None:
        self.ngev += 1

    def _at_remembered_point(self) -> bool:
        if self._point is None:
            return False
        if self.keep_graph and [leaf._version for leaf in self.leaves] != self._versions:
            return False  # the graph saw other values, even if the same ones were written back
        return all(torch.equal(leaf, kept) for leaf, kept in zip(self.leaves, self._point))

    def _remember(self, value: Tensor, grads: list[Tensor | None] | None) -> None:
        if not self.remember:
            return
        with torch.no_grad():
            self._point = [leaf.detach().clone() for leaf in self.leaves]
        self._versions = [leaf._version for leaf in self.leaves]
        self._value = value if self.keep_graph else value.detach()
        self._grads = grads

    def _value_at_point(self) -> Tensor:
        """A fresh call of ``fun``, with its graph."""
        with torch.enable_grad():
            self.nfev += 1
            value = self.fun(self.x)
            _check_value(value)
            if not value.requires_grad:
                raise ValueError(
                    "fun's value does not depend on x through differentiable operations, "
                    "so it has no gradient"
                )
            value.register_hook(self._count_gradient)
        return value

    def _gradient(self, value: Tensor) -> list[Tensor | None]:
        with torch.enable_grad():
            grads = torch.autograd.grad(value, self.leaves, retain_graph=self.keep_graph, allow_unused=True)
        return list(grads)

    def __call__(self) -> Tensor:
        """The value at the current point (detached); the gradient goes to each ``.grad``."""
        if self.remember and self._at_remembered_point():
            value = self._value
            if self._grads is None:  # a graph kept without its gradient (keep_graph)
                self._grads = self._gradient(value)
            grads = self._grads
        else:
            value = self._value_at_point()
            grads = self._gradient(value)
            self._remember(value, grads)
        for leaf, grad in zip(self.leaves, grads):
            leaf.grad = None if grad is None else grad.clone()
        return value.detach()

    def closure(self) -> Tensor:
        """What a closure-driven optimizer calls: the value, and the gradient in ``.grad``.

        With ``keep_graph``, the value keeps its graph and no gradient is taken here.
        """
        if not self.keep_graph:
            return self()
        if self._at_remembered_point():
            return self._value  # type: ignore[return-value]
        value = self._value_at_point()
        self._remember(value, None)
        return value

    def gradients(self) -> list[Tensor]:
        return [leaf.grad for leaf in self.leaves if leaf.grad is not None]


def _check_value(value: Any) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"fun must return a scalar tensor, got {type(value).__name__}")
    if value.numel() != 1:
        raise ValueError(f"fun must return a scalar tensor, got shape {tuple(value.shape)}")
    if not value.is_floating_point():  # a complex value has no order to minimize
        raise TypeError(f"fun must return a real floating-point tensor, got dtype {value.dtype}")


# --------------------------------------------------------------------------- minimize


def minimize(
    fun: Callable[[Any], Tensor],
    x0: Structure | None = None,
    method: str | type[torch.optim.Optimizer] | Callable[..., torch.optim.Optimizer] = "adam",
    *,
    lr: LearningRate | Literal["auto"] | None = None,
    options: Mapping[str, Any] | None = None,
    max_iter: int | None = 1000,
    gtol: float | None = 1e-5,
    ftol: float | Literal["auto"] | None = "auto",
    xtol: float | None = None,
    stopping: stopping.CriterionLike | None = None,
    diagnose: bool | RegimeMonitor = False,
    on_nonfinite: str | None = None,
    on_spike: str | None = None,
    safety: Mapping[str, Any] | None = None,
) -> Result:
    """Minimize ``fun(x)`` from ``x0`` with any optimizer; gradients come from autograd.

    x_{k+1} = optimizer step from x_k using grad fun(x_k), until a stopping criterion holds.

    Args:
        fun: maps ``x`` (the structure of ``x0``) to a scalar tensor; an
            :class:`EmpiricalRisk` draws its next batch once per iteration.
        x0: the start: a floating-point tensor or a dict/list/tuple of them (left
            untouched; the run works on a detached copy on the same device and dtype).
            None takes ``fun.initial_params()`` (an EmpiricalRisk over an ``nn.Module``).
        method: a name from :data:`METHODS` (any case: ``"adam"``, ``"L-BFGS"``, ...), an
            optimizer class, or a factory ``params -> optimizer`` (default ``"adam"``).
        lr: the learning rate (a float or a schedule ``step -> float``); None keeps the
            optimizer's default. Not with a factory. ``"auto"``: chosen by
            :func:`steepest.lr.auto.choose_lr` before the run (an Adam-family method runs
            as Prodigy with lr=1, 0.5 on a stochastic objective; a closure-driven method
            (L-BFGS, Newton) keeps lr=1, its line search sizes the steps; SGD gets 0.9 of its
            stable limit at the start's curvature, and the run backs off from a divergence
            unless ``on_nonfinite`` says otherwise, ``on_spike`` and ``safety`` joining that
            back-off; others get a short range test and trials, on a stochastic
            :class:`EmpiricalRisk` with batches it draws, the same for every trial, its batch
            stream and counters put back afterwards); ``result.lr_choice`` says what and why.
        options: other keyword arguments of the optimizer class (``{"momentum": 0.9}``).
            For a class with torch.optim.LBFGS's arguments, minimize sets ``max_iter=1``
            (one iteration per step, so that its criteria see every iteration), a
            ``max_eval`` that leaves room for the line search, ``tolerance_grad=0`` and
            ``tolerance_change=0`` (minimize's criteria decide), and for torch's own class
            a strong-Wolfe line search; ``options`` overrides any of these.
        max_iter: iteration budget (default 1000): stop with success False when spent;
            None for no limit (another criterion must then end the run).
        gtol: stop with success when ``||grad||_inf <= gtol`` (default 1e-5, scipy's).
        ftol: stop with success when ``|f_prev - f| / max(|f_prev|, |f|, 1) <= ftol``.
            ``"auto"`` (default): scipy's L-BFGS-B value 2.2e-9 for closure-driven methods
            (L-BFGS, Newton), whose line search makes every step decrease ``f``; off for
            first-order methods, whose objective can stall for a step without having converged.
        xtol: stop with success when the step's Euclidean norm is ``<= xtol`` (default off).
        stopping: more criteria (:mod:`steepest.stopping`), combined with the shortcuts by
            ``any_of``; it is reset at the start. Set a shortcut to None to drop it. A
            criterion sees every iteration, so it can also serve as a callback.
        diagnose: True (or a configured :class:`~steepest.lr.RegimeMonitor`) to classify
            the learning-rate regime live: loss, gradient norm and update ratio of every
            iteration; see ``result.advice``, ``result.diagnoses``, ``history["regime"]``.
            The monitor reads ``fun`` as a loss, -``fun`` when the optimizer maximizes; a
            non-finite value that stops the run is its last observation (a divergence).
        on_nonfinite: None (default: a non-finite objective stops the run as DIVERGED), or a
            :class:`~steepest.lr.safety.SafeStep` policy: ``"raise"``, ``"skip"``,
            ``"backoff"`` or ``"stop"``. A skipped or backed-off iteration counts in ``nit``
            without an update.
        on_spike: None (default) or a SafeStep policy for a loss spike.
        safety: more keyword arguments of SafeStep (``spike_factor``, ``snapshot_every``, ...).

    Returns:
        A :class:`Result`. When a :func:`~steepest.stopping.patience` criterion stops the
        run, ``x``, ``fun`` and ``grad_norm`` are those of its best iteration. For a
        schedule-free method (``optimizer.train()``/``eval()``), ``x`` is the averaged point
        (eval mode), and ``fun`` and ``grad_norm`` are evaluated there: one more call of
        ``fun``, counted in ``nfev`` and ``ngev``.

    Example:
        >>> result = minimize(lambda p: (p["w"] ** 2).sum(), {"w": torch.ones(3)}, lr=0.1)
        >>> print(result.message)  # doctest: +SKIP
        converged: gradient inf-norm 9.7e-06 <= gtol=1e-05
    """
    start = time.perf_counter()
    if not callable(fun):
        raise TypeError(f"fun must be callable, got {fun!r}")
    if x0 is None:
        initial = getattr(fun, "initial_params", None)
        x0 = initial() if callable(initial) else getattr(fun, "x0", None)  # a built-in problem
        if x0 is None:
            raise ValueError(
                "x0 is None: give a starting point (x0 may be None only for a built-in "
                "problem or an EmpiricalRisk over an nn.Module, which know where to start)"
            )
    originals = _leaves(x0)
    if not originals:
        raise ValueError("x0 holds no tensor to optimize")
    if sum(tensor.numel() for tensor in originals) == 0:
        raise ValueError(f"x0 holds no element to optimize, got x0={_describe(x0)}")
    if options is not None and not isinstance(options, Mapping):  # read only after lr="auto" chose
        raise TypeError(f"options must be a dict of keyword arguments or None, got options={options!r}")
    check_settings(safety, on_nonfinite, on_spike)
    monitor = _monitor(diagnose)
    leaves = [tensor.detach().clone().requires_grad_(True) for tensor in originals]
    x = _rebuild(x0, iter(leaves))

    lr_choice = None
    if isinstance(lr, str):
        if lr != "auto":
            raise ValueError(f"lr must be a number, a schedule, None or 'auto', got lr={lr!r}")
        lr_choice, method, options = _auto_lr(fun, x0, leaves, method, options)
        lr = lr_choice.lr
        # The chosen rate may come with a guard (the curvature policy: a path that meets stiffer
        # curvature than the start's backs off). A policy the caller set wins over the guard's
        # for the same event; the caller's other settings (on_spike, safety's snapshot_every,
        # ...) join it rather than remove it: without the back-off that rate may diverge.
        if on_nonfinite is None:
            on_nonfinite = lr_choice.safety.get("on_nonfinite")
        if on_spike is None:
            on_spike = lr_choice.safety.get("on_spike")
    optimizer = _build_optimizer(method, leaves, lr, options)
    driven_by_closure = rules.requires_closure(optimizer)
    # A schedule-free method takes its gradients at the interpolated point y (train mode)
    # and produces the average x (eval mode). The iterations, and the stopping test, look
    # at y: its gradient is the one the step needs anyway, and x, y and z share their
    # limit. What the run returns is x, so a criterion that keeps parameters (patience's
    # restore_best) is handed x (``averaged_point``), and the result is evaluated at x.
    averaged = rules.has_modes(optimizer)
    criterion = _stopping_test(max_iter, gtol, ftol, xtol, stopping, driven_by_closure)
    criterion.reset()
    objective = _Objective(
        fun,
        x,
        leaves,
        remember=driven_by_closure,
        keep_graph=rules.differentiates_twice(optimizer),
    )

    stochastic = bool(getattr(fun, "is_stochastic", False))
    next_batch = getattr(fun, "next_batch", None)

    def draw_batch() -> None:
        if callable(next_batch):
            next_batch()
            if stochastic:
                objective.forget()

    history: dict[str, list[Any]] = {"fun": [], "grad_norm": [], "lr": []}
    tracker = UpdateTracker(optimizer) if monitor is not None else None
    if monitor is not None:
        history["regime"] = []
    # The monitor reads a loss to minimize: a maximized objective is turned round for it.
    turned = rules.loss_sign(optimizer) if monitor is not None else 1.0

    def observe_divergence(iteration: int, fun_value: float, grad_norm: float, rate: float) -> None:
        """Report a non-finite value that stops the run to the monitor, as a divergence."""
        if monitor is not None and not (math.isfinite(fun_value) and math.isfinite(grad_norm)):
            monitor.observe(iteration, turned * fun_value, grad_norm, lr=_known(rate))
            history["regime"][-1] = monitor.latest.regime if monitor.latest is not None else ""

    guard = None
    if on_nonfinite is not None or on_spike is not None or safety:
        policy = "stop" if on_nonfinite is None else on_nonfinite  # ("" is a typo, not "stop")
        guard = SafeStep(optimizer, policy, on_spike, **dict(safety or {}))
    previous = [leaf.detach().clone() for leaf in leaves]  # x_{k-1}, for the step norm
    step_norm: float | None = None
    iteration = 0
    draw_batch()
    value = objective()
    while True:
        fun_value = float(value)
        grad_norm = float(global_norm(objective.gradients()))
        history["fun"].append(fun_value)
        history["grad_norm"].append(grad_norm)
        rate = _learning_rate(optimizer)  # the rate this iteration's step takes
        history["lr"].append(rate)
        if monitor is not None:
            latest = monitor.latest
            history["regime"].append("" if latest is None else latest.regime)
        if guard is not None:
            verdict = guard.check(value)
            if verdict.should_stop:
                observe_divergence(iteration, fun_value, grad_norm, rate)
                stop = Stop(
                    f"stopped by the safe-step policy: {verdict.reason}",
                    success=False,
                    status=Status.DIVERGED,
                )
                break
            if not verdict.stepped:  # skipped or rolled back: look again, count the iteration
                iteration += 1
                step_norm = None
                objective.forget()
                draw_batch()
                value = objective()
                continue
        observation = _observation(
            iteration,
            fun_value,
            grad_norm,
            step_norm,
            time.perf_counter() - start,
            objective,
            (lambda: _averaged_point(optimizer, leaves)) if averaged else None,
        )
        stop = criterion(observation)
        gave_up = getattr(optimizer, "gave_up", None) if driven_by_closure and iteration else None
        if gave_up is not None and (stop is None or stop.success):
            # x did not move: ftol would read that as convergence (scipy reports ABNORMAL)
            stop = Stop(f"no progress: {gave_up}", success=False, status=Status.NO_PROGRESS)
        if stop is not None:
            observe_divergence(iteration, fun_value, grad_norm, rate)
            break
        with torch.no_grad():
            for kept, leaf in zip(previous, leaves):
                kept.copy_(leaf)
        if tracker is not None:
            tracker.snapshot()
        if driven_by_closure:
            optimizer.step(objective.closure)
        else:  # (MoMo's Polyak step reads the loss at this point)
            optimizer.step(**rules.loss_keywords(optimizer, value))
        if monitor is not None and tracker is not None:
            length, ratio = tracker.measure()
            monitor.observe(
                iteration,
                turned * fun_value,
                grad_norm,
                ratio,
                lr=_known(rate),
                update_norm=length,
            )
        iteration += 1
        with torch.no_grad():
            for kept, leaf in zip(previous, leaves):
                kept.sub_(leaf)
            step_norm = float(global_norm(previous))
        draw_batch()
        value = objective()

    final = iteration
    if averaged:
        optimizer.eval()  # the leaves hold x; a best snapshot (an x too) is restored as one
    if stop.best_params is not None and stop.best_iteration is not None:
        stop.restore_best(leaves)
        final = stop.best_iteration
    final_fun, final_grad_norm = history["fun"][final], history["grad_norm"][final]
    if averaged:
        # The history's values are y's; those of the returned point are taken at x, on
        # the current batch for a stochastic objective (as fun is for other methods).
        objective.forget()
        value = objective()
        final_fun, final_grad_norm = float(value), float(global_norm(objective.gradients()))
    solution = [leaf.detach().clone() for leaf in leaves]
    latest = monitor.latest if monitor is not None else None
    return Result(
        x=_rebuild(x0, iter(solution)),
        fun=final_fun,
        grad_norm=final_grad_norm,
        nit=iteration,
        nfev=objective.nfev,
        ngev=objective.ngev,
        success=stop.success,
        status=stop.status,
        message=stop.reason,
        history=history,
        wall_time=time.perf_counter() - start,
        method=type(optimizer).__name__,
        lr_choice=lr_choice,
        advice=None if latest is None else latest.advice,
        diagnoses=[] if monitor is None else monitor.history,
        safety=None if guard is None else guard.counts,
    )


def _monitor(diagnose: bool | RegimeMonitor) -> RegimeMonitor | None:
    if isinstance(diagnose, RegimeMonitor):
        diagnose.reset()
        return diagnose
    if not isinstance(diagnose, bool):
        raise TypeError(f"diagnose must be True, False or a RegimeMonitor, got diagnose={diagnose!r}")
    return RegimeMonitor() if diagnose else None


def _auto_lr(
    fun: Callable[[Any], Tensor],
    x0: Any,
    leaves: list[Tensor],
    method: Any,
    options: Mapping[str, Any] | None,
) -> tuple[LRChoice, type[torch.optim.Optimizer], dict[str, Any]]:
    """lr="auto": the choice, the class to build and the options it accepts.

    The choice leaves ``fun`` and the random states as it found them, so that the run that
    follows is the run given the chosen rate. A stochastic :class:`EmpiricalRisk` hands the
    choice batches its own sampler draws, as mini-batch data: every trial sees the same
    batches and is judged as on mini-batches (``choose_lr`` with ``data``); its batch stream,
    counters and generator are put back afterwards. Another stochastic objective (an
    ``is_stochastic`` one with a ``next_batch``) draws a batch at every call, which the choice
    cannot replay (``noisy``): its trials see different batches and its state moves on.
    """
    if isinstance(method, str):
        method = _method_class(method)
    if not (isinstance(method, type) and issubclass(method, torch.optim.Optimizer)):
        raise ValueError(
            f"lr='auto' needs a method given by name or class, got {method!r} (a factory sets its own lr)"
        )
    options = dict(options or {})
    if "lr" in options:
        raise ValueError("lr='auto' and options['lr'] both given; keep one")
    start = [leaf.detach().clone() for leaf in leaves]
    stochastic = bool(getattr(fun, "is_stochastic", False))
    next_batch = getattr(fun, "next_batch", None)
    risk = fun if isinstance(fun, EmpiricalRisk) else None
    # (drawing the choice's batches moves the risk's own generator, or torch's global one)
    saved_random = RandomState.capture(risk)
    saved_risk = None if risk is None else dict(vars(risk))
    try:
        if risk is not None and stochastic:

            def drawn() -> Iterator[Tensor]:
                # choose_lr keeps as many as its longest pass reads, and replays them
                while True:
                    risk.next_batch()
                    yield risk._indices

            def on_batch(point: list[Tensor], indices: Tensor) -> Tensor:
                risk._indices = indices
                return risk(_rebuild(x0, iter(point)))

            choice = choose_lr(on_batch, drawn(), method, x0=start, options=options, repeats=3)
        else:

            def objective(point: list[Tensor]) -> Tensor:
                if stochastic and callable(next_batch):
                    next_batch()
                return fun(_rebuild(x0, iter(point)))

            choice = choose_lr(
                objective,
                None,
                method,
                x0=start,
                options=options,
                repeats=3 if stochastic else 1,
                noisy=stochastic,
            )
    finally:
        saved_random.restore()
        if risk is not None:
            vars(risk).update(saved_risk)
    return choice, choice.method, dict(choice.options)


def _observation(
    iteration: int,
    fun_value: float,
    grad_norm: float,
    step_norm: float | None,
    elapsed: float,
    objective: _Objective,
    params: Callable[[], list[Tensor]] | None = None,
) -> stopping.Observation:
    return stopping.Observation(
        iteration=iteration,
        fun=fun_value,
        grad_norm=grad_norm,
        step_norm=step_norm,
        elapsed=elapsed,
        params=params if params is not None else (lambda: objective.leaves),
        gradients=objective.gradients,
    )


def _averaged_point(optimizer: Any, leaves: list[Tensor]) -> list[Tensor]:
    """Copies of a schedule-free method's x, its eval-mode point; ``leaves`` keep y exactly."""
    with rules.evaluation_mode(optimizer):
        return [leaf.detach().clone() for leaf in leaves]


def _stopping_test(
    max_iter: int | None,
    gtol: float | None,
    ftol: float | Literal["auto"] | None,
    xtol: float | None,
    extra: stopping.CriterionLike | None,
    driven_by_closure: bool,
) -> stopping.AnyOf:
    """any_of(nan/inf guard, [stalled,] gtol, ftol, xtol, extra, max_iter), those that are set."""
    if ftol == "auto":
        ftol = _SCIPY_LBFGSB_FTOL if driven_by_closure else None
    criteria: list[stopping.CriterionLike] = [stopping.divergence(factor=math.inf)]
    if driven_by_closure:
        # A line-search or Newton step that leaves x where it is has given up; a first-order
        # step of zero is only a learning rate of 0 (a warm-up's first step), not a verdict.
        criteria.append(stopping.stalled(2))
    # The shortcuts' checks name minimize's argument, not the criterion's.
    if gtol is not None:
        criteria.append(stopping.gtol(stopping._check_nonnegative("gtol", gtol)))
    if ftol is not None:
        criteria.append(stopping.ftol(stopping._check_nonnegative("ftol", ftol)))
    if xtol is not None:
        criteria.append(stopping.xtol(stopping._check_nonnegative("xtol", xtol)))
    if extra is not None:
        if not callable(extra):
            raise TypeError(
                f"stopping must be a criterion (a callable Observation -> Stop | None), got {extra!r}"
            )
        criteria.append(extra)
    if max_iter is not None:
        criteria.append(stopping.max_iter(stopping._check_count("max_iter", max_iter)))
    if len(criteria) == 1 + driven_by_closure:  # only the guards: a converging run never ends
        raise ValueError(
            "no criterion can end the run: max_iter, gtol, ftol, xtol and stopping are all None; "
            "set at least one"
        )
    return stopping.any_of(*criteria)


def _learning_rate(optimizer: torch.optim.Optimizer) -> float:
    value = optimizer.param_groups[0].get("lr")
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _known(rate: float) -> float | None:
    """The rate for the regime monitor: None for an optimizer without one (NaN in the history)."""
    return rate if math.isfinite(rate) else None


# --------------------------------------------------------------------------- empirical risk


class EmpiricalRisk:
    """The mean loss over a data set, R(theta) = (1/|B|) sum_{i in B} loss(model(theta, x_i), y_i).

    One knob picks the descent: ``batch_size="full"`` is batch gradient descent (B is the
    whole set, the exact gradient), ``1`` is stochastic gradient descent, an integer ``b``
    is mini-batch descent. :func:`minimize` calls :meth:`next_batch` once per iteration;
    every evaluation in that iteration (a line search's too) uses the same batch.

    Sampling: without replacement (default), each epoch is a fresh random permutation cut
    into batches of ``b`` (the last one smaller when ``b`` does not divide ``n``); with
    replacement, each batch draws ``b`` indices uniformly, and an epoch is ``ceil(n / b)``
    batches by convention. Bookkeeping: ``steps`` (batches drawn), ``epoch`` (epochs
    completed), ``step_in_epoch`` (batches drawn in the current epoch), ``examples_seen``.

    Memory: ``chunk_size`` caps the examples per forward pass. A batch larger than that is
    evaluated chunk by chunk, each chunk's gradient taken at once and accumulated with
    weight ``n_chunk / |B|``, so the value and gradient are exactly the batch mean's while
    only one chunk's graph is alive. Second derivatives (Newton) are exact too, but
    rebuild every chunk's graph at once, so they save no memory. ``loss`` must average over its batch
    (torch's ``reduction="mean"``) for this weighting to be exact.

    Args:
        model_or_fn: an ``nn.Module`` (its trainable parameters are the variables: ``x`` is
            a dict name -> tensor, evaluated with ``torch.func.functional_call``; the
            module's parameters are not modified, its buffers, such as BatchNorm's running
            statistics, update as in any forward pass in training mode) or a function
            ``fn(x, inputs) -> predictions``.
        loss: ``loss(predictions, targets) -> scalar``, a mean over the batch.
        data: a pair of tensors ``(inputs, targets)`` with the examples along dim 0, or a
            ``torch.utils.data.Dataset`` of ``(input, target)`` pairs.
        batch_size: ``"full"`` (default), or an integer in [1, n].
        replacement: sample batches with replacement (default False).
        chunk_size: most examples per forward pass (default: the whole batch).
        generator: the ``torch.Generator`` that draws batches (default: torch's global one).

    Example:
        >>> X, y = torch.randn(100, 3), torch.randn(100)
        >>> risk = EmpiricalRisk(lambda w, inputs: inputs @ w, nn.functional.mse_loss, (X, y),
        ...                      batch_size=10)
        >>> result = minimize(risk, torch.zeros(3), method="sgd", lr=0.05, max_iter=200)
        >>> risk.epoch, risk.examples_seen
        (20, 2010)

    With a module, ``minimize(EmpiricalRisk(model, loss, data))`` starts from the model's
    parameters; ``model.load_state_dict(result.x, strict=False)`` puts the solution back.
    """

    def __init__(
        self,
        model_or_fn: nn.Module | Callable[[Any, Any], Tensor],
        loss: Callable[[Tensor, Tensor], Tensor],
        data: tuple[Tensor, Tensor] | Sequence[Tensor] | torch.utils.data.Dataset,
        batch_size: int | Literal["full"] = "full",
        *,
        replacement: bool = False,
        chunk_size: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if not callable(model_or_fn):
            raise TypeError(
                f"model_or_fn must be an nn.Module or a function (x, inputs) -> predictions, "
                f"got {model_or_fn!r}"
            )
        if not callable(loss):
            raise TypeError(f"loss must be callable (predictions, targets) -> scalar, got {loss!r}")
        self.model_or_fn = model_or_fn
        self.loss = loss
        self._tensors, self._dataset = _as_data(data)
        self.n_examples = len(self._tensors[0]) if self._tensors is not None else len(self._dataset)
        if self.n_examples == 0:
            raise ValueError("data holds no examples")
        if batch_size == "full":
            if replacement:
                raise ValueError(
                    "replacement=True needs an integer batch_size; batch_size='full' uses every example once"
                )
            self.batch_size: int | Literal["full"] = "full"
        else:
            size = stopping._check_count("batch_size", batch_size)
            if size > self.n_examples:
                raise ValueError(
                    f"batch_size must be 'full' or an integer in [1, {self.n_examples}] "
                    f"(the number of examples), got batch_size={batch_size!r}"
                )
            self.batch_size = size
        if not isinstance(replacement, bool):
            raise TypeError(f"replacement must be True or False, got replacement={replacement!r}")
        self.replacement = replacement
        self.chunk_size = None if chunk_size is None else stopping._check_count("chunk_size", chunk_size)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {generator!r}")
        self.generator = generator
        self.steps = 0
        self.epoch = 0
        self.step_in_epoch = 0
        self.examples_seen = 0
        self._order: Tensor | None = None  # this epoch's permutation (without replacement)
        self._indices: Tensor | None = None  # the current batch; None = every example

    # -- batches ---------------------------------------------------------------------------
    @property
    def is_stochastic(self) -> bool:
        """True unless ``batch_size="full"``: the value depends on the batch drawn."""
        return self.batch_size != "full"

    @property
    def batches_per_epoch(self) -> int:
        if self.batch_size == "full":
            return 1
        return math.ceil(self.n_examples / self.batch_size)

    def next_batch(self) -> None:
        """Move on to the next batch and update the bookkeeping."""
        if self.batch_size == "full":
            self._indices = None
            size = self.n_examples
        elif self.replacement:
            self._indices = torch.randint(self.n_examples, (self.batch_size,), generator=self.generator)
            size = self.batch_size
        else:
            if self.step_in_epoch == 0 or self._order is None:
                self._order = torch.randperm(self.n_examples, generator=self.generator)
            start = self.step_in_epoch * self.batch_size
            self._indices = self._order[start : start + self.batch_size]
            size = len(self._indices)
        self.steps += 1
        self.examples_seen += size
        self.step_in_epoch += 1
        if self.step_in_epoch == self.batches_per_epoch:
            self.epoch += 1
            self.step_in_epoch = 0

    # -- values ----------------------------------------------------------------------------
    def initial_params(self) -> dict[str, Tensor] | None:
        """The module's trainable parameters by name (detached), or None for a function."""
        if not isinstance(self.model_or_fn, nn.Module):
            return None
        return {
            name: param.detach() for name, param in self.model_or_fn.named_parameters() if param.requires_grad
        }

    def __call__(self, x: Any) -> Tensor:
        """The mean loss over the current batch (the first call draws one)."""
        if self.steps == 0:
            self.next_batch()
        return self._mean_loss(x, self._indices)

    def full_risk(self, x: Any) -> Tensor:
        """The mean loss over every example, in chunks; draws nothing, counts nothing."""
        return self._mean_loss(x, None)

    def _predict(self, x: Any, inputs: Any) -> Tensor:
        if isinstance(self.model_or_fn, nn.Module):
            return torch.func.functional_call(self.model_or_fn, x, (inputs,))
        return self.model_or_fn(x, inputs)

    def _examples(self, indices: Tensor) -> tuple[Any, Any]:
        if self._tensors is not None:
            inputs, targets = self._tensors
            return inputs[indices.to(inputs.device)], targets[indices.to(targets.device)]
        batch = torch.utils.data.default_collate([self._dataset[int(i)] for i in indices])
        return batch[0], batch[1]

    def _chunks(self, indices: Tensor | None) -> list[Tensor]:
        if indices is None:
            indices = torch.arange(self.n_examples)
        size = len(indices) if self.chunk_size is None else self.chunk_size
        return list(torch.split(indices, size))

    def _chunk_loss(self, x: Any, chunk: Tensor) -> Tensor:
        inputs, targets = self._examples(chunk)
        return self.loss(self._predict(x, inputs), targets)

    def _mean_loss(self, x: Any, indices: Tensor | None) -> Tensor:
        chunks = self._chunks(indices)
        if len(chunks) == 1:
            return self._chunk_loss(x, chunks[0])  # one graph: higher derivatives work too
        total = sum(len(chunk) for chunk in chunks)
        weights = [len(chunk) / total for chunk in chunks]
        leaves = _leaves(x, "x")
        if not (torch.is_grad_enabled() and any(leaf.requires_grad for leaf in leaves)):
            with torch.no_grad():
                return sum(w * self._chunk_loss(x, c) for w, c in zip(weights, chunks))

        def weighted_losses(chunk_leaves: list[Tensor]) -> Iterator[Tensor]:
            chunk_x = _rebuild(x, iter(chunk_leaves))
            for weight, chunk in zip(weights, chunks):
                yield weight * self._chunk_loss(chunk_x, chunk)

        return _AccumulatedLoss.apply(weighted_losses, *leaves)


class _AccumulatedLoss(torch.autograd.Function):
    """A sum of terms whose gradients are taken one term at a time, inside the forward pass.

    Each term's graph is freed once its gradient is accumulated, so memory holds one
    term's graph at a time, and backward only scales the stored gradient. When a second
    derivative is asked for (backward with ``create_graph=True``: Newton's Hessian-vector
    products), backward rebuilds every term's graph and differentiates it again, which is
    exact but holds the whole batch's graph, like an unchunked evaluation.
    """

    @staticmethod
    def forward(ctx: Any, terms: Callable[[list[Tensor]], Iterator[Tensor]], *leaves: Tensor) -> Tensor:
        wanted = ctx.needs_input_grad[1:]
        detached = [leaf.detach().requires_grad_(need) for leaf, need in zip(leaves, wanted)]
        grads = _accumulated_gradients(terms, detached, create_graph=False)
        value = grads.pop()
        ctx.terms = terms
        ctx.save_for_backward(*leaves, *grads)
        return value

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        saved = ctx.saved_tensors
        count = len(saved) // 2
        leaves, grads = list(saved[:count]), list(saved[count:])
        wanted = ctx.needs_input_grad[1:]
        if torch.is_grad_enabled():  # create_graph=True: the gradient must be differentiable
            grads = _accumulated_gradients(ctx.terms, leaves, create_graph=True)[:-1]
        return (None, *(g * grad_output if need else None for g, need in zip(grads, wanted)))


def _accumulated_gradients(
    terms: Callable[[list[Tensor]], Iterator[Tensor]], leaves: list[Tensor], create_graph: bool
) -> list[Tensor]:
    """[d(sum of terms)/d leaf for each leaf (zeros where unused or not wanted)..., the sum]."""
    grads = [torch.zeros_like(leaf) for leaf in leaves]
    targets = [index for index, leaf in enumerate(leaves) if leaf.requires_grad]
    value: Tensor | None = None
    with torch.enable_grad():
        for term in terms(leaves):
            term_grads = torch.autograd.grad(
                term, [leaves[i] for i in targets], allow_unused=True, create_graph=create_graph
            )
            for index, grad in zip(targets, term_grads):
                if grad is not None:
                    grads[index] = grads[index] + grad
            term = term if create_graph else term.detach()
            value = term if value is None else value + term
    return [*grads, value]  # type: ignore[list-item]


def _as_data(
    data: Any,
) -> tuple[tuple[Tensor, Tensor] | None, torch.utils.data.Dataset | None]:
    """(inputs, targets) tensors when available (fast indexing), else the Dataset."""
    if isinstance(data, torch.utils.data.TensorDataset):
        data = data.tensors
    if isinstance(data, (tuple, list)):
        if len(data) != 2 or not all(isinstance(t, Tensor) for t in data):
            raise TypeError(
                "data must be a pair of tensors (inputs, targets) or a Dataset of "
                f"(input, target) pairs, got a {type(data).__name__} of {len(data)} items"
            )
        inputs, targets = data
        if len(inputs) != len(targets):
            raise ValueError(
                f"inputs and targets must hold the same number of examples, got "
                f"{len(inputs)} and {len(targets)}"
            )
        return (inputs, targets), None
    if isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__"):
        return None, data
    raise TypeError(
        "data must be a pair of tensors (inputs, targets) or a sized torch Dataset, "
        f"got {type(data).__name__}"
    )
