"""steepest.lr.compare and three_regimes: runs from one start that match minimize's own, the
three regimes ordered as the documents describe them, pictures that are real images, and
bad input refused before any run."""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import image

import steepest
from steepest import problems
from steepest.lr import Comparison, Diagnosis, RunSpec, choose_lr, compare, three_regimes
from steepest.minimize import minimize

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The module, not the function of the same name that steepest.lr exports.
compare_module = importlib.import_module("steepest.lr.compare")


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def regimes() -> Comparison:
    """SGD on Rosenbrock at good / 30, good, good * 30, the good rate chosen as lr="auto" would."""
    return three_regimes("rosenbrock", "sgd", steps=300)


def read_png(path: Path) -> np.ndarray:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5000
    return image.imread(path)


# --------------------------------------------------------------------------- the three regimes


def test_three_regimes_takes_the_rate_lr_auto_picks_and_factors_of_30(regimes: Comparison) -> None:
    choice = choose_lr(problems.rosenbrock(), optimizer="sgd")
    assert choice.policy == "curvature"  # SGD on an objective: 0.9 of the start's stable limit
    small, good, large = (run.spec for run in regimes.runs)
    assert (small.label, good.label, large.label) == ("too small", "good", "too large")
    assert good.lr == pytest.approx(choice.lr, rel=1e-12)
    assert small.lr == pytest.approx(choice.lr / 30) and large.lr == pytest.approx(choice.lr * 30)
    assert f"{choice.lr:.3g}" in regimes.notes[0] and "curvature" in regimes.notes[0]


def test_three_regimes_search_around_a_curvature_rate_that_diverges() -> None:
    # Himmelblau starts at a saddle: the start's curvature gives 0.043, which diverges on the
    # way to the minimum (lr="auto" backs off there). The picture needs a rate good all along.
    comparison = three_regimes("himmelblau", "sgd", steps=200)
    small, good, large = comparison.runs
    curvature = choose_lr(problems.himmelblau(), optimizer="sgd").lr
    assert good.spec.lr == pytest.approx(curvature / math.sqrt(10))  # the best of six, in full
    assert not good.diverged and good.final_loss < 1e-8 and large.diverged
    assert f"the start's curvature gave {curvature:.3g}, which diverged along the path" in comparison.notes[0]
    # where the diagnosis disagrees with a run's label, a note says so: the crawl from the origin
    # moves the parameters by a large fraction of their (tiny) norm, which reads as no crawl
    disagreeing = [run for run in comparison.runs if run.regime.replace("_", " ") != run.spec.label]
    assert [run.spec.label for run in disagreeing] == ["too small"]
    assert len(comparison.notes) == 1 + len(disagreeing)
    for run, note in zip(disagreeing, comparison.notes[1:]):
        assert repr(run.spec.label) in note and repr(run.regime) in note


@pytest.mark.parametrize("optimizer", ["rmsprop", "lion"])
def test_three_regimes_of_a_range_tested_optimizer_end_in_the_documents_order(optimizer: str) -> None:
    # RMSprop's range test chose 0.25 on Rosenbrock, which ended at 10 where the "too small"
    # run (0.0083) reached 0.58: the picture showed the regimes the wrong way round.
    comparison = three_regimes("rosenbrock", optimizer, steps=500)
    small, good, large = comparison.runs
    assert good.final_loss < small.final_loss and good.final_loss < large.final_loss
    assert (
        "its range test chose" in comparison.notes[0] and "went furthest in 500 steps" in comparison.notes[0]
    )


def test_three_regimes_of_adam_use_adams_own_rate_not_prodigys() -> None:
    # lr="auto" runs Adam as Prodigy; the picture is of Adam, around the rate its range test found
    comparison = three_regimes("rosenbrock", "adam", steps=50)
    tested = choose_lr(problems.rosenbrock(), optimizer="adam", policy="range_test")
    assert tested.method is steepest.Adam
    rates = [tested.lr * 10 ** (k / 2) for k in range(-3, 3)]
    assert min(abs(comparison.runs[1].spec.lr / rate - 1) for rate in rates) < 1e-12
    assert f"its range test chose {tested.lr:.3g}" in comparison.notes[0]


def test_three_regimes_orders_the_runs_as_the_documents_describe(regimes: Comparison) -> None:
    small, good, large = regimes.runs
    # too small crawls: where it ends after 300 steps, the good rate was within 30
    assert small.final_loss > good.final_loss
    assert np.argmax(good.losses <= small.final_loss) < small.steps / 10
    assert not small.diverged and not good.diverged
    assert small.regime != "too_large" and good.regime == "good"
    # the live diagnosis reads each run as its label (at the range test's rate, 4x this one, the
    # crawl along the valley's floor at good / 30 read as "good")
    assert [run.regime.replace("_", " ") for run in regimes.runs] == ["too small", "good", "too large"]
    assert len(regimes.notes) == 1
    # too large blows up within a few steps, and the monitor says so with a cut to try
    assert large.diverged and large.steps < 20
    assert large.regime == "too_large"
    assert large.diagnoses[-1].regime == "too_large" and large.diagnoses[-1].factor < 1
    assert "too large" in large.advice


def test_every_run_starts_at_x0_and_its_path_matches_its_losses(regimes: Comparison) -> None:
    rosenbrock = problems.rosenbrock()
    for run in regimes.runs:
        assert run.trajectory.shape == (len(run.losses), 2)
        assert np.array_equal(run.trajectory[0], rosenbrock.x0.numpy())
        assert run.losses[0] == pytest.approx(24.2)
        finite = np.isfinite(run.losses)
        for point, loss in zip(run.trajectory[finite][::50], run.losses[finite][::50]):
            assert float(rosenbrock(torch.as_tensor(point))) == pytest.approx(loss, rel=1e-12)


def test_the_regimes_picture_is_a_two_panel_png(regimes: Comparison, tmp_path: Path) -> None:
    assert regimes.runs[2].diverged  # drawn up to where it diverged, with no error
    path = tmp_path / "regimes.png"
    regimes.plot(str(path))
    pixels = read_png(path)
    height, width = pixels.shape[:2]
    assert width > 2 * height * 0.9  # loss curves and paths side by side
    assert pixels[..., :3].std() > 0.05  # something is drawn, not a blank canvas


# --------------------------------------------------------------------------- compare


def test_each_run_is_the_run_minimize_makes() -> None:
    comparison = compare("rosenbrock", [("sgd", 1e-3), ("adam", 0.05, {"betas": (0.8, 0.99)})], steps=80)
    rosenbrock = problems.rosenbrock()
    for run, (method, lr, options) in zip(
        comparison.runs, [("sgd", 1e-3, {}), ("adam", 0.05, {"betas": (0.8, 0.99)})]
    ):
        alone = minimize(rosenbrock, rosenbrock.x0, method, lr=lr, options=options, max_iter=80)
        assert run.losses.tolist() == alone.history["fun"]
        assert np.array_equal(run.trajectory[-1], alone.x.numpy())
        assert run.steps == alone.nit == 80


def test_a_runs_options_name_it_in_the_table_and_the_legend() -> None:
    comparison = compare(
        "rosenbrock", [("sgd", 1e-3), ("sgd", 1e-3, {"momentum": 0.9})], steps=5, diagnose=False
    )
    table = comparison.summary().splitlines()
    assert table[1].startswith("sgd ") and "momentum" not in table[1]
    assert table[2].startswith("sgd momentum=0.9 ")
    assert RunSpec("adam", 0.05, {"betas": (0.8, 0.99)}).title == "adam betas=(0.8, 0.99) lr=0.05"
    assert RunSpec("sgd", None, {"momentum": 0.9}, label="heavy ball").title == "heavy ball"


def test_gtol_ends_a_converged_run_early_and_none_runs_every_step() -> None:
    runs = [("lbfgs", 1.0)]
    assert compare("rosenbrock", runs, steps=200).runs[0].steps < 100
    assert compare("quadratic", [("sgd", 1e-3)], steps=30, gtol=None).runs[0].steps == 30


def test_a_diverging_run_is_kept_up_to_where_it_diverged() -> None:
    comparison = compare("rosenbrock", [("sgd", 1.0), ("sgd", 1e-3)], steps=100)
    blown, fine = comparison.runs
    assert blown.diverged and not math.isfinite(blown.final_loss)
    assert np.isfinite(blown.losses[:-1]).all() and blown.losses[-2] > 1e10
    assert blown.regime == "too_large" and fine.regime == "good"
    assert "diverged" in blown.result.message


def test_a_problem_that_is_not_2d_gets_only_the_loss_panel(tmp_path: Path) -> None:
    comparison = compare(problems.quadratic(dim=5, condition=10), [RunSpec("sgd", 0.1)], steps=40)
    assert comparison.runs[0].trajectory is None
    path = tmp_path / "curves.png"
    comparison.plot(str(path))
    height, width = read_png(path).shape[:2]
    assert width < 1.6 * height


def test_a_callable_objective_with_an_explicit_start() -> None:
    def bowl(x: torch.Tensor) -> torch.Tensor:
        return ((x - 2.0) ** 2).sum()

    comparison = compare(bowl, [("sgd", 0.25)], steps=50, x0=torch.zeros(2, dtype=torch.float64))
    assert comparison.problem_name == "bowl" and comparison.minima == ()
    assert comparison.runs[0].final_loss < 1e-10


def test_summary_is_one_line_per_run() -> None:
    comparison = compare("rosenbrock", [("sgd", 1e-3), RunSpec("sgd", 1.0, label="blows up")], steps=30)
    header, *lines = comparison.summary().splitlines()
    assert header.split()[:2] == ["optimizer", "lr"] and header.endswith("run")
    assert len(lines) == 2
    assert lines[0].split()[:4] == ["sgd", "0.001", f"{comparison.runs[0].final_loss:.4g}", "30"]
    assert lines[1].split()[2:] == ["inf", str(comparison.runs[1].steps), "too_large", "blows", "up"]


def diagnosis(regime: str) -> Diagnosis:
    return Diagnosis(regime, (0, 19), {}, "test")


@pytest.mark.parametrize(
    ("regimes", "verdict"),
    [
        (["good", "too_small", "too_small"], "too_small"),
        (["too_small", "good", "good"], "good"),
        (["good", "too_large"], "too_large"),  # a tie: the warning wins
        ([], None),
    ],
)
def test_the_verdict_is_the_regime_of_most_windows(regimes: list[str], verdict: str | None) -> None:
    run = compare("rosenbrock", [("sgd", 1e-4)], steps=5).runs[0]
    run.diagnoses = [diagnosis(regime) for regime in regimes]
    assert run.regime == verdict


# --------------------------------------------------------------------------- bad input


BAD_INPUTS = {
    "unknown problem": (("no_such_problem", [("sgd", 0.1)]), {}, ValueError, "no_such_problem"),
    "unknown optimizer": (("rosenbrock", [("sgd", 0.1), ("sgdd", 0.1)]), {}, ValueError, "runs[1].optimizer"),
    "zero lr": (("rosenbrock", [("sgd", 0.0)]), {}, ValueError, "runs[0].lr"),
    "nan lr": (("rosenbrock", [("sgd", math.nan)]), {}, ValueError, "runs[0].lr"),
    "lr twice": (("rosenbrock", [("sgd", 0.1, {"lr": 0.2})]), {}, ValueError, "runs[0].options"),
    "rejected option": (("rosenbrock", [("sgd", 0.1, {"momentum": -1.0})]), {}, ValueError, "runs[0]"),
    "no runs": (("rosenbrock", []), {}, ValueError, "runs"),
    "not a run": (("rosenbrock", ["sgd"]), {}, TypeError, "runs[0]"),
    "zero steps": (("rosenbrock", [("sgd", 0.1)]), {"steps": 0}, ValueError, "steps"),
    "negative gtol": (("rosenbrock", [("sgd", 0.1)]), {"gtol": -1.0}, ValueError, "gtol"),
    "not a problem": ((3, [("sgd", 0.1)]), {}, TypeError, "problem"),
    "no start": ((lambda x: x.sum(), [("sgd", 0.1)]), {}, TypeError, "x0"),
}


@pytest.mark.parametrize(("args", "kwargs", "error", "name"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_is_refused_before_any_run(args, kwargs, error, name, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(compare_module, "minimize", lambda *a, **k: calls.append(a))
    with pytest.raises(error) as raised:
        compare(*args, **kwargs)
    assert name in str(raised.value)
    assert calls == []


def test_three_regimes_refuses_a_factor_that_does_not_separate_the_rates() -> None:
    with pytest.raises(ValueError, match="factor"):
        three_regimes("rosenbrock", "sgd", lr=1e-3, factor=1.0)
    with pytest.raises(ValueError, match="lr"):
        three_regimes("rosenbrock", "sgd", lr=-1e-3)


def test_three_regimes_of_a_closure_optimizer_choose_their_own_rate():
    """L-BFGS steps with a closure: the range test behind the good rate must give it one."""
    comparison = three_regimes("rosenbrock", "lbfgs", steps=15)
    assert len(comparison.runs) == 3
    assert all(math.isfinite(run.final_loss) for run in comparison.runs[:2])


@pytest.mark.parametrize("method", ["newton", "newtoncg"])
def test_three_regimes_of_newton_give_its_closure_a_graph_to_differentiate_again(method: str) -> None:
    # `steepest compare rosenbrock --optimizer newton --regimes` ended in a traceback: the range
    # test behind the good rate called plain loss.backward(), freeing the graph Newton's
    # Hessian needs ("Newton differentiates the loss twice, but its graph was freed").
    comparison = three_regimes("rosenbrock", method, steps=15)
    assert len(comparison.runs) == 3
    assert all(math.isfinite(run.final_loss) for run in comparison.runs)
    assert all(run.losses[-1] < run.losses[0] for run in comparison.runs)  # each one descends


def test_the_table_shows_the_rate_a_run_took_by_default() -> None:
    # it printed "default" where the rate was the optimizer's own 1e-3
    table = compare("rosenbrock", [("sgd", None), ("adam", 0.01)], steps=5).summary()
    assert "0.001 (default)" in table and "0.01 " in table
