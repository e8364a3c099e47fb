"""The job behind ``steepest train``: configuration in, a complete run folder out.

Read top to bottom: resolve and validate the whole configuration (file, flags, defaults)
before any work; create the run folder (never overwriting one, unless resuming it); load the
data and build the model; choose the learning rate (given, a schedule, or ``"auto"``); train
with :func:`steepest.fit`, logging metrics, progress and the learning-rate regime; score the
held-out test split; write the report.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch
from torch.nn import functional as F

from steepest import lr as learning_rate_tools
from steepest import rules, schedules, stopping
from steepest.init import initialize
from steepest.train.config import (
    ConfigError,
    configure,
    optimizer_options,
    resolve_config,
    validate_config,
)
from steepest.train.data import DataSplits, load_dataset
from steepest.train.fit import StepRecord, Trainer, fit
from steepest.train.loop import DEFAULT_LEARNING_RATES, HEAVY_BALL, OPTIMIZER_CLASS_NAMES, build_schedule
from steepest.train.models import build_model
from steepest.train.progress import Progress
from steepest.train.report import write_report
from steepest.train.runs import (
    MetricsWriter,
    RunFolder,
    TensorBoardWriter,
    create_run_folder,
    open_run_folder,
)

#: Exit codes: a finished run, a run that diverged.
SUCCESS, DIVERGED = 0, 1

PRECISIONS = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


class DiagnoseRegime:
    """Callback: classify the learning-rate regime live and annotate each step's record.

    Feeds :class:`steepest.lr.RegimeMonitor` with every step's loss, gradient norm and rate;
    the latest regime (and, when a window completes, its advice) goes into ``record.extra``
    for the metrics file, the progress display and the report. Its state is checkpointed.
    """

    name = "regime"

    def __init__(self, window: int = 20, say: Callable[[str], None] | None = None) -> None:
        self.monitor = learning_rate_tools.RegimeMonitor(window=window)
        self.say = say
        self._last_regime: str | None = None

    def on_step_end(self, trainer: Trainer, record: StepRecord) -> None:
        diagnosis = self.monitor.observe(
            record.step, record.loss, grad_norm=record.grad_norm, lr=record.lr, update_norm=record.update_norm
        )
        if self.monitor.latest is not None:
            record.extra["regime"] = self.monitor.latest.regime
        if diagnosis is not None and diagnosis.regime != "good":
            record.extra["advice"] = diagnosis.advice
            if self.say is not None and diagnosis.regime != self._last_regime:
                self.say(f"step {record.step}: {diagnosis.advice}")
        if diagnosis is not None:
            self._last_regime = diagnosis.regime

    def state_dict(self) -> dict[str, Any]:
        return self.monitor.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.monitor.load_state_dict(state)


def resolve(flags: Mapping[str, Any], config_path: str | None, resume: str | None) -> dict[str, Any]:
    """The validated configuration, before any work.

    Resuming reads the run folder's saved configuration as the file layer, so a resumed run
    continues with the settings it started with unless a flag says otherwise.
    """
    if resume is not None:
        return validate_config(resolve_config(open_run_folder(resume).read_config(), dict(flags)))
    return configure(dict(flags), config_path)


def run_folder(config: Mapping[str, Any], resume: str | None, overwrite: bool = False) -> RunFolder:
    """The run folder: a new one (over an existing one only with ``overwrite``), or the one
    being resumed."""
    if resume is not None:
        folder = open_run_folder(resume)
        return create_run_folder(folder.path.parent, folder.path.name, config, resume=True)
    return create_run_folder(config["runs_dir"], config["name"], config, overwrite=overwrite)


def choose_learning_rate(
    config: Mapping[str, Any],
    model: torch.nn.Module,
    data: DataSplits,
    folder: RunFolder,
    total_steps: int,
    say: Callable,
) -> tuple[str, Any]:
    """The optimizer name and its ``lr`` argument: a schedule peaking at the chosen rate.

    ``lr = "auto"`` asks :func:`steepest.lr.choose_lr` (a range test, or a learning-rate-free
    method: Prodigy for the Adam family, MoMo for SGD on a network with more parameters than
    examples), says what it chose and why, and records it in the run folder.
    """
    name, options = config["optimizer"], optimizer_options(config)
    if config["lr"] == "auto":
        choice = learning_rate_tools.choose_lr(
            model,
            data.train,
            name,
            options=options,
            loss_fn=loss_function(data),
            batch_size=config["batch_size"],
            seed=config["seed"],
        )
        say(f"lr auto: {choice}")
        record = {
            "lr": choice.lr,
            "method": choice.method.__name__,
            "options": choice.options,
            "policy": choice.policy,
            "reason": choice.reason,
        }
        (folder.path / "lr_choice.json").write_text(json.dumps(record, indent=2) + "\n")
        optimizer: Any = partial(choice.method, **choice.options)
        peak = choice.lr
    else:
        optimizer = configured_optimizer(config)
        peak = config["lr"] if config["lr"] is not None else default_learning_rate(config)
    return optimizer, build_schedule(config["schedule"], peak, config["warmup"], total_steps)


def configured_optimizer(config: Mapping[str, Any]) -> str | partial:
    """The optimizer a configuration names, with the keyword arguments it sets: ``"adamw"``, or
    ``partial(SGD, momentum=0.9)`` (what :func:`steepest.fit` and the range test take)."""
    options = optimizer_options(config)
    if not options:
        return config["optimizer"]
    return partial(rules.by_name(OPTIMIZER_CLASS_NAMES[config["optimizer"]]), **options)


def default_learning_rate(config: Mapping[str, Any]) -> float:
    """The rate a run takes when ``lr`` is not set: ``DEFAULT_LEARNING_RATES``, tuned without
    momentum, times (1 - momentum) for a heavy-ball momentum (sgd, rmsprop): its steps add up to
    lr / (1 - momentum) times a steady gradient, so the product keeps the step the default was
    tuned for.

    Example:
        >>> round(default_learning_rate({"optimizer": "sgd", "momentum": 0.9}), 6)
        0.03
    """
    name = config["optimizer"]
    rate = DEFAULT_LEARNING_RATES.get(name, 1e-3)
    if name in HEAVY_BALL:
        rate *= 1.0 - (config.get("momentum") or 0.0)
    return rate


def _describe(optimizer: Any) -> str:
    """``"SGD (momentum=0.9)"`` for ``partial(SGD, momentum=0.9)``; a name as it is."""
    if not isinstance(optimizer, partial):
        return str(optimizer)
    settings = ", ".join(f"{name}={value!r}" for name, value in optimizer.keywords.items())
    return f"{optimizer.func.__name__} ({settings})" if settings else optimizer.func.__name__


def loss_function(data: DataSplits) -> Callable[..., torch.Tensor]:
    """The run's loss: cross-entropy for a classification, the mean squared error otherwise."""
    return F.cross_entropy if data.task == "classification" else F.mse_loss


def stopping_criteria(config: Mapping[str, Any]) -> Any:
    """``patience`` on the validation loss and ``target`` on the validation accuracy, if set."""
    criteria = []
    if config["patience"]:
        criteria.append(stopping.patience(config["patience"], monitor="val_loss", restore_best=True))
    if config["target"] is not None:
        criteria.append(stopping.target(config["target"], monitor="val_accuracy", mode="max"))
    return stopping.any_of(*criteria) if criteria else None


def test_metrics(model: torch.nn.Module, data: DataSplits) -> dict[str, float]:
    """Loss (and accuracy) on the held-out test split, touched once, at the very end."""
    inputs, targets = data.test
    model.eval()
    with torch.no_grad():
        outputs = model(inputs)
    if data.task == "classification":
        return {
            "test_loss": float(F.cross_entropy(outputs, targets)),
            "test_accuracy": float((outputs.argmax(dim=1) == targets).float().mean()),
        }
    return {"test_loss": float(F.mse_loss(outputs.reshape(targets.shape), targets))}


def run(
    flags: Mapping[str, Any],
    config_path: str | None = None,
    resume: str | None = None,
    overwrite: bool = False,
    say: Callable[[str], None] = print,
) -> int:
    """Run ``steepest train`` with the given flags; return the exit code.

    ``overwrite`` replaces an existing run folder of the configured name (a new run only).
    """
    if overwrite and resume is not None:
        raise ConfigError("--overwrite starts afresh and --resume continues: pass one of them")
    config = resolve(flags, config_path, resume)
    try:  # data and model come before the run folder: a mistake here leaves nothing behind
        data = load_dataset(config["dataset"], label=config["label_column"], split_seed=0)
        torch.manual_seed(config["seed"])
        model = build_model(config["model"], data)
    except (ValueError, TypeError) as error:
        raise ConfigError(str(error)) from error
    steps_per_epoch = schedules.steps_per_epoch(
        len(data.train[1]), config["batch_size"], accumulation=config["accumulate"]
    )
    total_steps = config["epochs"] * steps_per_epoch
    # the schedule's settings checked now (its peak, maybe lr="auto"'s, comes after the folder)
    build_schedule(config["schedule"], 1.0, config["warmup"], total_steps)
    folder = run_folder(config, resume, overwrite)
    initialize(model, config["init"])
    optimizer, lr = choose_learning_rate(config, model, data, folder, total_steps, say)

    quiet = config["quiet"]
    callbacks: list[Any] = [DiagnoseRegime(say=None if quiet else say)]
    callbacks.append(MetricsWriter(folder.metrics_path, every=config["log_every"]))
    if config["tensorboard"]:
        callbacks.append(TensorBoardWriter(folder.path / "tensorboard"))
    callbacks.append(Progress(mode=config["progress"], quiet=quiet))
    every_epochs = config["eval_every"]
    checkpoint_epochs = config["checkpoint_every"]
    if checkpoint_epochs == 0:
        checkpoint_every: str | int = 2**62  # only the final checkpoint, which fit always writes
    else:
        checkpoint_every = "epoch" if checkpoint_epochs == 1 else checkpoint_epochs * steps_per_epoch
    if not quiet:
        say(f"run folder {folder.path}: {_describe(optimizer)} on {config['model']} / {config['dataset']}")
    result = fit(
        model,
        data.train,
        loss_function(data),
        optimizer=optimizer,
        lr=lr,
        epochs=config["epochs"],
        batch_size=config["batch_size"],
        val_data=data.val,
        eval_every="epoch" if every_epochs == 1 else every_epochs * steps_per_epoch,
        stopping=stopping_criteria(config),
        clip_norm=config["clip_norm"],
        accumulate=config["accumulate"],
        precision=PRECISIONS[config["precision"]],
        compile=config["compile"],
        on_nonfinite=config["on_nonfinite"],
        on_spike=config["on_spike"],
        safety={"on_too_large": config["on_too_large"]} if config["on_too_large"] else None,
        callbacks=callbacks,
        checkpoint_dir=folder.checkpoints_dir,
        checkpoint_every=checkpoint_every,
        keep_last=config["keep_last"],
        resume=resume is not None,
        seed=config["seed"],
        metrics=("accuracy",) if data.task == "classification" else (),
    )
    scores = test_metrics(model, data)
    (folder.path / "test_metrics.json").write_text(json.dumps(scores, indent=2) + "\n")
    write_report([folder.path], folder.report_path)
    if not quiet:
        if "test_accuracy" in scores:
            say(f"test accuracy {scores['test_accuracy']:.2%}")
        else:
            say(f"test loss {scores['test_loss']:.4g}")
        say(f"report {folder.report_path}")
    return DIVERGED if str(result.stopped_by).startswith("diverged") else SUCCESS


__all__ = [
    "DiagnoseRegime",
    "configured_optimizer",
    "default_learning_rate",
    "resolve",
    "run",
    "run_folder",
    "test_metrics",
]
