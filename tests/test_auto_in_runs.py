"""lr="auto" inside a run: fit and ``steepest train`` choose on the run's own steps, record the
choice, and a resumed run continues with it (never choosing again)."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

import steepest
from steepest import cli
from steepest import lr as learning_rate_tools
from steepest.train import fit, load_checkpoint

pytestmark = pytest.mark.usefixtures("single_thread")


def problem(n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(n, 6, generator=generator)
    return X, (X[:, 0] - X[:, 2] > 0).long()


def model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2))


class Examples(Dataset):
    """A Dataset that is not a TensorDataset: fit batches it with a DataLoader."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.inputs, self.targets = inputs, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[index], self.targets[index]


def spy_on_the_choice(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Record what ``choose_lr`` is asked; answer at once with a fixed choice (the run's rate 0.05)."""
    asked: list[dict] = []

    def choose(model, data, optimizer, **settings):
        asked.append({"data": data, **settings})
        cls = steepest.rules.by_name(optimizer) if isinstance(optimizer, str) else optimizer
        return learning_rate_tools.LRChoice(
            0.05, cls, "range_test", "a spy", options=dict(settings["options"])
        )

    monkeypatch.setattr(learning_rate_tools, "choose_lr", choose)
    return asked


# -- fit --------------------------------------------------------------------------------------------
def test_lr_auto_on_a_dataset_chooses_and_trains_as_the_run_given_that_rate() -> None:
    # a Dataset fit documents as accepted: the choice once refused it ("data must be None, an
    # (X, y) pair or an iterable of batches, got Examples"); its own shuffled batches leave the
    # run's shuffling generator alone, so the run is the one given the rate chosen
    X, y = problem()
    auto = fit(model(), Examples(X, y), "cross_entropy", "rmsprop", lr="auto", max_steps=6)
    choice = auto.lr_choice
    assert choice.method is steepest.RMSprop and choice.policy == "range_test" and choice.evaluations > 0
    given = fit(model(), Examples(X, y), "cross_entropy", "rmsprop", lr=choice.lr, max_steps=6)
    assert [record.loss for record in auto.history] == [record.loss for record in given.history]
    # a TensorDataset of two tensors is the (X, y) pair it holds, for the choice as for the run
    from_pair = fit(model(), (X, y), "cross_entropy", "rmsprop", lr="auto", max_steps=1).lr_choice
    assert fit(
        model(), TensorDataset(X, y), "cross_entropy", "rmsprop", lr="auto", max_steps=1
    ).lr_choice.lr == (from_pair.lr)


def test_lr_auto_chooses_with_the_runs_clipping_and_accumulated_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked = spy_on_the_choice(monkeypatch)
    X, y = problem()
    sgd = functools.partial(steepest.SGD, momentum=0.9)
    result = fit(
        model(),
        (X, y),
        "cross_entropy",
        sgd,
        lr="auto",
        max_steps=2,
        clip_norm=0.01,
        batch_size=16,
        accumulate=4,
    )
    assert asked[-1]["options"] == {"momentum": 0.9, "clip_norm": 0.01}  # was {"momentum": 0.9}
    assert asked[-1]["batch_size"] == 64  # a step of the run: 4 micro-batches of 16
    assert result.lr_choice.options["clip_norm"] == 0.01
    # torch's SGD has no clip_norm of its own (fit clips for it): the choice cannot take one
    fit(model(), (X, y), "cross_entropy", torch.optim.SGD, lr="auto", max_steps=1, clip_norm=0.01)
    assert asked[-1]["options"] == {}


def test_a_resumed_lr_auto_fit_keeps_the_choice_its_checkpoint_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    X, y = problem()
    first = fit(model(), (X, y), "cross_entropy", "rmsprop", lr="auto", max_steps=4, checkpoint_dir=tmp_path)
    saved = load_checkpoint(sorted(tmp_path.glob("step-*.pt"))[-1])  # weights_only
    assert saved["lr_choice"]["lr"] == first.lr_choice.lr

    def chooses_again(*args, **kwargs):
        raise AssertionError("a resumed run chose its rate again")

    monkeypatch.setattr(learning_rate_tools, "choose_lr", chooses_again)
    # a fresh model, as a restarted script builds it: chosen again, it reported another rate
    resumed = fit(
        model(),
        (X, y),
        "cross_entropy",
        "rmsprop",
        lr="auto",
        max_steps=8,
        checkpoint_dir=tmp_path,
        resume=True,
    )
    choice = resumed.lr_choice
    assert (choice.lr, choice.method, choice.evaluations) == (
        first.lr_choice.lr,
        steepest.RMSprop,
        first.lr_choice.evaluations,
    )
    assert {record.lr for record in resumed.history} == {choice.lr}  # the rate it reports is the one that ran
    # a checkpoint of a run given its rate holds no choice to continue with
    fit(model(), (X, y), "cross_entropy", "rmsprop", lr=0.01, max_steps=2, checkpoint_dir=tmp_path / "given")
    with pytest.raises(ValueError, match=r"no record of an lr='auto' choice \(it was taken with lr=0.01\)"):
        fit(
            model(),
            (X, y),
            "cross_entropy",
            "rmsprop",
            lr="auto",
            max_steps=4,
            checkpoint_dir=tmp_path / "given",
            resume=True,
        )


# -- steepest train ----------------------------------------------------------------------------------
def train(runs: Path, name: str, *more: str) -> list[str]:
    return [
        "train",
        "--runs-dir",
        str(runs),
        "--name",
        name,
        "--model",
        "softmax",
        "--dataset",
        "wine",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        *more,
    ]


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished ``--lr auto`` run: RMSprop's rate chosen by a range test and trials."""
    runs = tmp_path_factory.mktemp("runs")
    assert cli.main(train(runs, "auto", "--optimizer", "rmsprop", "--lr", "auto", "--quiet")) == 0
    return runs / "auto"


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
    }


def test_lr_choice_json_holds_the_cost_and_the_measurements(auto_run: Path) -> None:
    choice = json.loads((auto_run / "lr_choice.json").read_text())
    assert (choice["method"], choice["policy"], choice["options"]) == ("RMSprop", "range_test", {})
    assert choice["evaluations"] > 0 and f"; {choice['evaluations']} evaluations" in choice["reason"]
    assert set(choice["suggestions"]) == set(learning_rate_tools.RULES) and choice["spread"] == 1.0
    # every trial, [rate, score]; the rate chosen is one of them (the largest near the best)
    assert choice["lr"] in [rate for rate, _ in choice["trials"]]
    assert "curvature" not in choice  # measured by the curvature policy only


def test_the_report_shows_what_ran_and_why(auto_run: Path) -> None:
    # it said optimizer rmsprop, lr auto
    page = (auto_run / "report.html").read_text()
    choice = json.loads((auto_run / "lr_choice.json").read_text())
    assert "<td>RMSprop (auto, for rmsprop)</td>" in page and f"<td>{choice['lr']:.4g} (auto)</td>" in page
    assert f"{choice['evaluations']} evaluations (range_test)" in page and "took the largest within" in page


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        # the checkpoint holds RMSprop's state: Adam loaded it silently
        (lambda choice: choice.update(method="Adam"), ["method='Adam'", "holds the state of RMSprop"]),
        (lambda choice: choice.update(method="Bogus"), ["unknown method='Bogus'"]),
        (
            lambda choice: choice.update(lr=0),
            ["lr must be a positive finite number, got lr=0"],
        ),  # trained at 0
        (lambda choice: choice.update(lr=-5), ["got lr=-5"]),  # a traceback after config.toml was rewritten
        (lambda choice: choice.update(lr=math.inf), ["got lr=inf"]),
        (lambda choice: choice.update(lr="0.1"), ["got lr='0.1'"]),
        (lambda choice: choice.update(options={"bogus": 1}), ["bogus"]),  # a traceback, as lr=-5
        (lambda choice: choice.update(options={"momentum": -1.0}), ["momentum"]),
        (lambda choice: choice.pop("lr"), ["it has no lr"]),
        (lambda choice: choice.update(trials="many"), ["measurements are damaged"]),
    ],
)
def test_a_resume_refuses_a_saved_choice_it_cannot_continue_with(
    auto_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], edit, words: list[str]
) -> None:
    run = Path(shutil.copytree(auto_run, tmp_path / "auto"))
    choice = json.loads((run / "lr_choice.json").read_text())
    edit(choice)
    (run / "lr_choice.json").write_text(json.dumps(choice))
    refused_untouched(
        ["train", "--resume", str(run), "--epochs", "2"],
        tmp_path,
        capsys,
        "its lr_choice.json is damaged",
        *words,
    )


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda path: path.unlink(), ["lr_choice.json", "is missing"]),  # it chose again, silently
        (lambda path: path.write_text("{not json"), ["lr_choice.json cannot be read"]),
        (lambda path: path.write_text("[1, 2]"), ["is damaged", "not a record of a choice"]),
    ],
)
def test_a_resume_refuses_a_missing_or_unreadable_lr_choice_json(
    auto_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage, words: list[str]
) -> None:
    run = Path(shutil.copytree(auto_run, tmp_path / "auto"))
    damage(run / "lr_choice.json")
    refused_untouched(["train", "--resume", str(run), "--epochs", "2"], tmp_path, capsys, *words)


def refused_untouched(argv: list[str], root: Path, capsys: pytest.CaptureFixture[str], *words: str) -> None:
    """One line on stderr, exit code 2, no traceback, nothing under ``root`` changed."""
    before = snapshot(root)
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("steepest: error: cannot resume"), err
    for word in words:
        assert word in lines[0], lines[0]
    assert snapshot(root) == before


def test_the_choice_sees_the_runs_clipping_and_accumulation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = spy_on_the_choice(monkeypatch)
    argv = train(
        tmp_path,
        "clipped",
        "--optimizer",
        "sgd",
        "--momentum",
        "0.9",
        "--lr",
        "auto",
        "--clip-norm",
        "0.01",
        "--accumulate",
        "2",
        "--quiet",
    )
    assert cli.main(argv) == 0
    assert asked[0]["options"] == {"momentum": 0.9, "clip_norm": 0.01} and asked[0]["batch_size"] == 64
    assert json.loads((tmp_path / "clipped" / "lr_choice.json").read_text())["options"]["clip_norm"] == 0.01


def test_quiet_keeps_the_choice_quiet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spy_on_the_choice(monkeypatch)
    assert cli.main(train(tmp_path, "quiet", "--optimizer", "sgd", "--lr", "auto", "--quiet")) == 0
    assert capsys.readouterr().out == ""  # it printed "lr auto: lr=0.05 with SGD ..."
    assert cli.main(train(tmp_path, "said", "--optimizer", "sgd", "--lr", "auto", "--progress", "plain")) == 0
    assert "lr auto: lr=0.05 with SGD (range_test): a spy" in capsys.readouterr().out
