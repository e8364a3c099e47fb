"""Run folders: where one training run keeps its configuration, metrics, checkpoints and report.

Layout of ``runs/<name>/``::

    config.toml      the resolved configuration (``steepest.train.config.dump_config``)
    lr_choice.json   with ``lr = "auto"``: the method and rate chosen, why, and what choosing cost
    metrics.jsonl    one JSON object per logged step, and one per evaluation ({"kind": "eval"})
    checkpoints/     the fit loop's checkpoints
    report.html      ``steepest report``; plots as PNG beside it

A run folder is never overwritten: starting a new run under an existing name is an error, and
only ``resume=True`` writes into an existing folder. ``metrics.jsonl`` is written one flushed
line at a time, so a run that crashes keeps every line it logged.

Example:
    >>> folder = create_run_folder("runs", None, {"optimizer": "adamw"})  # doctest: +SKIP
    >>> writer = MetricsWriter(folder.metrics_path, every=10)             # doctest: +SKIP
    >>> steepest.fit(..., callbacks=[writer])                             # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from steepest.train.config import ConfigError, dump_config, load_config

CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
REPORT_FILE = "report.html"
#: What ``steepest train --lr auto`` chose (``LRChoice.to_dict``), beside config.toml.
LR_CHOICE_FILE = "lr_choice.json"

#: ``kind`` of the lines of metrics.jsonl. A line without ``kind`` is a step.
STEP, EVAL, END = "step", "eval", "end"


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run folder; ``RunFolder(Path("runs/x")).metrics_path`` -> runs/x/metrics.jsonl."""

    path: Path

    @property
    def name(self) -> str:
        """The run's name: the folder's name."""
        return self.path.name

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def report_path(self) -> Path:
        return self.path / REPORT_FILE

    def holds_a_run(self) -> bool:
        """Whether the folder holds what a run writes (metrics.jsonl or checkpoints/): the test
        before resuming in it or deleting it for ``--overwrite``."""
        return self.metrics_path.is_file() or self.checkpoints_dir.is_dir()

    def read_config(self) -> dict[str, Any]:
        """The run's saved ``config.toml`` (empty if it has none)."""
        return load_config(self.config_path) if self.config_path.is_file() else {}


def timestamped_name(optimizer: str | None = None, now: float | None = None) -> str:
    """A run name from the local time and the optimizer, e.g. ``2026-11-23_09-41-07-adamw``.

    Two runs started in the same second get the same text: ``create_run_folder`` makes it
    unique by adding ``-2``, ``-3``...
    """
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(now))
    return f"{stamp}-{optimizer.lower()}" if optimizer else stamp


def create_run_folder(
    runs_dir: str | Path,
    name: str | None,
    config: Mapping[str, Any],
    resume: bool = False,
    overwrite: bool = False,
) -> RunFolder:
    """Create ``runs_dir/name`` (or reopen it when resuming) and save ``config`` as config.toml.

    Args:
        runs_dir: the folder holding run folders (created if missing).
        name: the run folder's name; None makes a timestamped one, unique even when several
            runs start in the same second.
        config: the resolved configuration, saved as ``config.toml``.
        resume: reopen an existing folder: its config.toml is replaced by ``config`` (the
            settings the resumed run now uses) and nothing else is touched.
        overwrite: a new run whose named folder exists deletes it and starts afresh there;
            only a run folder (:meth:`RunFolder.holds_a_run`) is deleted, never another
            folder that happens to have the name.

    Raises:
        ConfigError: a new run whose folder exists (without ``overwrite``, or not a run
            folder), or a resumed run whose folder does not.

    Example:
        >>> folder = create_run_folder("runs", "sgd-0.1", {"optimizer": "sgd"})  # doctest: +SKIP
        >>> folder.path
        PosixPath('runs/sgd-0.1')
    """
    runs_dir = Path(runs_dir)
    if resume:
        if name is None:
            raise ConfigError("resuming needs the run folder's name")
        folder = RunFolder(runs_dir / name)
        if not folder.holds_a_run():
            raise ConfigError(f"cannot resume {folder.path}: it is not a run folder")
        folder.checkpoints_dir.mkdir(exist_ok=True)
        _write_atomically(folder.config_path, dump_config(config))
        return folder

    check_new_run_folder(runs_dir, name, overwrite)
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create --runs-dir {runs_dir}: {error.strerror or error}") from None
    if name is not None:
        path = runs_dir / name
        if overwrite and path.exists():
            shutil.rmtree(path)
        try:
            path.mkdir()  # atomic: of two runs racing for one name, exactly one wins
        except FileExistsError:
            raise ConfigError(_exists_message(path)) from None
        except OSError as error:
            raise ConfigError(f"cannot create run folder {path}: {error.strerror or error}") from None
    else:
        base = timestamped_name(config.get("optimizer"))
        for attempt in range(1, 10_000):
            path = runs_dir / (base if attempt == 1 else f"{base}-{attempt}")
            try:
                path.mkdir()
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover - ten thousand runs in one second
            raise ConfigError(f"could not find a free run name {base}-N in {runs_dir}")
    folder = RunFolder(path)
    folder.checkpoints_dir.mkdir()
    with folder.config_path.open("x", encoding="utf-8") as file:  # "x": never overwrite
        file.write(dump_config(config))
    return folder


def _exists_message(path: Path) -> str:
    return (
        f"run folder {path} exists: choose another --name, pass --resume {path} to "
        "continue it or --overwrite to start afresh in it"
    )


def check_writable_place(path: Path, what: str) -> Path:
    """The nearest part of ``path`` that exists (``path`` itself, or the folder that would hold
    it), checked to be a folder we may write in, so that ``path`` can be created or written.

    Raises:
        ConfigError: ``what``, then the part in the way (a file) or the permission missing.
    """
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{what}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{what}: no permission to write in {existing}")
    return existing


def check_new_run_folder(runs_dir: str | Path, name: str | None, overwrite: bool = False) -> None:
    """Refuse, before any work, a new run folder ``create_run_folder`` could not make.

    ``runs_dir`` (or the nearest part of it that exists) must be a folder we may write in; a
    named run folder must not exist, unless ``overwrite`` and it holds a run. Nothing is created.

    Raises:
        ConfigError: one line saying which path is in the way.
    """
    runs_dir = Path(runs_dir)
    existing = check_writable_place(runs_dir, f"--runs-dir {runs_dir}")
    if name is None or existing != runs_dir:
        return
    path = runs_dir / name
    if not (path.exists() or path.is_symlink()):
        return
    if not overwrite:
        raise ConfigError(_exists_message(path))
    if path.is_symlink() or not RunFolder(path).holds_a_run():
        raise ConfigError(f"--overwrite: {path} exists but is not a run folder; not deleting it")


def check_resumable(folder: RunFolder) -> dict[str, Any]:
    """What a resume of ``folder`` needs, checked before anything in it is written; returns the
    saved configuration (config.toml as written, not yet validated).

    The run's config.toml must be there (without it the settings the checkpoints were taken
    with are unknown: guessing them would train another run on top of this one),
    checkpoints/ must be a folder, metrics.jsonl readable text, and every one of them writable.

    Raises:
        ConfigError: one line naming the path and what is wrong with it.
    """
    refuse = f"cannot resume {folder.path}"
    if folder.config_path.is_dir():
        raise ConfigError(f"{refuse}: {folder.config_path} is a folder, not the run's configuration")
    if not folder.config_path.is_file():
        raise ConfigError(
            f"{refuse}: it has no {CONFIG_FILE}, so the settings its checkpoints were taken with are "
            "unknown; start afresh with --overwrite"
        )
    if folder.checkpoints_dir.exists() and not folder.checkpoints_dir.is_dir():
        raise ConfigError(f"{refuse}: {folder.checkpoints_dir} is a file, not the checkpoints folder")
    try:
        read_records(folder.metrics_path)
    except UnicodeDecodeError:
        raise ConfigError(f"{refuse}: {folder.metrics_path} is not UTF-8 text") from None
    except OSError as error:
        raise ConfigError(f"{refuse}: cannot read {folder.metrics_path}: {error.strerror or error}") from None
    written = [folder.path, folder.config_path, folder.metrics_path]
    if folder.checkpoints_dir.is_dir():
        written.append(folder.checkpoints_dir)
    for path in written:
        if not os.access(path, os.W_OK):
            raise ConfigError(f"{refuse}: no permission to write {path}")
    return load_config(folder.config_path)


def open_run_folder(path: str | Path) -> RunFolder:
    """An existing run folder (one with a metrics.jsonl), e.g. for ``--resume runs/x`` or a report.

    Raises:
        ConfigError: ``path`` is not a folder or holds no metrics.jsonl.
    """
    folder = RunFolder(Path(path))
    if not folder.path.is_dir():
        raise ConfigError(f"run folder {folder.path} does not exist")
    if not folder.metrics_path.is_file():
        raise ConfigError(f"{folder.path} is not a run folder: it has no {METRICS_FILE}")
    return folder


def _write_atomically(path: Path, text: str) -> None:
    # Write beside, then rename: a crash leaves either the old file or the new one, never half.
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


# --------------------------------------------------------------------------- records as JSON


def record_to_dict(record: Any) -> dict[str, Any]:
    """The fields of a StepRecord/EvalRecord (dataclass, plain object or mapping) as a dict.

    Fields beyond the known ones (a ``regime`` string, ``advice``) are kept; a mapping field
    named ``extra`` is flattened into the result, so ``extra={"regime": "good"}`` gives a
    top-level ``regime``.
    """
    if isinstance(record, Mapping):
        fields = dict(record)
    elif dataclasses.is_dataclass(record) and not isinstance(record, type):
        fields = {field.name: getattr(record, field.name) for field in dataclasses.fields(record)}
        fields.update(getattr(record, "__dict__", {}))  # attributes added after construction
    else:
        fields = {key: value for key, value in vars(record).items() if not key.startswith("_")}
    extra = fields.pop("extra", None)
    if isinstance(extra, Mapping):
        fields.update(extra)
    return fields


def _plain(value: Any) -> Any:
    """json.dumps fallback: tensors and numpy scalars as numbers, anything else as text."""
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return item()
        except (ValueError, RuntimeError):  # a tensor of several elements
            pass
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def _dumps(line: Mapping[str, Any]) -> str:
    # Non-finite numbers are written as NaN / Infinity, as Python's json (and pandas) read them:
    # a diverged loss must stay visible in the file rather than turn into null.
    return json.dumps(line, default=_plain, separators=(",", ":"))


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Every line of a metrics.jsonl as a dict, in order; a torn last line (a crash) is skipped."""
    records = []
    with Path(path).open(encoding="utf-8") as file:
        for line in file:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash: nothing after it was flushed either
            if isinstance(record, dict):
                records.append(record)
    return records


def read_metrics(path: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split a metrics.jsonl into (step lines, evaluation lines), each in file order.

    Example:
        >>> steps, evals = read_metrics("runs/x/metrics.jsonl")  # doctest: +SKIP
        >>> steps[0]["loss"], evals[-1]["val_accuracy"]           # doctest: +SKIP
    """
    steps, evals = [], []
    for record in read_records(path):
        kind = record.get("kind", STEP)
        if kind == STEP:
            steps.append(record)
        elif kind == EVAL:
            evals.append(record)
    return steps, evals


# --------------------------------------------------------------------------- callbacks


#: Step fields that get their step logged at any ``log_every``: the advice of the diagnosis
#: window the step completes (``DiagnoseRegime``), what the safe-step guard did.
ALWAYS_LOGGED = ("advice", "safety")


def must_log(record: Any) -> bool:
    """Whether a step's record is logged whatever the logging interval: it carries an event
    (``ALWAYS_LOGGED``: a diagnosis window's advice, the safe-step guard's action)."""
    extra = getattr(record, "extra", None)
    fields = extra if isinstance(extra, Mapping) else {}
    return any(fields.get(key) or getattr(record, key, None) for key in ALWAYS_LOGGED)


class MetricsWriter:
    """Callback that appends one JSON line per logged step and per evaluation to metrics.jsonl.

    Every line is flushed as it is written, so a crashed run keeps what it logged. When a fit
    starts at step s > 0 (a resumed run), lines of steps after s (logged by the first attempt
    after its last checkpoint) are dropped first, so the file never holds a step twice.

    Args:
        path: the metrics.jsonl to write.
        every: log one step in ``every`` (default 1). Always logged besides: a step that
            carries an event (:func:`must_log`: it completes a diagnosis window, the guard
            acted) and the run's last step, however it ended (its planned length, a
            divergence, a stopping criterion, Ctrl-C); that one, when off the interval, is
            written at the end of the fit, after the evaluation of the same step.

    Example:
        >>> writer = MetricsWriter("runs/x/metrics.jsonl", every=10)  # doctest: +SKIP
    """

    name = "metrics"

    def __init__(self, path: str | Path, every: int = 1) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        self.path = Path(path)
        self.every = every
        self._file: IO[str] | None = None
        self._unwritten: Any = None  # the latest step, while it is not logged

    def on_fit_start(self, trainer: Any) -> None:
        """Open the file for appending, after dropping any line past the step we start from."""
        start_step = int(getattr(trainer, "step", 0) or 0)
        if self.path.exists():
            kept = [record for record in read_records(self.path) if record.get("step", 0) <= start_step]
            _write_atomically(self.path, "".join(_dumps(record) + "\n" for record in kept))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8", buffering=1)  # line-buffered
        self._unwritten = None

    def on_step_end(self, trainer: Any, record: Any) -> None:
        """Write the step's line if it is one of every ``every`` steps, carries an event, or is
        the last of the planned run; else hold it, in case the run ends on it."""
        is_last = record.total_steps is not None and record.step >= record.total_steps
        if record.step % self.every == 0 or is_last or must_log(record):
            self._write_step(record)
        else:
            self._unwritten = record

    def _write_step(self, record: Any) -> None:
        line = record_to_dict(record)
        line.pop("total_steps", None)  # the same on every line; the config has it
        if line.get("update_norm") is None:  # measured on some steps only (fit's track_grad_norm)
            line.pop("update_norm", None)
        self._write(line)
        self._unwritten = None

    def on_evaluate(self, trainer: Any, record: Any) -> None:
        """Write ``{"kind": "eval", "step", "epoch", "elapsed", **metrics}``."""
        fields = record_to_dict(record)
        metrics = fields.pop("metrics", None) or {}
        self._write({"kind": EVAL, **fields, **metrics})

    def on_checkpoint(self, trainer: Any, path: Any) -> None:
        """Push the lines to disk: a resume from this checkpoint must find them."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def on_fit_end(self, trainer: Any, result: Any) -> None:
        """Write the run's last step if it was held back, then a last ``{"kind": "end"}`` line
        (the step and why the run stopped), and close."""
        if self._unwritten is not None:
            self._write_step(self._unwritten)
        line: dict[str, Any] = {"kind": END, "step": int(getattr(trainer, "step", 0) or 0)}
        for field in ("stopped_by", "message", "elapsed", "seconds"):
            value = getattr(result, field, None)
            if value is not None:
                line[field] = value if isinstance(value, (int, float, str)) else str(value)
        self._write(line)
        self.close()

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write(self, line: Mapping[str, Any]) -> None:
        if self._file is None:
            raise RuntimeError("MetricsWriter: on_fit_start must run before anything is logged")
        self._file.write(_dumps(line) + "\n")
        self._file.flush()


def tensorboard_available() -> bool:
    """Whether ``torch.utils.tensorboard`` can be used (the tensorboard package is installed)."""
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardWriter:
    """Callback that mirrors the metrics into TensorBoard event files (``tensorboard = true``).

    Numbers go to scalars: ``train/loss``, ``train/lr``, ``train/grad_norm``, any other numeric
    step field as ``train/<field>``, evaluation metrics as ``eval/<metric>``. Text fields (a
    regime) are left to metrics.jsonl.

    Args:
        log_dir: where the event files go (e.g. ``runs/x/tensorboard``).
        every: log one step in ``every``.
        writer: an object with ``add_scalar(tag, value, step)``, ``flush()`` and ``close()``;
            default ``torch.utils.tensorboard.SummaryWriter(log_dir)``.

    Raises:
        ConfigError: tensorboard is not installed (and no ``writer`` was given).
    """

    name = "tensorboard"
    _SKIPPED = frozenset({"step", "epoch", "batch_in_epoch", "total_steps", "kind"})

    def __init__(self, log_dir: str | Path, every: int = 1, writer: Any = None) -> None:
        if writer is None:
            if not tensorboard_available():
                raise ConfigError(
                    "tensorboard = true needs the tensorboard package: pip install tensorboard, "
                    "or leave tensorboard off (metrics.jsonl has the same numbers)"
                )
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(log_dir))
        self.writer = writer
        self.every = every

    def _scalars(self, prefix: str, fields: Mapping[str, Any], step: int) -> None:
        for key, value in fields.items():
            is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if key not in self._SKIPPED and (is_number or isinstance(value, bool)):
                if is_number and not math.isfinite(value):
                    continue  # TensorBoard draws nan as a gap at best; metrics.jsonl keeps it
                self.writer.add_scalar(f"{prefix}/{key}", float(value), step)

    def on_step_end(self, trainer: Any, record: Any) -> None:
        is_last = record.total_steps is not None and record.step >= record.total_steps
        if record.step % self.every == 0 or is_last:
            self._scalars("train", record_to_dict(record), record.step)

    def on_evaluate(self, trainer: Any, record: Any) -> None:
        self._scalars("eval", dict(record.metrics), record.step)
        self.writer.flush()

    def on_fit_end(self, trainer: Any, result: Any) -> None:
        self.writer.flush()
        self.writer.close()
