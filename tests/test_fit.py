"""fit(): learning, accumulation, mixed precision, callbacks, stopping, optimizers, errors."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import steepest
from steepest import stopping
from steepest.train import (
    EvalRecord,
    FitResult,
    StepRecord,
    Trainer,
    build_model,
    fit,
    load_checkpoint,
    load_dataset,
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def small_problem(n: int = 200, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 6, generator=generator)
    y = (X[:, 0] - X[:, 2] > 0).long()
    return X, y


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2))


def test_digits_mlp_reaches_95_percent(digits) -> None:
    torch.manual_seed(0)
    model = build_model("mlp", digits)
    result = fit(model, digits.train, "cross_entropy", "adamw", lr=3e-3, epochs=5, val_data=digits.val)
    assert isinstance(result, FitResult)
    assert result.metrics["val_accuracy"] >= 0.95
    assert result.stopped_by == "completed epochs=5" and result.success
    assert result.steps == 5 * math.ceil(len(digits.train[1]) / 64) == len(result.history)
    assert [e.epoch for e in result.evaluations] == [1, 2, 3, 4, 5]


def test_accumulate_two_batches_of_32_equals_one_batch_of_64(single_thread) -> None:
    X, y = small_problem(n=200)  # 200 = 3 * 64 + 8: the epoch's last step is short
    runs = {}
    for batch_size, accumulate in ((64, 1), (32, 2)):
        model = small_model()
        result = fit(
            model,
            (X, y),
            "cross_entropy",
            "sgd",
            lr=0.5,
            epochs=3,
            batch_size=batch_size,
            accumulate=accumulate,
        )
        runs[accumulate] = (model, result)
    (big, big_result), (accumulated, accumulated_result) = runs[1], runs[2]
    assert big_result.steps == accumulated_result.steps == 12
    assert [r.examples for r in big_result.history] == [r.examples for r in accumulated_result.history]
    for a, b in zip(big.parameters(), accumulated.parameters(), strict=True):
        assert (a - b).abs().max() < 1e-6  # float rounding only: sums of 32 + 32 vs one of 64
    losses = torch.tensor([r.loss for r in big_result.history])
    accumulated_losses = torch.tensor([r.loss for r in accumulated_result.history])
    assert abs(losses.sum() - accumulated_losses.sum()) < 1e-6
    # ... and the run did learn something, so the comparison is not between two idle models.
    assert losses[-1] < 0.8 * losses[0]


def test_bfloat16_autocast_on_cpu_runs_and_learns() -> None:
    X, y = small_problem(n=512)
    model = small_model()
    result = fit(
        model, (X, y), "cross_entropy", "adamw", lr=1e-2, epochs=6, val_data=(X, y), precision="bfloat16"
    )
    assert result.evaluations[-1].metrics["val_loss"] < 0.5 * result.evaluations[0].metrics["val_loss"] + 0.3
    assert result.metrics["val_accuracy"] > 0.9
    assert all(p.dtype == torch.float32 for p in model.parameters())


class ScaleLog:
    """Callback: the GradScaler's scale after every step (the scale before the first is 2**16)."""

    def __init__(self) -> None:
        self.scales: list[float] = []

    def on_step_end(self, trainer: Trainer, record: StepRecord) -> None:
        assert isinstance(trainer.scaler, torch.amp.GradScaler)
        self.scales.append(trainer.scaler.get_scale())


def test_float16_with_a_grad_scaler_trains_on_cpu() -> None:
    X, y = small_problem(n=512)
    options = dict(loss="cross_entropy", optimizer="adamw", lr=1e-2, epochs=6, val_data=(X, y))
    full = fit(small_model(), (X, y), **options)
    model, log = small_model(), ScaleLog()
    half = fit(model, (X, y), precision="float16", callbacks=[log], **options)
    assert half.evaluations[-1].metrics["val_loss"] < 0.3 * half.evaluations[0].metrics["val_loss"]
    assert half.metrics["val_accuracy"] > 0.95
    # float16 arithmetic, not float32: the losses differ from the float32 run's, but little.
    losses, half_losses = [r.loss for r in full.history], [r.loss for r in half.history]
    assert half_losses != losses and half_losses == pytest.approx(losses, rel=1e-2)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the master weights
    assert log.scales == [2.0**16] * half.steps  # the initial scale: no step overflowed


MARK = 7.0  # the value of feature 5 that marks the example whose gradient overflows


class OverflowsOnMark(nn.Module):
    """small_model, except that the backward pass of a batch holding a marked example overflows.

    The forward pass (the loss) stays finite; every gradient becomes inf or NaN, as when the
    scaled float16 gradients of a real network overflow.
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.net = small_model(seed)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        outputs = self.net(inputs)
        if outputs.requires_grad and bool((inputs[:, 5] == MARK).any()):
            outputs.register_hook(lambda grad: grad * math.inf)
        return outputs


def marked_problem(n: int = 128):
    X, y = small_problem(n=n)
    X = X.clone()
    X[5, 5] = MARK
    return X, y


def test_float16_skips_the_step_whose_gradient_overflows(single_thread) -> None:
    X, y = marked_problem()
    model = OverflowsOnMark()
    after = [[p.detach().clone() for p in model.parameters()]]  # parameters after each step
    scales = [2.0**16]

    class Watch:
        def on_step_end(self, trainer: Trainer, record: StepRecord) -> None:
            after.append([p.detach().clone() for p in trainer.model.parameters()])
            scales.append(trainer.scaler.get_scale())

    options = dict(loss="cross_entropy", optimizer="sgd", lr=0.1, batch_size=32, epochs=3)
    result = fit(model, (X, y), precision="float16", callbacks=[Watch()], **options)
    assert result.stopped_by == "completed epochs=3" and result.steps == 12
    # One step per epoch holds the marked example: the scaler skips it and halves its scale.
    skipped = [step for step in range(1, 13) if scales[step] < scales[step - 1]]
    assert len(skipped) == 3 and scales[-1] == 2.0**13
    for step in range(1, 13):
        unchanged = all(torch.equal(a, b) for a, b in zip(after[step - 1], after[step], strict=True))
        assert unchanged == (step in skipped)
        record = result.history[step - 1]
        assert math.isfinite(record.loss)
        assert math.isfinite(record.grad_norm) != (step in skipped)  # the norm, unscaled
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_float16_resume_restores_the_scaler_and_continues_exactly(tmp_path: Path, single_thread) -> None:
    X, y = marked_problem()
    options = dict(loss="cross_entropy", optimizer="adamw", lr=1e-2, batch_size=32, precision="float16")
    straight, straight_log = OverflowsOnMark(), ScaleLog()
    fit(straight, (X, y), epochs=4, callbacks=[straight_log], **options)
    assert straight_log.scales[-1] == 2.0**12  # four epochs, four overflows

    fit(OverflowsOnMark(), (X, y), max_steps=6, checkpoint_dir=tmp_path, **options)
    saved = load_checkpoint(tmp_path / "step-000006.pt")["scaler"]
    assert saved["scale"] == straight_log.scales[5] < 2.0**16  # the scaler after step 6
    resumed, resumed_log = OverflowsOnMark(seed=9), ScaleLog()
    result = fit(
        resumed, (X, y), epochs=4, checkpoint_dir=tmp_path, resume=True, callbacks=[resumed_log], **options
    )
    assert result.steps == 16
    assert resumed_log.scales == straight_log.scales[6:]  # a fresh scaler would start at 2**16
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_fit_start(self, trainer: Trainer) -> None:
        self.events.append(("start", trainer.step, trainer.total_steps))

    def on_step_end(self, trainer: Trainer, record: StepRecord) -> None:
        assert trainer.history[-1] is record
        self.events.append(("step", record))

    def on_evaluate(self, trainer: Trainer, record: EvalRecord) -> None:
        self.events.append(("eval", record))

    def on_fit_end(self, trainer: Trainer, result: FitResult) -> None:
        self.events.append(("end", result))


def test_callbacks_receive_records_in_order_with_correct_fields() -> None:
    X, y = small_problem(n=100)
    recorder = Recorder()
    result = fit(
        small_model(),
        (X, y),
        "cross_entropy",
        "sgd",
        lr=steepest.schedules.linear(0.2, 0.0, 8),
        epochs=2,
        batch_size=25,
        val_data=(X, y),
        eval_every=3,
        clip_norm=0.05,
        callbacks=[recorder],
    )
    kinds = [event[0] for event in recorder.events]
    # 8 steps, evaluations after steps 3 and 6, and a final one at step 8.
    assert kinds == [
        "start",
        "step",
        "step",
        "step",
        "eval",
        "step",
        "step",
        "step",
        "eval",
        "step",
        "step",
        "eval",
        "end",
    ]
    assert recorder.events[0] == ("start", 0, 8)
    steps = [event[1] for event in recorder.events if event[0] == "step"]
    assert [s.step for s in steps] == list(range(1, 9))
    assert [s.epoch for s in steps] == [1, 1, 1, 1, 2, 2, 2, 2]
    assert [s.batch_in_epoch for s in steps] == [1, 2, 3, 4, 1, 2, 3, 4]
    assert [s.lr for s in steps] == pytest.approx([0.2 * (1 - k / 8) for k in range(8)])
    assert all(s.examples == 25 and s.total_steps == 8 and s.examples_per_second > 0 for s in steps)
    assert all(s.grad_norm is not None and s.clipped == (s.grad_norm > 0.05) for s in steps)
    assert any(s.clipped for s in steps)
    elapsed = [s.elapsed for s in steps]
    assert elapsed == sorted(elapsed)
    assert [e[1].step for e in recorder.events if e[0] == "eval"] == [3, 6, 8]
    assert set(recorder.events[4][1].metrics) == {"val_loss", "val_accuracy"}
    assert recorder.events[-1][1] is result


def test_step_loss_and_grad_norm_match_a_hand_computation(single_thread) -> None:
    X, y = small_problem(n=64)
    model, twin = small_model(), small_model()
    result = fit(model, (X, y), "cross_entropy", "sgd", lr=0.1, max_steps=1, batch_size=64)
    order = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    loss = nn.functional.cross_entropy(twin(X[order]), y[order])
    loss.backward()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in twin.parameters()]))
    assert result.history[0].loss == pytest.approx(loss.item(), abs=1e-6)
    assert result.history[0].grad_norm == pytest.approx(norm.item(), rel=1e-5)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.allclose(p, q - 0.1 * q.grad, atol=1e-6)


def test_stopping_target_stops_with_its_reason() -> None:
    X, y = small_problem(n=256)
    result = fit(
        small_model(),
        (X, y),
        "cross_entropy",
        "adamw",
        lr=2e-2,
        epochs=50,
        val_data=(X, y),
        stopping=stopping.target(0.3),
    )
    assert result.stopped_by.startswith("reached the target") and result.success
    assert result.evaluations[-1].metrics["val_loss"] <= 0.3
    assert result.epochs < 50


def test_patience_restores_the_best_parameters() -> None:
    X, y = small_problem(n=128)
    val = small_problem(n=64, seed=1)
    snapshots = {}

    class Snapshot:
        def on_evaluate(self, trainer, record):
            snapshots[record.step] = [p.detach().clone() for p in trainer.model.parameters()]

    # A learning rate far too large: the validation loss soon stops improving.
    model = small_model()
    result = fit(
        model,
        (X, y),
        "cross_entropy",
        "sgd",
        lr=30.0,
        epochs=40,
        batch_size=16,
        val_data=val,
        stopping=stopping.patience(3, monitor="val_loss"),
        callbacks=[Snapshot()],
    )
    assert result.stopped_by.startswith("no improvement") and "restored" in result.stopped_by
    losses = {e.step: e.metrics["val_loss"] for e in result.evaluations[:-1]}
    best_step = min(losses, key=losses.get)
    assert result.epochs < 40
    for p, best in zip(model.parameters(), snapshots[best_step], strict=True):
        assert torch.equal(p, best)
    assert result.metrics["val_loss"] == pytest.approx(losses[best_step])


def test_max_iter_criterion_and_max_steps() -> None:
    X, y = small_problem(n=100)
    result = fit(
        small_model(),
        (X, y),
        "cross_entropy",
        "sgd",
        lr=0.1,
        epochs=100,
        batch_size=10,
        eval_every=5,
        stopping=stopping.max_iter(23),
    )
    assert result.stopped_by == "stopped at the iteration limit max_iter=23"
    assert result.steps == 25 and not result.success  # checked at evaluations, every 5 steps
    result = fit(small_model(), (X, y), "cross_entropy", "sgd", lr=0.1, max_steps=7, batch_size=10)
    assert result.steps == 7 and result.stopped_by == "reached max_steps=7"


def test_a_callback_can_stop_the_run() -> None:
    class StopAtFour:
        def on_step_end(self, trainer, record):
            trainer.stop_requested = record.step == 4

    result = fit(
        small_model(),
        small_problem(),
        "cross_entropy",
        "sgd",
        lr=0.1,
        epochs=10,
        batch_size=10,
        callbacks=[StopAtFour()],
    )
    assert result.steps == 4 and "callback" in result.stopped_by


def test_divergence_stops_the_run() -> None:
    X, y = small_problem(n=64)
    result = fit(
        nn.Linear(6, 1), (X * 1e3, y.float()[:, None]), "mse", "sgd", lr=1e3, epochs=20, batch_size=8
    )
    assert result.stopped_by.startswith("diverged")
    assert result.steps < 160


@pytest.mark.parametrize(
    "optimizer",
    ["AdamW", "sgd", steepest.Lion, torch.optim.SGD, lambda params: torch.optim.Adam(params, lr=1e-2)],
)
def test_optimizer_given_as_name_class_factory_or_instance(optimizer) -> None:
    X, y = small_problem(n=128)
    model = small_model()
    lr = None if callable(optimizer) and not isinstance(optimizer, type) else 1e-2
    result = fit(model, (X, y), "cross_entropy", optimizer, lr=lr, epochs=3, clip_norm=1.0)
    assert result.steps == 6 and math.isfinite(result.history[-1].loss)
    assert all(r.grad_norm is not None for r in result.history)
    instance = torch.optim.SGD(model.parameters(), lr=0.1)
    assert fit(model, (X, y), "cross_entropy", instance, max_steps=2).steps == 2


def test_dataset_and_dataloader_inputs() -> None:
    X, y = small_problem(n=96)
    dataset = torch.utils.data.TensorDataset(X, y)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0)
    )

    class Wrapped(torch.utils.data.Dataset):
        def __len__(self):
            return len(y)

        def __getitem__(self, index):
            return X[index], y[index]

    for data in (dataset, loader, Wrapped()):
        result = fit(small_model(), data, "cross_entropy", "sgd", lr=0.1, epochs=2, batch_size=32)
        assert result.steps == 6


def test_resume_in_process_continues_exactly(tmp_path: Path, single_thread) -> None:
    X, y = small_problem(n=120)
    options = dict(
        loss="cross_entropy",
        optimizer="adamw",
        lr=1e-2,
        batch_size=16,
        val_data=(X, y),
        stopping=stopping.patience(100, monitor="val_loss"),
    )
    straight = small_model()
    fit(straight, (X, y), epochs=4, **options)
    first = small_model()
    fit(first, (X, y), max_steps=11, checkpoint_dir=tmp_path, checkpoint_every=5, **options)
    # Resume from step 10 (the newest checkpoint before the end: delete the final one).
    (tmp_path / "step-000011.pt").unlink()
    second = small_model(seed=99)
    result = fit(second, (X, y), epochs=4, checkpoint_dir=tmp_path, resume=True, **options)
    assert result.steps == 32 and len(result.history) == 32
    for a, b in zip(straight.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)


def test_resume_refuses_a_different_batch_size(tmp_path: Path) -> None:
    X, y = small_problem(n=64)
    fit(small_model(), (X, y), "cross_entropy", max_steps=2, checkpoint_dir=tmp_path, batch_size=16)
    with pytest.raises(ValueError, match="batch_size"):
        fit(
            small_model(),
            (X, y),
            "cross_entropy",
            max_steps=4,
            checkpoint_dir=tmp_path,
            batch_size=8,
            resume=True,
        )


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ({"optimizer": "nope"}, ValueError, "optimizer='nope'"),
        ({"loss": "hinge"}, ValueError, "loss='hinge'"),
        ({"batch_size": 0}, ValueError, "batch_size=0"),
        ({"accumulate": 1.5}, TypeError, "accumulate=1.5"),
        ({"eval_every": "often"}, ValueError, "eval_every='often'"),
        ({"precision": "int8"}, ValueError, "precision='int8'"),
        ({"resume": True}, ValueError, "checkpoint_dir"),
        ({"data": [1, 2, 3]}, TypeError, "data must be"),
        (
            {"optimizer": torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), "lr": 0.1},
            ValueError,
            "lr=0.1",
        ),
        ({"metrics": ("f1",)}, ValueError, "f1"),
    ],
)
def test_bad_arguments_raise_naming_the_value(arguments, error, match) -> None:
    options = {"data": small_problem(n=16), "loss": "cross_entropy", "max_steps": 1}
    options.update(arguments)
    with pytest.raises(error, match=match):
        fit(small_model(), **options)


def test_ctrl_c_finishes_the_step_saves_and_resumes_exactly(tmp_path: Path, single_thread) -> None:
    import signal

    X, y = small_problem(n=120)
    options = dict(loss="cross_entropy", optimizer="adamw", lr=1e-2, batch_size=16, epochs=3)
    straight = small_model()
    fit(straight, (X, y), **options)

    class PressCtrlC:
        def on_step_end(self, trainer: Trainer, record: StepRecord) -> None:
            if record.step == 7:
                signal.raise_signal(signal.SIGINT)  # as if the user pressed Ctrl-C

    interrupted = small_model()
    result = fit(interrupted, (X, y), checkpoint_dir=tmp_path, callbacks=[PressCtrlC()], **options)
    assert result.steps == 7 and "Ctrl-C" in result.stopped_by
    assert (tmp_path / "step-000007.pt").exists()
    resumed = small_model(seed=5)
    result = fit(resumed, (X, y), checkpoint_dir=tmp_path, resume=True, **options)
    assert result.steps == 24 and result.stopped_by == "completed epochs=3"
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_lr_auto_chooses_says_why_and_trains(digits, single_thread) -> None:
    torch.manual_seed(0)
    model = build_model("mlp", digits)
    result = fit(model, digits.train, "cross_entropy", "adam", lr="auto", epochs=3, val_data=digits.val)
    choice = result.lr_choice
    assert choice is not None and choice.reason
    assert choice.method is steepest.Prodigy  # the documented policy for the Adam family
    assert result.metrics["val_accuracy"] >= 0.9
    with pytest.raises(ValueError, match="lr"):
        fit(small_model(), small_problem(), "cross_entropy", "adam", lr="fast", epochs=1)


class _KeepOptimizer:
    """Callback: keeps the optimizer fit built."""

    def on_fit_start(self, trainer) -> None:
        self.optimizer = trainer.optimizer


def test_a_partial_of_an_optimizer_class_is_a_class_with_options(single_thread) -> None:
    kept = _KeepOptimizer()
    sgd = functools.partial(steepest.SGD, momentum=0.9, nesterov=True)
    fit(small_model(), small_problem(), "cross_entropy", sgd, lr=0.05, max_steps=2, callbacks=[kept])
    group = kept.optimizer.param_groups[0]
    assert type(kept.optimizer) is steepest.SGD
    assert (group["lr"], group["momentum"], group["nesterov"]) == (0.05, 0.9, True)
    with pytest.raises(ValueError, match="lr is given twice"):
        fit(small_model(), small_problem(), "cross_entropy", functools.partial(steepest.SGD, lr=0.1), lr=0.2)


def test_lr_auto_keeps_the_optimizer_class_and_its_options(single_thread) -> None:
    # torch's SGD stays torch's SGD (not steepest's namesake), and the momentum shapes both the
    # choice (the range test and trials run with it) and the run.
    kept = _KeepOptimizer()
    sgd = functools.partial(torch.optim.SGD, momentum=0.9)
    result = fit(
        small_model(), small_problem(), "cross_entropy", sgd, lr="auto", max_steps=3, callbacks=[kept]
    )
    choice = result.lr_choice
    assert choice.method is torch.optim.SGD and choice.policy == "range_test"
    assert type(kept.optimizer) is torch.optim.SGD
    group = kept.optimizer.param_groups[0]
    assert group["momentum"] == 0.9 and group["lr"] == choice.lr
    with pytest.raises(ValueError, match="chooses lr"):
        fit(
            small_model(),
            small_problem(),
            "cross_entropy",
            functools.partial(torch.optim.SGD, lr=0.1),
            lr="auto",
        )
    with pytest.raises(ValueError, match="partial"):
        fit(small_model(), small_problem(), "cross_entropy", lambda p: torch.optim.SGD(p, lr=0.1), lr="auto")


def test_safe_step_skips_a_poisoned_batch_and_the_run_completes(single_thread) -> None:
    X, y = small_problem(n=128)
    X = X.clone()
    X[5, 0] = float("nan")  # one example poisons the loss of its batch in every epoch
    options = dict(loss="cross_entropy", optimizer="sgd", lr=0.1, batch_size=32, epochs=3)
    unguarded = fit(small_model(), (X, y), **options)
    assert unguarded.stopped_by.startswith("diverged")

    model = small_model()
    result = fit(model, (X, y), on_nonfinite="skip", **options)
    assert result.stopped_by == "completed epochs=3" and result.steps == 12
    assert all(torch.isfinite(p).all() for p in model.parameters())
    skipped = [record for record in result.history if "safety" in record.extra]
    assert len(skipped) == 3 and all(record.extra["safety"].startswith("skip") for record in skipped)
    with pytest.raises(FloatingPointError):
        fit(small_model(), (X, y), on_nonfinite="raise", **options)


def test_the_guard_is_handed_the_gradient_norm_fit_logs(single_thread, monkeypatch) -> None:
    # One norm per step, computed once: the guard's checks and its too-large diagnosis read the
    # one fit logs (unscaled, before clipping), which is also the only one there is under a
    # GradScaler, whose scaled gradients the guard cannot check itself.
    from steepest.lr.safety import SafeStep

    handed: list[float | None] = []
    real_step = SafeStep.step

    def spy(self, loss, closure=None, grad_norm=None):
        handed.append(grad_norm)
        return real_step(self, loss, closure, grad_norm)

    monkeypatch.setattr(SafeStep, "step", spy)
    options = dict(loss="cross_entropy", optimizer="sgd", lr=0.1, batch_size=32, epochs=1)
    result = fit(small_model(), small_problem(n=128), on_nonfinite="skip", **options)
    assert handed == [record.grad_norm for record in result.history] and None not in handed


def test_compile_trains_like_eager(single_thread) -> None:
    """torch.compile of the model (about 20 s of compilation on 2 cores) follows eager closely."""
    X, y = small_problem(n=128)
    options = dict(loss="cross_entropy", optimizer="adam", lr=1e-2, batch_size=32, epochs=2)
    eager = fit(small_model(), (X, y), **options)
    compiled = fit(small_model(), (X, y), compile=True, **options)
    assert compiled.steps == eager.steps == 8
    for a, b in zip(eager.history, compiled.history, strict=True):
        assert b.loss == pytest.approx(a.loss, rel=1e-4)


def three_class_problem(nan_rows: tuple[int, ...] = ()):
    generator = torch.Generator().manual_seed(5)
    X, X_val = torch.randn(200, 8, generator=generator), torch.randn(80, 8, generator=generator)
    labels = [(x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long() for x in (X, X_val)]
    X[list(nan_rows)] = float("nan")
    return (X, labels[0]), (X_val, labels[1])


@pytest.mark.parametrize(
    ("lr", "settings", "nan_rows", "first_epochs"),
    [
        # 0.5 is too large for Adam here: the live diagnosis backs off at step 12, back to step 0
        (0.5, {"safety": {"on_too_large": "backoff", "regime_window": 6, "snapshot_every": 1}}, (), 1),
        # a NaN batch in every epoch: each backoff goes back to the last snapshot (every 10 steps)
        (1e-2, {"on_nonfinite": "backoff"}, (17,), 2),
    ],
    ids=["too large", "non-finite"],
)
def test_a_resumed_run_backs_off_to_where_the_uninterrupted_one_does(
    tmp_path: Path, single_thread, lr: float, settings: dict, nan_rows: tuple, first_epochs: int
) -> None:
    # The guard's diagnosis and its snapshots were not checkpointed: after a resume it missed
    # the backoff, or rolled back to its first step after the resume and kept a wrecked model
    # (steepest train --lr 10 --on-too-large backoff, killed and resumed: 10% test accuracy
    # where the uninterrupted run reached 96%).
    data, val_data = three_class_problem(nan_rows)
    options = dict(loss="cross_entropy", optimizer="adam", lr=lr, batch_size=32, seed=3, val_data=val_data)

    def net() -> nn.Module:
        torch.manual_seed(123)
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 3))

    straight = fit(net(), data, epochs=6, **settings, **options)
    fit(net(), data, epochs=first_epochs, checkpoint_dir=tmp_path, **settings, **options)
    resumed = fit(net(), data, epochs=6, checkpoint_dir=tmp_path, resume=True, **settings, **options)
    events = [
        [(r.step, r.extra["safety"]) for r in run.history if "safety" in r.extra]
        for run in (straight, resumed)
    ]
    assert events[0] and events[0] == events[1]
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_run_stopped_off_the_evaluation_cadence_resumes_as_if_never_stopped(
    tmp_path: Path, single_thread
) -> None:
    # The final evaluation of a run stopped at step 10 (eval_every=4) once went into its
    # checkpoint: the resumed run had an evaluation at 10 the other never made, a train loss
    # averaged from step 11 instead of 9, and an extra report to the plateau schedule.
    data, _ = three_class_problem()

    class ReportTrainLoss:
        def on_evaluate(self, trainer, record) -> None:
            trainer.optimizer.report(record.metrics["train_loss"])

    def run(max_steps: int, **checkpoints) -> FitResult:
        schedule = steepest.schedules.warmup_cosine(peak=3e-2, warmup=5, total=60)
        lr = steepest.reduce_on_plateau(schedule, factor=0.5, patience=1, threshold=0.3)
        torch.manual_seed(123)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        return fit(
            model,
            data,
            "cross_entropy",
            "adamw",
            lr,
            batch_size=32,
            seed=3,
            eval_every=4,
            max_steps=max_steps,
            callbacks=[ReportTrainLoss()],
            **checkpoints,
        )

    straight = run(40)
    stopped = run(10, checkpoint_dir=tmp_path)
    assert [e.step for e in stopped.evaluations] == [4, 8, 10]  # its own final metrics
    resumed = run(40, checkpoint_dir=tmp_path, resume=True)
    assert [e.step for e in resumed.evaluations] == [e.step for e in straight.evaluations]
    assert [e.metrics for e in resumed.evaluations] == [e.metrics for e in straight.evaluations]
    assert [r.lr for r in resumed.history] == [r.lr for r in straight.history]
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_the_logged_effective_lr_is_the_step_size_that_step_took() -> None:
    # effective_lr was read after the step, when the schedule had moved on: the last step of a
    # cosine run showed lr 0.019 and effective_lr 0 (the next step's). Schedule-free SGD without
    # warm-up takes the scheduled lr itself.
    torch.manual_seed(0)
    X, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    schedule = steepest.schedules.cosine(peak=0.5, total=8)
    result = fit(
        nn.Linear(4, 3), (X, y), "cross_entropy", "schedulefreesgd", lr=schedule, epochs=2, batch_size=16
    )
    assert len(result.history) == 8
    for record in result.history:
        assert record.extra["effective_lr"] == pytest.approx(record.lr, rel=1e-12), record.step
