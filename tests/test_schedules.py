"""Tests for steepest.schedules: torch parity, closed forms, combinators, serialization, errors."""

from __future__ import annotations

import ast
import dataclasses
import doctest
import inspect
import json
import math
import pickle
import random
import re
import typing
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.optim import lr_scheduler

from steepest import schedules
from steepest.schedules import (
    SCHEDULES,
    Schedule,
    as_schedule,
    by_name,
    constant,
    cosine,
    cosine_restarts,
    epochs_to_steps,
    exponential,
    inverse_sqrt,
    join,
    linear,
    multistep,
    one_cycle,
    one_cycle_momentum,
    plot,
    polynomial,
    step_decay,
    steps_per_epoch,
    warmup_cosine,
    wsd,
)

RELATIVE_TOLERANCE = 1e-12
BASE_LR = 0.1

# One instance of every schedule kind (every SCHEDULES name plus the combinators), with
# non-default arguments where possible so that a lost argument shows up in the round trips.
EXAMPLES: dict[str, Schedule] = {
    "constant": constant(0.25),
    "step_decay": step_decay(peak=0.1, every=7, gamma=0.5),
    "multistep": multistep(peak=0.1, milestones=[5, 12, 30], gamma=0.3),
    "exponential": exponential(peak=0.1, gamma=0.9, every=3),
    "cosine": cosine(peak=0.1, total=40, floor=0.01),
    "cosine_restarts": cosine_restarts(peak=0.1, period=5, period_mult=2, floor=0.001),
    "linear": linear(start=0.2, end=0.05, total=25),
    "warmup_cosine": warmup_cosine(peak=0.1, warmup=8, total=50, floor=0.002, start=0.01),
    "one_cycle": one_cycle(
        peak=0.1, total=60, warmup_fraction=0.4, anneal="linear", div_factor=10.0,
        final_div_factor=100.0, three_phase=True, base_momentum=0.8, max_momentum=0.9,
    ),
    "one_cycle_momentum": one_cycle_momentum(peak=0.1, total=60, base_momentum=0.7),
    "polynomial": polynomial(peak=0.1, total=30, power=2.5, floor=0.001),
    "wsd": wsd(peak=0.1, warmup=5, total=60, decay=20, floor=0.001, start=0.01, shape="sqrt"),
    "inverse_sqrt": inverse_sqrt(peak=0.1, warmup=10, start=0.02),
    "join": join([linear(0.0, 0.1, 10), cosine(0.1, 50), constant(0.0)], boundaries=[10, 60]),
    "product": 0.5 * cosine(peak=0.1, total=40) * linear(start=1.0, end=0.1, total=20),
}


def test_examples_cover_every_registered_schedule() -> None:
    covered = {schedule.name for schedule in EXAMPLES.values()}
    missing = set(SCHEDULES) - covered
    assert not missing, f"add an example for {missing}"


# --------------------------------------------------------------------------- torch parity
# The oracle is torch itself: we step a real torch scheduler on a dummy float64 SGD and read
# optimizer.param_groups[0]["lr"] (and "momentum") after each step, the recursive values
# that a torch user actually trains with.


def torch_trajectory(
    make_scheduler: Callable[[torch.optim.Optimizer], lr_scheduler.LRScheduler],
    num_steps: int,
) -> tuple[list[float], list[float], list[float]]:
    """(lr, momentum, closed-form lr) at steps 0 .. num_steps - 1, as torch computes them."""
    parameter = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.SGD([parameter], lr=BASE_LR, momentum=0.9)
    scheduler = make_scheduler(optimizer)
    rates, momenta, closed_forms = [], [], []
    for step in range(num_steps):
        if step > 0:
            optimizer.step()  # no gradient: a no-op that keeps torch's step-order check quiet
            scheduler.step()
        group = optimizer.param_groups[0]
        rates.append(group["lr"])
        momenta.append(group["momentum"])
        if hasattr(scheduler, "_get_closed_form_lr"):
            closed_forms.append(scheduler._get_closed_form_lr()[0])
    return rates, momenta, closed_forms


def assert_relatively_close(ours: list[float], theirs: list[float], what: str) -> None:
    assert len(ours) == len(theirs)
    for step, (mine, reference) in enumerate(zip(ours, theirs, strict=True)):
        # Strictly relative: where torch gives exactly 0 we must give exactly 0.
        assert abs(mine - reference) <= RELATIVE_TOLERANCE * abs(reference), (
            f"{what}: step {step}: ours {mine!r}, torch {reference!r}"
        )


PARITY_CASES = {
    "StepLR": (
        lambda opt: lr_scheduler.StepLR(opt, step_size=37, gamma=0.9),
        step_decay(peak=BASE_LR, every=37, gamma=0.9),
        1500,
    ),
    "MultiStepLR": (
        lambda opt: lr_scheduler.MultiStepLR(opt, milestones=[100, 350, 351, 900], gamma=0.3),
        multistep(peak=BASE_LR, milestones=[100, 350, 351, 900], gamma=0.3),
        1500,
    ),
    "ExponentialLR": (
        lambda opt: lr_scheduler.ExponentialLR(opt, gamma=0.995),
        exponential(peak=BASE_LR, gamma=0.995),
        1500,
    ),
    # CosineAnnealingLR is recursive in torch; measured, its recursion stays within 1e-15 of
    # its closed form on [0, T_max] (it drifts by ~1e-12 only past T_max), so up to T_max we
    # compare against what torch actually produces, and test_cosine_matches_torch_closed_form
    # compares against the documented closed form too. Past T_max the schedules differ by
    # design (test_cosine_holds_floor_after_total).
    "CosineAnnealingLR": (
        lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=1200, eta_min=0.0),
        cosine(peak=BASE_LR, total=1200),
        1201,
    ),
    "CosineAnnealingLR-eta_min": (
        lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=1200, eta_min=1e-4),
        cosine(peak=BASE_LR, total=1200, floor=1e-4),
        1201,
    ),
    "CosineAnnealingWarmRestarts-T_mult2": (
        lambda opt: lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=50, T_mult=2, eta_min=1e-4),
        cosine_restarts(peak=BASE_LR, period=50, period_mult=2, floor=1e-4),
        3000,
    ),
    "CosineAnnealingWarmRestarts-T_mult1": (
        lambda opt: lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=70),
        cosine_restarts(peak=BASE_LR, period=70),
        1500,
    ),
    "PolynomialLR-power2": (
        lambda opt: lr_scheduler.PolynomialLR(opt, total_iters=1000, power=2.0),
        polynomial(peak=BASE_LR, total=1000, power=2.0),
        1500,
    ),
    "PolynomialLR-power0.7": (
        lambda opt: lr_scheduler.PolynomialLR(opt, total_iters=1000, power=0.7),
        polynomial(peak=BASE_LR, total=1000, power=0.7),
        1500,
    ),
    "LinearLR-warmup": (
        lambda opt: lr_scheduler.LinearLR(opt, start_factor=0.25, end_factor=1.0, total_iters=800),
        linear(start=BASE_LR * 0.25, end=BASE_LR * 1.0, total=800),
        1500,
    ),
    "LinearLR-decay-to-zero": (
        lambda opt: lr_scheduler.LinearLR(opt, start_factor=1.0, end_factor=0.0, total_iters=800),
        linear(start=BASE_LR, end=0.0, total=800),
        1500,
    ),
}


@pytest.mark.parametrize("case", sorted(PARITY_CASES))
def test_matches_torch_scheduler_at_every_step(case: str) -> None:
    make_scheduler, schedule, num_steps = PARITY_CASES[case]
    rates, _, _ = torch_trajectory(make_scheduler, num_steps)
    assert_relatively_close(schedule.values(range(num_steps)), rates, case)


# CosineAnnealingWarmRestarts has no _get_closed_form_lr: its stepped values (above) are
# computed by torch from a closed form already.
@pytest.mark.parametrize(
    "case", sorted(case for case in PARITY_CASES if "WarmRestarts" not in case)
)
def test_matches_torch_closed_form_at_every_step(case: str) -> None:
    make_scheduler, schedule, num_steps = PARITY_CASES[case]
    _, _, closed_forms = torch_trajectory(make_scheduler, num_steps)
    assert_relatively_close(schedule.values(range(num_steps)), closed_forms, case)


@pytest.mark.parametrize("anneal", ["cos", "linear"])
@pytest.mark.parametrize("three_phase", [False, True])
def test_one_cycle_matches_torch_lr_and_momentum(anneal: str, three_phase: bool) -> None:
    total = 1500
    rates, momenta, _ = torch_trajectory(
        lambda opt: lr_scheduler.OneCycleLR(
            opt, max_lr=BASE_LR, total_steps=total, pct_start=0.25, anneal_strategy=anneal,
            three_phase=three_phase, div_factor=20.0, final_div_factor=1e3,
            base_momentum=0.8, max_momentum=0.93,
        ),
        total,  # torch raises past total_steps; its value *at* total_steps extrapolates
    )
    schedule = one_cycle(
        peak=BASE_LR, total=total, warmup_fraction=0.25, anneal=anneal, three_phase=three_phase,
        div_factor=20.0, final_div_factor=1e3, base_momentum=0.8, max_momentum=0.93,
    )
    assert_relatively_close(schedule.values(range(total)), rates, f"lr {anneal} {three_phase}")
    assert_relatively_close(
        schedule.momentum.values(range(total)), momenta, f"momentum {anneal} {three_phase}"
    )


def test_cosine_holds_floor_after_total_where_torch_rises_again() -> None:
    schedule = cosine(peak=BASE_LR, total=100, floor=1e-3)
    _, _, closed_forms = torch_trajectory(
        lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=100, eta_min=1e-3), 151
    )
    assert schedule.values(range(100, 151)) == [1e-3] * 51
    assert closed_forms[150] == pytest.approx(schedule(50))  # torch mirrors back up


def test_one_cycle_holds_its_final_values_after_the_cycle() -> None:
    schedule = one_cycle(peak=1.0, total=100, anneal="linear")
    # The last step of the cycle is min_lr up to torch's rounding (bit-identical to torch).
    assert schedule(99) == pytest.approx(schedule.min_lr, rel=1e-12)
    assert schedule.min_lr == 1.0 / 25.0 / 1e4
    assert schedule.values([100, 101, 10**9]) == [schedule(99)] * 3
    assert schedule.momentum.values([99, 100, 10**9]) == [0.95] * 3


# -------------------------------------------------------------------- hand-checkable points


def test_warmup_cosine_at_landmarks() -> None:
    schedule = warmup_cosine(peak=1.0, warmup=100, total=1100, floor=0.1, start=0.2)
    assert schedule(0) == 0.2
    assert schedule(50) == pytest.approx(0.6, rel=1e-15)
    assert schedule(100) == 1.0
    assert schedule(600) == pytest.approx(0.55, rel=1e-15)  # midway through the decay
    assert schedule(350) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2)
    assert schedule(1100) == 0.1
    assert schedule(10**12) == 0.1


def test_warmup_cosine_with_zero_warmup_is_cosine() -> None:
    with_warmup = warmup_cosine(peak=0.3, warmup=0, total=77, floor=0.01)
    plain = cosine(peak=0.3, total=77, floor=0.01)
    assert with_warmup.values(range(100)) == plain.values(range(100))


def test_warmup_equal_to_total_jumps_to_floor() -> None:
    schedule = warmup_cosine(peak=1.0, warmup=10, total=10, floor=0.5)
    assert schedule.values([0, 5, 9, 10, 11]) == [0.0, 0.5, 0.9, 0.5, 0.5]


def test_step_multistep_exponential_at_landmarks() -> None:
    assert step_decay(peak=2.0, every=3, gamma=0.5).values([0, 2, 3, 5, 6, 9]) == [
        2.0, 2.0, 1.0, 1.0, 0.5, 0.25,
    ]
    assert multistep(peak=2.0, milestones=[0, 4], gamma=0.5).values([0, 3, 4, 100]) == [
        1.0, 1.0, 0.5, 0.5,
    ]
    staircase_free = exponential(peak=3.0, gamma=0.25, every=4)
    assert staircase_free.values([0, 2, 4, 8]) == [3.0, 1.5, 0.75, 0.1875]


def test_cosine_restarts_restart_at_peak_with_growing_periods() -> None:
    schedule = cosine_restarts(peak=1.0, period=10, period_mult=3, floor=0.0)
    restarts = [0, 10, 40, 130, 400]  # cycles of 10, 30, 90, 270
    assert schedule.values(restarts) == [1.0] * 5
    assert schedule.values([5, 25, 85, 265]) == pytest.approx([0.5] * 4, rel=1e-15)
    assert schedule(39) == pytest.approx((1 + math.cos(math.pi * 29 / 30)) / 2, rel=1e-15)


def test_linear_polynomial_inverse_sqrt_at_landmarks() -> None:
    assert linear(start=1.0, end=3.0, total=4).values([0, 1, 2, 4, 100]) == [
        1.0, 1.5, 2.0, 3.0, 3.0,
    ]
    assert polynomial(peak=1.0, total=10, power=3.0, floor=0.5).values([0, 5, 10, 20]) == [
        1.0, 0.5625, 0.5, 0.5,
    ]
    assert inverse_sqrt(peak=2.0, warmup=100).values([0, 50, 100, 400, 10_000]) == [
        0.0, 1.0, 2.0, 1.0, 0.2,
    ]
    no_warmup = inverse_sqrt(peak=2.0, warmup=100, start=2.0)
    assert no_warmup.values([0, 99, 100, 400]) == [2.0, 2.0, 2.0, 1.0]


@pytest.mark.parametrize(
    ("shape", "quarter_way"),
    [("linear", 0.75), ("cosine", (1 + math.cos(math.pi / 4)) / 2), ("sqrt", 0.5)],
)
def test_wsd_phases(shape: str, quarter_way: float) -> None:
    schedule = wsd(peak=1.0, warmup=10, total=110, decay=40, floor=0.0, shape=shape)
    assert schedule.values([0, 5, 10, 40, 69, 70]) == [0.0, 0.5, 1.0, 1.0, 1.0, 1.0]
    assert schedule(80) == pytest.approx(quarter_way, rel=1e-15)
    assert schedule.values([110, 111, 10**6]) == [0.0, 0.0, 0.0]


def test_one_cycle_landmarks_two_and_three_phases() -> None:
    two = one_cycle(peak=1.0, total=101, warmup_fraction=0.5, anneal="cos")
    assert two.initial_lr == 0.04
    assert two(0) == pytest.approx(0.04, rel=1e-15)  # torch's cosine rounds the endpoints
    rise_end = 0.5 * 101 - 1  # 49.5: torch's float boundary, so the peak falls between steps
    assert two(49) == pytest.approx(1.0 - 0.96 * (1 + math.cos(math.pi * 49 / rise_end)) / 2)
    assert two(50) == pytest.approx(  # the decay leg starts from 49.5 too
        0.04 / 1e4 + (1.0 - 0.04 / 1e4) * (1 + math.cos(math.pi * 0.5 / (100 - rise_end))) / 2
    )
    assert two(100) == two.min_lr == 0.04 / 1e4
    three = one_cycle(peak=1.0, total=100, warmup_fraction=0.3, three_phase=True, anneal="linear")
    assert three.values([0, 29, 58, 99]) == pytest.approx([0.04, 1.0, 0.04, 0.04 / 1e4])
    assert three.momentum.values([0, 29, 58, 99]) == pytest.approx([0.95, 0.85, 0.95, 0.95])


def test_docstring_examples() -> None:
    failures, attempted = doctest.testmod(schedules, optionflags=doctest.ELLIPSIS)
    assert attempted > 20
    assert failures == 0


# ------------------------------------------------------------------------------------ join


def join_reference(parts: list[Schedule], boundaries: list[int], step: int) -> float:
    """optax's join_schedules, transcribed: each boundary replaces the output from there on."""
    output = parts[0](step)
    for boundary, part in zip(boundaries, parts[1:], strict=True):
        output = output if step < boundary else part(step - boundary)
    return output


def test_join_switches_exactly_at_boundaries() -> None:
    schedule = join([constant(1.0), linear(10.0, 20.0, 10), constant(3.0)], boundaries=[5, 15])
    assert schedule.values([0, 4, 5, 6, 14, 15, 1000]) == [1.0, 1.0, 10.0, 11.0, 19.0, 3.0, 3.0]


def test_join_accepts_numbers_and_callables() -> None:
    schedule = join([0.5, lambda step: float(step)], boundaries=[3])
    assert schedule.values([0, 2, 3, 7]) == [0.5, 0.5, 0.0, 4.0]


@settings(max_examples=60, deadline=None)
@given(
    gaps=st.lists(st.integers(1, 40), min_size=0, max_size=4),
    step=st.integers(0, 250),
)
def test_join_agrees_with_optax_reference(gaps: list[int], step: int) -> None:
    boundaries = list(np.cumsum(gaps).tolist())
    parts = [
        cosine(peak=1.0 + index, total=30, floor=0.1 * index) for index in range(len(gaps) + 1)
    ]
    assert join(parts, boundaries)(step) == join_reference(parts, boundaries, step)


# ------------------------------------------------------------------ purity and evaluation


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_evaluation_out_of_order_equals_in_order(name: str) -> None:
    schedule = EXAMPLES[name]
    steps = list(range(200)) + [10**6]
    in_order = schedule.values(steps)
    shuffled = steps[:]
    random.Random(0).shuffle(shuffled)
    out_of_order = {step: schedule(step) for step in shuffled}
    assert [out_of_order[step] for step in steps] == in_order


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_values_equals_mapping_call(name: str) -> None:
    schedule = EXAMPLES[name]
    steps = [0, 3, 1, 50, 2, 999]
    values = schedule.values(step for step in steps)  # any iterable, a generator too
    assert values == [schedule(step) for step in steps]
    assert all(type(value) is float for value in values)


def test_steps_may_be_numpy_integers() -> None:
    schedule = cosine(peak=1.0, total=100)
    assert schedule(np.int64(50)) == schedule(50)
    assert schedule.values(np.arange(0, 101, 25)) == schedule.values(range(0, 101, 25))


@settings(max_examples=300, deadline=None)
@given(
    peak=st.floats(-10, 10),
    floor=st.floats(-10, 10),
    start=st.floats(-10, 10),
    warmup=st.integers(0, 100),
    length=st.integers(1, 10_000),
    power=st.floats(0.1, 5.0),
    step=st.integers(0, 20_000),
)
def test_values_stay_between_their_endpoints(
    peak: float, floor: float, start: float, warmup: int, length: int, power: float, step: int
) -> None:
    # Subnormal and mixed-sign endpoints included: a rounded blend must not step outside.
    total = warmup + length
    two_endpoints = [
        cosine(peak=peak, total=length, floor=floor),
        polynomial(peak=peak, total=length, power=power, floor=floor),
        linear(start=peak, end=floor, total=length),
        cosine_restarts(peak=peak, period=length, period_mult=2, floor=floor),
    ]
    for schedule in two_endpoints:
        assert min(peak, floor) <= schedule(step) <= max(peak, floor), schedule
    three_endpoints = [
        warmup_cosine(peak=peak, warmup=warmup, total=total, floor=floor, start=start),
        *(
            wsd(peak=peak, warmup=warmup, total=total, decay=length // 2, floor=floor,
                start=start, shape=shape)
            for shape in ("linear", "cosine", "sqrt")
        ),
    ]
    for schedule in three_endpoints:
        assert min(peak, floor, start) <= schedule(step) <= max(peak, floor, start), schedule


@settings(max_examples=100, deadline=None)
@given(
    peak=st.floats(0.0, 10.0),
    start_fraction=st.floats(0.0, 1.0),
    warmup=st.integers(1, 500),
    extra=st.integers(1, 500),  # at warmup == total the value is already floor
)
def test_warmups_increase_monotonically(
    peak: float, start_fraction: float, warmup: int, extra: int
) -> None:
    start = peak * start_fraction
    for schedule in (
        warmup_cosine(peak=peak, warmup=warmup, total=warmup + extra, start=start),
        wsd(peak=peak, warmup=warmup, total=warmup + extra, decay=extra, start=start),
        inverse_sqrt(peak=peak, warmup=warmup, start=start),
    ):
        values = schedule.values(range(warmup + 1))
        assert all(a <= b for a, b in zip(values, values[1:], strict=False)), schedule
        assert values[0] == start and values[-1] == peak


@settings(max_examples=100, deadline=None)
@given(
    peak=st.floats(0.0, 10.0),
    floor_fraction=st.floats(0.0, 1.0),
    total=st.integers(1, 3000),
    power=st.floats(0.1, 5.0),
)
def test_decays_decrease_monotonically(
    peak: float, floor_fraction: float, total: int, power: float
) -> None:
    floor = peak * floor_fraction
    for schedule in (
        cosine(peak=peak, total=total, floor=floor),
        polynomial(peak=peak, total=total, power=power, floor=floor),
        linear(start=peak, end=floor, total=total),
    ):
        values = schedule.values(range(0, total + 5))
        assert all(a >= b for a, b in zip(values, values[1:], strict=False)), schedule
        assert values[-1] == pytest.approx(floor, rel=1e-12, abs=1e-12 * peak)


# --------------------------------------------------------------- products and as_schedule


def test_multiplication_by_numbers_and_schedules() -> None:
    base = cosine(peak=1.0, total=100)
    ramp = linear(start=0.0, end=1.0, total=10)
    for scaled in (0.5 * base, base * 0.5, np.float64(0.5) * base):
        assert isinstance(scaled, Schedule)
        assert scaled.values([0, 50, 100]) == [0.5, 0.25, 0.0]
    both = base * ramp
    assert both.values([0, 5, 50]) == [0.0, base(5) * 0.5, 0.5]
    with_callable = base * (lambda step: 2.0)
    assert with_callable(50) == 1.0
    with pytest.raises(TypeError):
        base * "fast"  # noqa: B018 - the expression itself is what must raise


def test_as_schedule() -> None:
    schedule = cosine(peak=1.0, total=10)
    assert as_schedule(schedule) is schedule
    assert as_schedule(3) == constant(3.0)
    assert type(as_schedule(3)(0)) is float
    wrapped = as_schedule(lambda step: step * 0.5)
    assert wrapped.values([0, 3]) == [0.0, 1.5]
    with pytest.raises(ValueError, match="step must be >= 0"):
        wrapped(-1)
    with pytest.raises(TypeError, match="expected a Schedule"):
        as_schedule("0.1")
    with pytest.raises(TypeError, match="expected a Schedule"):
        as_schedule(True)


# ----------------------------------------------------------------- serialization and repr


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_to_dict_from_dict_round_trip(name: str) -> None:
    schedule = EXAMPLES[name]
    data = schedule.to_dict()
    through_json = json.loads(json.dumps(data))  # plain data: numbers, strings, lists, dicts
    rebuilt = Schedule.from_dict(through_json)
    assert rebuilt == schedule
    assert type(rebuilt) is type(schedule)
    assert rebuilt.values(range(120)) == schedule.values(range(120))


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_pickle_round_trip(name: str) -> None:
    schedule = EXAMPLES[name]
    rebuilt = pickle.loads(pickle.dumps(schedule))
    assert rebuilt == schedule
    assert rebuilt.values(range(120)) == schedule.values(range(120))


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_repr_reads_as_the_call_that_builds_it(name: str) -> None:
    schedule = EXAMPLES[name]
    namespace = {key: getattr(schedules, key) for key in schedules.__all__}
    assert eval(repr(schedule), namespace) == schedule  # noqa: S307 - our own repr


def test_repr_shows_arguments() -> None:
    assert repr(cosine(peak=3e-3, total=100)) == "cosine(peak=0.003, total=100, floor=0.0)"
    assert repr(0.5 * constant(2.0)) == "constant(value=0.5) * constant(value=2.0)"


def test_one_cycle_momentum_serializes_on_its_own() -> None:
    momentum = one_cycle(peak=0.1, total=50, base_momentum=0.6).momentum
    rebuilt = Schedule.from_dict(momentum.to_dict())
    assert rebuilt.name == "one_cycle_momentum"
    assert rebuilt.values(range(60)) == momentum.values(range(60))
    assert rebuilt(20) < 0.95  # a momentum, not a rate


def test_callables_refuse_to_serialize() -> None:
    wrapped = as_schedule(lambda step: 1.0)
    with pytest.raises(TypeError, match="cannot serialize"):
        wrapped.to_dict()
    with pytest.raises(TypeError, match="cannot serialize"):
        join([wrapped, constant(1.0)], boundaries=[5]).to_dict()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "cosine_annealing", "peak": 1.0}, "unknown schedule name='cosine_annealing'"),
        ({"name": "cosine", "peak": 1.0, "total": 5, "eta_min": 0.0}, "['eta_min']"),
        ({"peak": 1.0}, "with a 'name' key"),
        ("cosine", "with a 'name' key"),
        ({"name": "function", "function": "print"}, "unknown schedule name='function'"),
    ],
)
def test_from_dict_rejects_bad_data(data: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Schedule.from_dict(data)  # type: ignore[arg-type]


# -------------------------------------------------------------------------- registry / CLI


def test_by_name_builds_registered_schedules() -> None:
    schedule = by_name("warmup_cosine", peak=3e-3, warmup=500, total=10_000)
    assert schedule == warmup_cosine(peak=3e-3, warmup=500, total=10_000)
    assert by_name("one_cycle_momentum", peak=1.0, total=10) == one_cycle(1.0, 10).momentum
    assert set(SCHEDULES) >= {
        "constant", "step_decay", "multistep", "exponential", "cosine", "cosine_restarts",
        "linear", "warmup_cosine", "one_cycle", "one_cycle_momentum", "polynomial", "wsd",
        "inverse_sqrt",
    }


@pytest.mark.parametrize(
    ("name", "arguments", "message"),
    [
        ("warmup_cos", {}, "unknown schedule name='warmup_cos'"),
        ("cosine", {"peak": 1.0, "total": 10, "T_max": 10}, "unknown argument(s) ['T_max']"),
        ("cosine", {"peak": 1.0}, "missing argument(s) ['total']"),
    ],
)
def test_by_name_errors(name: str, arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        by_name(name, **arguments)


def test_cli_contract_names_and_types() -> None:
    # The module docstring promises the command line these flag names and types; a rename
    # or an argument type that argparse cannot express would break it.
    flag_types = {int, float, bool, tuple[int, ...]}
    for name, kind in SCHEDULES.items():
        hints = typing.get_type_hints(kind)
        for field in dataclasses.fields(kind):
            assert re.fullmatch(r"[a-z]+(_[a-z]+)*", field.name), (name, field.name)
            hint = hints[field.name]
            is_choice = typing.get_origin(hint) is typing.Literal and all(
                isinstance(option, str) for option in typing.get_args(hint)
            )
            assert hint in flag_types or is_choice, (name, field.name, hint)
    assert [field.name for field in dataclasses.fields(warmup_cosine)][:3] == [
        "peak", "warmup", "total",
    ]
    assert {"period", "period_mult"} <= {field.name for field in dataclasses.fields(cosine_restarts)}


# ---------------------------------------------------------------------------- step helpers


def test_steps_per_epoch() -> None:
    assert steps_per_epoch(1000, 32) == 32  # 31 full batches and one of 8
    assert steps_per_epoch(1000, 32, drop_last=True) == 31
    assert steps_per_epoch(1000, 32, accumulation=4) == 8
    assert steps_per_epoch(1000, 32, accumulation=3) == 11  # the partial accumulation steps
    assert steps_per_epoch(1000, 32, drop_last=True, accumulation=4) == 8
    assert steps_per_epoch(10, 32, drop_last=True) == 0
    assert steps_per_epoch(0, 32) == 0


@settings(max_examples=100, deadline=None)
@given(
    num_examples=st.integers(0, 10**6),
    batch_size=st.integers(1, 4096),
    accumulation=st.integers(1, 64),
    drop_last=st.booleans(),
)
def test_steps_per_epoch_counts_what_a_loop_would_do(
    num_examples: int, batch_size: int, accumulation: int, drop_last: bool
) -> None:
    batch_starts = range(0, num_examples, batch_size)
    batches = [
        start for start in batch_starts if not drop_last or start + batch_size <= num_examples
    ]
    optimizer_steps = len(range(0, len(batches), accumulation))
    assert steps_per_epoch(num_examples, batch_size, drop_last, accumulation) == optimizer_steps


def test_epochs_to_steps() -> None:
    assert epochs_to_steps(10, batches_per_epoch=100) == 1000
    assert epochs_to_steps(10, batches_per_epoch=100, accumulation=4) == 250
    assert epochs_to_steps(3, batches_per_epoch=7, accumulation=2) == 12
    assert epochs_to_steps(0.5, batches_per_epoch=30) == 15
    assert epochs_to_steps(0.1, batches_per_epoch=30) == 3  # 0.1 * 30 = 3.0000000000000004
    assert epochs_to_steps(0, batches_per_epoch=30) == 0


# ------------------------------------------------------------------------------------ plot


def test_plot_writes_a_png(tmp_path) -> None:
    path = tmp_path / "lr.png"
    ax = plot(
        [EXAMPLES["warmup_cosine"], EXAMPLES["wsd"], lambda step: 0.05],
        range(0, 80),
        path=str(path),
        labels=["warmup_cosine", "wsd", "flat"],
    )
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 2000
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["warmup_cosine", "wsd", "flat"]
    assert list(lines[1].get_ydata()) == EXAMPLES["wsd"].values(range(80))


def test_plot_draws_on_a_given_axes_and_accepts_one_schedule(tmp_path) -> None:
    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    returned = plot(cosine(peak=1.0, total=10), 11, ax=ax)
    assert returned is ax
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == list(range(11))
    assert line.get_label() == "cosine(peak=1.0, total=10, floor=0.0)"


def test_plot_errors() -> None:
    with pytest.raises(ValueError, match="one label per schedule"):
        plot([constant(1.0), constant(2.0)], 10, labels=["only one"])
    with pytest.raises(ValueError, match="step must be >= 0"):
        plot(constant(1.0), [-1, 0])
    with pytest.raises(ValueError, match="schedules must not be empty"):
        plot([], 10)


def test_module_imports_neither_matplotlib_nor_torch_at_load_time() -> None:
    # matplotlib is imported inside plot() only, and schedules never need torch: importing
    # steepest.schedules must stay cheap for a command line that only prints a value.
    tree = ast.parse(inspect.getsource(schedules))
    top_level_imports = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top_level_imports |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            top_level_imports.add(node.module.split(".")[0])
    assert not top_level_imports & {"matplotlib", "torch", "numpy"}


# ---------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "step", [1.5, 2.0, "3", None, True, np.float64(4.0)], ids=repr
)
def test_non_integer_step_is_a_type_error(step: object) -> None:
    with pytest.raises(TypeError, match="step must be an integer"):
        cosine(peak=1.0, total=10)(step)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_negative_step_is_a_value_error(name: str) -> None:
    with pytest.raises(ValueError, match=re.escape("step must be >= 0, got step=-1")):
        EXAMPLES[name](-1)


NAN, INF = float("nan"), float("inf")

BAD_ARGUMENTS = [
    # warm-up longer than the schedule
    (warmup_cosine, {"peak": 1.0, "warmup": 500, "total": 100},
     "warmup must be <= total, got warmup=500, total=100"),
    (wsd, {"peak": 1.0, "warmup": 50, "total": 100, "decay": 60},
     "warmup + decay must be <= total, got warmup=50, decay=60, total=100"),
    # non-finite values
    (cosine, {"peak": NAN, "total": 10}, "peak must be finite, got peak=nan"),
    (cosine, {"peak": 1.0, "total": 10, "floor": INF}, "floor must be finite, got floor=inf"),
    (warmup_cosine, {"peak": 1.0, "warmup": 1, "total": 10, "start": -INF},
     "start must be finite, got start=-inf"),
    (linear, {"start": 0.0, "end": NAN, "total": 10}, "end must be finite, got end=nan"),
    (constant, {"value": INF}, "value must be finite, got value=inf"),
    (step_decay, {"peak": 1.0, "every": 2, "gamma": INF}, "gamma must be finite, got gamma=inf"),
    (one_cycle, {"peak": INF, "total": 100}, "peak must be finite, got peak=inf"),
    (one_cycle, {"peak": 1.0, "total": 100, "base_momentum": NAN},
     "base_momentum must be finite, got base_momentum=nan"),
    (polynomial, {"peak": 1.0, "total": 10, "power": NAN}, "power must be finite, got power=nan"),
    # milestones out of order
    (multistep, {"peak": 1.0, "milestones": [300, 200]},
     "milestones must be strictly increasing, got milestones=[300, 200]"),
    (multistep, {"peak": 1.0, "milestones": [100, 100]},
     "milestones must be strictly increasing, got milestones=[100, 100]"),
    (multistep, {"peak": 1.0, "milestones": [-5, 10]},
     "milestones must be >= 0, got milestones=-5"),
    # non-positive periods and lengths
    (cosine_restarts, {"peak": 1.0, "period": 0}, "period must be >= 1, got period=0"),
    (cosine_restarts, {"peak": 1.0, "period": -5}, "period must be >= 1, got period=-5"),
    (cosine_restarts, {"peak": 1.0, "period": 10, "period_mult": 0},
     "period_mult must be >= 1, got period_mult=0"),
    (cosine, {"peak": 1.0, "total": 0}, "total must be >= 1, got total=0"),
    (linear, {"start": 1.0, "end": 0.0, "total": 0}, "total must be >= 1, got total=0"),
    (polynomial, {"peak": 1.0, "total": -1}, "total must be >= 1, got total=-1"),
    (step_decay, {"peak": 1.0, "every": 0}, "every must be >= 1, got every=0"),
    (exponential, {"peak": 1.0, "gamma": 0.9, "every": 0}, "every must be >= 1, got every=0"),
    (inverse_sqrt, {"peak": 1.0, "warmup": 0}, "warmup must be >= 1, got warmup=0"),
    (warmup_cosine, {"peak": 1.0, "warmup": -1, "total": 10},
     "warmup must be >= 0, got warmup=-1"),
    (wsd, {"peak": 1.0, "warmup": 0, "total": 10, "decay": -1}, "decay must be >= 0, got decay=-1"),
    (one_cycle, {"peak": 1.0, "total": 1}, "total must be >= 2, got total=1"),
    # gamma and power <= 0
    (step_decay, {"peak": 1.0, "every": 2, "gamma": 0.0}, "gamma must be > 0, got gamma=0.0"),
    (multistep, {"peak": 1.0, "milestones": [1], "gamma": -0.5},
     "gamma must be > 0, got gamma=-0.5"),
    (exponential, {"peak": 1.0, "gamma": 0}, "gamma must be > 0, got gamma=0"),
    (polynomial, {"peak": 1.0, "total": 10, "power": 0.0}, "power must be > 0, got power=0.0"),
    (one_cycle, {"peak": 1.0, "total": 100, "div_factor": 0.0},
     "div_factor must be > 0, got div_factor=0.0"),
    # one cycle phases and choices
    (one_cycle, {"peak": 1.0, "total": 100, "warmup_fraction": 0.0},
     "every phase must last more than zero steps, got warmup_fraction=0.0, total=100"),
    (one_cycle, {"peak": 1.0, "total": 100, "warmup_fraction": 1.0},
     "every phase must last more than zero steps, got warmup_fraction=1.0, total=100"),
    (one_cycle, {"peak": 1.0, "total": 100, "warmup_fraction": 0.6, "three_phase": True},
     "every phase must last more than zero steps, got warmup_fraction=0.6, total=100, "
     "three_phase=True"),
    (one_cycle, {"peak": 1.0, "total": 100, "anneal": "cosine"},
     "anneal must be one of ['cos', 'linear'], got anneal='cosine'"),
    (wsd, {"peak": 1.0, "warmup": 0, "total": 10, "decay": 5, "shape": "exp"},
     "shape must be one of ['linear', 'cosine', 'sqrt'], got shape='exp'"),
    # join
    (join, {"schedules": [constant(1.0), constant(2.0)], "boundaries": []},
     "need one boundary fewer than schedules, got 2 schedules and boundaries=[]"),
    (join, {"schedules": [1.0, 2.0, 3.0], "boundaries": [10, 5]},
     "boundaries must be strictly increasing, got boundaries=[10, 5]"),
    (join, {"schedules": [1.0, 2.0], "boundaries": [0]},
     "boundaries must be >= 1, got boundaries=0"),
    (join, {"schedules": [], "boundaries": []}, "schedules must not be empty"),
    # step helpers
    (steps_per_epoch, {"num_examples": 100, "batch_size": 0},
     "batch_size must be >= 1, got batch_size=0"),
    (steps_per_epoch, {"num_examples": -1, "batch_size": 8},
     "num_examples must be >= 0, got num_examples=-1"),
    (steps_per_epoch, {"num_examples": 100, "batch_size": 8, "accumulation": 0},
     "accumulation must be >= 1, got accumulation=0"),
    (epochs_to_steps, {"epochs": -1, "batches_per_epoch": 10},
     "epochs must be >= 0, got epochs=-1"),
    (epochs_to_steps, {"epochs": NAN, "batches_per_epoch": 10},
     "epochs must be finite, got epochs=nan"),
    (epochs_to_steps, {"epochs": 1, "batches_per_epoch": 0},
     "batches_per_epoch must be >= 1, got batches_per_epoch=0"),
]


@pytest.mark.parametrize(
    ("constructor", "arguments", "message"),
    BAD_ARGUMENTS,
    ids=[f"{constructor.__name__}-{message[:40]}" for constructor, _, message in BAD_ARGUMENTS],
)
def test_bad_arguments_raise_value_error_naming_them(
    constructor: Callable, arguments: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        constructor(**arguments)


BAD_TYPES = [
    (cosine, {"peak": 1.0, "total": 100.0}, "total must be an integer, got total=100.0"),
    (cosine, {"peak": "0.1", "total": 100}, "peak must be a real number, got peak='0.1'"),
    (cosine, {"peak": True, "total": 100}, "peak must be a real number, got peak=True"),
    (cosine_restarts, {"peak": 1.0, "period": 10, "period_mult": 1.5},
     "period_mult must be an integer, got period_mult=1.5"),
    (multistep, {"peak": 1.0, "milestones": 100}, "milestones must be a sequence of ints"),
    (multistep, {"peak": 1.0, "milestones": [10, 20.5]}, "milestones must be an integer"),
    (one_cycle, {"peak": 1.0, "total": 100, "three_phase": "yes"},
     "three_phase must be a bool, got three_phase='yes'"),
    (join, {"schedules": [1.0, "x"], "boundaries": [3]}, "expected a Schedule"),
]


@pytest.mark.parametrize(
    ("constructor", "arguments", "message"),
    BAD_TYPES,
    ids=[f"{constructor.__name__}-{message[:40]}" for constructor, _, message in BAD_TYPES],
)
def test_bad_argument_types_raise_type_error_naming_them(
    constructor: Callable, arguments: dict, message: str
) -> None:
    with pytest.raises(TypeError, match=re.escape(message)):
        constructor(**arguments)


def test_schedules_are_immutable() -> None:
    schedule = cosine(peak=1.0, total=10)
    with pytest.raises(AttributeError):
        schedule.peak = 2.0  # type: ignore[misc]
