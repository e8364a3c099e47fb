"""The ``steepest`` command line: flags reach the run, output lines, and the error contract
(bad input: one line on stderr, exit code 2, no traceback)."""

from __future__ import annotations

import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import steepest
from steepest import cli
from steepest.train import TrainConfig

EPOCH_LINE = re.compile(
    r"^epoch \d+/\d+  loss \d+\.\d{4}  train acc \d+\.\d{2}%  val acc \d+\.\d{2}%  "
    r"lr \d\.\d{2}e[+-]\d{2}  \d+\.\d+s$"
)
TEST_LINE = re.compile(r"^test accuracy \d+\.\d{2}%$")


@pytest.fixture
def captured_configs(monkeypatch: pytest.MonkeyPatch) -> list[TrainConfig]:
    """Replace the training run by a recorder, for tests about parsing alone."""
    configs: list[TrainConfig] = []

    def record(config: TrainConfig, log: object) -> SimpleNamespace:
        configs.append(config)
        return SimpleNamespace(diverged=False)

    monkeypatch.setattr(cli, "train", record)
    return configs


def test_no_flags_means_the_default_config(captured_configs: list[TrainConfig]) -> None:
    assert cli.main(["train"]) == 0
    assert captured_configs == [TrainConfig()]


def test_every_flag_reaches_the_config(captured_configs: list[TrainConfig]) -> None:
    argv = [
        "train",
        "--optimizer",
        "NAdam",
        "--lr",
        "0.02",
        "--epochs",
        "4",
        "--batch-size",
        "17",
        "--seed",
        "5",
        "--model",
        "mlp",
    ]
    assert cli.main(argv) == 0
    assert captured_configs == [
        TrainConfig(optimizer="nadam", lr=0.02, epochs=4, batch_size=17, seed=5, model="mlp")
    ]


def test_one_epoch_job_prints_header_epoch_and_test_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["train", "--epochs", "1", "--optimizer", "Adam", "--lr", "2e-3", "--seed", "3"]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("Adam lr 2.00e-03 (xavier init) on DigitsCNN")
    assert lines[1].startswith("epoch 1/1  ")
    assert EPOCH_LINE.match(lines[1])
    assert "lr 2.00e-03" in lines[1]
    assert TEST_LINE.match(lines[2])
    assert captured.err == ""


def test_help_exits_zero_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--optimizer", "--lr", "--epochs", "--batch-size", "--seed"):
        assert flag in out


BAD_INPUTS = {
    "negative lr": (["train", "--lr", "-1"], "argument --lr: must be a positive number"),
    "zero lr": (["train", "--lr", "0"], "argument --lr: must be a positive number"),
    "nan lr": (["train", "--lr", "nan"], "argument --lr: must be a positive number"),
    "infinite lr": (["train", "--lr", "inf"], "argument --lr: must be a positive number"),
    "word lr": (["train", "--lr", "fast"], "argument --lr: must be a positive number"),
    "zero epochs": (["train", "--epochs", "0"], "argument --epochs: must be a positive integer"),
    "fractional epochs": (["train", "--epochs", "1.5"], "argument --epochs: must be a positive"),
    "zero batch": (["train", "--batch-size", "0"], "argument --batch-size: must be a positive"),
    "negative seed": (["train", "--seed", "-1"], "argument --seed: must be an integer from 0"),
    "unknown optimizer": (["train", "--optimizer", "foo"], "invalid choice: 'foo'"),
    "unknown model": (["train", "--model", "resnet"], "invalid choice: 'resnet'"),
    "unknown flag": (["train", "--momentum", "0.9"], "unrecognized arguments: --momentum"),
    "abbreviated flag": (["train", "--opt", "sgd"], "unrecognized arguments: --opt"),
    "unknown command": (["fit"], "invalid choice: 'fit'"),
    "no command": ([], "required: COMMAND"),
}


@pytest.mark.parametrize(("argv", "message"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_is_one_stderr_line_and_exit_code_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.endswith("\n")
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("steepest: error: ")
    assert message in lines[0]


@pytest.mark.parametrize("error_type", [ValueError, TypeError])
def test_optimizer_rejecting_its_settings_is_one_line_and_exit_code_2(
    error_type: type[Exception],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    class RejectsEverything(torch.optim.SGD):
        def __init__(self, params, lr: float, clip_norm: float | None = None) -> None:
            raise error_type("Invalid weight_decay value: -1.0")

    monkeypatch.setattr(steepest, "Lion", RejectsEverything)
    assert cli.main(["train", "--optimizer", "lion", "--epochs", "1"]) == 2
    captured = capsys.readouterr()
    assert captured.err == ("steepest: error: Lion rejected its settings: Invalid weight_decay value: -1.0\n")
    assert "epoch" not in captured.out  # refused before training


def test_interrupt_is_one_line_and_exit_code_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(config: TrainConfig, log: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "train", interrupted)
    assert cli.main(["train"]) == 130
    assert capsys.readouterr().err == "steepest: interrupted\n"


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m steepest ARGS`` in a fresh interpreter, as a user types it."""
    return subprocess.run(
        [sys.executable, "-m", "steepest", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_python_dash_m_runs_a_one_epoch_job() -> None:
    completed = run_module("train", "--epochs", "1")
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert len(lines) == 3
    assert EPOCH_LINE.match(lines[1])
    assert TEST_LINE.match(lines[2])
    assert "Traceback" not in completed.stderr


def test_python_dash_m_bad_input_exits_2_with_one_line_and_no_traceback() -> None:
    completed = run_module("train", "--lr", "-1")
    assert completed.returncode == 2
    assert completed.stdout == ""
    assert completed.stderr.splitlines() == [
        "steepest: error: argument --lr: must be a positive number, got '-1'"
    ]


def test_a_diverging_run_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["train", "--optimizer", "sgd", "--lr", "1e4", "--epochs", "3", "--model", "mlp"])
    assert code == cli.FAILED == 1
    assert "too large" in capsys.readouterr().out


def test_schedule_clip_and_init_flags_reach_the_config(captured_configs: list[TrainConfig]) -> None:
    argv = ["train", "--schedule", "warmup_cosine", "--warmup", "50", "--clip-norm", "1.5", "--init", "auto"]
    assert cli.main(argv) == 0
    assert captured_configs == [TrainConfig(schedule="warmup_cosine", warmup=50, clip_norm=1.5, init="auto")]


@pytest.mark.parametrize(
    "argv",
    [["--schedule", "zigzag"], ["--warmup", "-5"], ["--clip-norm", "0"], ["--init", "ones"]],
)
def test_bad_schedule_clip_and_init_flags_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("steepest: error:")


def test_schedule_plot_writes_a_png(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "lr.png"
    argv = ["schedule", "plot", "warmup_cosine", "--peak", "3e-3", "--warmup", "500", "--total", "10000"]
    assert cli.main([*argv, "-o", str(output)]) == 0
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "warmup_cosine(peak=0.003, warmup=500, total=10000" in out and "max 0.003" in out


def test_schedule_plot_parses_tuples_and_switches(tmp_path) -> None:
    output = tmp_path / "ms.png"
    assert (
        cli.main(["schedule", "plot", "multistep", "--peak", "0.1", "--milestones", "3,6", "-o", str(output)])
        == 0
    )
    assert output.exists()
    assert (
        cli.main(
            [
                "schedule",
                "plot",
                "one_cycle",
                "--peak",
                "1",
                "--total",
                "50",
                "--three-phase",
                "-o",
                str(output),
            ]
        )
        == 0
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["schedule", "plot", "sawtooth", "--peak", "1"],
        ["schedule", "plot", "cosine", "--peak", "1"],  # missing --total
        ["schedule", "plot", "cosine", "--peak", "1", "--total", "ten"],
        ["schedule", "plot", "cosine", "--peak", "1", "--total", "10", "--colour", "red"],
        ["schedule", "plot", "warmup_cosine", "--peak", "1", "--warmup", "50", "--total", "10"],
        ["lr-find", "--min-lr", "1", "--max-lr", "0.1"],
        ["train", "--epochs", "1", "--stray"],
    ],
)
def test_bad_schedule_and_lr_find_input_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("steepest: error:")


def test_lr_find_prints_suggestions_and_plots(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "find.png"
    argv = ["lr-find", "--model", "softmax", "--steps", "40", "--repeats", "2", "--optimizer", "sgd"]
    assert cli.main([*argv, "-o", str(output)]) == 0
    out = capsys.readouterr().out
    assert "consensus" in out and "warmup_cosine peak" in out
    suggested = float(re.search(r"consensus\s+([0-9.e+-]+)", out).group(1))
    assert 1e-4 < suggested < 10  # a softmax regression on standardized digits trains in this band
    assert output.read_bytes()[:4] == b"\x89PNG"
