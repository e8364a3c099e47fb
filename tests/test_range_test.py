"""The learning-rate range test: it leaves no trace, its rules read the curve right, its
suggestions train well on real problems, and it is reproducible."""

from __future__ import annotations

import copy
import functools
import math
import random

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_digits
from torch import nn
from torch.nn import functional as F

import steepest
from steepest.lr import RULES, RangeTestResult, lr_find_summary, range_test

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


@functools.cache
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_digits()
    images = torch.tensor(data.data, dtype=torch.float32)
    return (images - images.mean(0)) / (images.std(0) + 1e-6), torch.tensor(data.target)


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


class Bowl:
    """f(x) = 1/2 sum_i lambda_i x_i^2 + ..., eigenvalues 1..100: gradient descent is stable
    for lr < 2 / 100 = 0.02 and fastest near 0.01-0.02."""

    def __init__(self) -> None:
        self.eigenvalues = torch.tensor(np.geomspace(1.0, 100.0, 20))
        self.x_star = torch.tensor(np.random.default_rng(0).standard_normal(20))
        self.x0 = torch.zeros(20, dtype=torch.float64)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.eigenvalues * (x - self.x_star) ** 2).sum()


class LogisticRegression:
    """Mean log-loss + 1e-3/2 ||w||^2 on standardised breast-cancer features; x = [w, b]."""

    def __init__(self) -> None:
        data = load_breast_cancer()
        self.features = torch.tensor((data.data - data.data.mean(0)) / data.data.std(0))
        self.labels = torch.tensor(data.target, dtype=torch.float64)
        self.x0 = torch.zeros(31, dtype=torch.float64)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.features @ x[:-1] + x[-1]
        return F.binary_cross_entropy_with_logits(logits, self.labels) + 5e-4 * (x[:-1] ** 2).sum()


def train_objective(objective, optimizer_class, lr: float, steps: int) -> float:
    x = objective.x0.clone().requires_grad_()
    optimizer = optimizer_class([x], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = objective(x)
        loss.backward()
        optimizer.step()
    value = objective(x).item()
    return value if math.isfinite(value) else math.inf


def train_digits(optimizer_class, lr: float, steps: int = 150) -> float:
    images, labels = digits()
    model = mlp()
    optimizer = optimizer_class(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(0)
    taken = 0
    while taken < steps:
        for index in torch.randperm(len(labels), generator=order).split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(images[index]), labels[index]).backward()
            optimizer.step()
            taken += 1
            if taken == steps:
                break
    with torch.no_grad():
        value = F.cross_entropy(model(images), labels).item()
    return value if math.isfinite(value) else math.inf


# -- it leaves no trace ----------------------------------------------------------------------------
class Net(nn.Module):
    """Parameters, a frozen parameter, BatchNorm buffers (one of them an integer) and dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2))
        self.head = nn.Linear(32, 10)
        self.frozen = nn.Parameter(torch.ones(3), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    return {
        "state": copy.deepcopy(model.state_dict()),
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "modes": [m.training for m in model.modules()],
        "optimizer": copy.deepcopy(optimizer.state_dict()),
    }


def assert_same(before: dict, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    after = snapshot(model, optimizer)
    for name, tensor in before["state"].items():
        assert torch.equal(tensor, after["state"][name]), name
    for old, new in zip(before["grads"], after["grads"]):
        assert (old is None and new is None) or torch.equal(old, new)
    assert before["modes"] == after["modes"]
    assert before["optimizer"]["param_groups"] == after["optimizer"]["param_groups"]
    for index, state in before["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, after["optimizer"]["state"][index][key]), (index, key)


def test_restores_model_caller_optimizer_and_random_state_bit_for_bit() -> None:
    images, labels = digits()
    model = Net()
    optimizer = steepest.Adam(model.parameters(), lr=1e-3)  # the caller's, with state
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(model(images[:32]), labels[:32]).backward()
        optimizer.step()
    model.eval()  # the sweep trains; the model must come back in eval mode
    grads_before = [p.grad for p in model.parameters()]
    before = snapshot(model, optimizer)
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    rng = (torch.get_rng_state(), np.random.get_state(), random.getstate())

    seen = {}

    def loss_fn(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        seen["weight"] = model.head.weight.detach().clone()
        seen["training"] = model.training
        return F.cross_entropy(output, target)

    range_test(model, (images, labels), steepest.SGD, loss_fn=loss_fn, max_lr=100.0, steps=40, repeats=2)

    # It really trained, in train mode, far from the start (a missing restore would show) ...
    assert seen["training"]
    assert (seen["weight"] - before["state"]["head.weight"]).abs().max() > 0.1
    # ... and everything is back: values, buffers (num_batches_tracked too), gradients (the
    # same tensor objects), train/eval flags, the caller's optimizer, the three random states.
    assert_same(before, model, optimizer)
    assert all(p.grad is g for p, g in zip(model.parameters(), grads_before))
    assert torch.equal(torch.get_rng_state(), rng[0])
    assert np.random.get_state()[1].tolist() == rng[1][1].tolist()
    assert random.getstate() == rng[2]


def test_restores_even_when_the_loss_fails() -> None:
    images, labels = digits()
    model = mlp()
    before = copy.deepcopy(model.state_dict())
    calls = []

    def failing_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        if len(calls) > 10:
            raise RuntimeError("data loader broke")
        return F.cross_entropy(output, target)

    with pytest.raises(RuntimeError, match="data loader broke"):
        range_test(model, (images, labels), steepest.SGD, loss_fn=failing_loss, max_lr=1e3, steps=30)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_restores_a_buffer_the_model_rebinds_and_what_reading_the_data_drew() -> None:
    # A buffer rebound in forward (`self.seen = self.seen + n`, not in place) kept the sweep's
    # count, from one repeat to the next too; a generator of batches that draws from numpy and
    # random as it yields was read before the random states were saved.
    generator = torch.Generator().manual_seed(0)
    X, y = torch.randn(256, 6, generator=generator), torch.randint(0, 3, (256,), generator=generator)

    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(6, 3)
            self.register_buffer("seen", torch.zeros(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.training:
                self.seen = self.seen + x.shape[0]
            return self.linear(x)

    def augmented():
        while True:
            index = torch.randint(0, 256, (32,))
            yield X[index] + np.random.rand() * random.random(), y[index]

    model = Counting()
    original = model.seen
    result = range_test(model, (X, y), steepest.SGD, steps=20, repeats=2)
    assert model.seen is original and float(model.seen) == 0.0
    assert result.losses.shape == (2, 20)
    batches, linear = augmented(), nn.Linear(6, 3)
    np.random.seed(7)
    random.seed(7)
    states = torch.get_rng_state(), np.random.get_state()[1].tolist(), random.getstate()
    range_test(linear, batches, steepest.SGD, steps=10, repeats=1)
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.random.get_state()[1].tolist() == states[1] and random.getstate() == states[2]


# -- the sweep ---------------------------------------------------------------------------------------
def lr_probe(curve):
    """An objective whose loss is curve(current lr): the rules can be checked against a known curve."""
    holder = {}

    def factory(params):
        holder["optimizer"] = steepest.SGD(params, lr=1.0)
        return holder["optimizer"]

    def objective(x: torch.Tensor) -> torch.Tensor:
        lr = holder["optimizer"].param_groups[0]["lr"]
        return x.sum() * 0 + curve(lr)

    objective.x0 = torch.zeros(1, dtype=torch.float64)
    return objective, factory


def test_rules_on_a_known_curve() -> None:
    # Flat, then a smooth drop centred at lr = 1e-3 (steepest there in log lr), a minimum at
    # 3e-2, then a blow-up: every rule has a value we can compute by hand.
    def curve(lr: float) -> float:
        u = math.log10(lr)
        drop = 1.0 / (1.0 + math.exp(-4.0 * (u + 3.0)))
        return 2.0 - 1.5 * drop + max(0.0, u - math.log10(3e-2)) ** 2 * 50.0

    objective, factory = lr_probe(curve)
    result = range_test(objective, None, factory, min_lr=1e-6, max_lr=1.0, steps=121, repeats=2)
    grid_step = 10 ** (6 / 120)
    assert result.deterministic and result.repeats == 2
    assert result.suggestions["steepest"] == pytest.approx(1e-3, rel=grid_step**2 - 1)
    assert result.suggestions["minimum/10"] == pytest.approx(3e-3, rel=grid_step**2 - 1)
    assert 1e-3 < result.suggestions["valley"] < 3e-2  # on the descent, past its steepest point
    assert result.edge == pytest.approx(3e-2, rel=grid_step**2 - 1)
    assert result.consensus == pytest.approx(
        math.exp(np.median(np.log([v for vs in result.repeat_suggestions.values() for v in vs])))
    )


def test_exponential_and_linear_grids_and_the_divergence_stop() -> None:
    bowl = Bowl()
    result = range_test(bowl, None, steepest.SGD, min_lr=1e-5, max_lr=1.0, steps=50)
    np.testing.assert_allclose(result.lrs, np.geomspace(1e-5, 1.0, 50))
    (stop,) = set(result.stopped_at)
    # SGD diverges past 2/100; the smoothed loss needs a few steps to reach 4x its best.
    assert 0.02 < result.lrs[stop] < 1.0
    assert np.isnan(result.losses[0, stop + 1 :]).all() and np.isfinite(result.losses[0, : stop + 1]).all()
    linear = range_test(bowl, None, steepest.SGD, min_lr=1e-4, max_lr=0.05, steps=30, mode="linear")
    np.testing.assert_allclose(linear.lrs, np.linspace(1e-4, 0.05, 30))


def test_a_non_finite_loss_stops_the_sweep_and_is_not_read_by_the_rules() -> None:
    objective, factory = lr_probe(lambda lr: 1.0 / (1.0 + 100 * lr) if lr < 0.1 else math.nan)
    result = range_test(objective, None, factory, min_lr=1e-4, max_lr=1.0, steps=40, repeats=1)
    (stop,) = result.stopped_at
    assert math.isnan(result.losses[0, stop]) and result.lrs[stop] >= 0.1 > result.lrs[stop - 1]
    assert all(value < 0.1 for value in result.suggestions.values())
    assert result.consensus < 0.1


def test_batch_orders_differ_between_repeats_and_the_test_is_reproducible() -> None:
    images, labels = digits()
    first = range_test(mlp(), (images, labels), steepest.Adam, steps=40, repeats=3, seed=7)
    again = range_test(mlp(), (images, labels), steepest.Adam, steps=40, repeats=3, seed=7)
    other = range_test(mlp(), (images, labels), steepest.Adam, steps=40, repeats=3, seed=8)
    assert not first.deterministic and first.seeds == [7, 8, 9]
    assert not np.array_equal(first.losses[0], first.losses[1], equal_nan=True)
    np.testing.assert_array_equal(first.losses, again.losses)
    assert first.consensus == again.consensus
    # Repeat 1 of seed 7 is repeat 0 of seed 8: the seeds are the whole story.
    np.testing.assert_array_equal(first.losses[1], other.losses[0])
    low, high = first.band
    finite = np.isfinite(first.median)
    assert (low[finite] <= first.median[finite]).all() and (first.median[finite] <= high[finite]).all()
    assert first.spread >= 1.0


def test_dataloader_one_shot_iterator_and_list_of_batches() -> None:
    images, labels = digits()
    dataset = torch.utils.data.TensorDataset(images, labels)
    loader = torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True)
    by_loader = range_test(mlp(), loader, steepest.SGD, steps=30, repeats=2)
    assert by_loader.repeats == 2 and np.isfinite(by_loader.consensus)
    again = range_test(mlp(), loader, steepest.SGD, steps=30, repeats=2)
    np.testing.assert_array_equal(by_loader.losses, again.losses)  # the shuffle is seeded too
    batches = [(images[i : i + 64], labels[i : i + 64]) for i in range(0, 640, 64)]
    from_list = range_test(mlp(), batches, steepest.SGD, steps=30, repeats=2)
    from_iterator = range_test(mlp(), iter(batches), steepest.SGD, steps=30, repeats=2)
    assert from_list.losses.shape == from_iterator.losses.shape == (2, 30)


def test_factories_torch_optimizers_and_param_group_ratios() -> None:
    seen = []

    class Recording(torch.optim.SGD):
        def step(self, closure=None):
            seen.append([group["lr"] for group in self.param_groups])
            return super().step(closure)

    model = mlp()
    first, second = list(model[0].parameters()), list(model[2].parameters())

    def factory(params):
        assert [id(p) for p in params] == [id(p) for p in model.parameters()]
        return Recording([{"params": first, "lr": 1.0}, {"params": second, "lr": 0.1}])

    images, labels = digits()
    result = range_test(model, (images, labels), factory, min_lr=1e-4, max_lr=1e-2, steps=10, repeats=1)
    assert [rates[0] for rates in seen] == pytest.approx(result.lrs.tolist())
    assert all(rates[1] == pytest.approx(0.1 * rates[0]) for rates in seen)  # the ratio is kept
    sweep = {"min_lr": 1e-4, "max_lr": 1e-2, "steps": 10, "repeats": 1}
    by_name = range_test(mlp(), (images, labels), "adam", **sweep)
    by_class = range_test(mlp(), (images, labels), steepest.Adam, **sweep)
    np.testing.assert_array_equal(by_name.losses, by_class.losses)  # a command line passes names
    lbfgs = range_test(mlp(), (images, labels), torch.optim.LBFGS, max_lr=1.0, steps=10, repeats=1)
    assert np.isfinite(lbfgs.losses[0]).any()  # a step that needs a closure gets one


def test_an_lr_schedule_in_the_factory_is_refused() -> None:
    bowl = Bowl()
    with pytest.raises(ValueError, match="schedule"):
        range_test(bowl, None, lambda params: steepest.SGD(params, lr=lambda step: 0.1), steps=10)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"min_lr": 1.0, "max_lr": 0.1}, ValueError, "max_lr"),
        ({"min_lr": -1.0}, ValueError, "min_lr"),
        ({"steps": 3}, ValueError, "steps"),
        ({"steps": 10.0}, TypeError, "steps"),
        ({"mode": "log"}, ValueError, "mode"),
        ({"smoothing": 1.0}, ValueError, "smoothing"),
        ({"diverge_factor": 1.0}, ValueError, "diverge_factor"),
        ({"repeats": 0}, ValueError, "repeats"),
        ({"optimizer": "adamm"}, ValueError, "optimizer"),
        ({"optimizer": 3}, TypeError, "optimizer"),
        ({"x0": [1, 2]}, TypeError, "x0"),
    ],
)
def test_arguments_are_checked(kwargs, error, match) -> None:
    arguments = {"optimizer": steepest.SGD, **kwargs}
    with pytest.raises(error, match=match):
        range_test(Bowl(), None, **arguments)


def test_argument_kinds_are_checked() -> None:
    model = mlp()
    with pytest.raises(TypeError, match="instance"):
        range_test(model, digits(), steepest.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="data"):
        range_test(model, None, steepest.SGD)
    with pytest.raises(ValueError, match="x0"):
        range_test(lambda x: (x**2).sum(), None, steepest.SGD)
    with pytest.raises(TypeError, match="model_or_objective"):
        range_test(3, None, steepest.SGD)


# -- suggestions that train well -------------------------------------------------------------------
def test_quadratic_suggestion_is_below_the_stable_limit_and_trains() -> None:
    bowl = Bowl()
    result = range_test(bowl, None, steepest.SGD, max_lr=10.0)
    assert result.deterministic and result.repeats == 2  # full batch: the second repeat is skipped
    assert 0.002 < result.consensus < 0.02  # stable limit 2/100; best constant rate ~0.01-0.02
    trained = train_objective(bowl, steepest.SGD, result.consensus, 200)
    assert trained < train_objective(bowl, steepest.SGD, result.consensus / 10, 200)
    # Not timid either: ten times the suggestion is past the stable limit and diverges.
    assert train_objective(bowl, steepest.SGD, 10 * result.consensus, 200) > bowl(bowl.x0).item()


@pytest.mark.parametrize("optimizer", [steepest.SGD, steepest.Adam])
def test_logistic_regression_suggestion_trains_better_than_ten_times_smaller(optimizer) -> None:
    problem = LogisticRegression()
    result = range_test(problem, None, optimizer, max_lr=100.0)
    trained = train_objective(problem, optimizer, result.consensus, 100)
    assert trained < train_objective(problem, optimizer, result.consensus / 10, 100)
    assert trained < 0.1  # from 0.69; the optimum is 0.060


@pytest.mark.parametrize(("optimizer", "good"), [(steepest.SGD, (0.1, 2.2)), (steepest.Adam, (0.005, 0.03))])
def test_digits_mlp_suggestion_is_in_the_good_band_and_beats_ten_times_either_way(optimizer, good) -> None:
    images, labels = digits()
    result = range_test(mlp(), (images, labels), optimizer, repeats=3)
    assert result.repeats == 3 and not result.deterministic
    # The band where a 150-step run gets within a few times of the best final loss of a 22-point
    # log grid (SGD: best 0.02 at lr 2.2; Adam: 0.009 at 0.022).
    assert good[0] <= result.consensus <= good[1]
    trained = train_digits(optimizer, result.consensus)
    assert trained < train_digits(optimizer, result.consensus / 10)
    assert trained < train_digits(optimizer, result.consensus * 10)
    assert result.spread < 3  # the repeats agree within a small factor


# -- what a user reads ------------------------------------------------------------------------------
def test_schedule_peaks_summary_and_plot(tmp_path) -> None:
    images, labels = digits()
    result = range_test(mlp(), (images, labels), steepest.Adam, steps=60, repeats=2)
    assert isinstance(result, RangeTestResult) and set(result.suggestions) == set(RULES)
    warm = result.suggest_schedule("warmup_cosine", total_steps=1000)
    cycle = result.suggest_schedule("one_cycle", total_steps=1000)
    assert warm == pytest.approx(min(2 * result.consensus, result.edge))
    assert warm <= cycle <= max(result.edge, result.consensus)
    with pytest.raises(ValueError, match="kind"):
        result.suggest_schedule("cosine", 100)
    with pytest.raises(ValueError, match="total_steps"):
        result.suggest_schedule("one_cycle", 0)

    summary = lr_find_summary(result)
    for rule in (*RULES, "consensus"):
        assert rule in summary
    assert f"{result.consensus:.3g}" in summary and "2 repeats (different batch orders)" in summary
    with pytest.raises(TypeError, match="RangeTestResult"):
        lr_find_summary({"consensus": 1.0})

    path = tmp_path / "lr_find.png"
    ax = result.plot(path)
    assert path.stat().st_size > 10_000
    labels_drawn = [line.get_label() for line in ax.get_lines()]
    assert any(label.startswith("consensus") for label in labels_drawn)
    assert sum(label.split(":")[0] in RULES for label in labels_drawn) == len(RULES)
    assert {label.split(":")[0] for label in labels_drawn} >= {"warmup_cosine peak", "one_cycle peak"}
    from matplotlib.figure import Figure

    own_axes = Figure().add_subplot()
    assert result.plot(ax=own_axes) is own_axes


def test_notes_when_the_range_is_too_narrow_or_starts_too_high() -> None:
    bowl = Bowl()
    narrow = range_test(bowl, None, steepest.SGD, min_lr=1e-7, max_lr=1e-4, steps=30)
    assert any("still falling" in note for note in narrow.notes)
    high = range_test(bowl, None, steepest.SGD, min_lr=0.05, max_lr=5.0, steps=30)
    assert any("never fell" in note for note in high.notes)
    assert high.consensus == pytest.approx(0.05)  # clipped to the sweep's start


def test_a_rule_that_differentiates_the_loss_twice_gets_a_closure_that_keeps_the_graph() -> None:
    # Newton's Hessian is the derivative of the closure's gradient: plain loss.backward()
    # frees the graph, and every step raised RuntimeError.
    result = range_test(steepest.problems.rosenbrock(), None, steepest.Newton, max_lr=10.0, steps=10)
    assert np.isfinite(result.losses).all()
    assert result.losses[0, -1] < result.losses[0, 0]


def test_every_evaluation_of_the_loss_is_counted_a_line_search_s_too() -> None:
    # L-BFGS evaluates its closure several times per step: counting steps undercounted the cost
    calls = []
    bowl = Bowl()

    def counted(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return bowl(x)

    counted.x0 = bowl.x0
    result = range_test(counted, None, steepest.LBFGS, min_lr=1e-3, max_lr=1.0, steps=10, repeats=1)
    assert result.evaluations == [len(calls)] and len(calls) > 10
    calls.clear()
    plain = range_test(counted, None, steepest.SGD, max_lr=1.0, steps=20, repeats=1)
    (stop,) = plain.stopped_at
    assert plain.evaluations == [len(calls)] == [20 if stop is None else stop + 1]


def test_a_maximizing_optimizer_reads_the_objective_turned_round() -> None:
    # Ascending -f is descending f step for step: the same curve, the same suggestions. Read as a
    # loss, the rising objective was a divergence at the first steps.
    bowl = Bowl()

    def upside_down(x: torch.Tensor) -> torch.Tensor:
        return -bowl(x)

    upside_down.x0 = bowl.x0
    sweep = {"min_lr": 1e-5, "max_lr": 1.0, "steps": 40, "repeats": 1}
    down = range_test(bowl, None, steepest.SGD, **sweep)
    up = range_test(upside_down, None, functools.partial(steepest.SGD, maximize=True), **sweep)
    np.testing.assert_array_equal(up.losses, down.losses)
    assert up.stopped_at == down.stopped_at and up.consensus == down.consensus

    def mixed(params):
        other = torch.zeros(2, requires_grad=True)
        return steepest.SGD([{"params": params, "maximize": True}, {"params": [other]}], lr=1.0)

    with pytest.raises(ValueError, match="maximize"):
        range_test(bowl, None, mixed, **sweep)


@pytest.mark.parametrize("where", ["loader", "sampler"])
def test_a_dataloader_s_own_generator_is_seeded_for_each_repeat_and_restored(where) -> None:
    # fit's run after lr="auto" shuffled from where the choice had left the loader's generator
    images, labels = digits()
    dataset = torch.utils.data.TensorDataset(images, labels)
    generator = torch.Generator().manual_seed(7)
    if where == "loader":
        loader = torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True, generator=generator)
    else:
        sampler = torch.utils.data.RandomSampler(dataset, generator=generator)
        loader = torch.utils.data.DataLoader(dataset, batch_size=64, sampler=sampler)
    before = generator.get_state()
    first = range_test(mlp(), loader, steepest.SGD, steps=12, repeats=2)
    assert torch.equal(generator.get_state(), before)
    generator.manual_seed(99)  # wherever the caller's generator stands, the same seed, the same test
    again = range_test(mlp(), loader, steepest.SGD, steps=12, repeats=2)
    np.testing.assert_array_equal(first.losses, again.losses)
    assert not np.array_equal(first.losses[0], first.losses[1])  # repeats see other orders


def test_one_repeat_is_said_as_one() -> None:
    # "1 repeat(s) (different batch orders)": there was one order
    images, labels = digits()
    result = range_test(mlp(), (images, labels), steepest.SGD, steps=20, repeats=1)
    first = lr_find_summary(result).splitlines()[0]
    assert first.startswith("learning-rate range test: 1 repeat x 20 steps"), first


def test_groups_that_disagree_on_maximize_are_refused() -> None:
    # a maximizer's curve is read turned round; groups that disagree have no one curve
    model = mlp()
    params = list(model.parameters())
    mixed = steepest.SGD([{"params": params[:1], "maximize": True}, {"params": params[1:]}], lr=0.1)
    with pytest.raises(ValueError, match="maximizes in some param groups and minimizes in others"):
        steepest.rules.loss_sign(mixed)
    with pytest.raises(ValueError, match="maximizes in some param groups"):
        range_test(
            model,
            digits(),
            lambda p: steepest.SGD([{"params": p[:1], "maximize": True}, {"params": p[1:]}], lr=1e-7),
            steps=10,
            repeats=1,
        )
