"""A safe-step policy: what to do when the loss is not finite or spikes, keeping state consistent.

:class:`SafeStep` sits between a training loop and its optimizer. The loop computes the loss and
its gradients as usual, then hands the loss to the guard instead of calling ``optimizer.step()``::

    guard = SafeStep(optimizer, on_nonfinite="backoff", on_spike="backoff")
    for batch in batches:
        optimizer.zero_grad()
        loss = loss_fn(model(batch.x), batch.y)
        loss.backward()
        verdict = guard.step(loss)          # checks, then steps, skips, rolls back or stops
        if verdict.should_stop:
            print(verdict.reason)
            break

The guard looks at the loss at the *current* parameters before they are updated (and, cheaply,
at the global gradient norm), so a bad update is never applied:

* ``"raise"``: raise :class:`FloatingPointError` (non-finite) or :class:`RuntimeError` (spike),
  naming the step, the loss and the gradient norm;
* ``"skip"``: do not call ``optimizer.step``; zero the gradients. Parameters and optimizer
  state stay bit-identical, ``step_count`` and every schedule's position do not advance. If
  the parameters themselves are no longer finite (a finite loss's update overflowed), no skip
  can recover and the verdict is ``"stop"``;
* ``"backoff"``: restore the parameters and the optimizer's ``state_dict`` (which holds
  ``step_count``, hence the schedules' position) from the last in-memory snapshot, then cut
  the learning rate by ``backoff_factor`` (``optimizer.scale_lr``) and go on. Snapshots are
  taken at the first good step and every ``snapshot_every`` good steps after it;
* ``"stop"``: do not step; the :class:`Verdict` says ``should_stop`` with a reason.

A rate far too large does not always give NaN or spikes: on classification networks the loss
can sit at chance level, finite and flat. ``on_too_large="backoff"`` watches the live regime
diagnosis for that and backs off too (tested: Adam at 100x the tuned rate on the digits MLP
reaches the tuned run's loss within 4x its steps; unguarded it never does). The diagnosis is
given the gradient norm the guard already checks: a network killed at chance and a rate that
crawls both leave the loss flat, and only the collapse of the gradient norm tells them apart
(``steepest train --lr 0.5 --on-too-large backoff``, 100x the default rate, ended at 10% test
accuracy while the guard watched the loss alone, and reaches the default run's 98% with it).
It rolls back to where the too-large rate began, unless the loss has since fallen well below
the loss there (under ``KEEP_PROGRESS_BELOW`` times it): then the steps at that rate did not
only harm, and the rate is cut in place. A decaying schedule can bring the diagnosis to "too large" only late
in a run, after the rate has already made progress; rolling back then would throw it away.

Spike: a finite loss ``L`` with ``L > ref + (spike_factor - 1) * max(|ref|, floor)``, where
``ref`` is the median of the last ``window`` accepted losses (at least ``warmup`` of them) and
``floor = spike_floor * |first accepted loss|``. For a positive loss far from zero this is
``L > spike_factor * ref``: with the default factor 10 a mini-batch loss must be ten times the
recent median, far beyond batch-to-batch noise (a factor of 2-3 for cross-entropy); the floor
keeps a converged run whose loss wobbles around 1e-12 from calling every wobble a spike.
Losses that triggered an event never enter the reference.

Mixed precision: with ``scaler=`` (a ``torch.amp.GradScaler``) the guard calls
``scaler.step(optimizer)`` and ``scaler.update()``. Infinite or NaN *gradients* are then the
scaler's business (it skips the step and lowers its scale, as designed), counted in
``scaler_skips`` and not as non-finite events; so the gradient norm is not checked (it is
scaled). A non-finite *loss* is still an event for the policy.

Limits: a snapshot lives in memory (params + a deep copy of the optimizer's state_dict, about
the optimizer's memory again, taken only by a policy that backs off); ``state_dict`` holds
the counters, the loss reference and the live diagnosis's state, plain numbers, and
:meth:`SafeStep.snapshots_state` the snapshots, tensors: ``steepest.fit`` checkpoints both, so a
resumed run backs off to where the uninterrupted one would. A backoff also
undoes any other change made to the optimizer since the snapshot (a user's ``scale_lr``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from steepest import clipping, rules
from steepest.engine import validation

__all__ = ["ACTIONS", "SafeStep", "Verdict", "check_settings"]

#: What a policy can do about a bad step.
ACTIONS: tuple[str, ...] = ("raise", "skip", "backoff", "stop")
#: A "too large" backoff keeps the parameters, and only cuts the rate, when the recent loss is
#: below this fraction of the loss where the rate began. Well below 1: a network a too-large
#: rate killed sits at chance, its loss where it started (within noise), and must roll back.
KEEP_PROGRESS_BELOW = 0.75


@dataclass(frozen=True)
class Verdict:
    """What :class:`SafeStep` decided about one step.

    Attributes:
        action: ``"step"`` (checked and updated, or to be updated by the caller after
            :meth:`SafeStep.check`), ``"skip"``, ``"backoff"`` or ``"stop"``.
        reason: what was seen, in words (empty for a good step).
        event: ``"nonfinite"``, ``"spike"`` or None.
        step: the guard's call number (0-based).
        loss: the loss it was given (a float).
        lr: the first group's learning rate after the action.
    """

    action: str
    reason: str = ""
    event: str | None = None
    step: int = 0
    loss: float = math.nan
    lr: float = math.nan

    @property
    def should_stop(self) -> bool:
        """True when the loop should end (policy ``"stop"`` or a limit on backoffs/skips)."""
        return self.action == "stop"

    @property
    def stepped(self) -> bool:
        """True when the update goes ahead (``action == "step"``)."""
        return self.action == "step"


class SafeStep:
    """A guard around ``optimizer.step``: skip, roll back, stop or raise on a bad loss.

    Rule: a loss that is non-finite (or whose gradient norm is) triggers ``on_nonfinite``; a
    finite loss above ``spike_factor`` x the median of the last ``window`` accepted losses
    triggers ``on_spike`` (details in the module docstring).

    Args:
        optimizer: the optimizer to guard (a ``steepest`` optimizer, or any
            ``torch.optim.Optimizer``: its learning rates are then cut in ``param_groups``).
        on_nonfinite: ``"raise"`` (default), ``"skip"``, ``"backoff"`` or ``"stop"``.
        on_spike: None (default: spikes are not checked), ``"raise"``, ``"skip"``,
            ``"backoff"`` or ``"stop"``.
        spike_factor: how many times the reference a loss must exceed, > 1 (default 10).
        window: number of recent accepted losses whose median is the reference (default 20).
        warmup: accepted losses needed before spikes are checked, >= 1 (default 3).
        spike_floor: the scale below which ``|ref|`` does not shrink, as a fraction of the
            first accepted loss's magnitude (default 1e-3).
        backoff_factor: the learning-rate cut of a backoff, in (0, 1) (default 0.5).
        snapshot_every: good steps between snapshots, >= 1 (default 10).
        max_backoffs: backoffs allowed before the guard says stop (default 20).
        max_skips: consecutive skips allowed before the guard says stop (default 100).
        check_grad: also check the global gradient norm for finiteness (default True; one
            reduction and one device synchronisation per step; off with a scaler).
        scaler: a ``torch.amp.GradScaler`` to step through (see the module docstring).
        on_too_large: ``"backoff"`` or ``"stop"`` when the live regime diagnosis
            (:class:`steepest.lr.RegimeMonitor`) says "too_large" for ``regime_patience``
            windows of ``regime_window`` steps in a row: a rate so large the loss stays at or
            above its start, finite and without spikes. Its backoff returns to where the
            current rate began (every step at it did harm) and cuts the rate by the factor
            the diagnosis measured. Default None (off).

    Example:
        >>> w = torch.zeros(3, requires_grad=True)
        >>> opt = steepest.SGD([w], lr=0.1)
        >>> guard = SafeStep(opt, on_nonfinite="skip")
        >>> loss = (w - 1).pow(2).sum(); loss.backward()
        >>> guard.step(loss).action
        'step'
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        on_nonfinite: str = "raise",
        on_spike: str | None = None,
        *,
        spike_factor: float = 10.0,
        window: int = 20,
        warmup: int = 3,
        spike_floor: float = 1e-3,
        backoff_factor: float = 0.5,
        snapshot_every: int = 10,
        max_backoffs: int = 20,
        max_skips: int = 100,
        check_grad: bool = True,
        scaler: Any = None,
        on_too_large: str | None = None,
        regime_window: int = 20,
        regime_patience: int = 2,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if on_nonfinite not in ACTIONS:
            raise ValueError(f"on_nonfinite must be one of {ACTIONS}, got on_nonfinite={on_nonfinite!r}")
        if on_spike is not None and on_spike not in ACTIONS:
            raise ValueError(f"on_spike must be None or one of {ACTIONS}, got on_spike={on_spike!r}")
        self.optimizer = optimizer
        self.on_nonfinite = on_nonfinite
        self.on_spike = on_spike
        self.spike_factor = _real("spike_factor", spike_factor, low=1.0, low_open=True)
        self.window = _int("window", window, 1)
        self.warmup = _int("warmup", warmup, 1)
        self.spike_floor = _real("spike_floor", spike_floor, low=0.0)
        self.backoff_factor = _real("backoff_factor", backoff_factor, low=0.0, low_open=True, high=1.0)
        self.snapshot_every = _int("snapshot_every", snapshot_every, 1)
        self.max_backoffs = _int("max_backoffs", max_backoffs, 0)
        self.max_skips = _int("max_skips", max_skips, 0)
        if not isinstance(check_grad, bool):
            raise TypeError(f"check_grad must be True or False, got check_grad={check_grad!r}")
        self.check_grad = check_grad and scaler is None
        if scaler is not None and not (hasattr(scaler, "step") and hasattr(scaler, "update")):
            raise TypeError(f"scaler must be a torch.amp.GradScaler, got {type(scaler).__name__}")
        self.scaler = scaler
        if on_too_large not in (None, "backoff", "stop"):
            raise ValueError(
                f"on_too_large must be None, 'backoff' or 'stop', got on_too_large={on_too_large!r}"
            )
        self.on_too_large = on_too_large
        # Snapshots cost a copy of the parameters and the optimizer state (and a checkpoint
        # keeps them): only a policy that backs off ever goes back to one.
        self._backs_off = "backoff" in (on_nonfinite, on_spike, on_too_large)
        self.regime_window = _int("regime_window", regime_window, 4)  # a RegimeMonitor's least window
        self.regime_patience = _int("regime_patience", regime_patience, 1)
        self._snapshot: dict[str, Any] | None = None
        self._start_snapshot: dict[str, Any] | None = None
        self.reset()

    # -- state ---------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget counters, the loss reference and the snapshot (the settings stay)."""
        self.calls = 0
        self.good_steps = 0
        self.skips = 0
        self.backoffs = 0
        self.spikes = 0
        self.nonfinite = 0
        self.scaler_skips = 0
        self.consecutive_skips = 0
        self.lr_cut = 1.0  # product of every backoff's cut so far
        self.first_loss: float | None = None
        self._recent: list[float] = []
        self._snapshot = None
        self._snapshot_due = True
        self._start_snapshot = None  # where the current learning rate began: a too-large rate
        self.too_large = 0  # harms every step, so its backoff goes back there
        self._too_large_windows = 0
        self._monitor = None
        self._steps_measured = None  # the length of every step taken, for the diagnosis
        self.last_update_norm: float | None = None  # ||delta theta|| of the last step, if measured
        if self.on_too_large is not None:
            from steepest.lr.diagnosis import RegimeMonitor, UpdateTracker  # the live diagnosis

            self._monitor = RegimeMonitor(window=self.regime_window)
            self._steps_measured = UpdateTracker(self.optimizer)

    def state_dict(self) -> dict[str, Any]:
        """Counters, the loss reference and the live diagnosis, plain numbers and lists (the
        snapshots, tensors, are in :meth:`snapshots_state`)."""
        return {
            "calls": self.calls,
            "good_steps": self.good_steps,
            "skips": self.skips,
            "backoffs": self.backoffs,
            "spikes": self.spikes,
            "nonfinite": self.nonfinite,
            "scaler_skips": self.scaler_skips,
            "consecutive_skips": self.consecutive_skips,
            "lr_cut": self.lr_cut,
            "first_loss": self.first_loss,
            "recent": list(self._recent),
            # the live diagnosis behind on_too_large: a resumed run must see the windows and
            # the loss at the start that the uninterrupted one sees
            "too_large": self.too_large,
            "too_large_windows": self._too_large_windows,
            "last_update_norm": self.last_update_norm,
            "monitor": None if self._monitor is None else self._monitor.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`; a snapshot is taken at the next good step, unless
        :meth:`load_snapshots_state` restores the saved ones.

        Every field is checked before any is set: a bad dict raises a ValueError or TypeError
        naming the field and changes nothing.
        """
        checked = validation.state_fields("state", state, "SafeStep", _STATE_FIELDS, _STATE_DEFAULTS)
        saved_monitor = checked.pop("monitor")
        monitor = self._monitor
        if monitor is not None and saved_monitor is not None:
            from steepest.lr.diagnosis import RegimeMonitor

            monitor = RegimeMonitor(window=self.regime_window)
            monitor.load_state_dict(saved_monitor)  # checked whole: a bad one changes nothing here
        self._monitor = monitor
        self._recent = checked.pop("recent")
        self._too_large_windows = checked.pop("too_large_windows")
        for name, value in checked.items():
            setattr(self, name, value)
        self._snapshot, self._start_snapshot, self._snapshot_due = None, None, True

    def snapshots_state(self) -> dict[str, Any]:
        """The in-memory snapshots a backoff goes back to, for a checkpoint that resumes exactly.

        Tensors, numbers and the optimizer's state_dicts, which ``torch.load(weights_only=True)``
        reads: about the parameters and the optimizer's state again (twice while the too-large
        policy's snapshot, where the current rate began, is an older one). Without them a
        resumed run rolls back to its first step after the resume: an ``on_too_large`` backoff
        then kept the parameters a 10x too large rate had wrecked (digits MLP: 10% test
        accuracy against the uninterrupted run's 96%).
        """
        start = self._start_snapshot
        return {
            "due": self._snapshot_due,
            "last": self._snapshot,
            "start": "last" if start is not None and start is self._snapshot else start,
        }

    def load_snapshots_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`snapshots_state`, after :meth:`load_state_dict`; the snapshots'
        tensors are moved to their parameters' device. Checked whole before anything is set."""
        fields = validation.state_fields("state", state, "SafeStep.snapshots_state", _SNAPSHOTS_FIELDS)
        last, start = fields["last"], fields["start"]
        if last is not None:
            last = self._checked_snapshot("state['last']", last, self._params())
        if isinstance(start, str):
            if start != "last" or last is None:
                raise ValueError(
                    f"state['start'] must be a snapshot, None or 'last' (with a last), got {start!r}"
                )
            start = last
        elif start is not None:
            start = self._checked_snapshot("state['start']", start, self._params())
        self._snapshot, self._start_snapshot, self._snapshot_due = last, start, fields["due"]

    @staticmethod
    def _checked_snapshot(name: str, snapshot: Any, params: list[Tensor]) -> dict[str, Any]:
        checked = validation.state_fields(name, snapshot, "SafeStep snapshot", _SNAPSHOT_FIELDS)
        saved = checked["params"]
        if len(saved) != len(params) or any(s.shape != p.shape for s, p in zip(saved, params)):
            raise ValueError(
                f"{name}['params'] must hold tensors of the guarded parameters' shapes "
                f"{[tuple(p.shape) for p in params]}, got {[tuple(s.shape) for s in saved]}"
            )
        checked["params"] = [s.to(device=p.device, dtype=p.dtype) for s, p in zip(saved, params)]
        return checked

    @property
    def counts(self) -> dict[str, int]:
        """Events and actions so far: nonfinite, spikes, skips, backoffs, scaler_skips."""
        return {
            "nonfinite": self.nonfinite,
            "spikes": self.spikes,
            "skips": self.skips,
            "backoffs": self.backoffs,
            "scaler_skips": self.scaler_skips,
        }

    @property
    def reference(self) -> float | None:
        """The spike reference: median of the recent accepted losses (None during warm-up)."""
        if len(self._recent) < self.warmup:
            return None
        return float(np.median(self._recent[-self.window :]))

    # -- the check -------------------------------------------------------------------------------
    def check(self, loss: float | Tensor, grad_norm: float | Tensor | None = None) -> Verdict:
        """Judge the loss at the current parameters and act, without stepping on a good one.

        On a good loss it snapshots when due and returns ``action="step"``: the caller then
        calls ``optimizer.step()`` itself (what :func:`steepest.minimize` does). On a bad one
        it raises, skips, backs off or says stop, as configured.

        Args:
            loss: the loss (a float or a one-element tensor; read once, a device sync).
            grad_norm: the global norm of the (unscaled, unclipped) gradients, when the caller
                has computed it already; otherwise the guard computes it (``check_grad``).
                With a ``scaler`` a non-finite norm is the scaler's business, and a finite one
                still informs the ``on_too_large`` diagnosis.
        """
        value = validation.scalar("loss", loss, finite=False)  # NaN and inf are events
        given_norm = _given_grad_norm(grad_norm)
        step = self.calls
        self.calls += 1
        norm = self._gradient_norm(value, given_norm)
        event, reason = self._event(value, step, norm)
        if event is None:
            event, reason, factor = self._regime(value, step, norm)
            if event is not None:
                return self._act_on_too_large(reason, factor, step, value)
            self._accept(value)
            return Verdict("step", step=step, loss=value, lr=self._lr())
        policy = self.on_nonfinite if event == "nonfinite" else self.on_spike
        if event == "nonfinite":
            self.nonfinite += 1
        else:
            self.spikes += 1
        if policy == "raise":
            error = FloatingPointError if event == "nonfinite" else RuntimeError
            raise error(f"{reason} (SafeStep on_{event if event == 'spike' else 'nonfinite'}='raise')")
        self.optimizer.zero_grad(set_to_none=True)
        if policy == "stop":
            return Verdict("stop", reason, event, step, value, self._lr())
        if policy == "skip":
            if event == "nonfinite" and not self._params_finite():
                # A finite loss's update made the parameters non-finite: every later loss is NaN
                # too, and skipping would only spend the run (it "completed" with a NaN model).
                return Verdict(
                    "stop",
                    f"{reason}; the parameters are not finite, so skipping cannot recover (the last "
                    "update made them so; on_nonfinite='backoff' rolls it back)",
                    event,
                    step,
                    value,
                    self._lr(),
                )
            self.skips += 1
            self.consecutive_skips += 1
            if self.consecutive_skips > self.max_skips:
                return Verdict(
                    "stop",
                    f"{reason}; gave up after {self.max_skips} skips in a row",
                    event,
                    step,
                    value,
                    self._lr(),
                )
            return Verdict("skip", f"{reason}; skipped the update", event, step, value, self._lr())
        # backoff
        if self._snapshot is None:
            return Verdict(
                "stop", f"{reason}; no good step yet to roll back to", event, step, value, self._lr()
            )
        if self.backoffs >= self.max_backoffs:
            return Verdict(
                "stop",
                f"{reason}; gave up after {self.max_backoffs} backoffs",
                event,
                step,
                value,
                self._lr(),
            )
        self.backoffs += 1
        self._restore()
        return Verdict(
            "backoff",
            f"{reason}; rolled back to step {self._snapshot['step_count']} and cut the learning rate "
            f"x{self.backoff_factor:g} (now {self._lr():.3g})",
            event,
            step,
            value,
            self._lr(),
        )

    def step(
        self,
        loss: float | Tensor,
        closure: Callable[[], Any] | None = None,
        grad_norm: float | Tensor | None = None,
    ) -> Verdict:
        """Check the loss, then step the optimizer if it is good; the :class:`Verdict` says what happened.

        Args:
            loss: the loss at the current parameters, whose gradients are in ``.grad``.
            closure: passed on to ``optimizer.step`` (L-BFGS and the like).
            grad_norm: the gradients' global norm if already known (see :meth:`check`).

        Example:
            >>> for loss in losses:  # doctest: +SKIP
            ...     verdict = guard.step(loss)
            ...     if verdict.should_stop:
            ...         break
        """
        verdict = self.check(loss, grad_norm)
        if verdict.action != "step":
            self.last_update_norm = None  # the next loss follows no step of the rule
            return verdict
        # A rule that reads the loss (MoMo) is handed the one just checked.
        arguments: tuple[Any, ...] = () if closure is None else (closure,)
        keywords = rules.loss_keywords(self.optimizer, loss) if closure is None else {}
        if self._steps_measured is not None:
            self._steps_measured.snapshot()
        if self.scaler is not None:
            before = float(self.scaler.get_scale())
            self.scaler.step(self.optimizer, *arguments, **keywords)
            self.scaler.update()
            if float(self.scaler.get_scale()) < before:
                self.scaler_skips += 1
        else:
            self.optimizer.step(*arguments, **keywords)
        if self._steps_measured is not None:
            self.last_update_norm = self._steps_measured.norm()
        return verdict

    # -- internals -------------------------------------------------------------------------------
    def _gradient_norm(self, value: float, given: float | None) -> float | None:
        """The gradients' global norm this check uses: the one given, else computed (only with
        ``check_grad``, and not for a loss that is already non-finite). Without ``check_grad``
        (a scaler's overflow is its business, or the caller opted out) only a finite given norm,
        which still informs the too-large diagnosis."""
        if not self.check_grad:
            return given if given is not None and math.isfinite(given) else None
        if given is not None or not math.isfinite(value):
            return given
        return self._grad_norm()

    def _event(self, value: float, step: int, norm: float | None) -> tuple[str | None, str]:
        where = f"step {self._step_count(step)}"
        if not math.isfinite(value):
            return "nonfinite", f"non-finite loss {value} at {where}"
        if norm is not None and not math.isfinite(norm):  # checked only with check_grad
            return "nonfinite", f"non-finite gradient norm {norm} at {where} (loss {value:.6g})"
        if self.on_spike is not None and self._is_spike(value):
            return "spike", (
                f"loss spike at {where}: {value:.6g} > {self.spike_factor:g} x the recent "
                f"median {self.reference:.6g}"
            )
        return None, ""

    def _is_spike(self, value: float) -> bool:
        """The loss is more than ``spike_factor`` x the recent median (never during warm-up)."""
        reference = self.reference
        if reference is None:
            return False
        scale = max(abs(reference), self.spike_floor * abs(self.first_loss or 0.0))
        return value > reference + (self.spike_factor - 1.0) * scale

    def _regime(self, value: float, step: int, norm: float | None) -> tuple[str | None, str, float]:
        """A "too large" learning rate that shows as no progress rather than as NaN or a spike.

        ANCHORS.md: on logistic regression and the digits networks a rate far too large keeps
        the loss at or above where it started, finite and without spikes. The live regime
        monitor (steepest.lr.RegimeMonitor) sees it; ``regime_patience`` windows in a row of
        "too_large" make it an event.
        """
        if self._monitor is None:
            return None, "", 1.0
        # The gradient norm tells a network a rate killed (its gradient collapsed, the loss flat at
        # chance) from one crawling at a tiny rate; from the loss alone the two look alike.
        # (the length of the step before this loss: with the gradient norm, what it could do)
        diagnosis = self._monitor.observe(
            step, value, grad_norm=norm, lr=self._lr(), update_norm=self.last_update_norm
        )
        if diagnosis is None:
            return None, "", 1.0
        self._too_large_windows = self._too_large_windows + 1 if diagnosis.regime == "too_large" else 0
        if self._too_large_windows < self.regime_patience:
            return None, "", 1.0
        factor = diagnosis.factor if 0 < diagnosis.factor < 1 else self.backoff_factor
        return (
            "too_large",
            f"learning rate too large at step {self._step_count(step)}: {diagnosis.reason}",
            factor,
        )

    def _act_on_too_large(self, reason: str, factor: float, step: int, value: float) -> Verdict:
        self.too_large += 1
        self._too_large_windows = 0
        self.optimizer.zero_grad(set_to_none=True)
        if self.on_too_large == "stop" or self._start_snapshot is None:
            return Verdict("stop", reason, "too_large", step, value, self._lr())
        if self.backoffs >= self.max_backoffs:
            return Verdict(
                "stop",
                f"{reason}; gave up after {self.max_backoffs} backoffs",
                "too_large",
                step,
                value,
                self._lr(),
            )
        self.backoffs += 1
        begun = self._start_snapshot
        level = self.reference
        if level is not None and level < KEEP_PROGRESS_BELOW * begun["loss"]:
            # The loss fell well below where this rate began: keep the progress, cut the rate.
            self.lr_cut *= factor
            self._scale_lr(factor)
            self._start_snapshot, self._snapshot_due = None, True  # the cut rate begins here
            self._monitor.reset()
            return Verdict(
                "backoff",
                f"{reason}; kept the parameters (recent loss {level:.3g}, below the {begun['loss']:.3g} "
                f"where this rate began) and cut the learning rate x{factor:.3g} (now {self._lr():.3g})",
                "too_large",
                step,
                value,
                self._lr(),
            )
        # The steps at the too-large rate did harm: go back to where that rate began.
        self._snapshot = begun
        self._restore(factor)
        self._monitor.reset()
        return Verdict(
            "backoff",
            f"{reason}; rolled back to step {self._snapshot['step_count']} and cut the learning rate "
            f"x{factor:.3g} (now {self._lr():.3g})",
            "too_large",
            step,
            value,
            self._lr(),
        )

    def _accept(self, value: float) -> None:
        if self.first_loss is None:
            self.first_loss = value
        self.consecutive_skips = 0
        # A snapshot is a point to come back to: never one where the loss is already a spike
        # (whether or not spikes are acted on). A run that diverges gradually passes a few finite
        # but soaring losses before the first inf; a snapshot among them put every backoff back
        # on the blow-up (heavy ball on Himmelblau, snapshot every 5 steps: 20 backoffs, then
        # stopped), where the older one lets the halved rate recover.
        due = self._backs_off and (self._snapshot_due or self.good_steps % self.snapshot_every == 0)
        if due and (self._snapshot is None or not self._is_spike(value)):
            self._take_snapshot(value)
        self.good_steps += 1
        self._recent = (self._recent + [value])[-self.window :]

    def _params(self) -> list[Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    @torch.no_grad()
    def _params_finite(self) -> bool:
        """Every parameter is finite (one reduction per tensor: read only after an event)."""
        return all(bool(torch.isfinite(p).all()) for p in self._params())

    def _grad_norm(self) -> float | None:
        grads = [p.grad for p in self._params() if p.grad is not None]
        return float(clipping.global_norm(grads)) if grads else None

    @torch.no_grad()
    def _take_snapshot(self, loss: float) -> None:
        self._snapshot = {
            "loss": loss,  # the loss at these parameters
            "params": [p.detach().clone() for p in self._params()],
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "lr_cut": self.lr_cut,
            "recent": list(self._recent),
            "step_count": int(getattr(self.optimizer, "step_count", self.calls)),
        }
        if self._snapshot_due and self._start_snapshot is None:
            self._start_snapshot = self._snapshot  # the first state at this learning rate
        self._snapshot_due = False

    @torch.no_grad()
    def _restore(self, factor: float | None = None) -> None:
        snapshot = self._snapshot
        assert snapshot is not None
        for param, kept in zip(self._params(), snapshot["params"]):
            param.copy_(kept)
        self.optimizer.load_state_dict(copy.deepcopy(snapshot["optimizer"]))
        self.lr_cut *= self.backoff_factor if factor is None else factor
        self._start_snapshot = None  # the next snapshot starts the new learning rate
        # the restored optimizer predates the cuts made since the snapshot: apply them all
        self._scale_lr(self.lr_cut / snapshot["lr_cut"])
        self.optimizer.zero_grad(set_to_none=True)
        self._recent = list(snapshot["recent"])
        self._snapshot_due = True  # the next good step snapshots the state with the cut rate

    def _scale_lr(self, factor: float) -> None:
        """Multiply the optimizer's learning rates by ``factor``."""
        scale_lr = getattr(self.optimizer, "scale_lr", None)
        if callable(scale_lr):
            scale_lr(factor)
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = group["lr"] * factor

    def _lr(self) -> float:
        try:
            return float(self.optimizer.param_groups[0]["lr"])
        except (KeyError, TypeError, ValueError):
            return math.nan

    def _step_count(self, calls: int) -> int:
        return int(getattr(self.optimizer, "step_count", calls))


def check_settings(safety: Any, on_nonfinite: Any, on_spike: Any) -> None:
    """The kinds of a guard's settings as ``minimize`` and ``fit`` take them (``safety``: a dict
    of SafeStep's keyword arguments), checked before anything runs; SafeStep checks the values."""
    if safety is not None and not isinstance(safety, Mapping):
        raise TypeError(f"safety must be a dict of keyword arguments or None, got safety={safety!r}")
    for name, value in (("on_nonfinite", on_nonfinite), ("on_spike", on_spike)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a policy name or None, got {name}={value!r}")


def _given_grad_norm(grad_norm: Any) -> float | None:
    """The caller's gradient norm: None, or >= 0 (nan and inf are events the guard acts on)."""
    if grad_norm is None:
        return None
    norm = validation.scalar("grad_norm", grad_norm, finite=False)
    if norm < 0:
        raise ValueError(f"grad_norm must be >= 0 (a norm), got grad_norm={norm!r}")
    return norm


_int = validation.integer  # (name, value, minimum): the library's one integer check

# How load_state_dict checks each field of the state; the losses kept are the accepted ones,
# so finite. Fields a state_dict may lack, written before they existed, and their values then.
_STATE_FIELDS: dict[str, validation.Check] = {
    "calls": validation.count,
    "good_steps": validation.count,
    "skips": validation.count,
    "backoffs": validation.count,
    "spikes": validation.count,
    "nonfinite": validation.count,
    "scaler_skips": validation.count,
    "consecutive_skips": validation.count,
    "lr_cut": validation.positive,
    "first_loss": validation.optional(validation.real),
    "recent": validation.list_of(validation.real),
    "too_large": validation.count,
    "too_large_windows": validation.count,
    "last_update_norm": validation.optional(validation.any_real),
    "monitor": validation.optional(validation.mapping),
}
_STATE_DEFAULTS: dict[str, Any] = {
    "good_steps": 0,
    "nonfinite": 0,
    "scaler_skips": 0,
    "consecutive_skips": 0,
    "lr_cut": 1.0,
    "first_loss": None,
    "too_large": 0,
    "too_large_windows": 0,
    "last_update_norm": None,
    "monitor": None,
}


# snapshots_state: a snapshot is what _take_snapshot keeps
_SNAPSHOT_FIELDS: dict[str, validation.Check] = {
    "loss": validation.any_real,
    "params": validation.list_of(validation.tensor),
    "optimizer": validation.mapping,  # its own load_state_dict checks it when a backoff uses it
    "lr_cut": validation.positive,
    "recent": validation.list_of(validation.real),
    "step_count": validation.count,
}
_SNAPSHOTS_FIELDS: dict[str, validation.Check] = {
    "due": validation.boolean,
    "last": validation.optional(validation.mapping),
    "start": lambda name, value: value,  # None, "last" or a snapshot: checked in the method
}


def _real(name: str, value: Any, *, low: float, low_open: bool = False, high: float | None = None) -> float:
    value = validation.real(name, value, finite=False)  # numpy scalars too, as the optimizers take
    too_low = value <= low if low_open else value < low
    if not math.isfinite(value) or too_low or (high is not None and value >= high):
        bound = f"{'>' if low_open else '>='} {low:g}" + ("" if high is None else f" and < {high:g}")
        raise ValueError(f"{name} must be finite and {bound}, got {name}={value!r}")
    return value
