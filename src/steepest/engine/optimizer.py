"""The Optimizer shell: everything an update rule needs done around it, done once.

An update rule (``steepest.rules``) is a pure function of tensors and plain floats::

    update(param, grad, *, <state buffers by name>, <this step's coefficients>) -> None

The shell does the rest for every rule alike:

1. collect the parameters of a group that have a gradient (``grad is None`` means
   "no update, no state change", as in torch.optim);
2. negate gradients when ``maximize=True``;
3. create state lazily: tensor buffers shaped like the parameter, and CPU scalar state
   (``step`` and the like) kept as 0-d float tensors, exactly as torch.optim stores them,
   so state_dicts move between ``torch.optim`` and ``steepest`` both ways;
4. bucket the tensors by (device, dtype, scalar state): inside a bucket every
   step-dependent coefficient (bias corrections, ...) is one Python float computed once
   on the CPU, so no device synchronisation is ever needed;
5. run the rule per tensor (``foreach=False``: the readable reference), once per bucket
   over :class:`~steepest.engine.tensorlist.TensorList` s (``foreach=True``: the
   multi-tensor path, ``torch._foreach_*``), or compiled into one single pass per tensor
   (``fused=True``: :mod:`steepest.engine.fused`). The same lines of math serve all three.
   By default (``fused=None, foreach=None``) a large bucket (``DEFAULT_FUSED_MIN_ELEMENTS``)
   is fused, with a ready-made kernel (PyTorch's fused CPU kernels, the Triton kernels) or
   the compiled rule, and so is a CPU bucket of any size that PyTorch's fused CPU kernels
   cover; otherwise accelerators run multi-tensor and the CPU per tensor.

Non-finite gradients: like torch.optim, the shell applies the rule as given, so a NaN or
infinite gradient propagates into the parameters under IEEE arithmetic. It never does so
silently: :meth:`Optimizer.all_finite` tells, and ``torch.amp.GradScaler`` skips such
steps as usual. Policies that skip or back off are the business of ``steepest.lr``.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from steepest import clipping
from steepest.engine import fused as fused_path
from steepest.engine import precision, validation
from steepest.engine.tensorlist import TensorList

ParamsT = Iterable[Tensor] | Iterable[dict[str, Any]] | Iterable[tuple[str, Tensor]]


# The execution options every optimizer may take (and find in a torch.optim state_dict):
# the engine's business, not a rule's, so they are checked here, once, for every rule.
_EXECUTION_CHECKS: dict[str, validation.Check] = {
    "foreach": validation.optional_boolean,
    "fused": validation.optional_boolean,
    "state_dtype": precision.check_state_dtype,
}


# torch.optim stores scalar state (``step``) as float32 CPU tensors unless the default
# dtype is float64; matching it keeps state_dicts interchangeable.
def _scalar_dtype() -> torch.dtype:
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


@dataclass
class Bucket:
    """Tensors of one param group that are updated with the same coefficients."""

    fresh: bool  # the state buffers were created at this step
    scalar_names: tuple[str, ...]  # CPU scalar state shared by the bucket (step, ...)
    params: list[Tensor] = field(default_factory=list)
    grads: list[Tensor] = field(default_factory=list)
    states: list[dict[str, Any]] = field(default_factory=list)

    def share_scalars(self) -> None:
        """Copy the first tensor's (advanced) scalar state to the others."""
        if len(self.states) < 2:
            return
        leader = self.states[0]
        for name in self.scalar_names:  # one multi-tensor copy per scalar, not one per tensor
            torch._foreach_copy_(
                [state[name] for state in self.states[1:]], [leader[name]] * (len(self.states) - 1)
            )


class Optimizer(torch.optim.Optimizer):
    """Base class of every steepest optimizer; a drop-in ``torch.optim.Optimizer``.

    A subclass supplies the rule and describes its state:

    * ``update``: the rule, a pure function (see the module docstring);
    * ``_checks``: hyperparameter name -> check, run on every param group (``foreach``,
      ``fused`` and ``state_dtype`` are checked by the shell for every rule);
    * ``_shared_settings``: settings every param group must share (a setting of the method,
      not of a group);
    * :meth:`_buffer_names`: the tensor state this group's settings need;
    * :meth:`_scalar_state`: CPU scalar state and its initial values (default ``step``);
    * :meth:`_coefficients`: this step's keyword arguments for ``update``.

    Example:
        >>> w = torch.zeros(3, requires_grad=True)
        >>> opt = steepest.SGD([w], lr=0.1)
        >>> (w - 1).pow(2).sum().backward()
        >>> opt.step()
    """

    update: ClassVar[Callable[..., None]]
    _checks: ClassVar[dict[str, validation.Check]] = {}
    _shared_settings: ClassVar[tuple[str, ...]] = ()
    #: The rule is elementwise with no return value, so it may be compiled (``fused=``).
    supports_fused: ClassVar[bool] = False

    def __init__(self, params: ParamsT, defaults: dict[str, Any], *, clip_norm: float | None = None) -> None:
        # Set before torch's __init__, which calls add_param_group for every group.
        self.step_count = 0  # completed steps; every schedule is evaluated at this step
        self._schedules: list[dict[str, Any]] = []  # per group: hyperparameter -> schedule
        if clip_norm is not None:
            validation.positive("clip_norm", clip_norm)
        self.clip_norm = clip_norm
        self._last_grad_norm: Tensor | None = None
        self._seed_offset = 0  # narrow buffers rounded so far in this step
        if isinstance(params, Tensor):
            raise TypeError(
                "params must be an iterable of Tensors or dicts, got a single Tensor; "
                "wrap it in a list: [tensor]"
            )
        params = list(params)
        if not params:
            raise ValueError("params is empty: the optimizer needs at least one Tensor to optimize")
        self._check_hyperparameters(self._evaluate(_schedules_in(defaults), defaults))
        super().__init__(params, defaults)

    # -- what a rule declares ----------------------------------------------------------
    def _buffer_names(self, group: dict[str, Any]) -> tuple[str, ...]:
        """Names of the tensor state buffers this group's settings need."""
        return ()

    def _new_buffer(self, name: str, param: Tensor, group: dict[str, Any]) -> Tensor:
        """A fresh state buffer; zeros shaped (and strided) like the parameter."""
        return torch.zeros_like(param, memory_format=torch.preserve_format)

    def _scalar_state(self, group: dict[str, Any]) -> dict[str, float]:
        """CPU scalar state and its initial values; the shell increments ``step``."""
        return {"step": 0.0}

    def _coefficients(self, group: dict[str, Any], scalars: dict[str, Tensor], fresh: bool) -> dict[str, Any]:
        """Keyword arguments of ``update`` for one bucket at this step.

        ``scalars`` holds the bucket's scalar state after ``step`` was incremented; a rule
        with more scalar state (NAdam's ``mu_product``) advances it here, in place.
        ``fresh`` is True when the bucket's buffers were created at this step.
        """
        raise NotImplementedError

    def _check_group(self, group: dict[str, Any]) -> None:
        """Checks that involve several hyperparameters of one group (override)."""

    def _check_params(self, params: list[Tensor], first_index: int) -> None:
        """Checks of the tensors of a group about to be added, numbered from ``first_index``
        across all groups (override to add to them).

        Every optimizer moves its parameters by fractional steps, so an integer or bool
        tensor is refused here, before it is added, rather than by a kernel mid-step.
        """
        for index, param in enumerate(params, start=first_index):
            if not (param.is_floating_point() or param.is_complex()):
                raise TypeError(
                    f"parameter {index} must be floating point, got {param.dtype} "
                    f"(shape {tuple(param.shape)})"
                )

    # -- param groups --------------------------------------------------------------------
    def _check_hyperparameters(self, group: dict[str, Any]) -> None:
        for checks in (_EXECUTION_CHECKS, self._checks):
            for name, check in checks.items():
                if name in group:
                    check(name, group[name])
        if group.get("fused") and group.get("foreach"):
            raise ValueError("fused=True and foreach=True cannot both be set: pick one execution path")
        if not self.supports_fused:  # neither would be honoured: refuse rather than ignore
            for name in ("fused", "state_dtype"):
                if group.get(name):
                    raise ValueError(
                        f"{name}={group[name]!r}: {type(self).__name__} has no fused path and no "
                        f"reduced-precision state (its step is not elementwise); leave {name} out"
                    )
        self._check_group(group)

    def _check_shared_settings(self, group: dict[str, Any], first: dict[str, Any]) -> None:
        """``group`` agrees with the first group on every setting of ``_shared_settings``."""
        for name in self._shared_settings:
            if name in group and group[name] != first.get(name):
                raise ValueError(
                    f"{name} must be {first.get(name)!r} as in the first param group (every group "
                    f"of {type(self).__name__} shares it: a setting of the method, not of a "
                    f"group), got {name}={group[name]!r}"
                )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group, checking its tensors and hyperparameters first: a group that is
        refused leaves the optimizer as it was."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        params = param_group.get("params")
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, set):
            raise TypeError("params must be an ordered collection (a list), not a set")
        elif params is None:
            raise ValueError("param_group has no 'params' entry")
        params = list(params)
        tensors = [p[1] if isinstance(p, tuple) else p for p in params]
        for index, tensor in enumerate(tensors):
            if not isinstance(tensor, Tensor):
                raise TypeError(f"params[{index}] must be a torch.Tensor, got {type(tensor).__name__}")
        self._check_params(tensors, first_index=sum(len(group["params"]) for group in self.param_groups))
        seen: set[int] = {id(p) for group in self.param_groups for p in group["params"]}
        for index, tensor in enumerate(tensors):
            if id(tensor) in seen:
                raise ValueError(
                    f"params[{index}] (shape {tuple(tensor.shape)}) appears more than once "
                    "in the optimizer's param groups"
                )
            seen.add(id(tensor))
        merged = {**self.defaults, **param_group}
        schedules = _schedules_in(merged)
        resolved = self._evaluate(schedules, merged)
        self._check_hyperparameters(resolved)
        if self.param_groups:
            self._check_shared_settings(resolved, self.param_groups[0])
        super().add_param_group({**resolved, "params": params})
        self._schedules.append(schedules)

    # -- schedules -------------------------------------------------------------------------
    def _evaluate(
        self, schedules: dict[str, Any], group: dict[str, Any], step: int | None = None
    ) -> dict[str, Any]:
        """``group`` with each scheduled hyperparameter replaced by its value at ``step``
        (default: this step); a value that is not a number is refused, naming the step."""
        step = self.step_count if step is None else step
        resolved = dict(group)
        for name, schedule in schedules.items():
            if isinstance(schedule, tuple):
                resolved[name] = tuple(
                    _value_at(f"{name}[{position}]", item, step) if _is_schedule(item) else item
                    for position, item in enumerate(schedule)
                )
            else:
                resolved[name] = _value_at(name, schedule, step)
        if "lr" in schedules:
            resolved["lr"] *= group.get("lr_scale", 1.0)
        return resolved

    def scale_lr(self, factor: float) -> None:
        """Multiply every group's learning rate by ``factor`` from now on (a back-off, a cut).

        A fixed rate is scaled in ``param_groups``; a scheduled one keeps its schedule and
        gains a persistent multiplier (``group["lr_scale"]``), so the cut survives both the
        next schedule evaluation and a checkpoint.
        """
        validation.positive("factor", factor)
        for group, schedules in zip(self.param_groups, self._schedules):
            if "lr" in schedules:
                group["lr_scale"] = group.get("lr_scale", 1.0) * factor
            else:
                group["lr"] *= factor
        self._resolve_schedules()

    def _resolve_schedules(self, check: bool = False) -> None:
        """Write every schedule's value at ``step_count`` into its param group.

        Values are computed on the CPU from the optimizer's own step count, so torch
        tooling and users read the rate the next step will use in ``param_groups``, and a
        resumed run continues at exactly the same position. With ``check``, (at the start
        of a step) a value out of range or not a number raises before anything is updated;
        without, such a value is left for that check (a step that is done stays done).
        """
        for group, schedules in zip(self.param_groups, self._schedules):
            if not schedules:
                continue
            try:
                resolved = self._evaluate(schedules, group)
            except TypeError:
                if check:
                    raise
                continue
            if check:
                try:
                    self._check_hyperparameters({name: resolved[name] for name in schedules})
                except ValueError as error:
                    raise ValueError(f"{error} (a schedule's value at step {self.step_count})") from None
            for name in schedules:
                group[name] = resolved[name]

    def _stateful_hyperparameters(self) -> dict[str, Any]:
        """Scheduled hyperparameters that hold state (plateau cuts), keyed 'group.name'."""
        found = {}
        for index, schedules in enumerate(self._schedules):
            for name, schedule in schedules.items():
                items = schedule if isinstance(schedule, tuple) else (schedule,)
                for position, item in enumerate(items):
                    if hasattr(item, "report") and hasattr(item, "state_dict"):
                        suffix = f"[{position}]" if isinstance(schedule, tuple) else ""
                        found[f"{index}.{name}{suffix}"] = item
        return found

    def report(self, metric: float | Tensor) -> bool:
        """Report a monitored metric (e.g. validation loss) to plateau-driven hyperparameters.

        Returns True when some hyperparameter was cut. Its new value is in ``param_groups``
        at once and used from the next step on. ``metric`` is a real number or a one-element
        tensor; a NaN (a diverged evaluation) counts as no improvement, as in
        torch.optim.lr_scheduler.ReduceLROnPlateau.
        """
        value = validation.scalar("metric", metric, finite=False)
        cut = False
        for stateful in self._stateful_hyperparameters().values():
            cut = stateful.report(value, self.step_count) or cut
        self._resolve_schedules()
        return cut

    # -- the step ----------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Perform one update of every parameter that has a gradient.

        Args:
            closure: optional; re-evaluates the model and returns the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._run_step(loss)
        return loss

    def _run_step(self, loss: Any) -> None:
        """The step's pipeline: hyperparameters, clipping, every group's update, the count."""
        self._begin_step()
        if self.clip_norm is not None:
            self._clip_gradients(self.clip_norm)
        self._step_groups(loss)
        self._end_step()

    def _step_groups(self, loss: Any) -> None:
        """Update every param group, each on its own; ``loss`` (None without a closure) is for
        a rule that reads it across groups (MoMo)."""
        for group in self.param_groups:
            self._step_group(group)

    def _begin_step(self) -> None:
        """Before any update: this step's hyperparameters, refused if a schedule gives a bad one."""
        self._resolve_schedules(check=True)
        self._seed_offset = 0

    def _end_step(self) -> None:
        """After the update: count the step and show the next step's hyperparameters."""
        self.step_count += 1
        self._resolve_schedules()

    def _clip_gradients(self, max_norm: float) -> None:
        """Scale all gradients together so that their global 2-norm is at most ``max_norm``.

        This runs inside ``step``; under ``torch.amp.GradScaler``, ``scaler.step(optimizer)``
        unscales the gradients before calling ``step``, so clipping always sees true
        gradients without the user calling ``scaler.unscale_`` first.
        """
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return
        total = clipping.global_norm(grads)
        clipping.scale_by_max_norm_(grads, max_norm, total)
        self._last_grad_norm = total

    @property
    def last_grad_norm(self) -> float | None:
        """Global gradient norm before clipping at the last step (None without clip_norm)."""
        return None if self._last_grad_norm is None else float(self._last_grad_norm)

    @property
    def last_clipped(self) -> bool:
        """Whether the last step's gradients were scaled down by ``clip_norm``."""
        norm = self.last_grad_norm
        return norm is not None and self.clip_norm is not None and norm > self.clip_norm

    def _step_group(self, group: dict[str, Any]) -> None:
        """The standard pipeline: per bucket, advance scalar state, compute coefficients, update.

        A rule that needs a global statistic first (a distance estimate, say) overrides this
        and composes :meth:`_buckets`, :meth:`_advance` and :meth:`_apply` itself.
        """
        for bucket in self._buckets(group):
            scalars = self._advance(group, bucket)
            coefficients = self._coefficients(group, scalars, bucket.fresh)
            bucket.share_scalars()
            self._apply(
                type(self).update,
                bucket,
                self._buffer_names(group),
                coefficients,
                group.get("foreach"),
                group.get("fused"),
            )

    def _buckets(self, group: dict[str, Any]) -> list[Bucket]:
        """Parameters of ``group`` that have a gradient, with their state, in buckets.

        Gradients are negated for ``maximize``; state is created where missing. A bucket
        holds tensors of one device and dtype whose scalar state (``step``, ...) agrees,
        so its coefficients are plain floats shared by all of them.
        """
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return []
        grads = [p.grad for p in params]
        for p, grad in zip(params, grads):
            if grad.is_sparse:
                raise RuntimeError(
                    f"{type(self).__name__} does not support sparse gradients "
                    f"(parameter of shape {tuple(p.shape)}): use a dense gradient "
                    "(nn.Embedding(sparse=False)), or torch.optim.SparseAdam for this parameter"
                )
        if group.get("maximize", False):
            grads = torch._foreach_neg(grads)
        # the group's state layout, asked once per step rather than once per tensor
        buffer_names, initial_scalars = self._buffer_names(group), self._scalar_state(group)
        scalar_names = tuple(initial_scalars)
        buckets: dict[tuple, Bucket] = {}
        for p, grad in zip(params, grads):
            state, fresh = self._ensure_state(p, group, buffer_names, initial_scalars)
            key = (p.device, p.dtype, fresh, tuple(float(state[name]) for name in scalar_names))
            bucket = buckets.get(key)
            if bucket is None:  # (not setdefault: that would build a Bucket per tensor)
                bucket = buckets[key] = Bucket(fresh=fresh, scalar_names=scalar_names)
            bucket.params.append(p)
            bucket.grads.append(grad)
            bucket.states.append(state)
        return list(buckets.values())

    def _advance(self, group: dict[str, Any], bucket: Bucket) -> dict[str, Tensor]:
        """Increment the bucket's ``step`` (on its first tensor's state) and return its scalars."""
        scalars = {name: bucket.states[0][name] for name in bucket.scalar_names}
        if "step" in scalars:
            scalars["step"] += 1
        return scalars

    def _apply(
        self,
        rule: Callable[..., Any],
        bucket: Bucket,
        buffer_names: tuple[str, ...],
        coefficients: dict[str, Any],
        foreach: bool | None,
        fused: bool | None = None,
    ) -> Any:
        """Run ``rule`` on one bucket: compiled, per tensor, or once over TensorLists.

        ``fused=True`` runs the rule in one pass (:mod:`steepest.engine.fused`); ``fused=None``
        does so where a ready-made kernel covers the bucket on the CPU, and for any bucket of
        at least ``DEFAULT_FUSED_MIN_ELEMENTS`` elements (see :meth:`_fuses`), and falls
        back to eager if compiling fails. ``fused=False`` takes the
        multi-tensor path. Otherwise, ``foreach=None`` takes the multi-tensor path on
        accelerators and the per-tensor one on the CPU, where
        ``torch._foreach_*`` is a loop in C++ that runs each op over every tensor before the
        next op, and measured 1.5-2.5x slower than per tensor for Adam
        (benchmarks/step_speed.py), as torch.optim also defaults to.

        Returns what the rule returns; per tensor, the sum of the returns (so a rule can
        also compute a statistic, e.g. a partial sum that the caller reduces).
        """
        params = [_real_view(p) for p in bucket.params]
        grads = [_real_view(g) for g in bucket.grads]
        buffers = {name: [_real_view(s[name]) for s in bucket.states] for name in buffer_names}
        # buffers kept in a lower precision than the parameters (state_dtype)
        narrow = tuple(name for name in buffer_names if buffers[name][0].dtype != params[0].dtype)
        seeds = self._rounding_seeds(len(params) * len(narrow), params[0].device) if narrow else None
        fuses = self._fuses(params, foreach, fused)
        if fuses is not None and fused_path.run_fused(
            rule,
            params,
            grads,
            buffers,
            coefficients,
            required=fused is True,
            compile=fuses == "any",
            narrow=narrow,
            seeds=seeds,
            steps=[state["step"] for state in bucket.states] if "step" in bucket.scalar_names else None,
        ):
            return None
        coefficients = _within_range(coefficients, params[0].dtype)  # eager from here on
        if narrow:  # eager: the rule runs per tensor on widened copies of the narrow buffers
            fused_path.apply_per_tensor(
                rule, params, grads, buffers, coefficients, narrow=narrow, seeds=seeds
            )
            return None
        if foreach is None:  # fused=False asks for the multi-tensor path explicitly
            foreach = fused is False or bucket.params[0].device.type != "cpu"
        multi_tensor = foreach
        if multi_tensor:
            return rule(
                TensorList(params),
                TensorList(grads),
                **{name: TensorList(column) for name, column in buffers.items()},
                **coefficients,
            )
        total = None
        for index, (param, grad) in enumerate(zip(params, grads)):
            result = rule(
                param, grad, **{name: column[index] for name, column in buffers.items()}, **coefficients
            )
            if result is not None:
                total = result if total is None else total + result
        return total

    def _rounding_seeds(self, count: int, device: torch.device) -> Tensor:
        """Seeds of the stochastic rounding of ``count`` narrow buffers at this step.

        A function of the step count (saved in checkpoints) and the buffer's position, so a
        resumed run rounds exactly as the uninterrupted one (int32, as
        :func:`steepest.engine.precision.random_bits` computes).
        """
        first = (self.step_count * 1_000_003 + self._seed_offset) % 2**31
        self._seed_offset += count
        return ((torch.arange(count, dtype=torch.int64) + first) % 2**31).to(torch.int32).to(device)

    def _fuses(self, params: list[Tensor], foreach: bool | None, fused: bool | None) -> str | None:
        """How this bucket may run on the fused path (see :meth:`_apply`): ``"any"`` (a
        ready-made kernel, else a compiled one), ``"native"`` (a ready-made kernel only) or
        None (not at all).

        By default: ``"any"`` for a bucket of at least ``DEFAULT_FUSED_MIN_ELEMENTS``
        elements on the CPU or CUDA; on the CPU, ``"native"`` below that, since PyTorch's fused
        CPU kernels cost no compilation and beat the eager path at every size (AdamW on a
        85k-parameter MLP, one thread: 108 against 310 us per step); otherwise None, since
        compiling for a small bucket does not pay back its compile time.
        """
        if not self.supports_fused:
            return None
        if fused is not None or foreach is not None:
            return "any" if fused else None
        device = params[0].device.type
        if (
            device in ("cpu", "cuda")
            and sum(p.numel() for p in params) >= fused_path.DEFAULT_FUSED_MIN_ELEMENTS
        ):
            return "any"
        return "native" if device == "cpu" else None

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create whatever state ``param`` lacks; True when a buffer was created.

        Missing entries are created, never replaced, so state loaded from torch.optim (or
        a setting switched on mid-run, like amsgrad) is picked up as it is.
        """
        return self._ensure_state(param, group, self._buffer_names(group), self._scalar_state(group))

    def _ensure_state(
        self,
        param: Tensor,
        group: dict[str, Any],
        buffer_names: tuple[str, ...],
        initial_scalars: dict[str, float],
    ) -> tuple[dict[str, Any], bool]:
        """:meth:`_init_state` with the group's state layout already known (the step's hot loop)."""
        if not buffer_names and not initial_scalars:
            return {}, False  # stateless (plain SGD): leave optimizer.state untouched, like torch
        state = self.state[param]
        for name, value in initial_scalars.items():
            if name not in state:
                state[name] = torch.tensor(value, dtype=_scalar_dtype())
        fresh = False
        state_dtype = group.get("state_dtype")
        for name in buffer_names:
            if name not in state:
                buffer = self._new_buffer(name, param, group)
                if state_dtype is not None and param.dtype != state_dtype:
                    if param.is_complex():
                        raise ValueError(
                            f"state_dtype={state_dtype} needs real parameters, got a {param.dtype} "
                            f"parameter of shape {tuple(param.shape)}"
                        )
                    buffer = buffer.to(state_dtype)
                state[name] = buffer
                fresh = True
        return state, fresh

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's state_dict plus a ``"steepest"`` entry: the step count and the state
        of stateful hyperparameters. Schedules themselves are configuration, rebuilt by the
        constructor, so the dict holds only tensors and plain numbers (``weights_only``-safe).
        """
        state_dict = super().state_dict()
        state_dict["steepest"] = {
            "step_count": self.step_count,
            "hyperparameters": {
                key: item.state_dict() for key, item in self._stateful_hyperparameters().items()
            },
        }
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state_dict from steepest or from the torch.optim twin.

        The whole state_dict is checked before anything changes, so one that is refused
        leaves the optimizer as it was: the loaded groups' hyperparameters with the
        constructor's checks, each state buffer the rule declares against its parameter's
        shape (a fused kernel would read past a shorter one), the scalar state, the step
        count and the saved state of plateau hyperparameters. (A pre-hook registered with
        ``register_load_state_dict_pre_hook`` runs after these checks, inside torch's load.)
        A loaded group that lacks some of this optimizer's hyperparameters or group state (a
        state_dict from another optimizer, or from an older version) keeps this optimizer's
        values for them (the constructor's, in a fresh one), as torch.optim fills in the
        hyperparameters it added over time with their defaults.

        torch.optim casts every floating-point state entry but ``step`` to the parameter's
        dtype and device; scalar state such as NAdam's ``mu_product`` is moved back to the
        CPU scalar dtype it is computed in, so a resumed run continues bit-identically.
        Schedules resume at the saved step count (from a torch.optim state_dict, which has
        none, at the largest per-parameter ``step``).
        """
        step_count, missing = self._check_state_dict(state_dict)
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "steepest"})
        for group, kept in zip(self.param_groups, missing):
            for name, value in kept.items():
                group.setdefault(name, value)
        self.step_count = step_count
        stateful = self._stateful_hyperparameters()
        for key, saved in (state_dict.get("steepest") or {}).get("hyperparameters", {}).items():
            if key in stateful:
                stateful[key].load_state_dict(saved)
        self._resolve_schedules()
        for group in self.param_groups:
            scalar_names = self._scalar_state(group)
            state_dtype = group.get("state_dtype")
            for param in group["params"]:
                state = self.state.get(param)
                if not state:
                    continue
                for name in scalar_names:
                    # a plain number too: torch before 1.12, and the dadaptation and prodigyopt
                    # packages, save ``step`` as a Python int
                    if name in state:
                        state[name] = torch.as_tensor(state[name]).to(device="cpu", dtype=_scalar_dtype())
                if state_dtype is not None:  # torch cast the narrow buffers to the param dtype
                    for name in self._buffer_names(group):
                        if name in state:
                            state[name] = state[name].to(state_dtype)

    def _check_state_dict(self, state_dict: Any) -> tuple[int, list[dict[str, Any]]]:
        """Check all of ``state_dict``, changing nothing; return the step count it resumes at
        and, per param group, the entries the saved group lacks, with this optimizer's values."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        for key in ("state", "param_groups"):
            if key not in state_dict:
                raise ValueError(f"state_dict has no {key!r} entry: it is no optimizer's state_dict")
        if not isinstance(state_dict["state"], dict):
            raise TypeError(f"state_dict['state'] must be a dict, got {type(state_dict['state']).__name__}")
        groups = state_dict["param_groups"]
        if not isinstance(groups, (list, tuple)) or not all(
            isinstance(group, dict) and isinstance(group.get("params"), (list, tuple)) for group in groups
        ):
            raise TypeError("state_dict['param_groups'] must be a list of dicts, each with a 'params' list")
        step_count = self._saved_step_count(state_dict)
        return step_count, self._check_saved_groups(state_dict, step_count)

    def _saved_step_count(self, state_dict: dict[str, Any]) -> int:
        """The step count ``state_dict`` resumes at, its ``"steepest"`` entry checked whole
        (the saved state of plateau hyperparameters is tried on copies of them)."""
        extra = state_dict.get("steepest")
        if extra is None:  # from torch.optim: the largest per-parameter step
            steps = [
                validation.scalar(f"state_dict['state'][{key!r}]['step']", entry["step"])
                for key, entry in state_dict["state"].items()
                if isinstance(entry, dict) and "step" in entry
            ]
            return int(max(steps, default=0))
        if not isinstance(extra, dict):
            raise TypeError(f"state_dict['steepest'] must be a dict, got {type(extra).__name__}")
        if "step_count" not in extra:
            raise ValueError("state_dict['steepest'] has no 'step_count' entry")
        name = "state_dict['steepest']['step_count']"
        step_count = validation.integer(name, extra["step_count"], minimum=0)
        saved = extra.get("hyperparameters", {})
        if not isinstance(saved, dict):
            raise TypeError(
                f"state_dict['steepest']['hyperparameters'] must be a dict, got {type(saved).__name__}"
            )
        stateful = self._stateful_hyperparameters()
        for key, item_state in saved.items():
            if key in stateful:
                try:
                    copy.deepcopy(stateful[key]).load_state_dict(item_state)
                except (KeyError, TypeError, ValueError) as error:
                    kind = TypeError if isinstance(error, TypeError) else ValueError
                    detail = f"it has no {error}" if isinstance(error, KeyError) else str(error)
                    raise kind(
                        f"state_dict['steepest']['hyperparameters'][{key!r}] cannot be loaded "
                        f"into {stateful[key]!r}: {detail}"
                    ) from None
        return step_count

    def _check_saved_groups(self, state_dict: dict[str, Any], step_count: int) -> list[dict[str, Any]]:
        """Check the param groups and per-parameter state of ``state_dict`` as they will be
        loaded; return, per group, the entries it lacks, with this optimizer's values."""
        saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
        sizes = [len(group["params"]) for group in self.param_groups]
        saved_sizes = [len(group["params"]) for group in saved_groups]
        if saved_sizes != sizes:
            raise ValueError(
                f"state_dict has param groups of {saved_sizes} parameters, this optimizer of {sizes}: "
                "it was saved from another model"
            )
        missing, loaded = [], []
        pairs = zip(saved_groups, self.param_groups, self._schedules)
        for index, (saved, own, schedules) in enumerate(pairs):
            missing.append({name: value for name, value in own.items() if name not in saved})
            group = self._evaluate(schedules, {**missing[-1], **saved}, step_count)
            try:
                self._check_hyperparameters(group)
                if loaded:
                    self._check_shared_settings(group, loaded[0])
            except (TypeError, ValueError) as error:
                raise type(error)(f"{error} (in param group {index} of the state_dict)") from None
            loaded.append(group)
        position = 0  # the parameter's index across groups
        for group, own in zip(loaded, self.param_groups):
            buffer_names, scalar_names = self._buffer_names(group), tuple(self._scalar_state(group))
            for key, param in zip(group["params"], own["params"]):
                entry = saved_state.get(key)
                if entry is not None:
                    where = f"state_dict['state'][{key!r}]"
                    _check_saved_state(where, entry, param, position, buffer_names, scalar_names)
                position += 1
        return missing

    # -- inspection ----------------------------------------------------------------------
    @torch.no_grad()
    def all_finite(self) -> bool:
        """True when every parameter of every group is finite (synchronises the device).

        A non-finite gradient makes the parameters non-finite after a step, as in
        torch.optim; call this (or watch the loss) to detect it.
        """
        params = [p for group in self.param_groups for p in group["params"]]
        return all(bool(torch.isfinite(p).all()) for p in params)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for index, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {index}")
            for key in sorted(group):
                if key not in ("params", "param_names"):
                    lines.append(f"    {key}: {group[key]}")
        lines.append(")")
        return "\n".join(lines)


def _check_saved_state(
    where: str,
    entry: Any,
    param: Tensor,
    position: int,
    buffer_names: tuple[str, ...],
    scalar_names: tuple[str, ...],
) -> None:
    """One parameter's saved state: each buffer the rule declares is a tensor of the
    parameter's shape, each scalar state a real number."""
    if not isinstance(entry, dict):
        raise TypeError(f"{where} must be a dict, got {type(entry).__name__}")
    for name in buffer_names:
        if name not in entry:
            continue  # created at the next step, as for a new parameter
        buffer = entry[name]
        if not isinstance(buffer, Tensor):
            raise TypeError(f"{where}[{name!r}] must be a tensor, got {type(buffer).__name__}")
        if buffer.shape != param.shape:
            raise ValueError(
                f"{where}[{name!r}] has shape {tuple(buffer.shape)}, but parameter {position} "
                f"has shape {tuple(param.shape)}: it was saved from another model"
            )
    for name in scalar_names:
        if name in entry:
            validation.scalar(f"{where}[{name!r}]", entry[name])


def _is_schedule(value: Any) -> bool:
    """A hyperparameter given as a function of the step rather than a number."""
    return callable(value) and not isinstance(value, type)


def _schedules_in(group: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters of ``group`` that are schedules (or tuples holding one), each
    checked to take the step."""
    found = {}
    for name, value in group.items():
        if name == "params":
            continue
        if _is_schedule(value):
            _check_takes_step(name, value)
            found[name] = value
        elif isinstance(value, tuple) and any(_is_schedule(item) for item in value):
            for position, item in enumerate(value):
                if _is_schedule(item):
                    _check_takes_step(f"{name}[{position}]", item)
            found[name] = value
    return found


def _check_takes_step(name: str, schedule: Callable[..., Any]) -> None:
    """A schedule is called with the step alone: refuse one that cannot be, naming it."""
    try:
        signature = inspect.signature(schedule)
    except (TypeError, ValueError):  # no signature to read (some builtins): the call will tell
        return
    try:
        signature.bind(0)
    except TypeError as error:
        raise TypeError(
            f"{name} must be a number or a schedule called with the step, {name}(step), got "
            f"{name}={schedule!r}, which cannot be called so ({error})"
        ) from None


def _value_at(name: str, schedule: Callable[[int], Any], step: int) -> float:
    """A schedule's value at ``step`` as a float; not a number: a TypeError naming all three."""
    value = schedule(step)
    try:
        return validation.scalar(name, value, finite=False)  # the range is the checks' business
    except TypeError as error:
        raise TypeError(f"{error} (a schedule's value at step {step})") from None


def _within_range(coefficients: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """``coefficients`` with a float beyond ``dtype``'s range made +-inf, as it is in that dtype.

    An eager op takes a Python coefficient as a scalar of the tensor's dtype (``add_``'s
    ``alpha``) and raises on one it cannot hold (lr=1e308 in float32), where a tensor op would
    give inf and the step would make the parameters non-finite, as any diverging step does.
    """
    limit = torch.finfo(dtype).max
    if not any(type(value) is float and abs(value) > limit for value in coefficients.values()):
        return coefficients  # (every step: one pass over a few floats)
    return {
        name: math.copysign(math.inf, value) if type(value) is float and abs(value) > limit else value
        for name, value in coefficients.items()
    }


def _real_view(tensor: Tensor) -> Tensor:
    """Complex tensors are updated as pairs of reals, as torch.optim does."""
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor
