"""MoMo against a transcription of the official ``momo`` package, and its place in the library.

MoMo is not a row of the spec table (tests/specs.py): its step needs the loss, and its param
groups share one model of the loss, so they are not independent optimizers as the table's
generic tests take them to be. The tests below cover the same ground for it.
"""

from __future__ import annotations

import functools
import io
import math

import numpy as np
import pytest
import torch

import steepest
from steepest import problems
from steepest import stopping as st
from steepest.lr import choose_lr
from steepest.rules import MoMo, requires_loss


def official_momo(groups, state, loss, *, beta, lower_bound, bias_correction, use_fstar=False):
    """One step of ``momo.Momo`` (github.com/fabian-sp/MoMo, momo/momo.py), written out.

    ``groups``: [{"params": [...], "lr": ..., "weight_decay": ...}]; ``state``: a dict kept
    between calls. Sums run over every group; each group's lr caps and weight_decay decays.
    """
    state["k"] = k = state.get("k", 0) + 1
    lb = state.setdefault("lb", lower_bound)
    if k == 1:
        state["loss_avg"] = 0.0 if bias_correction else loss
    state["loss_avg"] = beta * state["loss_avg"] + (1 - beta) * loss
    rho = 1 - beta**k if bias_correction else 1.0
    dot = gamma = norm = 0.0
    for group in groups:
        for p in group["params"]:
            grad, slot = p.grad, state.setdefault(id(p), {})
            if k == 1:
                if bias_correction:
                    slot["grad_avg"], slot["grad_dot_w"] = torch.zeros_like(p), 0.0
                else:
                    slot["grad_avg"], slot["grad_dot_w"] = grad.clone(), float(torch.sum(p * grad))
            slot["grad_avg"] = beta * slot["grad_avg"] + (1 - beta) * grad
            slot["grad_dot_w"] = beta * slot["grad_dot_w"] + (1 - beta) * float(torch.sum(p * grad))
            dot += float(torch.sum(p * slot["grad_avg"]))
            gamma += slot["grad_dot_w"]
            norm += float(torch.sum(slot["grad_avg"] * slot["grad_avg"]))
    taus = []
    for group in groups:
        lr, lmbda = group["lr"], group["weight_decay"]
        if use_fstar:
            cap = (1 + lr * lmbda) * state["loss_avg"] + dot - (1 + lr * lmbda) * gamma
            if cap < (1 + lr * lmbda) * rho * lb:
                lb = max(cap / (2 * (1 + lr * lmbda) * rho), lower_bound)
        if lmbda > 0:
            nominator = (1 + lr * lmbda) * (state["loss_avg"] - rho * lb) + dot - (1 + lr * lmbda) * gamma
        else:
            nominator = state["loss_avg"] - rho * lb + dot - gamma
        tau = min(lr / rho, max(nominator, 0.0) / norm)
        taus.append(tau)
        if use_fstar:
            h = state["loss_avg"] + dot - gamma
            lb = max((h - 0.5 * tau * norm) / rho, lower_bound)
        with torch.no_grad():
            for p in group["params"]:
                p.add_(state[id(p)]["grad_avg"], alpha=-tau)
                if lmbda > 0:
                    p.div_(1 + lr * lmbda)
    state["lb"] = lb
    return taus


def least_squares_problem(seed: int = 0):
    """Two tensors (a matrix and a bias) fitting noisy targets: a loss >= 0 that is not 0."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(32, 5, generator=generator, dtype=torch.float64)
    targets = torch.randn(32, 3, generator=generator, dtype=torch.float64)
    weight = torch.randn(5, 3, generator=generator, dtype=torch.float64).requires_grad_(True)
    bias = torch.randn(3, generator=generator, dtype=torch.float64).requires_grad_(True)

    def loss_at(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ((inputs @ w + b - targets) ** 2).mean()

    return weight, bias, loss_at


CONFIGS = [
    ({}, {}),
    ({"lr": 0.05}, {}),  # the cap binds
    ({"beta": 0.5, "weight_decay": 0.1, "lower_bound": 0.2}, {}),
    ({"bias_correction": True, "weight_decay": 0.05, "lr": 2.0}, {}),
    ({"beta": 0.0}, {}),  # SPS_max
    ({"lr": 3.0}, {"lr": 0.5, "weight_decay": 0.2}),  # two groups, one model of the loss
    ({"estimate_lower_bound": True}, {}),  # MoMo*
    ({"estimate_lower_bound": True, "weight_decay": 0.1, "lower_bound": 0.1, "bias_correction": True}, {}),
    ({"estimate_lower_bound": True, "lr": 3.0}, {"lr": 0.5, "weight_decay": 0.2}),
]


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize(("config", "second_group"), CONFIGS)
def test_matches_the_official_algorithm_in_float64(config, second_group, foreach):
    weight, bias, loss_at = least_squares_problem()
    mine = [weight.detach().clone().requires_grad_(True), bias.detach().clone().requires_grad_(True)]
    theirs = [weight.detach().clone().requires_grad_(True), bias.detach().clone().requires_grad_(True)]
    shared = {
        name: config[name]
        for name in ("beta", "lower_bound", "bias_correction", "estimate_lower_bound")
        if name in config
    }
    if second_group:
        optimizer = MoMo(
            [{"params": [mine[0]]}, {"params": [mine[1]], **second_group}], **config, foreach=foreach
        )
    else:
        optimizer = MoMo(mine, **config, foreach=foreach)
    groups = (
        [
            {"params": [p], "lr": group["lr"], "weight_decay": group["weight_decay"]}
            for p, group in zip(theirs, optimizer.param_groups)
        ]
        if second_group
        else [
            {"params": theirs, "lr": config.get("lr", 1.0), "weight_decay": config.get("weight_decay", 0.0)}
        ]
    )
    state: dict = {}
    for _ in range(25):
        optimizer.zero_grad()
        loss = loss_at(*mine)
        loss.backward()
        optimizer.step(loss=loss)
        for p in theirs:
            p.grad = None
        reference_loss = loss_at(*theirs)
        reference_loss.backward()
        taus = official_momo(
            groups,
            state,
            float(reference_loss.detach()),
            beta=shared.get("beta", 0.9),
            lower_bound=shared.get("lower_bound", 0.0),
            bias_correction=shared.get("bias_correction", False),
            use_fstar=shared.get("estimate_lower_bound", False),
        )
        assert optimizer.effective_lr == pytest.approx(taus, rel=1e-10, abs=1e-14)
        for a, b in zip(mine, theirs):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert optimizer.param_groups[0]["k"] == 25 and optimizer.step_count == 25


def test_descends_and_is_a_polyak_step():
    # f = |x|^2 / 2 at x = (3, 4): the first step (d = g = x) is f / |g|^2 = 1/2, halfway to 0.
    x = torch.tensor([3.0, 4.0], requires_grad=True)
    optimizer = MoMo([x])
    loss = 0.5 * (x * x).sum()
    loss.backward()
    optimizer.step(loss=loss)
    assert optimizer.effective_lr == [pytest.approx(0.5)]
    torch.testing.assert_close(x.detach(), torch.tensor([1.5, 2.0]))
    problem = problems.rosenbrock(2)
    result = steepest.minimize(problem, problem.x0, "momo", lr=1e-2, max_iter=300, gtol=None)
    assert result.fun < 0.1 * float(problem(problem.x0))


def test_the_step_needs_the_loss_or_a_closure():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    optimizer = MoMo([x])
    assert requires_loss(optimizer) and not requires_loss(steepest.SGD([x], lr=0.1))
    (x * x).sum().backward()
    with pytest.raises(TypeError, match="needs this step's loss"):
        optimizer.step()
    with pytest.raises(TypeError, match="not both"):
        optimizer.step(lambda: (x * x).sum(), loss=1.0)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = (x * x).sum()
        loss.backward()
        return loss

    assert float(optimizer.step(closure)) == pytest.approx(5.0)
    assert optimizer.step_count == 1 and not torch.equal(x.detach(), torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"lr": -1.0}, ValueError, "lr"),
        ({"lr": float("nan")}, ValueError, "nan"),
        ({"beta": 1.0}, ValueError, "beta"),
        ({"weight_decay": -0.1}, ValueError, "weight_decay"),
        ({"lower_bound": "0"}, TypeError, "lower_bound"),
        ({"bias_correction": 1}, TypeError, "bias_correction"),
    ],
)
def test_bad_hyperparameters_are_refused(kwargs, error, text):
    with pytest.raises(error, match=text):
        MoMo([torch.zeros(2, requires_grad=True)], **kwargs)


def test_groups_must_share_the_model_of_the_loss():
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="beta must be 0.9"):
        MoMo([{"params": [a]}, {"params": [b], "beta": 0.5}])
    optimizer = MoMo([a], lower_bound=0.1)
    with pytest.raises(ValueError, match="lower_bound"):
        optimizer.add_param_group({"params": [b], "lower_bound": 0.0})


@pytest.mark.parametrize("bias_correction", [False, True])
def test_checkpoint_resumes_bit_identically(bias_correction):
    weight, bias, loss_at = least_squares_problem(1)

    def run(steps: int, optimizer: MoMo, params: list[torch.Tensor]) -> None:
        for _ in range(steps):
            optimizer.zero_grad()
            loss = loss_at(*params)
            loss.backward()
            optimizer.step(loss=loss)

    straight = [weight.detach().clone().requires_grad_(True), bias.detach().clone().requires_grad_(True)]
    run(12, MoMo(straight, weight_decay=0.01, bias_correction=bias_correction), straight)
    resumed = [weight.detach().clone().requires_grad_(True), bias.detach().clone().requires_grad_(True)]
    first = MoMo(resumed, weight_decay=0.01, bias_correction=bias_correction)
    run(5, first, resumed)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = MoMo(resumed, weight_decay=0.01, bias_correction=bias_correction)
    second.load_state_dict(torch.load(buffer, weights_only=True))
    run(7, second, resumed)
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)


def network_task(examples: int = 256, hidden: int = 64):
    """A network with more parameters than examples, on labels it can learn."""
    torch.manual_seed(0)
    inputs = torch.randn(examples, 8)
    targets = (inputs[:, :4] @ torch.randn(4, 4)).argmax(dim=1)
    model = torch.nn.Sequential(torch.nn.Linear(8, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 4))
    return model, (inputs, targets)


def test_fit_and_safestep_hand_it_the_loss():
    for guard in (None, "skip"):
        model, data = network_task()
        run = steepest.fit(
            model, data, "cross_entropy", MoMo, lr=10.0, epochs=4, batch_size=32, on_nonfinite=guard
        )
        losses = [record.loss for record in run.history]
        assert len(losses) == 32 and sum(losses[-8:]) < 0.5 * sum(losses[:8])


def test_lr_auto_runs_sgd_on_mini_batches_as_momo_with_its_momentum():
    model, data = network_task()  # 836 parameters, 256 examples
    result = steepest.fit(
        model,
        data,
        "cross_entropy",
        functools.partial(steepest.SGD, momentum=0.9),
        lr="auto",
        epochs=4,
        batch_size=32,
    )
    choice = result.lr_choice
    assert choice.method is MoMo and choice.options == {"beta": 0.9} and choice.evaluations == 0
    assert choice.policy == "lr_free" and "Polyak" in choice.reason and "(836) than" in choice.reason
    assert isinstance(result.model, torch.nn.Module)
    losses = [record.loss for record in result.history]
    assert sum(losses[-8:]) < 0.5 * sum(losses[:8])


def test_a_model_with_fewer_parameters_than_examples_keeps_the_range_test():
    # a linear model on noisy data cannot drive the loss to MoMo's bound 0: its steps stay large
    model, data = network_task(examples=1024, hidden=16)  # 212 parameters
    choice = choose_lr(model, data, "sgd", options={"momentum": 0.9}, steps=10, trial_steps=6)
    assert choice.policy == "range_test" and choice.method is steepest.SGD
    one_shot = choose_lr(network_task()[0], iter([data] * 8), "sgd", steps=10, trial_steps=6)
    assert one_shot.policy == "range_test"  # an iterator's size cannot be told


@pytest.mark.parametrize(
    ("options", "loss_fn"),
    [
        ({"momentum": 0.9, "weight_decay": 1e-4}, None),  # MoMo decays by its cap: not SGD's decay
        ({"momentum": 0.9, "nesterov": True}, None),
        ({"momentum": 0.9}, lambda outputs, targets: -outputs.logsumexp(1).mean()),  # not >= 0
    ],
)
def test_where_momo_cannot_stand_in_for_sgd_the_range_test_decides(options, loss_fn):
    model, (inputs, targets) = network_task(examples=96)
    batches = [(inputs[i : i + 16], targets[i : i + 16]) for i in range(0, 96, 16)]
    choice = choose_lr(model, batches, "sgd", options=options, loss_fn=loss_fn, steps=10, trial_steps=6)
    assert choice.policy == "range_test" and choice.method is steepest.SGD
    assert math.isfinite(choice.lr) and choice.lr > 0


@pytest.mark.parametrize(
    "data",
    [
        "pair",
        "batches",
        "loader",
    ],
)
def test_a_known_nonnegative_loss_module_and_any_sized_data_qualify(data):
    model, (inputs, targets) = network_task(examples=96)
    if data == "batches":
        given = [(inputs[i : i + 16], targets[i : i + 16]) for i in range(0, 96, 16)]
    elif data == "loader":
        given = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs, targets), batch_size=16)
    else:
        given = (inputs, targets)
    choice = choose_lr(model, given, "sgd", loss_fn=torch.nn.CrossEntropyLoss())
    assert choice.method is MoMo and choice.options == {"beta": 0.0} and "(96)" in choice.reason


def test_minimize_target_with_momo(single_thread):
    problem = problems.logistic_regression("breast_cancer")
    target = problem.f_star + 1e-2 * (float(problem(problem.x0)) - problem.f_star)
    result = steepest.minimize(
        problem, problem.x0, "momo", lr=10.0, max_iter=2000, gtol=None, stopping=st.target(target)
    )
    assert result.status == st.Status.TARGET_REACHED, result.message


def test_fit_hands_its_own_loss_to_the_choice():
    # a loss that can be negative: MoMo's bound 0 would not hold, so the range test decides
    # (fit once let the choice assume cross-entropy whatever its own loss was)
    model, (inputs, targets) = network_task(examples=96)

    def log_partition(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return outputs.logsumexp(dim=1).mean() - 2.0

    result = steepest.fit(
        model, (inputs, targets), log_partition, "sgd", lr="auto", max_steps=3, batch_size=16
    )
    assert result.lr_choice.policy == "range_test"


def test_sgd_momentum_auto_on_the_digits_mlp_is_within_1_2x_of_the_grid_oracle(single_thread):
    """Steps to 97% test accuracy, median of seeds 0-2 (batch 64, scored every 5 steps), against
    the best rate of the benchmark's grid, 0.1 (benchmarks/tuning_free.py, 5 seeds: oracle 115
    steps, MoMo 100; the CNN, not run here for time: 270 and 305)."""
    from steepest.train import build_model, load_dataset

    data = load_dataset("digits")

    def steps_to_target(lr, seed: int) -> tuple[int, object]:
        torch.manual_seed(seed)
        result = steepest.fit(
            build_model("mlp", data),
            data.train,
            "cross_entropy",
            functools.partial(steepest.SGD, momentum=0.9),
            lr=lr,
            max_steps=600,
            batch_size=64,
            val_data=data.test,
            eval_every=5,
            stopping=st.target(0.97, monitor="val_accuracy", mode="max"),
            seed=seed,
        )
        reached = [e.step for e in result.evaluations if e.metrics["val_accuracy"] >= 0.97]
        return (reached[0] if reached else 10**6), result.lr_choice

    oracle = sorted(steps_to_target(0.1, seed)[0] for seed in range(3))[1]
    runs = [steps_to_target("auto", seed) for seed in range(3)]
    assert all(choice.method is MoMo and choice.evaluations == 0 for _, choice in runs)
    auto = sorted(steps for steps, _ in runs)[1]
    assert auto <= 1.2 * oracle, (auto, oracle)


def test_fit_logs_the_step_size_a_learning_rate_free_rule_takes():
    # lr is MoMo's cap (and Prodigy's factor): the step actually taken goes in each record
    model, data = network_task()
    run = steepest.fit(model, data, "cross_entropy", MoMo, lr=10.0, max_steps=6, batch_size=32)
    taken = [record.extra["effective_lr"] for record in run.history]
    assert all(0 < tau < 10.0 for tau in taken) and len(set(taken)) > 1
    model, data = network_task()
    plain = steepest.fit(model, data, "cross_entropy", "sgd", lr=0.1, max_steps=3, batch_size=32)
    assert all("effective_lr" not in record.extra for record in plain.history)


def test_the_range_test_sweeps_momos_cap():
    # the sweep hands each step's loss to the rule (it would raise TypeError otherwise)
    model, data = network_task()
    result = steepest.lr.range_test(model, data, "momo", min_lr=1e-3, max_lr=10.0, steps=20, repeats=1)
    assert np.isfinite(result.losses[0][:5]).all() and result.stopped_at[0] != 0
