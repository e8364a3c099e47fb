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
    argv = ["train", "--optimizer", "NAdam", "--lr", "0.02", "--epochs", "4",
            "--batch-size", "17", "--seed", "5", "--model", "mlp"]
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
    assert lines[0].startswith("Adam lr 2.00e-03 on DigitsCNN")
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
        def __init__(self, params, lr: float) -> None:
            raise error_type("Invalid weight_decay value: -1.0")

    monkeypatch.setattr(steepest, "Lion", RejectsEverything)
    assert cli.main(["train", "--optimizer", "lion", "--epochs", "1"]) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        "steepest: error: Lion rejected its settings: Invalid weight_decay value: -1.0\n"
    )
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
        capture_output=True, text=True, timeout=120, check=False,
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
