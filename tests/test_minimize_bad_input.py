"""Bad input to minimize, range_test and choose_lr: a clear error naming the argument, at once,
before anything runs (no hang, no sweep spent on a typo, no suggestion read off nothing)."""

from __future__ import annotations

import math

import pytest
import torch

import steepest
from steepest.lr import choose_lr, range_test


class Counted:
    """A quadratic that counts its calls: an error must come before the first."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return ((x - 1) ** 2).sum()


def test_minimize_without_any_criterion_that_can_end_the_run_refuses_to_start() -> None:
    # lr=0 never converges: with every criterion off this looped forever
    fun = Counted()
    with pytest.raises(ValueError, match="no criterion can end the run"):
        steepest.minimize(fun, torch.zeros(3), lr=0.0, max_iter=None, gtol=None)
    assert fun.calls == 0
    # one criterion is enough
    result = steepest.minimize(fun, torch.zeros(3), lr=0.0, max_iter=None, gtol=None, xtol=0.0)
    assert result.nit == 1


@pytest.mark.parametrize("x0", [torch.zeros(0), {"w": torch.zeros(0, 3)}])
def test_minimize_refuses_a_start_with_no_element(x0: object) -> None:
    with pytest.raises(ValueError, match="x0 holds no element"):
        steepest.minimize(lambda x: torch.tensor(0.0), x0)


def test_minimize_refuses_a_complex_objective_value() -> None:
    with pytest.raises(TypeError, match="real floating-point.*complex"):
        steepest.minimize(lambda x: ((x - 1) ** 2).sum() * (1 + 1j), torch.zeros(3), max_iter=3)


@pytest.mark.parametrize(
    ("settings", "error", "named"),
    [
        ({"options": [("momentum", 0.9)]}, TypeError, "options"),
        ({"options": "momentum=0.9"}, TypeError, "options"),
        ({"safety": "x"}, TypeError, "safety"),
        ({"on_nonfinite": 0}, TypeError, "on_nonfinite=0"),
        ({"on_nonfinite": False}, TypeError, "on_nonfinite=False"),
        ({"on_spike": 1.0}, TypeError, "on_spike=1.0"),
        ({"on_nonfinite": ""}, ValueError, "on_nonfinite=''"),  # once read as "stop"
    ],
)
def test_minimize_checks_the_kind_of_its_settings_before_running(
    settings: dict, error: type[Exception], named: str
) -> None:
    fun = Counted()
    with pytest.raises(error, match=named):
        steepest.minimize(fun, torch.zeros(3), method="sgd", lr=0.1, max_iter=3, **settings)
    assert fun.calls == 0


def test_auto_lr_refuses_a_misspelt_option_instead_of_dropping_it() -> None:
    # Adam-family runs as Prodigy, which takes only some of Adam's options: a misspelt one was
    # dropped with them, and the run went on without it
    fun = Counted()
    with pytest.raises(TypeError, match=r"Adam takes no option \['momentm'\]"):
        steepest.minimize(fun, torch.zeros(3), method="adam", lr="auto", options={"momentm": 0.9})
    assert fun.calls == 0
    with pytest.raises(TypeError, match=r"SGD takes no option \['momentm'\]"):
        choose_lr(fun, optimizer="sgd", x0=torch.zeros(3), options={"momentm": 0.9})
    assert fun.calls == 0


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "prodigy"])
@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"min_lr": -1.0}, "min_lr"),
        ({"min_lr": 1.0, "max_lr": 0.5}, "max_lr"),
        ({"steps": "x"}, "steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"seed": -5}, "seed"),
        ({"repeats": 0}, "repeats"),
        ({"options": [("momentum", 0.9)]}, "options"),
    ],
)
def test_choose_lr_checks_every_setting_whichever_branch_it_takes(
    optimizer: str, settings: dict, named: str
) -> None:
    # Adam runs as Prodigy and SGD by the curvature: neither sweeps, and both once returned
    # a choice whatever the sweep's settings said
    fun = Counted()
    with pytest.raises((TypeError, ValueError), match=named):
        choose_lr(fun, optimizer=optimizer, x0=torch.zeros(3), **settings)
    assert fun.calls == 0


# -- range_test ---------------------------------------------------------------------------------
def linear() -> torch.nn.Module:
    return torch.nn.Linear(4, 3)


def test_range_test_refuses_an_empty_data_set() -> None:
    # the shuffled stream of an empty (X, y) pair never yielded a batch: the sweep hung
    inputs, targets = torch.randn(0, 4), torch.zeros(0, dtype=torch.long)
    with pytest.raises(ValueError, match="no examples"):
        range_test(linear(), (inputs, targets), steps=10, repeats=1)


def test_range_test_refuses_a_pair_whose_lengths_differ() -> None:
    # once read as a list of two batches, with a message about batches
    inputs, targets = torch.randn(32, 4), torch.randint(0, 3, (5,))
    with pytest.raises(ValueError, match="different numbers of examples: 32 and 5"):
        range_test(linear(), (inputs, targets), steps=10, repeats=1)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_range_test_refuses_a_loss_that_is_not_finite_at_the_start(value: float) -> None:
    # it once suggested min_lr, as if read off a curve
    with pytest.raises(ValueError, match=f"the loss is {value} at the starting point"):
        range_test(lambda x: x.sum() + value, x0=torch.zeros(3), steps=10, repeats=1)


def test_range_test_refuses_a_loss_that_does_not_depend_on_the_parameters() -> None:
    with pytest.raises(ValueError, match="does not depend on the parameters"):
        range_test(lambda x: torch.tensor(1.0), x0=torch.zeros(3), steps=10, repeats=1)


def test_range_test_refuses_a_start_with_no_element() -> None:
    with pytest.raises(ValueError, match="x0 holds no element"):
        range_test(lambda x: x.sum(), x0=torch.zeros(0), steps=10, repeats=1)


def test_range_test_restores_the_random_state_after_refusing_a_start() -> None:
    before = torch.get_rng_state()
    with pytest.raises(ValueError):
        range_test(lambda x: x.sum() * math.nan, x0=torch.zeros(3), steps=10, repeats=2, seed=7)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", torch.optim.SGD])
def test_choose_lr_checks_the_values_of_the_options(optimizer: object) -> None:
    # a choice was once made "for momentum -0.9", an optimizer the run could never build
    options = {"momentum": -0.9} if optimizer != "adam" else {"betas": (1.5, 0.9)}
    fun = Counted()
    with pytest.raises(ValueError):
        choose_lr(fun, optimizer=optimizer, x0=torch.zeros(3), options=options)
    assert fun.calls == 0
