"""Bad input to ``lr-find``, ``compare``, ``schedule plot`` and ``report``: one line on stderr
starting ``steepest: error:``, exit code 2, no traceback, nothing written; and a diverged run's
report is still drawn."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch

import steepest
from steepest import cli
from steepest.lr.range_test import check_sweep
from steepest.train.report import load_run, make_plots, write_report
from steepest.train.runs import create_run_folder


def assert_one_error_line(capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    """The stderr of a refused command: exactly one ``steepest: error:`` line, holding ``fragments``."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("steepest: error:"), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes), to compare before and after."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


@pytest.fixture
def points_csv(tmp_path: Path) -> Path:
    """A tiny two-class CSV data set: lr-find on it with --steps 5 --repeats 1 takes a moment."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(40, 2, generator=generator)
    rows = ["x1,x2,label"] + [f"{a:.4f},{b:.4f},{int(a + b > 0)}" for a, b in features.tolist()]
    path = tmp_path / "points.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def lr_find_argv(data: Path, *more: str) -> list[str]:
    return [
        "lr-find",
        "--dataset",
        str(data),
        "--model",
        "softmax",
        "--optimizer",
        "sgd",
        "--steps",
        "5",
        "--repeats",
        "1",
        "--batch-size",
        "8",
        *more,
    ]


# --------------------------------------------------------------------------- lr-find


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_lr_find_refuses_fewer_steps_than_the_range_test_needs(
    steps: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli.lr, "range_test", lambda *args, **kwargs: pytest.fail("swept"))
    with pytest.raises(ValueError) as library:  # the library's own words, stated once there
        check_sweep(1.0, 2.0, steps, 1, 1, 0)
    assert cli.main(["lr-find", "--steps", str(steps)]) == 2
    assert_one_error_line(capsys, "--steps", str(library.value))


def test_lr_find_reports_the_range_tests_refusal_of_the_data_in_one_line(
    points_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_range_test = cli.lr.range_test

    def on_nan_features(model, data, optimizer, **options):
        inputs, targets = data
        return real_range_test(model, (torch.full_like(inputs, math.nan), targets), optimizer, **options)

    monkeypatch.setattr(cli.lr, "range_test", on_nan_features)
    output = tmp_path / "find.png"
    assert cli.main(lr_find_argv(points_csv, "-o", str(output))) == 2
    assert_one_error_line(capsys, "lr-find:", "the loss is nan at the starting point")
    assert not output.exists()


@pytest.mark.parametrize("name", ["x.toml", "x.pt", "noextension", "", "folder"])
def test_lr_find_refuses_an_output_it_would_not_write_as_named_before_sweeping(
    name: str,
    points_csv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    monkeypatch.setattr(cli.lr, "range_test", lambda *args, **kwargs: pytest.fail("swept"))
    before = sorted(path.name for path in tmp_path.iterdir())
    assert cli.main(lr_find_argv(points_csv, "-o", name)) == 2
    assert_one_error_line(capsys, "-o")
    assert sorted(path.name for path in tmp_path.iterdir()) == before  # no x.toml, .png, folder.png


def test_lr_find_writes_other_picture_formats(
    points_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "find.SVG"  # the format check ignores case, as matplotlib does
    assert cli.main(lr_find_argv(points_csv, "-o", str(output))) == 0
    assert b"<svg" in output.read_bytes()[:1000]
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {output}"


# --------------------------------------------------------------------------- compare


def test_compare_regimes_at_a_rate_that_overflows_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "c.png"
    argv = ["compare", "quadratic", "--regimes", "--lr", "1e308", "--steps", "5", "-o", str(output)]
    assert cli.main(argv) == 2
    assert_one_error_line(capsys, "--regimes", "must be finite")
    assert not output.exists()


@pytest.mark.parametrize("name", ["c.toml", "", "folder"])
def test_compare_refuses_an_output_it_would_not_write_as_named_before_running(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    monkeypatch.setattr(cli.lr, "compare", lambda *args, **kwargs: pytest.fail("ran"))
    assert cli.main(["compare", "quadratic", "--steps", "5", "-o", name]) == 2
    assert_one_error_line(capsys, "-o")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["folder"]


# --------------------------------------------------------------------------- schedule plot

COSINE = ["schedule", "plot", "cosine", "--peak", "1", "--total", "10"]


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        ([*COSINE, "-o", "/nonexistent/s.png"], "does not exist"),
        ([*COSINE, "-o", "s.toml"], "picture format"),
        ([*COSINE, "-o", ""], "file name"),
        (
            ["schedule", "plot", "exponential", "--peak", "1", "--gamma", "1e10", "--steps", "100"],
            "largest float",
        ),
        (["schedule", "plot", "cosine", "--peak", "-1", "--total", "10"], "finite and >= 0"),
        (
            ["schedule", "plot", "cosine", "--peak", "1", "--floor", "-0.5", "--total", "10"],
            "finite and >= 0",
        ),
    ],
    ids=["missing folder", "unknown format", "empty name", "overflow", "negative peak", "negative floor"],
)
def test_bad_schedule_plot_is_one_line_and_writes_nothing(
    argv: list[str], fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    assert_one_error_line(capsys, fragment)
    assert list(tmp_path.iterdir()) == []


def test_schedule_plot_of_a_billion_steps_samples_a_few_thousand(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn: list[list[int]] = []
    real_plot = cli.schedules.plot

    def spy(schedule, steps, **options):
        assert not isinstance(steps, int), "every step of a billion would be evaluated"
        drawn.append(list(steps))
        return real_plot(schedule, steps, **options)

    monkeypatch.setattr(cli.schedules, "plot", spy)
    output = tmp_path / "c.png"
    assert (
        cli.main(["schedule", "plot", "cosine", "--peak", "1", "--total", "1000000000", "-o", str(output)])
        == 0
    )
    (steps,) = drawn
    assert len(steps) == cli.PLOT_POINTS and steps[0] == 0 and steps[-1] == 10**9 - 1
    assert steps == sorted(set(steps))
    assert output.read_bytes()[:4] == b"\x89PNG"
    assert "end 0" in capsys.readouterr().out  # the last step, not a sample before it


def test_schedule_plot_keeps_a_rising_schedule_and_a_zero_rate(tmp_path: Path) -> None:
    # the library interpolates from peak to floor either way on purpose: not refused
    for flags in (["--peak", "0.1", "--floor", "1"], ["--peak", "0"]):
        assert (
            cli.main(["schedule", "plot", "cosine", "--total", "10", *flags, "-o", str(tmp_path / "s.png")])
            == 0
        )


def test_schedule_plot_of_one_cycle_fits_its_legend_without_a_warning(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        argv = [
            "schedule",
            "plot",
            "one_cycle",
            "--peak",
            "1",
            "--total",
            "50",
            "-o",
            str(tmp_path / "o.png"),
        ]
        assert cli.main(argv) == 0
    assert [str(warning.message) for warning in caught] == []


# --------------------------------------------------------------------------- report


def make_run(
    runs_dir: Path, name: str = "r", config: dict | None = None, lines: list[dict] | None = None
) -> Path:
    """A run folder with a config, a metrics.jsonl and a checkpoint, as ``train`` leaves it."""
    folder = create_run_folder(runs_dir, name, config or {"optimizer": "sgd", "lr": 0.1})
    if lines is None:
        lines = [
            {"step": step, "epoch": 1, "loss": 1.0 / step, "lr": 0.1, "grad_norm": 2.0}
            for step in range(1, 41)
        ]
        lines += [{"kind": "eval", "step": 40, "epoch": 1, "val_loss": 0.5}, {"kind": "end", "step": 40}]
    (folder.path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (folder.path / "checkpoints").mkdir(exist_ok=True)
    (folder.path / "checkpoints" / "step-000040.pt").write_bytes(b"not really a checkpoint")
    return folder.path


@pytest.mark.parametrize(
    "target",
    ["config.toml", "metrics.jsonl", "checkpoints/step-000040.pt", "checkpoints", "notes.txt", "report.HTM"],
)
def test_report_refuses_to_replace_a_run_folders_own_files(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = make_run(tmp_path)
    before = snapshot(run)
    assert cli.main(["report", str(run), "-o", str(run / target)]) == 2
    assert_one_error_line(capsys, "report")
    assert snapshot(run) == before and not (run / "notes.txt").exists()


def test_report_refuses_outputs_it_cannot_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path)
    before = snapshot(run)
    (tmp_path / "afile").write_text("a file, not a folder")
    (tmp_path / "out.html").mkdir()
    for output, fragment in (
        (tmp_path / "afile" / "r.html", "is a file, not a folder"),
        (tmp_path / "out.html", "is a folder"),
        (Path("/proc/steepest-report.html"), "cannot write"),  # refused even to root
    ):
        assert cli.main(["report", str(run), "-o", str(output)]) == 2
        assert_one_error_line(capsys, fragment)
    assert snapshot(run) == before
    # the default output, report.html in the run folder, is a folder there
    (run / "report.html").mkdir()
    assert cli.main(["report", str(run)]) == 2
    assert_one_error_line(capsys, "is a folder")
    assert snapshot(run) == before


def test_report_refuses_metrics_that_are_not_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path)
    (run / "metrics.jsonl").write_bytes(b'{"step": 1, "loss": \xff\xfe}\n')
    before = snapshot(run)
    assert cli.main(["report", str(run)]) == 2
    assert_one_error_line(capsys, "metrics.jsonl", "UTF-8")
    assert snapshot(run) == before


@pytest.mark.parametrize("step", ["x", None, 1.5, True])
def test_report_refuses_a_hand_edited_step(
    step: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a non-numeric step once failed deep in the plots with "'>' not supported ..."
    lines = [{"step": 1, "loss": 1.0}, {"step": step, "loss": 0.5}, {"kind": "end", "step": 2}]
    run = make_run(tmp_path, lines=lines)
    before = snapshot(run)
    assert cli.main(["report", str(run)]) == 2
    assert_one_error_line(capsys, "metrics.jsonl", "record 2", f"step={step!r}")
    assert snapshot(run) == before


def diverged_lines() -> list[dict]:
    """A run that blew up: rates and losses up to the float limit, then NaN and inf."""
    lines = [{"step": 1, "epoch": 1, "loss": 2.3, "lr": 1e308, "grad_norm": 2.0, "clipped": True}]
    lines += [{"step": 2, "epoch": 1, "loss": 1e308, "lr": 1e308, "grad_norm": 1.7e308, "clipped": True}]
    lines += [{"step": 3, "epoch": 1, "loss": math.nan, "lr": 1e308, "grad_norm": math.inf, "accuracy": 0.1}]
    lines += [
        {"step": 4, "epoch": 1, "loss": -math.inf, "lr": 9.7e304, "grad_norm": math.nan, "other": 1e308}
    ]
    lines += [{"kind": "eval", "step": 4, "epoch": 1, "val_loss": math.nan, "val_accuracy": 0.1}]
    return lines + [{"kind": "end", "step": 4, "stopped_by": "diverged: the training loss is nan at step 3"}]


@pytest.mark.parametrize("lr", [1e308, 0.1])
def test_a_diverged_runs_report_is_written_with_its_drawable_values(lr: float, tmp_path: Path) -> None:
    lines = [{**line, "lr": lr} if "lr" in line else line for line in diverged_lines()]
    run = make_run(tmp_path, config={"optimizer": "sgd", "lr": lr, "clip_norm": 1e308}, lines=lines)
    written = write_report([run], run / "report.html")
    page = written.read_text()
    assert "data:image/png;base64," in page and "diverged" in page
    plots = make_plots([load_run(run)])
    assert "loss" in plots and "grad_norm" in plots
    assert ("lr" in plots) == (lr == 0.1)  # a rate of 1e308 only (beyond drawing): no curve
    loss_line = plots["loss"].axes[0].get_lines()[0]
    assert list(loss_line.get_ydata()) == [2.3]  # 1e308, NaN and -inf left out


def test_report_plots_draw_any_label_without_warnings(tmp_path: Path) -> None:
    label = "a\x01b $\\notacommand$ $x"  # a control character, and mathtext that would not parse
    many = [{"step": step, "epoch": 1, "loss": 1.0 + (step % 7), "lr": 0.1} for step in range(1, 5001)]
    run = make_run(tmp_path, config={"optimizer": "sgd", "lr": 0.1, "label": label}, lines=many)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write_report([run], run / "report.html")
    assert [str(warning.message) for warning in caught] == []
    legend = make_plots([load_run(run)])["loss"].axes[0].get_legend()
    assert legend.get_texts()[0].get_text() == "a\\x01b \\$\\notacommand\\$ \\$x train"
    # loc="best" searches every placement against every point: seconds on a long run
    assert legend._loc != 0  # noqa: SLF001 - matplotlib's code for "best"


# --------------------------------------------------------------------------- lion


@pytest.mark.parametrize("foreach", [False, True])
def test_lion_at_a_rate_beyond_float32_makes_the_parameters_non_finite(foreach: bool) -> None:
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    optimizer = steepest.Lion([param], lr=1e308, weight_decay=0.1, foreach=foreach, fused=False)
    param.grad = torch.tensor([0.5, -0.5, 1.0])
    optimizer.step()
    assert not torch.isfinite(param).any()
    # at an ordinary rate the step is the reference one: every coordinate moves by lr
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    optimizer = steepest.Lion([param], lr=0.25, foreach=foreach, fused=False)
    param.grad = torch.tensor([0.5, -0.5, 1.0])
    optimizer.step()
    assert param.tolist() == [0.75, -1.75, 2.75]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--label-column", "nosuch"], "label_column = 'nosuch' is not a column of"),
        (["--model", "nosuch_module_xyz:Net"], "model = 'nosuch_module_xyz:Net': cannot import module"),
        (["--model", "cnn"], "model = 'cnn' needs image inputs"),
    ],
)
def test_data_and_model_errors_name_the_setting_given(
    tmp_path: Path, points_csv: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    # They named the library's arguments: "label=..." (--label is the run's label) and
    # "name=..." (--name is its folder), which sent the user to the wrong flag.
    argv = ["train", "--dataset", str(points_csv), *flags, "--runs-dir", str(tmp_path / "runs")]
    assert cli.main(argv) == 2
    assert_one_error_line(capsys, message)
    assert not (tmp_path / "runs").exists()
