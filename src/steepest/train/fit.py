"""``fit``: the training loop of the library, readable top to bottom.

For every optimizer step: take ``accumulate`` mini-batches, run forward pass and loss (under
autocast when asked), backward pass, then the optimizer's step (which clips and evaluates the
learning-rate schedule itself), and tell the callbacks. Every ``eval_every`` steps (or epoch),
score the validation data and ask the stopping criteria; every ``checkpoint_every``, write a
checkpoint from which ``resume=True`` continues bit-identically on the same machine.

Example:
    >>> from steepest.train import build_model, fit, load_dataset
    >>> data = load_dataset("digits")
    >>> result = fit(build_model("mlp", data), data.train, "cross_entropy", lr=3e-3,
    ...              epochs=5, val_data=data.val)  # doctest: +SKIP
    >>> result.metrics["val_accuracy"] > 0.95  # doctest: +SKIP
    True
"""

from __future__ import annotations

import inspect
import itertools
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from steepest import clipping, rules
from steepest import lr as learning_rate_tools  # (choose_lr read at the call: tests stand in for it)
from steepest import stopping as stopping_criteria
from steepest.engine import Optimizer as SteepestOptimizer
from steepest.engine import validation
from steepest.lr.auto import LRChoice
from steepest.lr.range_test import RandomState
from steepest.train import checkpoint as checkpoints

__all__ = ["LOSSES", "EvalRecord", "FitResult", "StepRecord", "Trainer", "fit"]

LossFunction = Callable[[Tensor, Tensor], Tensor]

#: Loss functions ``fit`` knows by name; each returns the mean over the mini-batch.
LOSSES: dict[str, LossFunction] = {
    "cross_entropy": F.cross_entropy,
    "mse": F.mse_loss,
    "l1": F.l1_loss,
    "huber": F.huber_loss,
    "binary_cross_entropy_with_logits": F.binary_cross_entropy_with_logits,
}

PRECISIONS: dict[str, torch.dtype | None] = {
    "float32": None,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

# Validation data is scored in chunks this large: big enough to amortize the per-call
# overhead, small enough not to hold a large set's activations at once.
EVALUATION_BATCH_SIZE = 1024
# fit measures the length of every k-th step (with track_grad_norm): the regime diagnosis reads
# a window's median, for which 4 steps of 20 do; measuring every step cost 13-20% of the steps
# per second of the digits MLP (benchmarks/fit_overhead.py).
STEP_LENGTH_EVERY = 5
#: The events a callback can have methods for; fit refuses a callback that has none of them.
CALLBACK_EVENTS = ("on_fit_start", "on_step_end", "on_evaluate", "on_checkpoint", "on_fit_end")


# ------------------------------------------------------------------------------ records


@dataclass(frozen=True)
class StepRecord:
    """What one optimizer step did; handed to ``on_step_end`` and kept in ``history``.

    ``loss`` is the step's mean loss over its accumulated micro-batches, ``lr`` the rate of
    param group 0 used by this step, ``grad_norm`` the global gradient norm before clipping
    (None when not computed), ``elapsed`` seconds since the run started (resumed runs count
    their earlier parts), ``total_steps`` the planned number of steps (None if unknown),
    ``update_norm`` the length ||delta theta|| of the step (measured every fifth step with
    ``track_grad_norm``, every step under ``safety={"on_too_large": ...}``, whose guard measures
    them; None otherwise, or when the safe-step policy did not take the step).
    """

    step: int
    epoch: int
    batch_in_epoch: int
    loss: float
    lr: float
    grad_norm: float | None
    clipped: bool
    examples: int
    examples_per_second: float
    elapsed: float
    total_steps: int | None
    update_norm: float | None = None
    # Annotations callbacks add for the callbacks after them (the regime diagnosis puts
    # "regime" and "advice" here); metrics.jsonl, the progress bar and the report show them.
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class EvalRecord:
    """One evaluation: ``metrics`` such as ``val_loss``, ``val_accuracy``, ``train_loss``."""

    step: int
    epoch: int
    metrics: dict[str, float]
    elapsed: float


@dataclass
class FitResult:
    """The outcome of :func:`fit`.

    Args:
        history: one StepRecord per optimizer step (of the whole run, resumed parts included).
        evaluations: one EvalRecord per evaluation.
        metrics: the final metrics (of the returned model's parameters).
        stopped_by: why the run ended, in words.
        success: True when a convergence criterion (target, patience, ...) ended the run.
        steps: optimizer steps done; epochs: epochs begun; seconds: wall-clock time.
        model: the trained model (with the best parameters when patience restored them).
        lr_choice: with ``lr="auto"``, the :class:`steepest.lr.LRChoice` (rate, method, reason);
            a resumed run's is the one its checkpoint recorded (without the range test's curves).
    """

    history: list[StepRecord]
    evaluations: list[EvalRecord]
    metrics: dict[str, float]
    stopped_by: str
    success: bool
    steps: int
    epochs: int
    seconds: float
    model: nn.Module = field(repr=False)
    lr_choice: Any = None  # with lr="auto": the rate or method chosen, and why


class Trainer:
    """The live state of a run, as callbacks see it.

    Attributes:
        model, optimizer, scaler (a ``torch.amp.GradScaler`` or None): what is trained.
        step: optimizer steps done; epoch: the current epoch (1-based).
        total_steps: the planned number of steps, None if unknown.
        config: the plain-valued arguments of ``fit``.
        stop_requested: set it to True in a callback to stop after the current step.
        history, evaluations: the records so far.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler | None,
        config: dict[str, Any],
        total_steps: int | None,
        callbacks: Sequence[Any],
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.scaler = scaler
        self.config = config
        self.total_steps = total_steps
        self.callbacks = list(callbacks)
        self.step = 0
        self.epoch = 0
        self.stop_requested = False
        self.history: list[StepRecord] = []
        self.evaluations: list[EvalRecord] = []

    def notify(self, event: str, *arguments: Any) -> None:
        """Call ``event`` (e.g. ``"on_step_end"``) on every callback that has it."""
        for callback in self.callbacks:
            method = getattr(callback, event, None)
            if method is not None:
                method(self, *arguments)


def _callback_name(callback: Any) -> str:
    return str(getattr(callback, "name", type(callback).__name__))


# ------------------------------------------------------------------------------ data


class _TensorBatches:
    """Mini-batches of (inputs, targets) tensors by index: no per-example collation.

    ``start_epoch`` draws the epoch's order at once (so a resumed run can replay the draw)
    and can skip the batches a resumed run already consumed without gathering them.
    """

    def __init__(
        self,
        inputs: Tensor,
        targets: Tensor,
        batch_size: int,
        shuffle: bool,
        generator: torch.Generator | None,
    ) -> None:
        self.inputs, self.targets = inputs, targets
        self.batch_size, self.shuffle, self.generator = batch_size, shuffle, generator

    def __len__(self) -> int:
        return math.ceil(len(self.targets) / self.batch_size)

    def start_epoch(self, skip: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        count = len(self.targets)
        order = torch.randperm(count, generator=self.generator) if self.shuffle else None
        return self._batches(order, skip)

    def _batches(self, order: Tensor | None, skip: int) -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(skip * self.batch_size, len(self.targets), self.batch_size):
            if order is None:
                yield (
                    self.inputs[start : start + self.batch_size],
                    self.targets[start : start + self.batch_size],
                )
            else:
                indices = order[start : start + self.batch_size]
                yield self.inputs[indices], self.targets[indices]


class _LoaderBatches:
    """A DataLoader as a source of epochs; skipped batches are loaded but not trained on."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        self.generator = loader.generator

    def __len__(self) -> int:
        return len(self.loader)

    def start_epoch(self, skip: int = 0) -> Iterator[Any]:
        iterator = iter(self.loader)
        for _ in range(skip):
            next(iterator, None)
        return iterator


def _tensor_pair(data: Any) -> tuple[Tensor, Tensor] | None:
    if isinstance(data, TensorDataset) and len(data.tensors) == 2:
        return data.tensors[0], data.tensors[1]
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        if len(data[0]) != len(data[1]):
            raise ValueError(f"inputs and targets differ in length: {len(data[0])} != {len(data[1])}")
        return data[0], data[1]
    return None


def _as_batches(
    data: Any, name: str, batch_size: int, shuffle: bool, generator: torch.Generator | None
) -> _TensorBatches | _LoaderBatches:
    """(X, y) tensors, a TensorDataset, any Dataset or a DataLoader -> a source of epochs."""
    pair = _tensor_pair(data)
    if pair is not None:
        return _TensorBatches(pair[0], pair[1], batch_size, shuffle, generator)
    if isinstance(data, DataLoader):
        return _LoaderBatches(data)
    if isinstance(data, Dataset):
        return _LoaderBatches(DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator))
    raise TypeError(
        f"{name} must be a torch Dataset, a DataLoader or an (inputs, targets) pair of tensors, "
        f"got {type(data).__name__}"
    )


def _groups(batches: Iterator[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive groups of ``size`` micro-batches; the epoch's last group may be smaller."""
    group: list[Any] = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


# ------------------------------------------------------------------------------ building blocks


def _class_and_options(optimizer: Any) -> tuple[type[torch.optim.Optimizer], dict[str, Any]] | None:
    """A name, a class or ``functools.partial(cls, **options)`` -> (cls, options); else None.

    A partial of an optimizer class is a class with options (``partial(SGD, momentum=0.9)``):
    fit still sets its ``lr``, and ``lr="auto"`` chooses a rate for it with those options.
    """
    if isinstance(optimizer, str):
        return rules.by_name(optimizer), {}
    if isinstance(optimizer, type):
        return optimizer, {}
    if (
        isinstance(optimizer, partial)
        and isinstance(optimizer.func, type)
        and issubclass(optimizer.func, torch.optim.Optimizer)
        and not optimizer.args
    ):
        return optimizer.func, dict(optimizer.keywords)
    return None


def _check_optimizer(optimizer: Any, lr: Any, clip_norm: float | None, params: list[Tensor]) -> None:
    """Refuse what ``build_optimizer`` could not build or fit could not drive, before anything changes.

    A factory's optimizer exists only once built: ``build_optimizer`` checks it then.
    """
    if (class_and_options := _class_and_options(optimizer)) is not None:
        cls, preset = class_and_options
        if not issubclass(cls, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer subclass, got {cls.__name__}")
        if lr is not None and "lr" in preset:
            raise ValueError(f"lr is given twice: lr={lr!r} and the partial's lr={preset['lr']!r}")
        # rules.requires_closure reads a class as it reads an instance: its declaration, or
        # its step's signature.
        if rules.requires_closure(cls):
            raise TypeError(f"fit cannot drive {cls.__name__}: it needs a closure; use steepest.minimize")
    elif isinstance(optimizer, torch.optim.Optimizer):
        if lr is not None:
            raise ValueError(
                "lr configures an optimizer given by name or class; this optimizer "
                f"instance has its own, got lr={lr!r}"
            )
        _check_built(optimizer, clip_norm, params)
    elif callable(optimizer):
        if lr is not None:
            raise ValueError(
                f"lr configures an optimizer given by name or class; a factory sets its own, got lr={lr!r}"
            )
    else:
        raise TypeError(f"optimizer must be a name, a class, a factory or an instance, got {optimizer!r}")


def _check_built(optimizer: torch.optim.Optimizer, clip_norm: float | None, params: list[Tensor]) -> None:
    """An optimizer instance fit can drive on the model's parameters ``params``.

    It may hold a subset of them (the parameters it leaves out stay frozen), but at least one
    that requires grad, and nothing else: an optimizer built for other tensors would step
    them and leave the model as it was.
    """

    name = type(optimizer).__name__
    if rules.requires_closure(optimizer):
        raise TypeError(f"fit cannot drive {name}: it needs a closure; use steepest.minimize")
    own = optimizer.clip_norm if isinstance(optimizer, SteepestOptimizer) else None
    if clip_norm is not None and own is not None and own != clip_norm:
        raise ValueError(f"clip_norm={clip_norm!r} differs from the optimizer's own clip_norm={own!r}")
    model_params = {id(param) for param in params}
    held = [param for group in optimizer.param_groups for param in group["params"]]
    foreign = [param for param in held if id(param) not in model_params]
    if foreign:
        raise ValueError(
            f"optimizer={name} holds {len(foreign)} of {len(held)} tensors that are not parameters "
            f"of the model (the first of shape {tuple(foreign[0].shape)}); build it on "
            "model.parameters()"
        )
    if not any(param.requires_grad for param in held):
        raise ValueError(
            f"optimizer={name} holds none of the model's trainable parameters; build it on model.parameters()"
        )


def build_optimizer(
    optimizer: Any, params: list[Tensor], lr: Any, clip_norm: float | None
) -> torch.optim.Optimizer:
    """The optimizer fit drives on ``params``, from a name, a class (or a partial of one), a
    factory ``params -> optimizer`` or an instance (kept as it is), checked once built (what
    ``_check_optimizer`` can tell before building, it has told already)."""

    if (class_and_options := _class_and_options(optimizer)) is not None:
        cls, options = class_and_options
        if lr is not None:
            options["lr"] = lr
        if clip_norm is not None and issubclass(cls, SteepestOptimizer):
            options["clip_norm"] = clip_norm
        built = cls(params, **options)
    elif isinstance(optimizer, torch.optim.Optimizer):
        built = optimizer
    else:
        built = optimizer(params)
        if not isinstance(built, torch.optim.Optimizer):
            raise TypeError(
                f"the optimizer factory must return a torch.optim.Optimizer, got {type(built).__name__}"
            )
    _check_built(built, clip_norm, params)
    if clip_norm is not None and isinstance(built, SteepestOptimizer) and built.clip_norm is None:
        built.clip_norm = clip_norm
    return built


def choose_lr_for_run(
    model: nn.Module,
    data: Any,
    optimizer: type[torch.optim.Optimizer],
    options: Mapping[str, Any],
    loss_function: LossFunction,
    *,
    batch_size: int,
    accumulate: int,
    clip_norm: float | None,
    seed: int,
) -> Any:
    """``lr="auto"`` for a run of fit (or ``steepest train``): :func:`steepest.lr.choose_lr`
    on the steps the run will take.

    ``data`` is what fit takes: an (X, y) pair or a TensorDataset of two tensors goes to the
    choice as the pair; a DataLoader as it is; any other Dataset as a shuffling DataLoader of
    its own, whose order torch's global generator draws (the choice seeds it and puts it back
    afterwards), so that the run's own shuffling generator is left untouched and the run that
    follows is the one given the chosen rate. A step of the choice sees ``batch_size *
    accumulate`` examples, as a step of the run does (a DataLoader's batches as they come);
    a steepest optimizer clips at ``clip_norm`` in the choice as in the run (torch.optim's
    have no clip_norm: fit clips for them, and the choice runs them unclipped). The choice
    runs in float32, whatever the run's precision. Returns the :class:`steepest.lr.LRChoice`.
    """

    settings = dict(options)
    if clip_norm is not None and issubclass(optimizer, SteepestOptimizer):
        settings["clip_norm"] = clip_norm
    step_size = batch_size * accumulate
    pair = _tensor_pair(data)
    if pair is not None:
        data = pair
    elif isinstance(data, Dataset):
        data = DataLoader(data, batch_size=step_size, shuffle=True)
    return learning_rate_tools.choose_lr(
        model, data, optimizer, options=settings, loss_fn=loss_function, batch_size=step_size, seed=seed
    )


def _resolve_loss(loss: str | LossFunction) -> LossFunction:
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ValueError(f"unknown loss={loss!r}; choose from {', '.join(LOSSES)} or pass a function")
        return LOSSES[loss]
    if isinstance(loss, type):
        # nn.CrossEntropyLoss is callable too, but calling it builds a loss instead of computing one.
        prefix = "nn." if loss.__module__.startswith("torch.nn") else ""
        raise TypeError(
            f"loss must be a name or a function (outputs, targets) -> loss, got the class "
            f"{loss.__name__}; pass an instance: {prefix}{loss.__name__}()"
        )
    if not callable(loss):
        raise TypeError(f"loss must be a name or a function (outputs, targets) -> loss, got {loss!r}")
    return loss


def _check_loss_value(value: Any) -> None:
    """What the loss function returned is something ``backward`` can start from: a scalar tensor."""
    if not isinstance(value, Tensor):
        raise TypeError(f"loss must return a scalar tensor, got {type(value).__name__}: {value!r:.80}")
    if value.numel() != 1:
        raise ValueError(
            f"loss must return a scalar tensor (the mean over the batch), got a tensor of shape "
            f"{tuple(value.shape)}"
        )
    if not value.is_floating_point():
        raise TypeError(f"loss must return a floating-point tensor, got dtype {value.dtype}")


def _check_every(name: str, value: Any) -> str | int:
    if isinstance(value, str):
        if value != "epoch":
            raise ValueError(f"{name} must be 'epoch' or a positive number of steps, got {name}={value!r}")
        return value
    return validation.positive_integer(name, value)


def _check_device(device: Any) -> torch.device:
    if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)):
        raise TypeError(f"device must be a torch.device or its name ('cpu', 'cuda:0'), got device={device!r}")
    try:
        checked = torch.device(device)
        torch.empty(0, device=checked)  # allocates nothing; fails where tensors cannot live
    except (RuntimeError, AssertionError, NotImplementedError) as error:
        raise ValueError(f"device={device!r} cannot be used here: {error}") from None
    if checked.type == "meta":
        raise ValueError("device='meta' holds shapes without values: fit cannot train there")
    return checked


def _check_path(name: str, value: Any) -> None:
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (a str or a pathlib.Path), got {name}={value!r}")


def _check_callbacks(callbacks: Any) -> list[Any]:
    """None (no callbacks) or an iterable of objects with methods for some ``CALLBACK_EVENTS``."""
    if callbacks is None:
        return []
    if isinstance(callbacks, (str, bytes)) or not isinstance(callbacks, Iterable):
        raise TypeError(f"callbacks must be a list of callback objects, got callbacks={callbacks!r:.80}")
    callbacks = list(callbacks)
    for index, callback in enumerate(callbacks):
        if not any(callable(getattr(callback, event, None)) for event in CALLBACK_EVENTS):
            raise TypeError(
                f"callbacks[{index}]={callback!r:.80} has none of the methods {', '.join(CALLBACK_EVENTS)}"
            )
    return callbacks


def _check_metrics(metrics: Any) -> tuple[str, ...]:
    """None (none), one metric's name, or an iterable of names."""
    if metrics is None:
        return ()
    if isinstance(metrics, str):
        metrics = (metrics,)
    if not isinstance(metrics, Iterable):
        raise TypeError(f"metrics must be a list of metric names, got metrics={metrics!r}")
    metrics = tuple(metrics)
    for name in metrics:
        if name != "accuracy":
            raise ValueError(f"unknown metric {name!r} in metrics={metrics!r}; fit knows 'accuracy'")
    return metrics


def _check_safety(on_nonfinite: Any, on_spike: Any, safety: Any) -> None:
    """The safe-step settings, checked as minimize checks them, and by SafeStep itself."""
    from steepest.lr.safety import SafeStep, check_settings

    check_settings(safety, on_nonfinite, on_spike)
    options = dict(safety or {})
    if on_nonfinite is None and on_spike is None and not options:
        return
    # fit passes the scaler itself; on_nonfinite and on_spike are its own arguments.
    known = [
        parameter.name
        for parameter in inspect.signature(SafeStep).parameters.values()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and parameter.name != "scaler"
    ]
    for key in options:
        if key not in known:
            raise TypeError(f"safety has no option {key!r}; SafeStep's options: {', '.join(known)}")
    # SafeStep checks the values when fit builds it around the optimizer, after the model has
    # moved; built now around a stand-in optimizer, it checks them before anything changes.
    stand_in = torch.optim.SGD([torch.zeros(1, requires_grad=True)])
    SafeStep(stand_in, "stop" if on_nonfinite is None else on_nonfinite, on_spike, **options)


def _check_not_empty(batches: _TensorBatches | _LoaderBatches, name: str) -> None:
    """Data without a batch would loop over empty epochs forever (with ``max_steps``)."""
    try:
        count = len(batches)
    except TypeError:  # an iterable dataset of unknown length: the loop notices an empty epoch
        return
    if count > 0:
        return
    if isinstance(batches, _TensorBatches):
        inputs, targets = tuple(batches.inputs.shape), tuple(batches.targets.shape)
        raise ValueError(f"{name} holds no examples: inputs of shape {inputs}, targets of shape {targets}")
    raise ValueError(f"{name} holds no examples: its DataLoader yields no batch")


def _checkpoint_to_resume(
    resume: bool | str | Path, checkpoint_dir: str | Path | None, settings: dict[str, Any]
) -> dict[str, Any] | None:
    """The state that ``resume`` names (None: start afresh), refused if taken with other ``settings``."""
    if not resume:
        return None
    source = Path(checkpoint_dir) if resume is True else Path(resume)
    if resume is not True and not source.exists():
        raise ValueError(f"resume={str(resume)!r}: no such checkpoint file or folder")
    if source.is_file():
        resumed = checkpoints.load_checkpoint(source)
    else:
        # A missing or empty folder starts afresh, so that one command both starts and resumes.
        checkpoints.remove_temporary_files(source)
        found = checkpoints.latest_checkpoint(source)
        resumed = None if found is None else found[1]
    if resumed is not None:
        for key, value in settings.items():
            if resumed["config"][key] != value:
                raise ValueError(
                    f"cannot resume exactly with {key}={value!r}: the checkpoint was taken "
                    f"with {key}={resumed['config'][key]!r}"
                )
    return resumed


class _StateBefore:
    """What fit changes before its first step, as it was: the global random generators, the
    model's device and its train/eval modes. ``restore`` puts them back when fit fails before
    that step (an optimizer refusing its options, a model that does not fit the data, a loss
    that is not a scalar), so that the error leaves the caller's state as it was.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.random = RandomState.capture()
        self.modes = [(module, module.training) for module in model.modules()]
        devices = {tensor.device for tensor in itertools.chain(model.parameters(), model.buffers())}
        self.device = devices.pop() if len(devices) == 1 else None

    def restore(self) -> None:
        self.random.restore()
        for module, training in self.modes:
            module.training = training
        if self.device is not None:
            self.model.to(self.device)


@torch.no_grad()
def _evaluate(
    model: nn.Module,
    batches: _TensorBatches | _LoaderBatches,
    loss_function: LossFunction,
    metrics: Sequence[str],
    device: torch.device,
    autocast: Callable[[], Any] = nullcontext,
) -> dict[str, float]:
    """Mean loss (weighted by batch size) and accuracy of ``model`` over all of ``batches``.

    ``fit`` scores its validation data with it, and ``steepest.train.evaluate`` a digits split.
    """
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    measure_accuracy = "accuracy" in metrics
    for inputs, targets in batches.start_epoch():
        inputs, targets = inputs.to(device), targets.to(device)
        with autocast():
            outputs = model(inputs)
            loss = loss_function(outputs, targets)
        loss_sum += loss.double() * len(targets)
        # Accuracy means something for class labels only; regression targets are floats.
        if measure_accuracy and outputs.ndim == 2 and not targets.is_floating_point():
            correct += (outputs.argmax(dim=1) == targets).sum()
        else:
            measure_accuracy = False
        count += len(targets)
    model.train(was_training)
    if count == 0:
        return {}
    result = {"val_loss": float(loss_sum) / count}
    if measure_accuracy:
        result["val_accuracy"] = int(correct) / count
    return result


# ------------------------------------------------------------------------------ fit


class _CtrlC:
    """While training, the first Ctrl-C asks the loop to stop after the current step.

    Stopping between steps keeps parameters, optimizer state and counters consistent, so the
    final checkpoint resumes exactly; a second Ctrl-C interrupts at once, as usual. Outside
    the main thread (where signals cannot be handled) nothing is installed.
    """

    def __init__(self) -> None:
        self.pressed = False
        self._previous: Any = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def fit(
    model: nn.Module,
    data: Any,
    loss: str | LossFunction,
    optimizer: Any = "adamw",
    lr: float | str | Callable[[int], float] | None = None,
    *,
    epochs: int | None = None,
    max_steps: int | None = None,
    batch_size: int = 64,
    val_data: Any = None,
    eval_every: str | int = "epoch",
    stopping: Any = None,
    clip_norm: float | None = None,
    accumulate: int = 1,
    precision: str = "float32",
    compile: bool = False,
    callbacks: Sequence[Any] = (),
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: str | int = "epoch",
    keep_last: int = 3,
    resume: bool | str | Path = False,
    seed: int = 0,
    device: str | torch.device = "cpu",
    metrics: Sequence[str] = ("accuracy",),
    track_grad_norm: bool | None = None,
    on_nonfinite: str | None = None,
    on_spike: str | None = None,
    safety: Mapping[str, Any] | None = None,
) -> FitResult:
    """Train ``model`` on ``data`` by mini-batch gradient descent; evaluate, stop, checkpoint.

    Args:
        model: the ``nn.Module`` to train (moved to ``device``).
        data: training data: ``(inputs, targets)`` tensors, a torch Dataset or a DataLoader.
            Tensors and Datasets are shuffled each epoch by a generator seeded with ``seed``.
        loss: a name of ``LOSSES`` (``"cross_entropy"``, ``"mse"``, ...) or a function
            ``(outputs, targets) -> mean loss``.
        optimizer: a steepest optimizer name (any case, e.g. ``"adamw"``), an optimizer class,
            a class with options (``functools.partial(steepest.SGD, momentum=0.9)``), a
            factory ``params -> optimizer``, or an instance (default ``"adamw"``). What a
            factory or an instance holds must be the model's parameters, or some of them
            (those left out stay as they are), at least one trainable.
        lr: learning rate, a float or a schedule ``step -> rate``; None keeps the optimizer's
            default; ``"auto"`` chooses one (``steepest.lr.choose_lr``) on the run's data, its
            steps of ``batch_size * accumulate`` examples and its ``clip_norm`` (see
            :func:`choose_lr_for_run`); a checkpoint records the choice, and a resumed run
            keeps it. Only for a name, a class or a partial of a class.
        epochs: passes over ``data``; max_steps: optimizer steps. With neither, 10 epochs.
        batch_size: examples per micro-batch (default 64); a step sees
            ``batch_size * accumulate`` examples.
        val_data: validation data in the same forms as ``data``; None evaluates the mean
            training loss since the last evaluation instead.
        eval_every: ``"epoch"`` (default) or a number of steps.
        stopping: a criterion of ``steepest.stopping`` (or any callable Observation -> Stop),
            asked at every evaluation with ``fun`` = the validation loss if any, else the
            training loss; ``iteration`` = steps done, ``metrics`` = the evaluation's.
        clip_norm: clip the global gradient norm to this (the optimizer's ``clip_norm``).
        accumulate: micro-batches per optimizer step (default 1). Each micro-batch's mean
            loss is weighted by its share of the step's examples, so a step equals one
            large batch even when the epoch's last micro-batch is short.
        precision: ``"float32"`` (default), ``"bfloat16"`` (autocast) or ``"float16"``
            (autocast and a ``torch.amp.GradScaler``, on the CPU as on CUDA: steps whose
            scaled gradients overflow are skipped and the scale lowered; the scaler's state
            is checkpointed).
        compile: run the forward pass through ``torch.compile(model)``.
        callbacks: objects with any of ``on_fit_start``, ``on_step_end``, ``on_evaluate``,
            ``on_checkpoint``, ``on_fit_end`` (and optionally ``state_dict``/``load_state_dict``,
            checkpointed under their ``name``, default the class name); None: none.
        checkpoint_dir: folder for ``step-000123.pt`` checkpoints; None writes none.
        checkpoint_every: ``"epoch"`` (default) or a number of steps.
        keep_last: checkpoints to keep (default 3).
        resume: True continues from the newest valid checkpoint in ``checkpoint_dir`` (and
            starts afresh if there is none); a path names a checkpoint file or folder.
        seed: seeds torch, numpy, Python's random and the shuffling (default 0; an integer
            in torch's range, [-2**63, 2**64)).
        device: where to train (default ``"cpu"``).
        metrics: ``("accuracy",)`` (default) or ``"accuracy"`` adds ``val_accuracy`` for
            class labels; ``()`` or None: none.
        on_nonfinite, on_spike: the safe-step policy (``steepest.lr.SafeStep``): ``"raise"``,
            ``"skip"``, ``"backoff"`` or ``"stop"`` on a non-finite loss or gradient, and on a
            loss spike; None (default) stops the run when the loss is not finite. ``safety``:
            more SafeStep options (spike_factor, backoff_factor, ...). A checkpoint holds the
            guard's counters, live diagnosis and snapshots (about the parameters and the
            optimizer state again, with a backoff policy), so a resumed run backs off where an
            uninterrupted one would.
        track_grad_norm: compute the gradient norm when not clipping (one reduction per step),
            and the length ||delta theta|| of every fifth step (a copy of the parameters kept,
            one more pass over them on those steps), which with the gradient norm bounds what a
            step can do to the loss (the regime diagnosis reads it); None means on CPU only.

    Raises:
        ValueError, TypeError: a bad argument (empty data included), named with its value,
            before anything changes. What fails only once running (an optimizer refusing its
            options, a model that does not fit the data, a loss that is not a scalar tensor)
            fails before the first step, and fit puts back the random generators, the
            model's device and its train/eval modes first.

    Returns:
        A FitResult: the records, the final metrics, why it stopped, and the model.

    Example:
        >>> X, y = torch.randn(256, 4), torch.randint(0, 3, (256,))
        >>> result = fit(torch.nn.Linear(4, 3), (X, y), "cross_entropy", "sgd", lr=0.1, epochs=2)
        >>> result.steps
        8
    """
    # -- check the arguments, before anything changes ------------------------------------------
    # Every check runs before fit seeds the random generators or moves the model, so that an
    # error leaves the model, the generators and the files as they were.
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}: {model!r:.80}")
    if not any(param.requires_grad for param in model.parameters()):
        raise ValueError(f"model has no trainable parameters (none requires grad): {type(model).__name__}")
    epochs = validation.optional_positive_integer("epochs", epochs)
    max_steps = validation.optional_positive_integer("max_steps", max_steps)
    batch_size = validation.positive_integer("batch_size", batch_size)
    accumulate = validation.positive_integer("accumulate", accumulate)
    keep_last = validation.positive_integer("keep_last", keep_last)
    eval_every = _check_every("eval_every", eval_every)
    checkpoint_every = _check_every("checkpoint_every", checkpoint_every)
    if epochs is None and max_steps is None:
        epochs = 10
    seed = validation.torch_seed("seed", seed)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got precision={precision!r}")
    device = _check_device(device)
    compile = validation.boolean("compile", compile)
    track_grad_norm = validation.optional_boolean("track_grad_norm", track_grad_norm)
    if track_grad_norm is None:
        track_grad_norm = device.type == "cpu"
    if clip_norm is not None:
        clip_norm = validation.positive("clip_norm", clip_norm)
    if checkpoint_dir is not None:
        _check_path("checkpoint_dir", checkpoint_dir)
    if not isinstance(resume, bool):
        _check_path("resume", resume)
    elif resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir, the folder to resume from")
    if stopping is not None and not callable(stopping):
        raise TypeError(f"stopping must be a criterion (a callable Observation -> Stop), got {stopping!r}")
    callbacks = _check_callbacks(callbacks)
    metrics = _check_metrics(metrics)
    loss_function = _resolve_loss(loss)
    _check_safety(on_nonfinite, on_spike, safety)
    choosing_lr = isinstance(lr, str)
    if choosing_lr:
        if lr != "auto":
            raise ValueError(f"lr must be a number, a schedule or 'auto', got lr={lr!r}")
        class_and_options = _class_and_options(optimizer)
        if class_and_options is None:
            raise ValueError(
                "lr='auto' needs an optimizer given by name, class or functools.partial(class, "
                f"**options), to build its own; got {optimizer!r}"
            )
        if "lr" in class_and_options[1]:
            raise ValueError(f"lr='auto' chooses lr, but the partial sets lr={class_and_options[1]['lr']!r}")
    _check_optimizer(optimizer, None if choosing_lr else lr, clip_norm, list(model.parameters()))
    # The shuffling has a generator of its own, seeded with ``seed``: nothing else drawing
    # random numbers can change the batch order.
    shuffle_generator = torch.Generator().manual_seed(seed)
    train_batches = _as_batches(data, "data", batch_size, True, shuffle_generator)
    _check_not_empty(train_batches, "data")
    val_batches = None
    if val_data is not None:
        val_batches = _as_batches(val_data, "val_data", EVALUATION_BATCH_SIZE, False, None)
        _check_not_empty(val_batches, "val_data")
    resumed = _checkpoint_to_resume(
        resume, checkpoint_dir, {"batch_size": batch_size, "accumulate": accumulate, "seed": seed}
    )

    lr_choice = None
    if choosing_lr:
        # A short range test (it restores the model and every random state afterwards) or a
        # learning-rate-free method; see steepest.lr.choose_lr for the policy. The options
        # (momentum, ...) shape the choice; the choice says how to build what runs (its options:
        # the caller's, or those a stand-in takes, or their translation). A resumed run keeps
        # the choice its checkpoint recorded: chosen again (from a model already trained) it
        # would report a rate the run never used.
        cls, options = class_and_options
        if resumed is not None:
            if resumed.get("lr_choice") is None:
                taken_with = resumed["config"].get("lr")
                raise ValueError(
                    "resume: the checkpoint holds no record of an lr='auto' choice ("
                    + (
                        "it was written by an older steepest"
                        if taken_with == "auto"
                        else f"it was taken with lr={taken_with!r}"
                    )
                    + "): resume with the rate it ran with"
                )
            try:
                lr_choice = LRChoice.from_dict(resumed["lr_choice"], cls, resumed["config"]["optimizer"])
            except ValueError as error:
                raise ValueError(f"resume: the checkpoint's lr='auto' choice: {error}") from None
        else:
            lr_choice = choose_lr_for_run(
                model,
                data,
                cls,
                options,
                loss_function,
                batch_size=batch_size,
                accumulate=accumulate,
                clip_norm=clip_norm,
                seed=seed,
            )
        lr = lr_choice.lr
        optimizer = partial(lr_choice.method, **lr_choice.options)

    # -- set up: seeds, model, optimizer, mixed precision -------------------------------------
    # From here fit changes things; what it changes before its first step it puts back if it
    # fails before that step (the optimizer refusing its options, the first forward pass).
    before = _StateBefore(model)
    # One seed fixes the initial random state of everything (dropout, numpy, Python) and,
    # through its own generator, the batch order.
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)

    model.to(device)
    # Batches of tensors that already live on the device need no transfer; a DataLoader's may.
    transfer = not (
        isinstance(train_batches, _TensorBatches)
        and train_batches.inputs.device == device
        and train_batches.targets.device == device
    )
    forward = torch.compile(model) if compile else model
    try:
        optimizer = build_optimizer(optimizer, list(model.parameters()), lr, clip_norm)
    except BaseException:
        before.restore()
        raise
    # torch.optim optimizers have no clip_norm of their own: fit clips for them.
    clip_in_loop = clip_norm is not None and not hasattr(optimizer, "clip_norm")
    # A rule that sets its own step size reports it (``effective_lr``, one per param group).
    reports_step_size = isinstance(getattr(optimizer, "effective_lr", None), list)
    # The step size a step takes is known before it (Prodigy's d lr, schedule-free's warm-up),
    # except for a rule that sizes it from the step's loss (MoMo's tau): read after it then.
    size_known_before = reports_step_size and not rules.requires_loss(optimizer)
    autocast_dtype = PRECISIONS[precision]
    # float16's narrow range needs loss scaling; GradScaler works for any device type with
    # float16 autocast, the CPU included.
    scaler = torch.amp.GradScaler(device.type) if precision == "float16" else None
    # The safe-step policy (steepest.lr.SafeStep) for NaN losses and loss spikes, when asked.
    guard = None
    if on_nonfinite is not None or on_spike is not None or (safety or {}).get("on_too_large"):
        from steepest.lr import SafeStep

        guard = SafeStep(
            optimizer,
            # (a guard asked for spikes or the rate keeps the default for a non-finite loss: stop)
            on_nonfinite="stop" if on_nonfinite is None else on_nonfinite,
            on_spike=on_spike,
            scaler=scaler,
            **dict(safety or {}),
        )
    # The length of every fifth step; a guard that diagnoses the rate measures every step it
    # takes already, and fit reads its measurement instead of copying the parameters again.
    guard_measures = guard is not None and guard.on_too_large is not None
    steps_measured = None
    if track_grad_norm and not guard_measures:
        from steepest.lr import UpdateTracker

        steps_measured = UpdateTracker(optimizer)

    # A fresh context per forward pass; float32 needs none at all.
    autocast: Callable[[], Any] = (
        nullcontext if autocast_dtype is None else partial(torch.autocast, device.type, dtype=autocast_dtype)
    )

    try:
        micro_batches_per_epoch: int | None = len(train_batches)
    except TypeError:
        micro_batches_per_epoch = None
    steps_per_epoch = (
        None if micro_batches_per_epoch is None else math.ceil(micro_batches_per_epoch / accumulate)
    )
    planned = [max_steps] if max_steps is not None else []
    if epochs is not None and steps_per_epoch is not None:
        planned.append(epochs * steps_per_epoch)
    total_steps = min(planned) if planned else None

    config = {
        "optimizer": optimizer if isinstance(optimizer, str) else type(optimizer).__name__,
        "lr": lr if lr is None or isinstance(lr, (int, float)) else repr(lr),
        "epochs": epochs,
        "max_steps": max_steps,
        "batch_size": batch_size,
        "eval_every": eval_every,
        "clip_norm": clip_norm,
        "accumulate": accumulate,
        "precision": precision,
        "compile": compile,
        "checkpoint_dir": None if checkpoint_dir is None else str(checkpoint_dir),
        "checkpoint_every": checkpoint_every,
        "keep_last": keep_last,
        "seed": seed,
        "device": str(device),
        "metrics": list(metrics),
    }
    trainer = Trainer(model, optimizer, scaler, config, total_steps, callbacks)

    # -- the loop's own state: everything a checkpoint must hold ------------------------------
    epochs_done = 0  # epochs finished
    batches_done = 0  # micro-batches consumed in the current epoch
    elapsed_before = 0.0  # seconds spent by earlier parts of a resumed run
    train_loss_sum, train_steps = 0.0, 0  # since the last evaluation (the fun without val_data)
    stopped_by: str | None = None
    success = False
    ended_by_limit = False  # stopped by epochs or max_steps (a resume may extend them)
    epoch_start_rng: dict[str, Any] = {}

    def loop_state() -> dict[str, Any]:
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": None if scaler is None else scaler.state_dict(),
            "loop": {
                "step": trainer.step,
                "epoch": trainer.epoch,
                "epochs_done": epochs_done,
                "batches_done": batches_done,
                "elapsed": clock(),
                "train_loss_sum": train_loss_sum,
                "train_steps": train_steps,
                "stopped_by": stopped_by,
                "success": success,
                "ended_by_limit": ended_by_limit,
            },
            "epoch_start_rng": epoch_start_rng,
            "rng": checkpoints.capture_rng_states(train_batches.generator),
            "stopping": stopping.state_dict() if hasattr(stopping, "state_dict") else None,
            "safety": None if guard is None else guard.state_dict(),
            # where a backoff goes back to: without it a resumed run rolls back elsewhere
            "safety_snapshots": None if guard is None else guard.snapshots_state(),
            "callbacks": {
                _callback_name(callback): callback.state_dict()
                for callback in trainer.callbacks
                if hasattr(callback, "state_dict")
            },
            "history": [asdict(record) for record in trainer.history],
            "evaluations": [asdict(record) for record in trainer.evaluations],
            "config": config,
            # with lr="auto", what was chosen: a resumed run continues with it
            "lr_choice": None if lr_choice is None else lr_choice.to_dict(),
        }

    def save() -> None:
        if checkpoint_dir is None:
            return
        path = checkpoints.save_checkpoint(loop_state(), checkpoint_dir, trainer.step, keep_last)
        trainer.notify("on_checkpoint", path)

    # -- resume (the checkpoint was read and matched to the arguments above) -------------------
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        if scaler is not None and resumed["scaler"] is not None:
            scaler.load_state_dict(resumed["scaler"])
        if resumed["stopping"] is not None and hasattr(stopping, "load_state_dict"):
            stopping.load_state_dict(resumed["stopping"])
        if guard is not None and resumed.get("safety") is not None:
            guard.load_state_dict(resumed["safety"])
            if resumed.get("safety_snapshots") is not None:
                guard.load_snapshots_state(resumed["safety_snapshots"])
        for callback in trainer.callbacks:
            name = _callback_name(callback)
            if hasattr(callback, "load_state_dict") and name in resumed["callbacks"]:
                callback.load_state_dict(resumed["callbacks"][name])
        saved = resumed["loop"]
        trainer.step, trainer.epoch = saved["step"], saved["epoch"]
        epochs_done, batches_done = saved["epochs_done"], saved["batches_done"]
        elapsed_before = saved["elapsed"]
        train_loss_sum, train_steps = saved["train_loss_sum"], saved["train_steps"]
        # A run that ended at its epoch or step limit continues when resumed with a larger one;
        # one a criterion, a callback or divergence ended stays ended.
        if not saved["ended_by_limit"]:
            stopped_by, success = saved["stopped_by"], saved["success"]
        epoch_start_rng = resumed["epoch_start_rng"]
        trainer.history = [StepRecord(**record) for record in resumed["history"]]
        trainer.evaluations = [EvalRecord(**record) for record in resumed["evaluations"]]

    started = time.perf_counter()

    def clock() -> float:
        return elapsed_before + time.perf_counter() - started

    def evaluate_now() -> EvalRecord:
        """Score the model, record and announce the evaluation.

        Callers put a schedule-free optimizer in eval mode first (``rules.evaluation_mode``):
        the validation data and the ``on_evaluate`` callbacks see the average x it returns.
        """
        nonlocal train_loss_sum, train_steps
        if val_batches is not None:
            scores = _evaluate(model, val_batches, loss_function, metrics, device, autocast)
        else:
            last = trainer.history[-1].loss if trainer.history else math.nan
            scores = {"train_loss": train_loss_sum / train_steps if train_steps else last}
        train_loss_sum, train_steps = 0.0, 0
        record = EvalRecord(step=trainer.step, epoch=trainer.epoch, metrics=scores, elapsed=clock())
        trainer.evaluations.append(record)
        trainer.notify("on_evaluate", record)
        return record

    def evaluate_and_check_stopping() -> None:
        """Evaluate; ask the stopping criteria; restore the best parameters if they say so.

        A schedule-free optimizer is in eval mode for both, so that a best-parameter snapshot
        (patience's restore_best) is of the average x that was evaluated, not of y.
        """
        nonlocal stopped_by, success
        with rules.evaluation_mode(optimizer):
            record = evaluate_now()
            if stopping is None:
                return
            fun = record.metrics.get("val_loss", record.metrics.get("train_loss", math.nan))
            last_norm = trainer.history[-1].grad_norm if trainer.history else None
            observation = stopping_criteria.Observation(
                iteration=trainer.step,
                fun=fun,
                grad_norm=last_norm,
                elapsed=record.elapsed,
                params=lambda: list(model.parameters()),
                metrics=record.metrics,
            )
            decision = stopping(observation)
        if decision is not None:
            stopped_by, success = decision.reason, bool(decision.success)
            if getattr(decision, "best_params", None) is not None and rules.has_modes(optimizer):
                # The snapshot is an x: it goes back in eval mode, where the parameters mean x
                # (copied in train mode it would be read as a y, and eval() would turn it into
                # (x_best - (1-b) z) / b). The optimizer stays in eval mode, its z as it is:
                # (x_best, z) is a valid state whose average is x_best, and the run ends here.
                optimizer.eval()
            if decision.restore_best(list(model.parameters())):
                evaluate_now()  # the final metrics are those of the restored parameters

    # -- the loop: epochs of steps of micro-batches ---------------------------------------------
    ctrl_c = _CtrlC()  # Ctrl-C finishes the current step, then the run ends with a checkpoint
    loss_checked = False
    try:
        trainer.notify("on_fit_start")
        model.train()
        if stopped_by is None and rules.has_modes(optimizer):
            # Gradients are taken in train mode: an optimizer an earlier fit left in eval mode
            # trains again. (A resumed run that a criterion ended, saved in eval mode after
            # restoring its best parameters, takes no step and keeps them bit for bit.)
            optimizer.train()
        tick = time.perf_counter()
        while stopped_by is None:
            if epochs is not None and epochs_done >= epochs:
                stopped_by, success, ended_by_limit = f"completed epochs={epochs}", True, True
                break
            if max_steps is not None and trainer.step >= max_steps:
                stopped_by, success, ended_by_limit = f"reached max_steps={max_steps}", True, True
                break
            trainer.epoch = epochs_done + 1
            if resumed is not None and batches_done == 0:
                # Resuming at an epoch boundary: continue from the random state of the checkpoint.
                checkpoints.restore_rng_states(resumed["rng"], train_batches.generator)
                resumed = None
            if batches_done == 0:
                # Remember the random state the epoch's order is drawn from, so that a resumed
                # run can draw the same order again.
                epoch_start_rng = {
                    "torch": torch.get_rng_state(),
                    "generator": (
                        None if train_batches.generator is None else train_batches.generator.get_state()
                    ),
                }
                epoch_batches = train_batches.start_epoch()
            else:
                # Resuming mid-epoch: replay the epoch's draw, skip the batches already trained
                # on, then continue from the random state of the checkpoint.
                torch.set_rng_state(epoch_start_rng["torch"])
                if train_batches.generator is not None and epoch_start_rng["generator"] is not None:
                    train_batches.generator.set_state(epoch_start_rng["generator"])
                epoch_batches = train_batches.start_epoch(skip=batches_done)
                checkpoints.restore_rng_states(resumed["rng"], train_batches.generator)
                resumed = None

            for micro_batches in _groups(epoch_batches, accumulate):
                # Forward and backward over the step's micro-batches; each mean loss is weighted by
                # its share of the step's examples, so the gradient is that of the whole step's mean.
                # (On a small model every call made per step shows in the steps per second, so
                # the common case, one micro-batch already on the device, makes as few as it can.)
                accumulating = len(micro_batches) > 1
                examples = (
                    sum(len(targets) for _, targets in micro_batches)
                    if accumulating
                    else len(micro_batches[0][1])
                )
                step_loss: Tensor | None = None
                for inputs, targets in micro_batches:
                    if transfer:
                        inputs, targets = (
                            inputs.to(device, non_blocking=True),
                            targets.to(device, non_blocking=True),
                        )
                    with autocast():
                        micro_loss = loss_function(forward(inputs), targets)
                    if not loss_checked:  # once: what the loss function returns does not change
                        _check_loss_value(micro_loss)
                        loss_checked = True
                    if accumulating:
                        micro_loss = micro_loss * (len(targets) / examples)
                    (micro_loss if scaler is None else scaler.scale(micro_loss)).backward()
                    # The step's loss is summed as a tensor and read once, below. It starts from
                    # the first micro-batch's loss, not from a zeros tensor.
                    micro_loss = micro_loss.detach()
                    if autocast_dtype is not None:
                        micro_loss = micro_loss.float()
                    step_loss = micro_loss if step_loss is None else step_loss + micro_loss

                # The update: clipping happens inside the optimizer's step (its clip_norm), after
                # the GradScaler unscaled the gradients.
                lr_used = float(optimizer.param_groups[0]["lr"])
                size_before = float(optimizer.effective_lr[0]) if size_known_before else None
                grad_norm: float | None = None
                if clip_in_loop or (track_grad_norm and clip_norm is None):
                    if scaler is not None:
                        scaler.unscale_(optimizer)
                    with_grads = [
                        p for group in optimizer.param_groups for p in group["params"] if p.grad is not None
                    ]
                    if clip_in_loop:
                        grad_norm = float(torch.nn.utils.clip_grad_norm_(with_grads, clip_norm))
                    else:
                        grad_norm = float(clipping.global_norm([p.grad for p in with_grads]))
                verdict = None
                measuring = steps_measured is not None and (trainer.step + 1) % STEP_LENGTH_EVERY == 0
                if measuring:
                    steps_measured.snapshot()
                if guard is not None:
                    # the safe-step policy checks the loss, then steps (or skips, or backs off);
                    # it is handed the (unscaled, unclipped) gradient norm when one was computed
                    verdict = guard.step(step_loss, grad_norm=grad_norm)
                elif scaler is None:  # (a rule that reads the loss, MoMo, is handed it)
                    optimizer.step(**rules.loss_keywords(optimizer, step_loss))
                else:
                    scaler.step(optimizer, **rules.loss_keywords(optimizer, step_loss))
                    scaler.update()
                optimizer.zero_grad(set_to_none=True)
                if clip_norm is not None and not clip_in_loop:
                    grad_norm = optimizer.last_grad_norm
                clipped = clip_norm is not None and grad_norm is not None and grad_norm > clip_norm
                update_norm = None
                if measuring:
                    update_norm = steps_measured.norm()
                elif guard_measures:
                    update_norm = guard.last_update_norm
                if verdict is not None and verdict.action != "step":
                    update_norm = None  # skipped, rolled back or stopped: not the rule's step

                trainer.step += 1
                batches_done += len(micro_batches)
                loss_value = float(step_loss)
                train_loss_sum, train_steps = train_loss_sum + loss_value, train_steps + 1
                now = time.perf_counter()
                record = StepRecord(
                    step=trainer.step,
                    epoch=trainer.epoch,
                    batch_in_epoch=math.ceil(batches_done / accumulate),
                    loss=loss_value,
                    lr=lr_used,
                    grad_norm=grad_norm,
                    clipped=clipped,
                    examples=examples,
                    examples_per_second=examples / max(now - tick, 1e-9),
                    elapsed=clock(),
                    total_steps=total_steps,
                    update_norm=update_norm,
                )
                if verdict is not None and verdict.action != "step":
                    record.extra["safety"] = f"{verdict.action}: {verdict.reason}"
                if reports_step_size:
                    # the step size a learning-rate-free rule took (MoMo's tau, Prodigy's d lr),
                    # where ``lr`` is only its cap or factor: logged, shown and plotted with the rest
                    took = size_before if size_known_before else optimizer.effective_lr[0]
                    record.extra["effective_lr"] = float(took)
                trainer.history.append(record)
                trainer.notify("on_step_end", record)

                if verdict is not None and verdict.should_stop:
                    # (a non-finite loss is a divergence whichever policy stopped on it: the
                    # default, or "stop" asked for by name; read by steepest train's exit code)
                    kind = "diverged" if verdict.event == "nonfinite" else "the safe-step policy stopped"
                    stopped_by = f"{kind}: {verdict.reason} (safe-step policy)"
                elif guard is None and not math.isfinite(loss_value):
                    stopped_by = f"diverged: the training loss is {loss_value} at step {trainer.step}"
                elif eval_every != "epoch" and trainer.step % eval_every == 0:
                    evaluate_and_check_stopping()
                if stopped_by is None and max_steps is not None and trainer.step >= max_steps:
                    stopped_by, success, ended_by_limit = f"reached max_steps={max_steps}", True, True
                if stopped_by is None and trainer.stop_requested:
                    stopped_by = "a callback (stop_requested)"
                if stopped_by is None and ctrl_c.pressed:
                    # the step is complete: end here with a checkpoint; --resume continues
                    stopped_by, ended_by_limit = f"interrupted by Ctrl-C at step {trainer.step}", True
                if (
                    stopped_by is None
                    and checkpoint_every != "epoch"
                    and trainer.step % checkpoint_every == 0
                ):
                    save()
                if stopped_by is not None:
                    break
                tick = time.perf_counter()
            else:
                # The epoch ran to its end.
                if batches_done == 0:
                    # Data of unknown length that yields no batch: without a step, another epoch
                    # would follow, and another, forever.
                    if trainer.step == 0:
                        raise ValueError("data holds no examples: its first epoch yielded no batch")
                    stopped_by = f"the data ran out: epoch {trainer.epoch} yielded no batch"
                    break
                epochs_done += 1
                batches_done = 0
                if eval_every == "epoch":
                    evaluate_and_check_stopping()
                if stopped_by is None and checkpoint_every == "epoch":
                    save()
                tick = time.perf_counter()
    except BaseException:
        if trainer.step == 0:
            before.restore()
        raise
    finally:
        ctrl_c.restore()

    # -- the end: a last checkpoint, final metrics, the result -----------------------------------
    # The checkpoint comes before eval(): like every checkpoint of the run it holds a
    # schedule-free optimizer in train mode (y exactly, where a resumed run continues; a
    # train() after eval() would give y only up to rounding). Only a run whose best
    # parameters were restored is saved in eval mode, and it stays ended when resumed.
    # It also comes before a final evaluation off the evaluation cadence (a step limit,
    # Ctrl-C): that one is for this result only. In the checkpoint, its record, its reset of
    # the running train loss and its on_evaluate callbacks (a plateau report) made a resumed
    # run differ from one never stopped.
    save()  # a resumed finished run returns at once instead of training further
    if not trainer.evaluations or trainer.evaluations[-1].step != trainer.step:
        with rules.evaluation_mode(optimizer):
            evaluate_now()
    if rules.has_modes(optimizer):
        # The schedulefree convention: eval() before evaluating or saving the model. The
        # returned model holds the average x, that the final metrics are of.
        optimizer.eval()
    result = FitResult(
        history=trainer.history,
        evaluations=trainer.evaluations,
        metrics=dict(trainer.evaluations[-1].metrics),
        stopped_by=stopped_by,
        success=success,
        steps=trainer.step,
        epochs=trainer.epoch,
        seconds=clock(),
        model=model,
        lr_choice=lr_choice,
    )
    trainer.notify("on_fit_end", result)
    return result
