"""fit() refuses bad input at once, naming the argument and its value, and changes nothing.

"Nothing" is the model's parameters (values and device), its train/eval mode, and the global
random generators of torch, numpy and Python: fit seeds those, so an error raised after the
seeding would show in them.
"""

from __future__ import annotations

import functools
import random
import re

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import steepest
from steepest.train import fit

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def problem(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, 4, generator=generator), torch.randint(0, 3, (n,), generator=generator)


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(4, 3)


class State:
    """The parameters (values, devices), train modes and global random states, to compare."""

    def __init__(self, module: nn.Module | None = None) -> None:
        # Away from any seed fit uses, so that a reseeding cannot go unnoticed.
        torch.manual_seed(1234)
        np.random.seed(1234)
        random.seed(1234)
        self.module = module
        self.torch = torch.get_rng_state()
        self.numpy = np.random.get_state()
        self.python = random.getstate()
        self.params = [] if module is None else [(p.detach().clone(), p.device) for p in module.parameters()]
        self.modes = [] if module is None else [m.training for m in module.modules()]

    def assert_unchanged(self) -> None:
        assert torch.equal(torch.get_rng_state(), self.torch), "torch's random state changed"
        numpy_now = np.random.get_state()
        assert numpy_now[0] == self.numpy[0] and np.array_equal(numpy_now[1], self.numpy[1])
        assert numpy_now[2:] == self.numpy[2:], "numpy's random state changed"
        assert random.getstate() == self.python, "Python's random state changed"
        if self.module is None:
            return
        for param, (value, device) in zip(self.module.parameters(), self.params, strict=True):
            assert param.device == device, f"the model moved to {param.device}"
            assert torch.equal(param.detach(), value), "the model's parameters changed"
        assert [m.training for m in self.module.modules()] == self.modes, "the train/eval mode changed"


def refused(error: type[Exception], match: str, module: nn.Module | None = None, **arguments) -> None:
    """fit(module, **arguments) raises ``error`` matching ``match`` and changes nothing."""
    module = model() if module is None else module
    options = {"data": problem(), "loss": "cross_entropy", "optimizer": "sgd", "max_steps": 2}
    options.update(arguments)
    state = State(module)
    with pytest.raises(error, match=match):
        fit(module, **options)
    state.assert_unchanged()


def never_asked(observation) -> None:
    """A stopping criterion for runs that must fail before their first evaluation: a loop over
    empty epochs evaluates at each, and ends here at once instead of hanging."""
    pytest.fail(f"fit evaluated after {observation.iteration} steps: it looped over epochs without a batch")


# ------------------------------------------------------------------------------ data


@pytest.mark.parametrize("limit", [{"max_steps": 2}, {"epochs": 10}])
def test_empty_data_is_refused_instead_of_looping(limit) -> None:
    X, y = problem()
    arguments = {"data": (X[:0], y[:0]), "stopping": never_asked, "max_steps": None, **limit}
    refused(ValueError, r"data holds no examples: inputs of shape \(0, 4\)", **arguments)


def test_empty_data_loader_and_val_data_are_refused() -> None:
    X, y = problem()
    empty = DataLoader(TensorDataset(X[:0], y[:0]), batch_size=8)
    refused(ValueError, "data holds no examples", data=empty, stopping=never_asked)
    refused(ValueError, "val_data holds no examples", val_data=(X[:0], y[:0]))


class Stream(IterableDataset):
    """Examples of unknown number: ``passes`` passes over (X, y), then nothing."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor, passes: int) -> None:
        self.X, self.y, self.passes = X, y, passes

    def __iter__(self):
        if self.passes == 0:
            return iter(())
        self.passes -= 1
        return iter(zip(self.X, self.y, strict=True))


def test_data_of_unknown_length_that_yields_nothing_is_refused() -> None:
    X, y = problem()
    refused(
        ValueError,
        "data holds no examples",
        data=DataLoader(Stream(X, y, passes=0), batch_size=8),
        stopping=never_asked,
    )


def test_data_that_runs_out_ends_the_run_instead_of_looping() -> None:
    X, y = problem()
    asked = []

    def once_per_epoch(observation) -> None:
        asked.append(observation.iteration)
        if len(asked) > 2:
            pytest.fail("fit looped over epochs without a batch")

    result = fit(
        model(),
        DataLoader(Stream(X, y, passes=1), batch_size=8),
        "cross_entropy",
        "sgd",
        max_steps=100,
        batch_size=8,
        stopping=once_per_epoch,
    )
    assert result.steps == 4 and result.stopped_by == "the data ran out: epoch 2 yielded no batch"
    assert not result.success


# ------------------------------------------------------------------------------ checked first


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        # the audit's case: the model moved to the meta device lost its values
        ({"optimizer": "sgdd", "device": "meta"}, ValueError, "device='meta'"),
        ({"optimizer": "sgdd"}, ValueError, "optimizer='sgdd'"),
        ({"optimizer": "lbfgs"}, TypeError, "LBFGS: it needs a closure"),
        ({"optimizer": torch.optim.LBFGS}, TypeError, "LBFGS: it needs a closure"),
        ({"optimizer": nn.Linear}, TypeError, "Optimizer subclass, got Linear"),
        ({"optimizer": functools.partial(steepest.SGD, lr=0.1), "lr": 0.2}, ValueError, "lr is given twice"),
    ],
)
def test_an_optimizer_fit_cannot_use_is_refused_before_anything_changes(arguments, error, match) -> None:
    refused(error, match, **arguments)


def test_not_a_module_is_refused_before_the_seeding() -> None:
    for bad in (None, lambda x: x):
        state = State()
        with pytest.raises(TypeError, match="model must be a torch.nn.Module, got (NoneType|function)"):
            fit(bad, problem(), "cross_entropy", "sgd", max_steps=2)
        state.assert_unchanged()


def test_a_model_without_trainable_parameters_is_refused() -> None:
    frozen = model().requires_grad_(False)
    refused(ValueError, "model has no trainable parameters", module=frozen)


# ------------------------------------------------------------------------------ an optimizer instance


def test_an_optimizer_built_for_other_tensors_is_refused() -> None:
    stranger = steepest.SGD([torch.zeros(3, requires_grad=True)], lr=0.5)
    refused(
        ValueError,
        r"optimizer=SGD holds 1 of 1 tensors that are not parameters .* shape \(3,\)",
        optimizer=stranger,
    )
    module = model()
    mixed = steepest.SGD([module.weight, torch.zeros(3, requires_grad=True)], lr=0.5)
    refused(ValueError, "holds 1 of 2 tensors that are not parameters", module=module, optimizer=mixed)


def test_an_optimizer_holding_only_frozen_parameters_is_refused() -> None:
    module = model()
    module.bias.requires_grad_(False)
    refused(
        ValueError,
        "none of the model's trainable parameters",
        module=module,
        optimizer=steepest.SGD([module.bias], lr=0.5),
    )


def test_an_optimizer_may_leave_out_parameters_to_keep_them_frozen() -> None:
    module = model()
    weight, bias = module.weight.detach().clone(), module.bias.detach().clone()
    fit(module, problem(), "cross_entropy", steepest.SGD([module.weight], lr=0.5), max_steps=2)
    assert not torch.equal(module.weight, weight)
    assert torch.equal(module.bias, bias)


def test_a_factory_whose_optimizer_holds_other_tensors_is_refused_and_undone() -> None:
    def stranger(params):
        return torch.optim.SGD([torch.zeros(3, requires_grad=True)], lr=0.5)

    refused(ValueError, "holds 1 of 1 tensors that are not parameters", optimizer=stranger)
    refused(
        TypeError, "factory must return a torch.optim.Optimizer, got list", optimizer=lambda params: params
    )


# ------------------------------------------------------------------------------ kinds and ranges


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ({"safety": {"bogus": 1}}, TypeError, "safety has no option 'bogus'"),
        ({"safety": {"scaler": None}}, TypeError, "safety has no option 'scaler'"),
        ({"safety": "x"}, TypeError, "safety must be a dict .* got safety='x'"),
        ({"safety": {"spike_factor": -1.0}, "on_spike": "skip"}, ValueError, "spike_factor=-1.0"),
        ({"clip_norm": -1}, ValueError, "clip_norm=-1"),
        ({"clip_norm": True, "optimizer": torch.optim.SGD, "lr": 0.1}, TypeError, "clip_norm=True"),
        ({"clip_norm": "1", "optimizer": torch.optim.SGD, "lr": 0.1}, TypeError, "clip_norm='1'"),
        ({"compile": "no"}, TypeError, "compile='no'"),
        ({"track_grad_norm": "no"}, TypeError, "track_grad_norm='no'"),
        ({"callbacks": "abc"}, TypeError, "callbacks='abc'"),
        ({"callbacks": [5]}, TypeError, r"callbacks\[0\]=5 has none of the methods on_fit_start"),
        ({"metrics": 5}, TypeError, "metrics=5"),
        ({"on_nonfinite": ""}, ValueError, "on_nonfinite=''"),
        ({"on_nonfinite": False}, TypeError, "on_nonfinite=False"),
        ({"on_spike": "ignore"}, ValueError, "on_spike='ignore'"),
        ({"batch_size": "64"}, TypeError, "batch_size='64'"),
        ({"batch_size": 8.0}, TypeError, "batch_size=8.0"),
        ({"max_steps": 2.0}, TypeError, "max_steps=2.0"),
        ({"epochs": "3"}, TypeError, "epochs='3'"),
        ({"accumulate": 1.5}, TypeError, "accumulate=1.5"),
        ({"keep_last": 3.0}, TypeError, "keep_last=3.0"),
        ({"eval_every": 1.0}, TypeError, "eval_every=1.0"),
        ({"seed": "0"}, TypeError, "seed='0'"),
        ({"seed": 1.5}, TypeError, "seed=1.5"),
        ({"seed": None}, TypeError, "seed=None"),
        ({"seed": 2**70}, ValueError, f"seed={2**70}"),
        ({"checkpoint_dir": 5}, TypeError, "checkpoint_dir=5"),
        ({"resume": 1}, TypeError, "resume=1"),
        ({"device": 5.5}, TypeError, "device=5.5"),
        ({"device": "gpu"}, ValueError, "device='gpu'"),
        ({"loss": nn.CrossEntropyLoss}, TypeError, re.escape("pass an instance: nn.CrossEntropyLoss()")),
    ],
)
def test_a_bad_argument_is_refused_naming_it_before_anything_changes(arguments, error, match) -> None:
    refused(error, match, **arguments)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a device this machine lacks")
def test_a_device_this_machine_lacks_is_refused() -> None:
    refused(ValueError, "device='cuda' cannot be used here", device="cuda")


def test_none_means_no_callbacks_and_no_metrics_and_a_name_is_one_metric() -> None:
    X, y = problem()
    options = dict(data=(X, y), loss="cross_entropy", optimizer="sgd", max_steps=2, val_data=(X, y))
    result = fit(model(), callbacks=None, metrics=None, **options)
    assert set(result.metrics) == {"val_loss"}
    result = fit(model(), metrics="accuracy", **options)
    assert set(result.metrics) == {"val_loss", "val_accuracy"}


def test_numpy_integers_are_integers() -> None:
    result = fit(
        model(),
        problem(),
        "cross_entropy",
        "sgd",
        max_steps=np.int64(2),
        batch_size=np.int32(8),
        seed=np.int64(3),
    )
    assert result.steps == 2


# ------------------------------------------------------------------------------ failing at the first step


def test_a_loss_that_is_not_a_scalar_tensor_is_refused_at_the_first_step_and_undone() -> None:
    module = model().eval()  # fit puts it in train mode: undone too
    refused(
        ValueError,
        r"loss must return a scalar tensor .* shape \(32,\)",
        module=module,
        loss=nn.CrossEntropyLoss(reduction="none"),
        batch_size=32,
    )
    refused(
        TypeError,
        "loss must return a scalar tensor, got float",
        loss=lambda outputs, targets: outputs.detach().sum().item(),
    )
    refused(
        TypeError,
        "floating-point tensor, got dtype torch.int64",
        loss=lambda outputs, targets: (outputs.argmax(1) == targets).sum(),
    )


def test_an_error_before_the_first_step_puts_back_what_fit_changed() -> None:
    # The optimizer's own check of its options, and the model's forward pass, run only once
    # fit has seeded the generators: fit restores them.
    refused(ValueError, "lr", lr=-1.0)
    X, y = problem()
    refused(RuntimeError, "shapes cannot be multiplied", data=(torch.cat([X, X], 1), y))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
def test_an_error_before_the_first_step_moves_the_model_back() -> None:
    refused(
        ValueError,
        r"loss must return a scalar tensor",
        loss=nn.CrossEntropyLoss(reduction="none"),
        device="cuda",
    )


def test_a_spike_policy_keeps_the_default_for_a_non_finite_loss() -> None:
    # on_nonfinite=None stops the run when the loss is not finite; asking for a spike policy once
    # turned that default into "raise" (FloatingPointError out of fit)
    torch.manual_seed(0)
    inputs, targets = torch.randn(64, 4), torch.randint(0, 3, (64,))
    inputs[20] = float("nan")
    result = steepest.fit(
        nn.Linear(4, 3), (inputs, targets), "cross_entropy", "sgd", epochs=2, batch_size=16, on_spike="skip"
    )
    # a divergence, as without a guard: steepest train's exit code reads it
    assert result.stopped_by.startswith("diverged: non-finite loss"), result.stopped_by
    assert result.stopped_by.endswith("(safe-step policy)")


def test_skipping_stops_as_diverged_once_the_parameters_are_not_finite() -> None:
    # lr=1e308: the first update overflows the weights; "skip" once skipped every later NaN loss
    # and fit reported the epochs completed, with a NaN model (steepest train exited 0)
    torch.manual_seed(0)
    inputs, targets = torch.randn(64, 4), torch.randint(0, 3, (64,))
    result = steepest.fit(
        nn.Linear(4, 3),
        (inputs, targets),
        "cross_entropy",
        "sgd",
        lr=1e308,
        epochs=3,
        batch_size=16,
        on_nonfinite="skip",
    )
    assert result.stopped_by.startswith("diverged: non-finite loss"), result.stopped_by
    assert "parameters are not finite" in result.stopped_by
    assert result.steps == 2
