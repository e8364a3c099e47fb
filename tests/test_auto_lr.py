"""choose_lr and minimize(lr="auto"): the policy, the reason, the cost, and steps to a target
against the best rate of a log grid (the oracle of benchmarks/tuning_free.py) on the ANCHORS
problems, for the Adam family (Prodigy) and for SGD with momentum (range test, then trials)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from steepest import problems
from steepest import stopping as st
from steepest.lr.auto import LRChoice, choose_lr, is_adam_family
from steepest.minimize import minimize
from steepest.rules import SGD, Adam, AdamW, Prodigy

MOMENTUM = {"momentum": 0.9}
# The benchmark's grid: 13 rates, half a decade apart.
GRID = np.geomspace(1e-4, 1e2, 13)


def steps_to_target(problem, x0, method, lr, options=None, max_iter=3000):
    """Iterations of minimize to f* + 1e-4 (f(x0) - f*), or None when it did not get there."""
    target = problem.f_star + 1e-4 * (float(problem(x0)) - problem.f_star)
    run = minimize(
        problem, x0, method, lr=lr, options=options, max_iter=max_iter, gtol=None, stopping=st.target(target)
    )
    return (run.nit if run.status == st.Status.TARGET_REACHED else None), run


def grid_oracle(problem, x0, method, rates, options=None, max_iter=1000):
    """The fewest steps over ``rates`` (each run capped: a slower one cannot be the oracle)."""
    steps = [steps_to_target(problem, x0, method, float(lr), options, max_iter)[0] for lr in rates]
    return min(s for s in steps if s is not None)


def test_adam_family_detection():
    assert is_adam_family("adamw") and is_adam_family(Adam) and is_adam_family(torch.optim.AdamW)
    assert not is_adam_family(SGD) and not is_adam_family("sgd")


def test_adam_family_gets_prodigy_at_no_cost():
    choice = choose_lr(problems.rosenbrock(), optimizer=AdamW)
    assert isinstance(choice, LRChoice)
    assert choice.method is Prodigy and choice.lr == 1.0 and choice.evaluations == 0
    assert "Adam-family" in choice.reason


def test_adam_family_on_mini_batches_gets_prodigy_at_half_rate(single_thread):
    model = torch.nn.Linear(4, 3)
    data = (torch.randn(64, 4), torch.randint(0, 3, (64,)))
    choice = choose_lr(model, data, "adam")
    assert choice.method is Prodigy and choice.lr == 0.5 and choice.evaluations == 0
    assert "mini-batches" in choice.reason


@pytest.mark.parametrize(
    ("name", "make", "x0"),
    [
        ("quadratic", lambda: problems.quadratic(100, 1e3), None),
        ("logistic", lambda: problems.logistic_regression("breast_cancer"), None),
    ],
)
def test_sgd_momentum_auto_is_within_1_2x_of_the_grid_oracle(name, make, x0, single_thread):
    """Measured 0.95x (quadratic, oracle 85 steps at 3.2e-3) and 0.98x (logistic, 113 at 3.2).
    The sweep's consensus that lr='auto' used before took 21x and 111x: this fails for it."""
    problem = make()
    x0 = problem.x0 if x0 is None else x0
    oracle = grid_oracle(problem, x0, "sgd", GRID, MOMENTUM, max_iter=300)  # the oracle needs < 120
    steps, run = steps_to_target(problem, x0, "sgd", "auto", MOMENTUM)
    choice = run.lr_choice
    assert choice.method is SGD and choice.policy == "range_test"
    assert steps is not None and steps <= 1.2 * oracle, (steps, oracle, choice.reason)
    # what choosing cost (sweep + trials; measured 102 and 130) is reported, and stays bounded
    assert 0 < choice.evaluations <= 200, choice.reason


def test_the_choice_follows_its_trials(single_thread):
    """The rate is the largest trial rate within ``tolerance`` of the best trial, every trial is a
    halving of the one before, and the cost adds the sweep's and the trials' evaluations."""
    problem = problems.quadratic(20, 100.0)
    choice = choose_lr(problem, optimizer="sgd", options=MOMENTUM, tolerance=1.5, trial_steps=20)
    rates = [rate for rate, _ in choice.trials]
    scores = [score for _, score in choice.trials]
    assert len(rates) >= 2 and np.allclose(np.diff(np.log2(rates)), -1.0)
    best = min(scores)
    assert math.isfinite(best)
    assert choice.lr == max(rate for rate, score in choice.trials if score <= 1.5 * best)
    sweep = choice.range_test
    sweep_cost = sum(len(sweep.lrs) if stop is None else stop + 1 for stop in sweep.stopped_at)
    assert sweep_cost < choice.evaluations <= sweep_cost + 20 * len(rates)
    # every trial rate is below the point where the sweep's loss reached 4x its start
    curve = sweep.smoothed[0]
    blow_up = sweep.lrs[np.argmax(~(curve < 4 * curve[0]))]
    assert rates[0] <= blow_up / 2 * (1 + 1e-9)


def test_a_diverging_trial_fails_cheaply_and_is_never_chosen(single_thread):
    """On the quadratic the sweep's ceiling lies above the stability limit 2 (1 + 0.9) / 1000:
    trials there blow up within a few steps (a full trial is 40)."""
    problem = problems.quadratic(100, 1e3)
    choice = choose_lr(problem, optimizer="sgd", options=MOMENTUM, steps=50)
    limit = 2 * 1.9 / 1e3
    for rate, score in choice.trials:
        assert math.isinf(score) == (rate > limit), choice.reason
    assert choice.lr < limit


def test_mini_batches_run_longer_trials_and_restore_everything(single_thread):
    torch.manual_seed(0)
    X = torch.randn(256, 8)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).long()
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    before = [p.detach().clone() for p in model.parameters()]
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    choice = choose_lr(model, (X, y), "sgd", options=MOMENTUM, batch_size=32)
    assert torch.equal(torch.rand(3), expected_next)  # the random state is as it was
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert choice.method is SGD and "x 80 steps" in choice.reason and choice.evaluations > 80
    # the chosen rate trains: plain fit-style steps at it reduce the loss
    optimizer = SGD(model.parameters(), lr=choice.lr, **MOMENTUM)
    with torch.no_grad():
        start = float(torch.nn.functional.cross_entropy(model(X), y))
    for _ in range(50):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(X), y).backward()
        optimizer.step()
    with torch.no_grad():
        assert float(torch.nn.functional.cross_entropy(model(X), y)) < 0.5 * start


def test_when_every_trial_fails_it_falls_back_to_the_sweep_and_says_so(single_thread):
    flat = lambda x: 1.0 + 0.0 * x.sum()  # noqa: E731 - the loss can never fall below its start
    choice = choose_lr(flat, optimizer="sgd", x0=torch.zeros(2), trial_steps=5)
    assert all(math.isinf(score) for _, score in choice.trials)
    assert "every trial failed" in choice.reason and choice.lr == choice.range_test.consensus


def test_policy_range_test_forces_a_sweep_for_adam(single_thread):
    choice = choose_lr(problems.quadratic(20, 10.0), optimizer="adam", policy="range_test")
    assert choice.method is Adam and choice.evaluations > 0 and choice.trials


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"policy": "magic"}, ValueError, "policy"),
        ({"optimizer": 3}, TypeError, "optimizer"),
        ({"max_spread": 0.5}, ValueError, "max_spread"),
        ({"optimizer": "sgd", "options": {"lr": 1.0}}, ValueError, "options"),
        ({"optimizer": "sgd", "trial_steps": 2}, ValueError, "trial_steps"),
        ({"optimizer": "sgd", "tolerance": 0.5}, ValueError, "tolerance"),
    ],
)
def test_bad_arguments(kwargs, error, name):
    with pytest.raises(error, match=name):
        choose_lr(problems.rosenbrock(), **kwargs)


def test_minimize_auto_reports_its_choice():
    result = minimize(problems.rosenbrock(), None, "adam", lr="auto", max_iter=50)
    assert result.lr_choice is not None and result.method == "Prodigy"
    assert "lr_choice" in str(result) and "Prodigy" in str(result)
    with pytest.raises(ValueError, match="lr"):
        minimize(problems.rosenbrock(), None, "adam", lr="fast")


ANCHORS = [
    ("quadratic", lambda: problems.quadratic(100, 1e3), None),
    ("rosenbrock", lambda: problems.rosenbrock(2), torch.tensor([-1.5, 2.0], dtype=torch.float64)),
    ("logistic", lambda: problems.logistic_regression("breast_cancer"), None),
]


@pytest.mark.parametrize(("name", "make", "x0"), ANCHORS, ids=[a[0] for a in ANCHORS])
def test_adam_auto_is_within_1_2x_of_the_adam_grid_oracle(name, make, x0, single_thread):
    """Target: f* + 1e-4 (f(x0) - f*). Oracle: best of Adam over 13 rates 1e-4 .. 1e2 (measured
    107, 404, 111 steps at lr=1; Prodigy 1.02x, 0.97x, 0.84x); only the grid's neighbourhood of
    the optimum is re-run here."""
    problem = make()
    x0 = problem.x0 if x0 is None else x0
    oracle = grid_oracle(problem, x0, "adam", GRID[6:10], max_iter=3000)  # 0.1 .. 3.16
    steps, run = steps_to_target(problem, x0, "adam", "auto")
    assert steps is not None, run.message
    assert steps + run.lr_choice.evaluations <= 1.2 * oracle


def test_a_one_shot_iterator_of_batches_serves_the_sweep_and_every_trial(single_thread):
    torch.manual_seed(0)
    batches = [(torch.randn(16, 4), torch.randint(0, 2, (16,))) for _ in range(8)]
    model = torch.nn.Linear(4, 2)
    settings = dict(steps=10, trial_steps=8, max_lr=10.0)
    from_list = choose_lr(model, batches, "sgd", **settings)
    from_iterator = choose_lr(model, iter(batches), "sgd", **settings)
    assert from_iterator.trials == from_list.trials and from_iterator.lr == from_list.lr


def test_plain_gradient_descent_is_not_given_a_rate_that_throws_the_loss_back_up(single_thread):
    # lr 50 on softmax regression: its 40-step trial ends low between two bursts (the loss back
    # at 3x its start at step 20), so its score beat every smaller rate; 500 steps at it end at
    # a loss of 5.6, where the rate now chosen ends below 0.1.
    problem = problems.softmax_regression()
    choice = choose_lr(problem, optimizer="sgd")
    assert (50.0, math.inf) in choice.trials
    assert choice.lr <= 25.0
    result = minimize(problem, problem.x0, "sgd", lr=choice.lr, max_iter=500, gtol=None)
    assert result.fun < 0.1
    # With momentum the loss may rise above its start and the rate still be the best: no such test.
    heavy_ball = choose_lr(problem, optimizer="sgd", options={"momentum": 0.9})
    assert all(math.isfinite(score) for rate, score in heavy_ball.trials if rate < 20)
