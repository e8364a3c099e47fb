"""The job behind ``steepest train``: configuration in, a complete run folder out.

Read top to bottom: resolve and validate the whole configuration (file, flags, defaults)
before any work; create the run folder (never overwriting one, unless resuming it); load the
data and build the model; choose the learning rate (given, a schedule, or ``"auto"``); train
with :func:`steepest.fit`, logging metrics, progress and the learning-rate regime; score the
held-out test split; write the report.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from steepest import lr as learning_rate_tools
from steepest import rules, schedules, stopping
from steepest.init import initialize
from steepest.train import checkpoint as checkpoints
from steepest.train.config import (
    OPTIONS_BY_NAME,
    ConfigError,
    configure,
    optimizer_options,
    resolve_config,
    validate_config,
)
from steepest.train.data import DataSplits, load_dataset
from steepest.train.fit import (
    StepRecord,
    Trainer,
    build_optimizer,
    choose_lr_for_run,
    fit,
)
from steepest.train.loop import (
    DEFAULT_LEARNING_RATES,
    HEAVY_BALL,
    OPTIMIZER_CLASS_NAMES,
    WARMUP_SCHEDULES,
    build_schedule,
)
from steepest.train.models import build_model
from steepest.train.progress import Progress
from steepest.train.report import write_report
from steepest.train.runs import (
    END,
    LR_CHOICE_FILE,
    MetricsWriter,
    RunFolder,
    TensorBoardWriter,
    check_new_run_folder,
    check_resumable,
    create_run_folder,
    open_run_folder,
    read_records,
)

#: Exit codes: a finished run, a run that diverged.
SUCCESS, DIVERGED = 0, 1

PRECISIONS = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}

#: Settings a resumed run may change: how long it trains and what it records. Every other one
#: shapes the numbers its checkpoint holds (or how they are read back), so a resume with another
#: value would not continue the same run, or would fail halfway through loading it.
RESUMABLE_SETTINGS = frozenset(
    {"epochs", "log_every", "checkpoint_every", "keep_last", "tensorboard", "progress", "quiet", "label"}
)


class DiagnoseRegime:
    """Callback: classify the learning-rate regime live and annotate each step's record.

    Feeds :class:`steepest.lr.RegimeMonitor` with every step's loss, gradient norm and rate;
    the latest regime goes into ``record.extra`` for the metrics file, the progress display and
    the report, and so does, on the step that completes a window, that window's advice (the
    verdict, "looks good" included: metrics.jsonl always logs that step). ``say`` announces a
    change to a regime other than good (from the monitor's previous diagnosis, which its
    checkpointed state holds: a resumed run does not announce it again).
    """

    name = "regime"

    def __init__(self, window: int = 20, say: Callable[[str], None] | None = None) -> None:
        self.monitor = learning_rate_tools.RegimeMonitor(window=window)
        self.say = say

    def on_step_end(self, trainer: Trainer, record: StepRecord) -> None:
        previous = self.monitor.latest  # the verdict announced last, or found good
        diagnosis = self.monitor.observe(
            record.step, record.loss, grad_norm=record.grad_norm, lr=record.lr, update_norm=record.update_norm
        )
        if self.monitor.latest is not None:
            record.extra["regime"] = self.monitor.latest.regime
        if diagnosis is None:
            return
        record.extra["advice"] = diagnosis.advice
        if self.say is not None and diagnosis.regime != "good":
            if previous is None or diagnosis.regime != previous.regime:
                self.say(f"step {record.step}: {diagnosis.advice}")

    def state_dict(self) -> dict[str, Any]:
        return self.monitor.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.monitor.load_state_dict(state)


def resolve(flags: Mapping[str, Any], config_path: str | None, resume: str | None) -> dict[str, Any]:
    """The validated configuration, before any work.

    Resuming reads the run folder's saved configuration: a resumed run continues with the
    settings it started with. Flags may change only ``RESUMABLE_SETTINGS`` (``--epochs`` to
    extend it, what it records); one that contradicts the run, ``--config``, ``--name`` and
    ``--runs-dir`` are refused.
    """
    if resume is None:
        return configure(dict(flags), config_path)
    given = {key: value for key, value in flags.items() if value is not None}
    if config_path is not None:
        raise ConfigError(
            f"--config cannot be used with --resume: {resume} continues with its own config.toml"
        )
    for name in ("name", "runs_dir"):
        if name in given:
            raise ConfigError(
                f"{OPTIONS_BY_NAME[name].flag} cannot be used with --resume: the run folder {resume} "
                "keeps its own name and place"
            )
    folder = open_run_folder(resume)
    saved_values = check_resumable(folder)
    saved = validate_config(resolve_config(saved_values, {}), saved_values, folder.config_path)
    config = validate_config(resolve_config(saved, given))
    for name, value in given.items():
        if name not in RESUMABLE_SETTINGS and config[name] != saved[name]:
            was = "with its default" if saved[name] is None else f"with {saved[name]}"
            raise ConfigError(
                f"cannot resume {folder.path} with {OPTIONS_BY_NAME[name].flag} {value}: the run was "
                f"trained {was}"
            )
    saved_place = Path(str(saved["runs_dir"])) / str(saved["name"])
    if saved["name"] is None or saved_place.resolve() != folder.path.resolve():
        # The folder was moved or renamed since: record where the run now is.
        config["name"], config["runs_dir"] = folder.name, str(folder.path.parent)
    return config


def check_warmup(config: Mapping[str, Any]) -> None:
    """A warm-up asked of a schedule that has none would be ignored: refuse it (a new run only:
    a run folder written before this check keeps resuming)."""
    if config["warmup"] and config["schedule"] not in WARMUP_SCHEDULES:
        raise ConfigError(
            f"warmup = {config['warmup']}: the {config['schedule']} schedule has no warm-up and would "
            f"ignore it (the schedules that have one: {', '.join(WARMUP_SCHEDULES)})"
        )


def _in_settings(error: BaseException, **settings: str) -> str:
    """A library error about its argument (``label='x' is not a column ...``) as one line about
    the setting the user gave (``label_column = 'x' is not a column ...``): the library's
    ``label`` and ``name`` are other settings of ``steepest train`` (the run's label, its
    folder's name)."""
    message = _one_line(error)
    for argument, setting in settings.items():
        for prefix in (f"{argument}=", f"unknown model {argument}="):
            if message.startswith(prefix):
                return f"{setting} = {message[len(prefix):]}"
    return message


def _one_line(error: BaseException) -> str:
    """An exception's message as one line (the command line's errors are one line each)."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__


def _warn(message: str) -> None:
    print(f"steepest: warning: {message}", file=sys.stderr, flush=True)


def load_data_and_model(config: Mapping[str, Any]) -> tuple[DataSplits, torch.nn.Module]:
    """The data and the (not yet initialized) model a configuration names.

    A mistake in either is a ``ConfigError``; warnings while loading (a class too small to
    stratify) are printed as one line each, and only when loading succeeds.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            data = load_dataset(config["dataset"], label=config["label_column"], split_seed=0)
        except (ValueError, TypeError, OSError) as error:
            raise ConfigError(_in_settings(error, label="label_column", path="dataset")) from error
        try:
            torch.manual_seed(config["seed"])
            model = build_model(config["model"], data)
        except (ValueError, TypeError, OSError) as error:
            raise ConfigError(_in_settings(error, name="model")) from error
    for message in dict.fromkeys(_one_line(warning.message) for warning in caught):  # type: ignore[arg-type]
        _warn(message)
    return data, model


def check_before_the_folder(config: Mapping[str, Any], data: DataSplits, model: torch.nn.Module,
                            total_steps: int) -> str | None:
    """Everything a run could trip on before its first step, checked before its folder exists.

    The stopping criteria fit the task, the model initializes, the optimizer builds on the
    model's parameters. Returns the optimizer's class name (None for ``lr = "auto"``, which
    chooses its optimizer later).
    """
    if config["target"] is not None and data.task != "classification":
        raise ConfigError(
            f"target = {config['target']!r} stops on the validation accuracy, and {config['dataset']} "
            "is a regression: it has none (use patience)"
        )
    try:
        stopping_criteria(config)
        peak = default_learning_rate(config) if config["lr"] in (None, "auto") else config["lr"]
        lr = build_schedule(config["schedule"], peak, config["warmup"], total_steps)
    except (ValueError, TypeError) as error:
        raise ConfigError(_one_line(error)) from error
    check_model_on_data(config, data, model)
    initialize_model(config, model)
    on_model = f"on model {config['model']}"
    try:  # a throwaway optimizer: fit builds its own
        parameters = list(model.parameters())
        built = build_optimizer(configured_optimizer(config), parameters, lr, config["clip_norm"])
    except (ValueError, TypeError) as error:
        raise ConfigError(f"optimizer {config['optimizer']} {on_model}: {_one_line(error)}") from error
    return None if config["lr"] == "auto" else type(built).__name__


def initialize_model(config: Mapping[str, Any], model: torch.nn.Module) -> None:
    """Initialize ``model``'s weights as ``config["init"]`` says; a mistake is a ConfigError."""
    try:
        initialize(model, config["init"])
    except (ValueError, TypeError, RuntimeError) as error:
        on_model = f"init = {config['init']!r} on model {config['model']}"
        raise ConfigError(f"{on_model}: {_one_line(error)}") from error


def check_model_on_data(config: Mapping[str, Any], data: DataSplits, model: torch.nn.Module) -> None:
    """The model takes a batch of the data and gives what the loss needs, checked on two training
    examples: a user's model that fails there would otherwise fail at the first step, after
    the run folder was made (or, with ``--overwrite``, after the old run was deleted).

    Evaluation mode, no gradient, the random state forked: the model, its buffers (BatchNorm's
    running statistics) and the numbers of the run that follows are left as they were.
    """
    inputs, targets = data.train[0][:2], data.train[1][:2]
    model_name = f"model {config['model']}"
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            outputs = model(inputs)
            if not isinstance(outputs, torch.Tensor):
                raise ConfigError(f"{model_name} returns {type(outputs).__name__}, not a tensor")
            if data.task == "classification":
                expected: tuple[int, ...] = (len(targets), int(data.num_classes or 0))
                what = f"one score per class ({data.num_classes} classes)"
            else:
                expected, what = tuple(targets.shape), "one number per example"
            if tuple(outputs.shape) != expected:
                raise ConfigError(
                    f"{model_name} gives outputs of shape {tuple(outputs.shape[1:])} per example on "
                    f"{config['dataset']}, which needs {what}"
                )
            loss_function(data)(outputs, targets)
    except ConfigError:
        raise
    except Exception as error:  # the user's code: whatever it raises is a mistake in it, named here
        raise ConfigError(
            f"{model_name} fails on a batch of {config['dataset']} (inputs of shape "
            f"{tuple(inputs.shape[1:])}): {type(error).__name__}: {_one_line(error)}"
        ) from error
    finally:
        for module, training in modes:
            module.training = training


def checkpoint_to_resume(
    folder: RunFolder,
    config: Mapping[str, Any],
    model: torch.nn.Module,
    optimizer_class: str | None,
    first_checkpoint_step: int,
) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint a resume of ``folder`` continues from, checked against ``config``.

    None only for a run killed before it reached its first checkpoint: it has nothing to lose,
    and starts again in its folder. A run that had checkpoints and has none usable left is
    refused: starting over would replace what it trained.
    """
    refuse = f"cannot resume {folder.path}"
    skipped: list[str] = []  # said only when an older checkpoint is used: else the error says it
    found = checkpoints.latest_checkpoint(folder.checkpoints_dir, on_skip=skipped.append)
    if found is None:
        records = read_records(folder.metrics_path)
        ended = any(record.get("kind") == END for record in records)
        last_step = max((record.get("step") or 0 for record in records), default=0)
        if checkpoints.list_checkpoints(folder.checkpoints_dir) or ended or last_step > first_checkpoint_step:
            raise ConfigError(
                f"{refuse}: no usable checkpoint in {folder.checkpoints_dir}; start afresh with --overwrite"
            )
        return None
    path, state = found
    taken = state.get("config", {})
    said = f"{refuse}: its config.toml says"
    for key in ("batch_size", "accumulate", "seed"):
        if key in taken and taken[key] != config[key]:
            raise ConfigError(
                f"{said} {key} = {config[key]!r}, its checkpoint {path.name} has {taken[key]!r}"
            )
    if optimizer_class is not None and taken.get("optimizer", optimizer_class) != optimizer_class:
        raise ConfigError(
            f"{said} optimizer = {config['optimizer']!r}, its checkpoint {path.name} was taken with "
            f"{taken['optimizer']}"
        )
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    held = {key: tuple(getattr(value, "shape", ())) for key, value in state.get("model", {}).items()}
    if expected != held:
        raise ConfigError(
            f"{said} model = {config['model']!r} on {config['dataset']!r}, and its checkpoint "
            f"{path.name} holds the parameters of another model"
        )
    for message in skipped:
        _warn(message)
    return found


def run_folder(config: Mapping[str, Any], resume: str | None, overwrite: bool = False) -> RunFolder:
    """The run folder: a new one (over an existing one only with ``overwrite``), or the one
    being resumed."""
    if resume is not None:
        folder = open_run_folder(resume)
        return create_run_folder(folder.path.parent, folder.path.name, config, resume=True)
    return create_run_folder(config["runs_dir"], config["name"], config, overwrite=overwrite)


def replanned_schedule(
    config: Mapping[str, Any], lr: Any, state: Mapping[str, Any], total_steps: int
) -> str | None:
    """A note when a resume with more ``--epochs`` stretches a schedule planned over the run's
    length (cosine, linear, one-cycle, ...): the rate then jumps where the run resumes, and
    the run no longer matches one planned over the new length from the start."""
    history = state["history"]
    if not isinstance(lr, schedules.Schedule) or not history:
        return None
    planned, step = history[-1].get("total_steps"), state["loop"]["step"]
    if planned is None or planned == total_steps:
        return None
    # The last step took the schedule's value at step - 1 (steps count from 1, schedules from 0)
    before, after = history[-1]["lr"], lr(step)
    if math.isclose(lr(step - 1), before, rel_tol=1e-9):
        return None  # the new plan agrees with the steps taken: the schedule ignores the length
    return (
        f"note: --epochs {config['epochs']} re-plans the {config['schedule']} schedule over "
        f"{total_steps} steps (it was planned over {planned}): step {step + 1} takes lr {after:.3g} "
        f"where step {step} took {before:.3g}, so the run will not match one planned for "
        f"{config['epochs']} epochs from the start"
    )


def choose_learning_rate(
    config: Mapping[str, Any],
    model: torch.nn.Module,
    data: DataSplits,
    total_steps: int,
    say: Callable,
    chosen: Any = None,
) -> tuple[Any, Any, Any]:
    """The optimizer, its ``lr`` argument (a schedule peaking at the chosen rate), and for
    ``lr = "auto"`` the :class:`steepest.lr.LRChoice` (recorded in ``lr_choice.json``).

    ``lr = "auto"`` asks :func:`steepest.lr.choose_lr` (a range test, or a learning-rate-free
    method: Prodigy for the Adam family, MoMo for SGD on a network with more parameters than
    examples) on the run's steps (``batch_size * accumulate`` examples, clipped at
    ``clip_norm``), and says what it chose and why unless ``quiet``; ``chosen``, a resumed
    run's choice (:func:`saved_choice`), is taken as it is (the run continues with the rate it
    started with, and no range test runs again).

    The chosen constant rate is the schedule's peak as it is, not the 2x or 3x that lr-find
    advises over its consensus (which runs low): over 10 epochs of the default cosine, RMSprop
    and Lion on the digits MLP and CNN (3 seeds each) ended as accurate or more at the chosen
    rate than at twice it in 10 of 12 runs (Lion on the MLP: 93-95% against 64-94%).
    """
    if config["lr"] != "auto":
        optimizer = configured_optimizer(config)
        peak = config["lr"] if config["lr"] is not None else default_learning_rate(config)
        return optimizer, build_schedule(config["schedule"], peak, config["warmup"], total_steps), None
    if chosen is None:
        chosen = choose_lr_for_run(
            model,
            data.train,
            rules.by_name(config["optimizer"]),
            optimizer_options(config),
            loss_function(data),
            batch_size=config["batch_size"],
            accumulate=config["accumulate"],
            clip_norm=config["clip_norm"],
            seed=config["seed"],
        )
        if not config["quiet"]:
            say(f"lr auto: {chosen}")
    optimizer = partial(chosen.method, **chosen.options)
    lr = build_schedule(config["schedule"], chosen.lr, config["warmup"], total_steps)
    return optimizer, lr, chosen


def saved_choice(
    folder: RunFolder, config: Mapping[str, Any], model: torch.nn.Module, state: Mapping[str, Any] | None
) -> Any:
    """A resumed ``lr = "auto"`` run's choice, from its ``lr_choice.json``, checked in full
    before anything is written: the run continues with it, and never chooses again.

    The file must be there (without it the rate the run trained at is unknown: choosing again
    would train on with another); its ``method`` one steepest knows and, with a checkpoint
    (``state``), the optimizer whose state the checkpoint holds; its ``lr`` a positive finite
    number; its ``options`` ones the optimizer takes (a throwaway one is built on ``model``).

    Raises:
        ConfigError: one line naming the file and what is wrong with it.
    """
    path = folder.path / LR_CHOICE_FILE
    refuse = f"cannot resume {folder.path}"
    if not path.is_file():
        raise ConfigError(
            f"{refuse}: lr = 'auto', and its lr_choice.json, which holds the rate it runs with, is "
            "missing; start afresh with --overwrite"
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # (UnicodeDecodeError and JSONDecodeError are ValueErrors)
        raise ConfigError(f"{refuse}: its lr_choice.json cannot be read: {_one_line(error)}") from None
    taken_with = None if state is None else state.get("config", {}).get("optimizer")
    try:
        asked = rules.by_name(config["optimizer"])
        choice = learning_rate_tools.LRChoice.from_dict(record, asked, taken_with)
        build_optimizer(
            partial(choice.method, **choice.options), list(model.parameters()), choice.lr, config["clip_norm"]
        )
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{refuse}: its lr_choice.json is damaged: {_one_line(error)}") from None
    return choice


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
    # Everything is checked before the run folder is created, deleted (--overwrite) or written
    # (--resume): a mistake leaves no folder behind and an existing one as it was.
    config = resolve(flags, config_path, resume)
    if resume is None:
        check_warmup(config)
        check_new_run_folder(config["runs_dir"], config["name"], overwrite)
    data, model = load_data_and_model(config)
    steps_per_epoch = schedules.steps_per_epoch(
        len(data.train[1]), config["batch_size"], accumulation=config["accumulate"]
    )
    total_steps = config["epochs"] * steps_per_epoch
    optimizer_class = check_before_the_folder(config, data, model, total_steps)
    resume_from: Path | None = None
    resumed_state: dict[str, Any] | None = None
    chosen: Any = None  # a resumed lr = "auto" run keeps the choice it started with
    if resume is not None:
        folder = open_run_folder(resume)
        every = config["checkpoint_every"]
        found = checkpoint_to_resume(
            folder, config, model, optimizer_class, every * steps_per_epoch if every else total_steps
        )
        if config["lr"] == "auto":
            chosen = saved_choice(folder, config, model, None if found is None else found[1])
        if found is not None:
            resume_from, resumed_state = found
            epochs_done = resumed_state["loop"]["epochs_done"]
            if epochs_done >= config["epochs"]:
                if flags.get("epochs") is not None:
                    raise ConfigError(
                        f"the run {folder.path} has already trained {epochs_done} epochs; "
                        "--epochs must be more to continue it"
                    )
                if not config["quiet"]:
                    say(f"{folder.path} has trained all its {epochs_done} epochs: --epochs N trains more")
                return SUCCESS
        checkpoints.remove_temporary_files(folder.checkpoints_dir)
    # lr = "auto" chooses before the folder exists (a failed choice leaves nothing behind)
    optimizer, lr, chosen = choose_learning_rate(config, model, data, total_steps, say, chosen)
    replanned = None if resumed_state is None else replanned_schedule(config, lr, resumed_state, total_steps)
    if replanned is not None and not config["quiet"]:
        say(replanned)
    folder = run_folder(config, resume, overwrite)
    if chosen is not None and resume is None:  # (a resumed run's is the one it read)
        (folder.path / LR_CHOICE_FILE).write_text(json.dumps(chosen.to_dict(), indent=2) + "\n")

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
        resume=resume_from if resume_from is not None else False,
        seed=config["seed"],
        metrics=("accuracy",) if data.task == "classification" else (),
        # the regime diagnosis reads the gradient norm and the step's length: measured on every
        # device (fit's default measures them on the CPU only; on CUDA the diagnosis had the
        # loss alone, and read a network killed by too large a rate as ~1000x too small)
        track_grad_norm=True,
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
