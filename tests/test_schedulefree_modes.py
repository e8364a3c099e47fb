"""Schedule-free optimizers are evaluated, returned and checkpointed in the right mode.

In train mode a schedule-free optimizer's parameters hold the interpolated point y (where
gradients are taken), in eval mode the average x (what is evaluated and returned). ``fit``
scores validation data, asks its stopping criteria and returns the model at x, while its
checkpoints hold y bit for bit; ``minimize`` returns x with ``fun`` and ``grad_norm`` taken
there; ``steepest train`` scores the test split at x.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import steepest
from steepest import stopping
from steepest.minimize import minimize
from steepest.train import command, fit, load_checkpoint
from test_fit import small_model, small_problem

pytestmark = pytest.mark.usefixtures("single_thread")


def clone(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


@torch.no_grad()
def val_loss(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    return float(F.cross_entropy(model(data[0]), data[1]))


@torch.no_grad()
def at_x(optimizer, params) -> list[torch.Tensor]:
    """x (eval mode), leaving the optimizer in train mode with y written back exactly."""
    y = clone(params)
    optimizer.eval()
    x = clone(params)
    optimizer.train()
    for p, kept in zip(params, y, strict=True):
        p.copy_(kept)
    return x


def assert_equal_params(first, second) -> None:
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


# -- fit ---------------------------------------------------------------------------------------


def test_fit_scores_validation_data_at_x_and_returns_x() -> None:
    X, y = small_problem(n=120)
    val = small_problem(n=64, seed=1)
    model = small_model()
    optimizer = steepest.ScheduleFreeAdamW(model.parameters(), lr=0.05)
    by_hand: dict[int, tuple[float, float]] = {}

    class ScoreByHand:
        # on_step_end comes before the step's evaluation: score x and y as they are then
        def on_step_end(self, trainer, record) -> None:
            params = list(model.parameters())
            y_loss = val_loss(model, val)
            kept_y = clone(params)
            optimizer.eval()
            x_loss = val_loss(model, val)
            optimizer.train()
            with torch.no_grad():
                for p, kept in zip(params, kept_y, strict=True):
                    p.copy_(kept)
            by_hand[record.step] = (x_loss, y_loss)

    result = fit(
        model,
        (X, y),
        "cross_entropy",
        optimizer,
        max_steps=12,
        batch_size=16,
        val_data=val,
        eval_every=4,
        callbacks=[ScoreByHand()],
    )
    assert [e.step for e in result.evaluations] == [4, 8, 12]
    for evaluation in result.evaluations:
        x_loss, y_loss = by_hand[evaluation.step]
        assert evaluation.metrics["val_loss"] == pytest.approx(x_loss, rel=1e-6, abs=0)
        assert abs(evaluation.metrics["val_loss"] - y_loss) > 1e-4  # y would score otherwise
    # The returned model holds x: the optimizer is left in eval mode, as its convention asks.
    assert result.model is model and not optimizer.training
    assert result.metrics["val_loss"] == pytest.approx(val_loss(model, val), rel=1e-6, abs=0)
    x = clone(model.parameters())
    optimizer.train()
    assert any(not torch.allclose(a, b) for a, b in zip(x, model.parameters()))  # y is not x


def test_evaluating_does_not_change_the_training() -> None:
    # eval() and back to train() recomputes y only to rounding: fit writes y back exactly,
    # so a run evaluated after every step trains bit for bit like one evaluated once.
    X, y = small_problem(n=120)
    options = dict(loss="cross_entropy", optimizer="schedulefreeadamw", lr=0.05, batch_size=16, epochs=2)
    quiet, busy = small_model(), small_model()
    fit(quiet, (X, y), **options)
    fit(busy, (X, y), val_data=small_problem(n=64, seed=1), eval_every=1, **options)
    assert_equal_params(quiet.parameters(), busy.parameters())


def test_a_schedule_free_run_resumed_from_its_final_checkpoint_ends_bit_identical(
    tmp_path: Path,
) -> None:
    X, y = small_problem(n=120)
    options = dict(
        loss="cross_entropy",
        optimizer="schedulefreeadamw",
        lr=0.05,
        batch_size=16,
        val_data=small_problem(n=64, seed=1),
        eval_every=3,  # step 11, where the first part ends, is no evaluation step
    )
    straight = small_model()
    fit(straight, (X, y), epochs=4, **options)
    first = small_model()
    part = fit(first, (X, y), max_steps=11, checkpoint_dir=tmp_path, checkpoint_every=5, **options)
    assert part.evaluations[-1].step == 11  # the extra final evaluation, at x
    # The final checkpoint was taken in train mode (y), before the run's closing eval().
    saved = load_checkpoint(tmp_path / "step-000011.pt")
    assert all(group["train_mode"] for group in saved["optimizer"]["param_groups"])
    second = small_model(seed=99)
    result = fit(second, (X, y), epochs=4, checkpoint_dir=tmp_path, resume=True, **options)
    assert result.steps == 32
    assert_equal_params(straight.parameters(), second.parameters())


def test_patience_restores_the_best_x_and_a_resumed_ended_run_keeps_it(tmp_path: Path) -> None:
    X, y = small_problem(n=128)
    val = small_problem(n=64, seed=1)
    snapshots = {}

    class Snapshot:
        def on_evaluate(self, trainer, record) -> None:
            assert not trainer.optimizer.training  # callbacks see x as well
            snapshots[record.step] = clone(trainer.model.parameters())

    model = small_model()
    options = dict(
        loss="cross_entropy",
        optimizer="schedulefreesgd",
        lr=30.0,  # far too large: the validation loss soon stops improving
        epochs=40,
        batch_size=16,
        val_data=val,
        stopping=stopping.patience(3, monitor="val_loss"),
        checkpoint_dir=tmp_path,
    )
    result = fit(model, (X, y), callbacks=[Snapshot()], **options)
    assert "restored the best parameters" in result.stopped_by and result.epochs < 40
    losses = {e.step: e.metrics["val_loss"] for e in result.evaluations[:-1]}
    best_step = min(losses, key=losses.get)
    # The snapshot is of x, restored in eval mode: the model holds the best x exactly.
    assert_equal_params(model.parameters(), snapshots[best_step])
    assert result.metrics["val_loss"] == losses[best_step]
    saved = load_checkpoint(sorted(tmp_path.glob("step-*.pt"))[-1])
    assert not any(group["train_mode"] for group in saved["optimizer"]["param_groups"])
    # Resumed, the ended run stays ended and returns the same parameters, bit for bit.
    again = small_model(seed=7)
    resumed = fit(again, (X, y), resume=True, **options)
    assert resumed.stopped_by == result.stopped_by and resumed.steps == result.steps
    assert_equal_params(again.parameters(), snapshots[best_step])


def test_an_optimizer_left_in_eval_mode_by_fit_trains_again() -> None:
    X, y = small_problem(n=120)
    model = small_model()
    optimizer = steepest.ScheduleFreeSGD(model.parameters(), lr=0.5)
    fit(model, (X, y), "cross_entropy", optimizer, max_steps=3, batch_size=16)
    assert not optimizer.training
    result = fit(model, (X, y), "cross_entropy", optimizer, max_steps=3, batch_size=16)
    assert result.steps == 3 and not optimizer.training
    assert optimizer.param_groups[0]["k"] == 6


# -- minimize ----------------------------------------------------------------------------------


def quadratic(x: torch.Tensor) -> torch.Tensor:
    scales = torch.linspace(1.0, 10.0, x.numel(), dtype=x.dtype)
    return 0.5 * (scales * (x - 1.0) ** 2).sum()


def test_minimize_returns_the_average_x_with_its_value_and_gradient() -> None:
    x0 = torch.linspace(-2.0, 3.0, 5, dtype=torch.float64)
    result = minimize(quadratic, x0, "schedulefreesgd", lr=0.05, max_iter=30, gtol=None)
    assert result.nit == 30
    point = x0.clone().requires_grad_(True)
    optimizer = steepest.ScheduleFreeSGD([point], lr=0.05)
    for _ in range(30):
        optimizer.zero_grad()
        quadratic(point).backward()
        optimizer.step()
    y = point.detach().clone()
    optimizer.eval()
    assert torch.equal(result.x, point.detach())
    assert not torch.allclose(result.x, y)  # x, not the training point y
    assert result.fun == pytest.approx(float(quadratic(point.detach())), rel=1e-12)
    assert result.fun != result.history["fun"][-1]  # the history holds y's values
    x = point.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(quadratic(x), x)
    assert result.grad_norm == pytest.approx(float(grad.norm()), rel=1e-12)
    assert result.nfev == result.ngev == 30 + 2  # the looks at y, and one at x


def test_minimize_patience_restores_the_average_x_of_its_best_iteration() -> None:
    x0 = torch.linspace(-2.0, 3.0, 5, dtype=torch.float64)
    lr = 0.35  # too large for the stiffest direction: the value soon stops improving
    result = minimize(
        quadratic, x0, "schedulefreesgd", lr=lr, max_iter=200, gtol=None, stopping=stopping.patience(3)
    )
    assert "restored the best parameters" in result.message and result.nit < 200
    # The same run by hand: the value at y_k, and x_k, at every look.
    point = x0.clone().requires_grad_(True)
    optimizer = steepest.ScheduleFreeSGD([point], lr=lr)
    values, averages = [], []
    for _ in range(result.nit + 1):
        optimizer.zero_grad()
        value = quadratic(point)
        value.backward()
        values.append(float(value.detach()))
        averages.append(at_x(optimizer, [point])[0])
        optimizer.step()
    assert values == result.history["fun"]
    best = min(range(len(values)), key=values.__getitem__)
    assert torch.equal(result.x, averages[best])
    assert not torch.allclose(result.x, x0) and best > 0
    assert result.fun == pytest.approx(float(quadratic(averages[best])), rel=1e-12)


# -- steepest train ----------------------------------------------------------------------------


def test_steepest_train_scores_the_test_split_at_x(tmp_path: Path, monkeypatch) -> None:
    # The command line names no schedule-free optimizer yet: the run is handed one.
    seen: dict = {}

    def choose(config, model, data, total_steps, say, chosen=None):
        return steepest.ScheduleFreeAdamW, 3e-3, None

    class Capture:
        def on_fit_start(self, trainer) -> None:
            seen["optimizer"] = trainer.optimizer

    real_fit, real_test_metrics = command.fit, command.test_metrics

    def spy_fit(*args, **kwargs):
        kwargs["callbacks"] = [*kwargs["callbacks"], Capture()]
        return real_fit(*args, **kwargs)

    def spy_test_metrics(model, data):
        optimizer = seen["optimizer"]
        seen["training"] = optimizer.training
        scores = real_test_metrics(model, data)
        optimizer.train()  # what y would have scored
        seen["y_scores"] = real_test_metrics(model, data)
        optimizer.eval()
        return scores

    monkeypatch.setattr(command, "choose_learning_rate", choose)
    monkeypatch.setattr(command, "fit", spy_fit)
    monkeypatch.setattr(command, "test_metrics", spy_test_metrics)
    flags = {"epochs": 1, "model": "mlp", "runs_dir": tmp_path, "name": "sf", "quiet": True}
    assert command.run(flags, say=lambda line: None) == command.SUCCESS
    assert type(seen["optimizer"]).__name__ == "ScheduleFreeAdamW"
    assert seen["training"] is False
    scores = json.loads((tmp_path / "sf" / "test_metrics.json").read_text())
    assert scores["test_loss"] != pytest.approx(seen["y_scores"]["test_loss"], rel=1e-6)
