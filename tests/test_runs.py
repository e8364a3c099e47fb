"""Run folders, metrics.jsonl (MetricsWriter, resume), TensorBoardWriter and Progress."""

from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from steepest.train.config import ConfigError, load_config
from steepest.train.progress import Progress
from steepest.train.runs import (
    MetricsWriter,
    RunFolder,
    TensorBoardWriter,
    create_run_folder,
    open_run_folder,
    read_metrics,
    tensorboard_available,
    timestamped_name,
)


# Fake records following the fit contract; fit.py itself is not imported here.
@dataclass
class StepRecord:
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


@dataclass
class EvalRecord:
    step: int
    epoch: int
    metrics: dict[str, float]
    elapsed: float


@dataclass
class RegimeStepRecord(StepRecord):
    """A step record carrying what the regime diagnosis will add."""

    regime: str = "good"
    advice: str = ""
    safety: str | None = None


@dataclass
class FakeTrainer:
    step: int = 0
    epoch: int = 0
    total_steps: int | None = None
    config: dict = field(default_factory=dict)


STEPS_PER_EPOCH = 4


def step_record(step: int, total: int | None = 12, **extra) -> StepRecord:
    epoch, batch = divmod(step - 1, STEPS_PER_EPOCH)
    fields = dict(
        step=step, epoch=epoch + 1, batch_in_epoch=batch + 1, loss=2.0 / step, lr=0.01 * step,
        grad_norm=float(step), clipped=step % 5 == 0, examples=64, examples_per_second=1000.0 + step,
        elapsed=0.5 * step, total_steps=total,
    )
    if extra:
        return RegimeStepRecord(**fields, **extra)
    return StepRecord(**fields)


def simulate(callback, first_step: int, last_step: int, total: int = 12, crash_after: int | None = None,
             **extra) -> None:
    """Drive a callback like the fit loop: steps, an evaluation at each epoch's end, the end.

    Like the loop, it calls only the methods the callback has.
    """
    trainer = FakeTrainer(step=first_step - 1, total_steps=total, config={"epochs": total // STEPS_PER_EPOCH})
    if hasattr(callback, "on_fit_start"):
        callback.on_fit_start(trainer)
    for step in range(first_step, last_step + 1):
        record = step_record(step, total, **extra)
        trainer.step, trainer.epoch = step, record.epoch
        callback.on_step_end(trainer, record)
        if step % STEPS_PER_EPOCH == 0:
            metrics = {"val_loss": 1.0 / step, "val_accuracy": 0.5 + step / 100}
            callback.on_evaluate(trainer, EvalRecord(step, record.epoch, metrics, record.elapsed))
        if crash_after is not None and step == crash_after:
            return  # no on_fit_end: the process died
    callback.on_fit_end(trainer, SimpleNamespace(stopped_by="max_steps"))


# --------------------------------------------------------------------------- run folders


def test_new_run_folder_layout_and_config(tmp_path: Path) -> None:
    folder = create_run_folder(tmp_path / "runs", "first", {"optimizer": "sgd", "lr": 0.1, "name": None})
    assert folder.path == tmp_path / "runs" / "first"
    assert folder.checkpoints_dir.is_dir()
    assert load_config(folder.config_path) == {"optimizer": "sgd", "lr": 0.1}


def test_existing_name_is_an_error_and_nothing_is_touched(tmp_path: Path) -> None:
    folder = create_run_folder(tmp_path, "x", {"optimizer": "sgd"})
    folder.metrics_path.write_text('{"step":1}\n')
    before = {path: path.read_bytes() for path in folder.path.rglob("*") if path.is_file()}
    with pytest.raises(ConfigError) as caught:
        create_run_folder(tmp_path, "x", {"optimizer": "adam"})
    assert str(caught.value) == (
        f"run folder {tmp_path / 'x'} exists: choose another --name, pass --resume {tmp_path / 'x'} "
        "to continue it or --overwrite to start afresh in it"
    )
    after = {path: path.read_bytes() for path in folder.path.rglob("*") if path.is_file()}
    assert after == before


def test_resume_reopens_and_updates_config_only(tmp_path: Path) -> None:
    folder = create_run_folder(tmp_path, "x", {"epochs": 2})
    folder.metrics_path.write_text('{"step":1}\n')
    again = create_run_folder(tmp_path, "x", {"epochs": 4}, resume=True)
    assert again == folder
    assert load_config(folder.config_path) == {"epochs": 4}
    assert folder.metrics_path.read_text() == '{"step":1}\n'
    with pytest.raises(ConfigError, match="cannot resume .*nothing"):
        create_run_folder(tmp_path, "nothing", {}, resume=True)


def test_timestamped_names_are_unique_within_one_second(tmp_path: Path) -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d-adamw", timestamped_name("AdamW"))
    folders = [create_run_folder(tmp_path, None, {"optimizer": "adamw"}) for _ in range(5)]
    names = [folder.name for folder in folders]
    assert len(set(names)) == 5
    assert all(name.startswith(names[0]) for name in names)  # same second: -2, -3 ... suffixes


def test_open_run_folder_refuses_non_runs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        open_run_folder(tmp_path / "missing")
    with pytest.raises(ConfigError, match="is not a run folder: it has no metrics.jsonl"):
        open_run_folder(tmp_path)


# --------------------------------------------------------------------------- metrics.jsonl


def test_metrics_lines_hold_every_field(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    simulate(MetricsWriter(path), 1, 12)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    steps, evals = read_metrics(path)
    assert [s["step"] for s in steps] == list(range(1, 13))
    assert steps[4] == {
        "step": 5, "epoch": 2, "batch_in_epoch": 1, "loss": 0.4, "lr": 0.05, "grad_norm": 5.0,
        "clipped": True, "examples": 64, "examples_per_second": 1005.0, "elapsed": 2.5,
    }
    assert [e["step"] for e in evals] == [4, 8, 12]
    assert evals[0] == {"kind": "eval", "step": 4, "epoch": 1, "elapsed": 2.0, "val_loss": 0.25,
                        "val_accuracy": 0.54}
    assert lines[-1] == {"kind": "end", "step": 12, "stopped_by": "max_steps"}


def test_metrics_every_n_steps_keeps_the_last(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    simulate(MetricsWriter(path, every=5), 1, 12)
    assert [s["step"] for s in read_metrics(path)[0]] == [5, 10, 12]


def test_metrics_every_n_steps_keeps_steps_with_events_and_the_one_the_run_stopped_on(tmp_path: Path) -> None:
    # The run stops at step 7 of 12 (a divergence, a criterion, Ctrl-C): only total_steps
    # told the writer a step was the last, and step 7 was never written.
    path = tmp_path / "metrics.jsonl"
    writer = MetricsWriter(path, every=5)
    trainer = FakeTrainer(total_steps=12)
    writer.on_fit_start(trainer)
    for step in range(1, 8):
        events = {"advice": "looks good"} if step == 3 else {"safety": "skip: spike"} if step == 4 else {}
        trainer.step = step
        writer.on_step_end(trainer, step_record(step, **{"regime": "good", "advice": "", **events}))
    writer.on_evaluate(trainer, EvalRecord(7, 2, {"val_loss": 0.5}, 3.5))
    writer.on_fit_end(trainer, SimpleNamespace(stopped_by="diverged"))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(line.get("kind", "step"), line["step"]) for line in lines] == [
        ("step", 3), ("step", 4), ("step", 5), ("eval", 7), ("step", 7), ("end", 7)
    ]
    assert lines[0]["advice"] == "looks good"


def test_extra_fields_are_written(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    simulate(MetricsWriter(path), 1, 4, regime="too_large", advice="divide lr by 3")
    steps, _ = read_metrics(path)
    assert steps[0]["regime"] == "too_large" and steps[0]["advice"] == "divide lr by 3"


def test_non_finite_loss_stays_visible(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    writer = MetricsWriter(path)
    writer.on_fit_start(FakeTrainer())
    record = step_record(1)
    record.loss = math.nan
    writer.on_step_end(FakeTrainer(step=1), record)
    assert math.isnan(read_metrics(path)[0][0]["loss"])


def test_crashed_run_keeps_its_lines_and_resume_drops_the_lines_after_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    # First attempt: checkpoint at step 8, then crash at step 10 (steps 9-10 will be redone).
    simulate(MetricsWriter(path), 1, 12, crash_after=10)
    with path.open("a") as file:
        file.write('{"step": 11, "loss"')  # a line torn by the crash
    steps, evals = read_metrics(path)  # flushed lines survived, without on_fit_end
    assert [s["step"] for s in steps] == list(range(1, 11))
    # Resume from the checkpoint at step 8.
    simulate(MetricsWriter(path), 9, 12)
    steps, evals = read_metrics(path)
    assert [s["step"] for s in steps] == list(range(1, 13))  # no duplicates, no gap
    assert [e["step"] for e in evals] == [4, 8, 12]


def test_metrics_writer_validates_every() -> None:
    with pytest.raises(ValueError, match="every must be an integer >= 1, got 0"):
        MetricsWriter("m.jsonl", every=0)


# --------------------------------------------------------------------------- tensorboard


class FakeSummaryWriter:
    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []
        self.closed = False

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def test_tensorboard_writer_scalars() -> None:
    fake = FakeSummaryWriter()
    simulate(TensorBoardWriter("unused", writer=fake), 1, 4, regime="good")
    tags = {tag for tag, _, _ in fake.scalars}
    assert {"train/loss", "train/lr", "train/grad_norm", "eval/val_accuracy"} <= tags
    assert not any("regime" in tag or tag.endswith("/step") for tag in tags)
    assert ("train/loss", 0.5, 4) in fake.scalars
    assert fake.closed


@pytest.mark.skipif(tensorboard_available(), reason="tensorboard is installed here")
def test_tensorboard_writer_without_tensorboard_says_so() -> None:
    with pytest.raises(ConfigError, match="needs the tensorboard package"):
        TensorBoardWriter("runs/x/tensorboard")


# --------------------------------------------------------------------------- progress


def test_plain_progress_prints_one_line_per_epoch(capsys: pytest.CaptureFixture[str]) -> None:
    simulate(Progress(mode="plain"), 1, 12)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4  # 3 epochs + the closing line
    assert lines[0].startswith("epoch 1/3  step 4/12  loss 0.5  lr 4.00e-02  1,004 ex/s")
    assert "val_loss 0.25  val_accuracy 54.00%" in lines[0]
    assert "ETA 0:04" in lines[0]
    assert lines[-1] == "done: 12 steps, stopped by max_steps"


def test_plain_progress_every_n_steps_shows_regime(capsys: pytest.CaptureFixture[str]) -> None:
    simulate(Progress(mode="plain", every=3), 1, 6, total=8, regime="too_small")
    out = capsys.readouterr().out
    step_lines = [line for line in out.splitlines() if "loss" in line and "val_loss" not in line]
    assert [re.search(r"step (\d+)", line).group(1) for line in step_lines] == ["3", "6"]
    assert all("regime too_small" in line for line in step_lines)
    assert "val_accuracy 54.00%" in out  # the evaluation at step 4 gets its own line


def test_auto_mode_is_plain_when_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    assert Progress().mode == "plain"  # pytest's captured stdout is not a terminal
    assert Progress(console=Console(file=io.StringIO(), force_terminal=True)).mode == "bar"


def test_bar_progress_on_a_terminal_console() -> None:
    buffer = io.StringIO()
    progress = Progress(console=Console(file=buffer, force_terminal=True, width=150))
    simulate(progress, 1, 12, regime="good")
    out = buffer.getvalue()
    assert "12/12" in out
    assert "loss 0.1667" in out and "lr 1.20e-01" in out and "regime good" in out
    assert "\x1b[" in out  # drawn with terminal control codes, not plain lines
    assert "done: 12 steps" in out


def test_quiet_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    buffer = io.StringIO()
    simulate(Progress(quiet=True, console=Console(file=buffer, force_terminal=True)), 1, 12)
    simulate(Progress(quiet=True, mode="plain"), 1, 12)
    assert buffer.getvalue() == "" and capsys.readouterr().out == ""


def test_run_folder_paths() -> None:
    folder = RunFolder(Path("runs/x"))
    assert (folder.name, folder.metrics_path, folder.report_path) == (
        "x", Path("runs/x/metrics.jsonl"), Path("runs/x/report.html")
    )
