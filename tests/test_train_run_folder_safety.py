"""``steepest train`` on bad input: one line on stderr, exit code 2, no traceback, and nothing
in an existing run folder written, overwritten or deleted (and no new folder left behind)."""

from __future__ import annotations

import hashlib
import shutil
import sys
import warnings
from pathlib import Path

import pytest

from steepest import cli

pytestmark = pytest.mark.usefixtures("single_thread")

USER_MODELS = """
import torch

class NoParams(torch.nn.Module):
    def forward(self, x):
        return x


class Raises(torch.nn.Module):
    def __init__(self):
        super().__init__()
        raise RuntimeError("broken\\non two lines")


class ForwardRaises(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(13, 3)

    def forward(self, x):
        raise KeyError("no such feature")


class Vector(torch.nn.Module):  # one number per example, for 3 classes
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(13, 1)

    def forward(self, x):
        return self.layer(x).squeeze(-1)


class TooWide(torch.nn.Module):  # 7 scores for 3 classes: trained silently to 3% accuracy
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(13, 7)

    def forward(self, x):
        return self.layer(x)


class Lazy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.LazyLinear(3)

    def forward(self, x):
        return self.layer(x)
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished run: an MLP on the wine data, 2 epochs, checkpoints after each."""
    runs = tmp_path_factory.mktemp("runs")
    argv = ["train", "--runs-dir", str(runs), "--name", "base", "--model", "mlp", "--dataset", "wine"]
    assert cli.main([*argv, "--epochs", "2", "--batch-size", "32", "--quiet"]) == 0
    assert len(list((runs / "base" / "checkpoints").glob("step-*.pt"))) == 2
    return runs / "base"


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    """A copy of the finished run, for a test to damage."""
    return Path(shutil.copytree(trained, tmp_path / "runs" / "base"))


@pytest.fixture
def user_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "user_models_for_safety.py").write_text(USER_MODELS)
    (tmp_path / "user_syntax_error.py").write_text("def broken(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in ("user_models_for_safety", "user_syntax_error"):
        sys.modules.pop(name, None)


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``: its hash (files) or "dir"."""
    return {
        str(path.relative_to(root)): "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
    }


def refused(argv: list[str], capsys: pytest.CaptureFixture[str], *words: str) -> str:
    """Run ``argv``; assert the error contract; return the error line.

    A Python warning that escapes would be more lines on a real stderr (pytest captures them).
    """
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        assert cli.main(argv) == 2
    assert [str(warning.message) for warning in escaped] == []
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("steepest: error:"), err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def refused_untouched(argv: list[str], root: Path, capsys: pytest.CaptureFixture[str], *words: str) -> str:
    """``refused``, and nothing under ``root`` changed (no file written, none added or removed)."""
    before = snapshot(root)
    line = refused(argv, capsys, *words)
    assert snapshot(root) == before
    return line


def train(runs: Path, name: str, *more: str) -> list[str]:
    return ["train", "--runs-dir", str(runs), "--name", name, "--progress", "plain", "--epochs", "1", *more]


# -- A1: a resume the checkpoint cannot accept -------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "word"),
    [
        (["--batch-size", "16"], "--batch-size 16"),
        (["--seed", "1"], "--seed 1"),
        (["--accumulate", "2"], "--accumulate 2"),
        (["--model", "softmax"], "--model softmax"),
        (["--dataset", "breast_cancer"], "--dataset breast_cancer"),
        (["--optimizer", "sgd", "--epochs", "3"], "--optimizer sgd"),
        (["--lr", "0.1"], "--lr 0.1: the run was trained with its default"),  # not "without it"
    ],
)
def test_a_resume_with_settings_the_run_was_not_trained_with_is_refused(
    run: Path, capsys: pytest.CaptureFixture[str], flags: list[str], word: str
) -> None:
    refused_untouched(["train", "--resume", str(run), *flags], run.parent, capsys, word, "trained with")


@pytest.mark.parametrize(
    ("edit", "word"),
    [
        (('model = "mlp"', 'model = "softmax"'), "model"),
        (('optimizer = "adamw"', 'optimizer = "sgd"'), "optimizer"),
        (("batch_size = 32", "batch_size = 16"), "batch_size"),
    ],
)
def test_a_hand_edited_config_that_contradicts_the_checkpoint_is_refused(
    run: Path, capsys: pytest.CaptureFixture[str], edit: tuple[str, str], word: str
) -> None:
    text = (run / "config.toml").read_text()
    assert edit[0] in text
    (run / "config.toml").write_text(text.replace(edit[0], edit[1]))
    argv = ["train", "--resume", str(run), "--epochs", "3"]
    refused_untouched(argv, run.parent, capsys, word, "checkpoint")


def test_a_resume_without_config_toml_is_refused(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (run / "config.toml").unlink()
    refused_untouched(["train", "--resume", str(run), "--epochs", "3"], run.parent, capsys, "config.toml")


# -- A2: no usable checkpoint ------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["garbage", "empty", "deleted"])
def test_a_resume_with_no_usable_checkpoint_is_refused(
    run: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    for path in (run / "checkpoints").glob("step-*.pt"):
        if damage == "garbage":
            path.write_text("garbage\n")
        else:
            path.unlink()
    if damage == "deleted":
        (run / "checkpoints").rmdir()
    argv = ["train", "--resume", str(run), "--epochs", "3"]
    refused_untouched(argv, run.parent, capsys, "no usable checkpoint")


def test_a_truncated_newest_checkpoint_falls_back_with_one_line(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    newest = sorted((run / "checkpoints").glob("step-*.pt"))[-1]
    newest.write_bytes(newest.read_bytes()[:1000])
    assert cli.main(["train", "--resume", str(run), "--epochs", "3"]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("steepest: warning: skipping") and newest.name in err


# -- A3: --overwrite checks everything before deleting --------------------------------------------


@pytest.mark.parametrize(
    ("flags", "word"),
    [
        (["--model", "mlp", "--dataset", "synthetic_regression", "--target", "0.9"], "regression"),
        (["--model", "user_models_for_safety:NoParams"], "no parameters"),
        (["--model", "user_models_for_safety:Raises"], "RuntimeError: broken"),
        (["--model", "user_models_for_safety:Lazy"], "lazy"),
        (["--model", "user_syntax_error:Net"], "SyntaxError"),
        (["--model", "user_models_for_safety:ForwardRaises", "--dataset", "wine"], "KeyError"),
        (["--model", "user_models_for_safety:Vector", "--dataset", "wine"], "one score per class (3"),
        (["--model", "user_models_for_safety:TooWide", "--dataset", "wine"], "shape (7,)"),
    ],
)
def test_overwrite_keeps_the_old_run_when_the_new_one_is_refused(
    run: Path, capsys: pytest.CaptureFixture[str], user_models: None, flags: list[str], word: str
) -> None:
    refused_untouched(train(run.parent, "base", "--overwrite", *flags), run.parent, capsys, word)
    # and without --overwrite, no half-made folder is left behind
    refused_untouched(train(run.parent, "new", *flags), run.parent, capsys, word)


# -- A4, A5: flags that contradict a resume ----------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "word"),
    [
        (["--epochs", "1"], "already trained 2 epochs"),
        (["--epochs", "2"], "already trained 2 epochs"),
        (["--config", "/nonexistent.toml"], "--config"),
        (["--name", "other"], "--name"),
        (["--runs-dir", "/elsewhere"], "--runs-dir"),
    ],
)
def test_flags_that_contradict_a_resume_are_refused(
    run: Path, capsys: pytest.CaptureFixture[str], flags: list[str], word: str
) -> None:
    refused_untouched(["train", "--resume", str(run), *flags], run.parent, capsys, word)


# -- B: what used to be tracebacks ---------------------------------------------------------------


def test_runs_dir_through_a_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_text("")
    for runs in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        refused_untouched(train(runs, "x", "--model", "mlp"), tmp_path, capsys, "is a file")


def test_a_name_too_long_for_the_file_system_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    refused_untouched(train(tmp_path, "a" * 300, "--model", "mlp"), tmp_path, capsys, "at most 255")


def test_an_image_folder_with_a_file_that_is_no_image_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("PIL")
    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        (tmp_path / "images" / label / "fake.png").write_text("not an image")
    argv = train(tmp_path / "runs", "x", "--dataset", str(tmp_path / "images"))
    refused_untouched(argv, tmp_path, capsys, "fake.png")


@pytest.mark.parametrize(
    ("damage", "word"),
    [("config_dir", "config.toml is a folder"), ("checkpoints_file", "is a file"), ("metrics", "UTF-8")],
)
def test_a_damaged_run_folder_is_refused_on_resume(
    run: Path, capsys: pytest.CaptureFixture[str], damage: str, word: str
) -> None:
    if damage == "config_dir":
        (run / "config.toml").unlink()
        (run / "config.toml").mkdir()
    elif damage == "checkpoints_file":
        shutil.rmtree(run / "checkpoints")
        (run / "checkpoints").write_text("")
    else:
        with (run / "metrics.jsonl").open("ab") as file:
            file.write(b"\xff\xfe\n")
    refused_untouched(["train", "--resume", str(run), "--epochs", "3"], run.parent, capsys, word)


# -- D, E: data sets -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "flags", "word"),
    [
        ("", [], "no rows of data"),  # numpy's two-line warning is not printed
        ("1,2,0\n2,3,1\n3,4,0\n4,5,1\n5,6,0\n", ["--model", "cnn"], "image inputs"),  # no stratify warning
        ("1,2,0\n2,nan,1\n3,4,0\n4,5,1\n", [], "example 2, column 2"),
        ("1,2,0\n2,3,0\n3,4,0\n4,5,0\n", [], "two classes"),
    ],
)
def test_a_bad_csv_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rows: str, flags: list[str], word: str
) -> None:
    (tmp_path / "data.csv").write_text("a,b,label\n" + rows)
    argv = train(tmp_path / "runs", "x", "--dataset", str(tmp_path / "data.csv"), "--model", "mlp", *flags)
    refused_untouched(argv, tmp_path, capsys, word)


@pytest.mark.parametrize(
    ("flags", "word"),
    [
        (["--patience", "0"], "patience"),
        (["--dataset", "wine", "--label-column", "x"], "label"),
        (["--dataset", ""], "dataset"),
    ],
)
def test_settings_that_would_be_ignored_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], word: str
) -> None:
    refused_untouched(train(tmp_path, "x", "--model", "mlp", *flags), tmp_path, capsys, word)


# -- lr = "auto": chosen before the folder exists, kept on resume --------------------------------
def test_lr_auto_chooses_before_the_run_folder_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from steepest import lr as learning_rate_tools

    def fails(*args, **kwargs):
        raise RuntimeError("the choice failed")

    monkeypatch.setattr(learning_rate_tools, "choose_lr", fails)
    argv = ["train", "--runs-dir", str(tmp_path), "--name", "auto", "--model", "mlp", "--dataset", "wine"]
    with pytest.raises(RuntimeError, match="the choice failed"):
        cli.main([*argv, "--lr", "auto", "--epochs", "1", "--quiet"])
    assert not (tmp_path / "auto").exists()  # once left behind, half made


def test_a_resumed_lr_auto_run_keeps_its_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from steepest import lr as learning_rate_tools

    argv = ["train", "--runs-dir", str(tmp_path), "--name", "auto", "--model", "mlp", "--dataset", "wine"]
    assert cli.main([*argv, "--lr", "auto", "--optimizer", "sgd", "--epochs", "1", "--quiet"]) == 0
    record = (tmp_path / "auto" / "lr_choice.json").read_bytes()

    def fails(*args, **kwargs):
        raise AssertionError("a resumed run chose its rate again")

    monkeypatch.setattr(learning_rate_tools, "choose_lr", fails)
    assert cli.main(["train", "--resume", str(tmp_path / "auto"), "--epochs", "2", "--quiet"]) == 0
    assert (tmp_path / "auto" / "lr_choice.json").read_bytes() == record


# -- found by a second audit ---------------------------------------------------------------------
@pytest.mark.parametrize("model", ["ForwardRaises", "Vector", "TooWide"])
def test_lr_find_refuses_a_model_that_does_not_fit_the_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], user_models: None, model: str
) -> None:
    argv = ["lr-find", "--model", f"user_models_for_safety:{model}", "--dataset", "wine"]
    refused([*argv, "--steps", "10", "--repeats", "1", "-o", str(tmp_path / "lr.png")], capsys, model)
    assert not (tmp_path / "lr.png").exists()


def test_lr_find_refuses_a_sweep_too_long_to_allocate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["lr-find", "--model", "mlp", "--dataset", "wine", "--steps", "1000000000"]
    refused([*argv, "-o", str(tmp_path / "lr.png")], capsys, "--steps", "at most 10000")


def test_features_beyond_float32_are_refused_before_the_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # finite in float64, inf once read as float32: the run diverged at step 1, advised a smaller rate
    rows = "\n".join(f"{i},{(i % 7) * 1e38},{i % 2}" for i in range(30))
    (tmp_path / "big.csv").write_text("a,b,label\n" + rows + "\n")
    refused(train(tmp_path / "runs", "big", "--model", "mlp", "--dataset", str(tmp_path / "big.csv")),
            capsys, "too large for float32")
    assert not (tmp_path / "runs" / "big").exists()


@pytest.mark.parametrize("policy", [[], ["--on-nonfinite", "stop"], ["--on-spike", "skip"]])
def test_a_run_that_meets_a_non_finite_loss_exits_as_diverged_whatever_the_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], policy: list[str]
) -> None:
    # "stop" is the default: spelling it out (or guarding spikes) once turned exit 1 into exit 0
    argv = train(tmp_path, "nan", "--model", "mlp", "--dataset", "wine", "--lr", "1e308", *policy)
    assert cli.main(argv) == 1
    out = capsys.readouterr().out
    assert "stopped by diverged" in out and "stopped by stopped by" not in out
