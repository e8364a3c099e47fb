"""Stopping criteria, one by one, combined, checkpointed mid-run, and their input checks."""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
import torch

from steepest import stopping
from steepest.stopping import Observation, Status, Stop


def observe(iteration: int, fun: float, **fields: Any) -> Observation:
    return Observation(iteration=iteration, fun=fun, **fields)


def run(
    criterion: stopping.CriterionLike, values: Sequence[float], **fields: Any
) -> tuple[int | None, Stop | None]:
    """Feed ``values`` as the objective of iterations 0, 1, ...; where and why it stopped."""
    for iteration, value in enumerate(values):
        stop = criterion(observe(iteration, value, **fields))
        if stop is not None:
            return iteration, stop
    return None, None


# --------------------------------------------------------------------------- limits


def test_max_iter_stops_at_n_as_a_failure() -> None:
    criterion = stopping.max_iter(3)
    assert criterion(observe(2, 1.0)) is None
    stop = criterion(observe(3, 1.0))
    assert stop is not None
    assert (stop.success, stop.status) == (False, Status.MAX_ITERATIONS)
    assert "max_iter=3" in stop.reason


def test_max_time_reads_the_loops_clock() -> None:
    criterion = stopping.max_time(2.5)
    assert criterion(observe(10, 1.0, elapsed=2.4)) is None
    stop = criterion(observe(11, 1.0, elapsed=2.5))
    assert stop is not None
    assert (stop.success, stop.status) == (False, Status.MAX_TIME)
    assert "max_time=2.5" in stop.reason


# --------------------------------------------------------------------------- ftol


def relative_change(previous: float, latest: float) -> float:
    """scipy's L-BFGS-B measure (in absolute value), written independently of the module."""
    return abs(previous - latest) / max(abs(previous), abs(latest), 1.0)


@pytest.mark.parametrize(
    ("previous", "latest", "tol", "stops"),
    [
        (0.5, 0.5 - 4e-10, 1e-9, True),  # |f| < 1: the change is measured against 1
        (0.5, 0.5 - 4e-9, 1e-9, False),
        (1e6, 1e6 - 5e-4, 1e-9, True),  # large |f|: relative to |f|
        (1e6, 1e6 - 5e-3, 1e-9, False),
        (-1e6, -1e6 - 5e-4, 1e-9, True),  # negative objectives use |f|
    ],
)
def test_ftol_is_scipys_relative_change(previous: float, latest: float, tol: float, stops: bool) -> None:
    assert (relative_change(previous, latest) <= tol) == stops
    iteration, stop = run(stopping.ftol(tol), [previous, latest])
    assert (stop is not None) == stops
    if stops:
        assert iteration == 1
        assert (stop.success, stop.status) == (True, Status.FUNCTION_TOLERANCE)


def test_ftol_does_not_take_an_increase_for_convergence() -> None:
    # scipy's signed (f_prev - f) would be negative here, hence "<= ftol"; a first-order
    # method can go up, and going up is not converging.
    _, stop = run(stopping.ftol(1e-9), [1.0, 2.0, 4.0])
    assert stop is None


def test_ftol_window_compares_means_of_consecutive_windows() -> None:
    noisy_plateau = [1.0, 1.2] * 4  # every consecutive pair differs by 0.2 / 1.2
    assert run(stopping.ftol(1e-3), noisy_plateau) == (None, None)
    iteration, stop = run(stopping.ftol(1e-3, window=2), noisy_plateau)
    assert iteration == 3  # the first time two full windows exist: [1.0, 1.2] vs [1.0, 1.2]
    assert stop is not None and "windows of 2" in stop.reason


def test_ftol_window_uses_the_latest_two_windows_only() -> None:
    values = [10.0, 9.0, 8.0, 5.0, 5.0, 5.0, 5.0]
    window = 2
    expected = None
    for end in range(2 * window, len(values) + 1):
        older = np.mean(values[end - 2 * window : end - window])
        newer = np.mean(values[end - window : end])
        if relative_change(older, newer) <= 1e-6:
            expected = end - 1
            break
    assert expected == 6  # [5, 5] vs [5, 5]; [8, 5] vs [5, 5] is not flat yet
    assert run(stopping.ftol(1e-6, window=window), values)[0] == expected


def test_ftol_ignores_nan() -> None:
    assert run(stopping.ftol(1e-3), [math.nan, math.nan]) == (None, None)


# --------------------------------------------------------------------------- gtol, xtol, target


def gradient_accessor(*tensors: torch.Tensor) -> Callable[[], list[torch.Tensor]]:
    return lambda: list(tensors)


@pytest.mark.parametrize("ord", [1.0, 2.0, 3.0, math.inf])
def test_gtol_norm_of_all_tensors_as_one_vector(ord: float) -> None:
    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(3, 4, generator=generator), torch.randn(5, generator=generator)]
    expected = np.linalg.norm(np.concatenate([g.numpy().ravel() for g in grads]), ord)
    above = stopping.gtol(expected * 0.999, ord=ord)
    below = stopping.gtol(expected * 1.001, ord=ord)
    assert above(observe(0, 1.0, gradients=gradient_accessor(*grads))) is None
    stop = below(observe(0, 1.0, gradients=gradient_accessor(*grads)))
    assert stop is not None and (stop.success, stop.status) == (True, Status.GRADIENT_TOLERANCE)


def test_gtol_default_is_the_inf_norm_like_scipy() -> None:
    grads = gradient_accessor(torch.tensor([3.0, -4.0]))  # 2-norm 5, inf-norm 4
    stop = stopping.gtol(4.5)(observe(0, 1.0, grad_norm=5.0, gradients=grads))
    assert stop is not None and "inf-norm 4" in stop.reason
    assert stopping.gtol(4.5, ord=2)(observe(0, 1.0, grad_norm=5.0, gradients=grads)) is None


def test_gtol_two_norm_uses_grad_norm_and_other_orders_need_the_gradients() -> None:
    assert stopping.gtol(1e-3, ord=2)(observe(0, 1.0, grad_norm=1e-4)) is not None
    with pytest.raises(ValueError, match="needs the gradient"):
        stopping.gtol(1e-3)(observe(0, 1.0, grad_norm=1e-4))


def test_xtol_waits_for_a_step_then_compares_its_norm() -> None:
    criterion = stopping.xtol(1e-8)
    assert criterion(observe(0, 1.0, step_norm=None)) is None
    assert criterion(observe(1, 1.0, step_norm=2e-8)) is None
    stop = criterion(observe(2, 1.0, step_norm=1e-8))
    assert stop is not None and (stop.success, stop.status) == (True, Status.STEP_TOLERANCE)


def test_target_stops_at_or_below_the_value() -> None:
    iteration, stop = run(stopping.target(0.1), [1.0, 0.5, 0.1000001, 0.1, 0.05])
    assert iteration == 3
    assert stop is not None and (stop.success, stop.status) == (True, Status.TARGET_REACHED)


# --------------------------------------------------------------------------- patience


def test_patience_counts_checks_without_improvement() -> None:
    values = [5.0, 4.0, 3.0, 3.5, 3.2, 3.1, 2.0]
    iteration, stop = run(stopping.patience(3, restore_best=False), values)
    assert iteration == 5  # 3.5, 3.2, 3.1 are three checks without beating 3.0
    assert stop is not None and (stop.success, stop.status) == (True, Status.NO_IMPROVEMENT)
    assert "best 3 at iteration 2" in stop.reason
    assert stop.best_params is None


def test_patience_min_delta_requires_a_large_enough_improvement() -> None:
    values = [1.0, 0.95, 0.9, 0.85, 0.8]  # improves by 0.05 each time
    assert run(stopping.patience(2, min_delta=0.04, restore_best=False), values) == (None, None)
    iteration, _ = run(stopping.patience(2, min_delta=0.11, restore_best=False), values)
    assert iteration == 2  # 0.95 and 0.9 are not 0.11 below 1.0


def test_patience_mode_max_monitors_a_metric() -> None:
    accuracies = [0.5, 0.7, 0.8, 0.79, 0.81, 0.81, 0.6, 0.9]
    criterion = stopping.patience(2, mode="max", monitor="val_accuracy", restore_best=False)
    for iteration, accuracy in enumerate(accuracies):
        stop = criterion(observe(iteration, 0.0, metrics={"val_accuracy": accuracy}))
        if stop is not None:
            break
    # 0.79 does not beat 0.8; 0.81 does; an equal 0.81 and 0.6 do not: two checks.
    assert iteration == 6 and criterion.best == 0.81 and criterion.best_iteration == 4


def test_patience_never_counts_nan_as_an_improvement() -> None:
    iteration, _ = run(stopping.patience(2, restore_best=False), [1.0, math.nan, math.nan])
    assert iteration == 2


def test_patience_hands_over_the_best_parameters() -> None:
    param = torch.zeros(2)
    criterion = stopping.patience(2)
    values = [3.0, 1.0, 2.0, 2.5]
    for iteration, value in enumerate(values):
        param.fill_(float(iteration))  # parameters at this iteration
        stop = criterion(observe(iteration, value, params=lambda: [param]))
        if stop is not None:
            break
    assert stop is not None and stop.best_iteration == 1
    assert torch.equal(stop.best_params[0], torch.full((2,), 1.0))
    assert stop.restore_best([param]) and torch.equal(param, torch.full((2,), 1.0))


def test_patience_restore_best_needs_a_params_accessor() -> None:
    with pytest.raises(ValueError, match="params"):
        stopping.patience(2)(observe(0, 1.0))


def test_patience_unknown_monitor_names_the_choices() -> None:
    criterion = stopping.patience(2, monitor="val_loss", restore_best=False)
    with pytest.raises(ValueError, match="val_loss"):
        criterion(observe(0, 1.0, metrics={"accuracy": 0.3}))


def test_patience_resumed_from_a_checkpoint_stops_where_an_uninterrupted_one_does() -> None:
    generator = torch.Generator().manual_seed(3)
    # A noisy decreasing loss that plateaus: patience stops somewhere in the second half.
    values = (torch.linspace(2.0, 1.0, 40) + 0.05 * torch.randn(40, generator=generator)).tolist()
    values += [1.2 + 0.01 * i for i in range(20)]
    param = torch.zeros(3)

    def drive(
        criterion: stopping.Patience, start: int, stop_at: int | None = None
    ) -> tuple[int, Stop] | None:
        for iteration in range(start, len(values) if stop_at is None else stop_at):
            param.fill_(float(iteration))
            stop = criterion(observe(iteration, values[iteration], params=lambda: [param]))
            if stop is not None:
                return iteration, stop
        return None

    uninterrupted = drive(stopping.patience(5), 0)
    assert uninterrupted is not None
    first_half = stopping.patience(5)
    assert drive(first_half, 0, stop_at=30) is None
    buffer = io.BytesIO()
    torch.save(first_half.state_dict(), buffer)
    buffer.seek(0)
    resumed = stopping.patience(5)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    finished = drive(resumed, 30)
    assert finished is not None
    assert finished[0] == uninterrupted[0]
    assert finished[1].best_iteration == uninterrupted[1].best_iteration
    assert torch.equal(finished[1].best_params[0], uninterrupted[1].best_params[0])


def test_state_dict_is_a_snapshot() -> None:
    param = torch.zeros(1)
    criterion = stopping.patience(3)
    criterion(observe(0, 1.0, params=lambda: [param]))
    saved = criterion.state_dict()
    param.fill_(7.0)
    criterion(observe(1, 0.5, params=lambda: [param]))
    assert saved["best"] == 1.0 and saved["best_params"][0].item() == 0.0


# --------------------------------------------------------------------------- divergence


def test_divergence_flags_nan_and_inf() -> None:
    for bad in (math.nan, math.inf, -math.inf):
        iteration, stop = run(stopping.divergence(), [1.0, bad])
        assert iteration == 1
        assert stop is not None and (stop.success, stop.status) == (False, Status.DIVERGED)


def test_divergence_flags_a_blow_up_relative_to_the_best() -> None:
    # Never improved: f_best = f_0 = 1, so the threshold is max(1, 1 + 10 * 1) = 11.
    assert run(stopping.divergence(10), [1.0, 5.0, 10.9]) == (None, None)
    assert run(stopping.divergence(10), [1.0, 5.0, 11.1])[0] == 2
    # Large best: the threshold is best + factor * |best|.
    assert run(stopping.divergence(2), [300.0, 100.0, 299.0]) == (None, None)
    assert run(stopping.divergence(2), [300.0, 100.0, 301.0])[0] == 2
    # Negative best: best + factor * |best| is above the best.
    assert run(stopping.divergence(1), [-50.0, -100.0, -1.0]) == (None, None)
    assert run(stopping.divergence(1), [-50.0, -100.0, 0.5])[0] == 2


def test_divergence_catches_a_loss_back_above_its_start_when_the_optimum_is_zero() -> None:
    # Converged to ~0, then climbed above where it started. Scaled by max(|f_best|, 1) (the
    # ftol scale) this would go unnoticed until f > 10.
    values = [1.0, 0.1, 1e-6, 1e-9, 0.5, 1.5]
    iteration, stop = run(stopping.divergence(10), values)
    assert iteration == 5
    assert stop is not None and "initial 1" in stop.reason


def test_divergence_ignores_the_wobble_of_a_converged_stochastic_run() -> None:
    generator = torch.Generator().manual_seed(0)
    wobble = (1e-4 * torch.rand(200, generator=generator)).tolist()  # 1e-9 .. 1e-4, jumpy
    assert run(stopping.divergence(10), [1.0, 0.3, 1e-9, *wobble]) == (None, None)


def test_divergence_with_infinite_factor_flags_only_non_finite_values() -> None:
    assert run(stopping.divergence(math.inf), [0.0, 0.0, 1e30]) == (None, None)
    assert run(stopping.divergence(math.inf), [0.0, 1e30, math.nan])[0] == 2


def test_divergence_state_dict_round_trip() -> None:
    original = stopping.divergence(1)
    run(original, [4.0, 1.0])
    copy = stopping.divergence(1)
    copy.load_state_dict(original.state_dict())
    # With the start (4) carried over, 3 is below max(4, 0.9 + 0.9) and 4.5 is above it;
    # a fresh criterion would start at 0.9 and stop at 3.
    assert run(stopping.divergence(1), [0.9, 3.0, 4.5])[0] == 1
    assert run(copy, [0.9, 3.0, 4.5])[0] == 2


def test_stalled_needs_consecutive_unchanged_updates() -> None:
    criterion = stopping.stalled(2)
    steps = [None, 0.0, 1e-3, 0.0, 0.0]
    decisions = [criterion(observe(k, 1.0, step_norm=step)) for k, step in enumerate(steps)]
    assert [stop is not None for stop in decisions] == [False, False, False, False, True]
    assert (decisions[-1].success, decisions[-1].status) == (False, Status.NO_PROGRESS)
    resumed = stopping.stalled(2)
    resumed.load_state_dict({"kind": "stalled", "unchanged": 1})
    assert resumed(observe(9, 1.0, step_norm=0.0)) is not None


# --------------------------------------------------------------------------- combinations


def test_any_of_stops_with_the_first_criterion_in_order() -> None:
    both = observe(100, 1.0, grad_norm=0.0)
    assert stopping.any_of(stopping.gtol(1e-5, ord=2), stopping.max_iter(100))(both).status == (
        Status.GRADIENT_TOLERANCE
    )
    assert stopping.any_of(stopping.max_iter(100), stopping.gtol(1e-5, ord=2))(both).status == (
        Status.MAX_ITERATIONS
    )
    assert stopping.any_of(stopping.max_iter(100))(observe(99, 1.0)) is None


def test_any_of_keeps_every_stateful_criterion_in_step() -> None:
    flat = stopping.ftol(1e-9)
    combined = stopping.any_of(stopping.target(10.0), flat)
    assert combined(observe(0, 5.0)) is not None  # the target speaks first...
    assert flat.state_dict()["values"] == [5.0]  # ...but ftol saw the value too


def test_all_of_needs_every_criterion_at_the_same_check() -> None:
    combined = stopping.all_of(stopping.ftol(1e-3), stopping.gtol(1e-2, ord=2))
    assert combined(observe(0, 1.0, grad_norm=1e-3)) is None  # ftol has no previous value
    assert combined(observe(1, 2.0, grad_norm=1e-3)) is None  # gtol yes, ftol no
    assert combined(observe(2, 2.0, grad_norm=1.0)) is None  # ftol yes, gtol no
    stop = combined(observe(3, 2.0, grad_norm=1e-3))
    assert stop is not None and stop.success and stop.status == Status.FUNCTION_TOLERANCE
    assert " and " in stop.reason and "ftol" in stop.reason and "gtol" in stop.reason


def test_all_of_fails_when_one_part_is_a_failure() -> None:
    stop = stopping.all_of(stopping.max_iter(5), stopping.target(1.0))(observe(5, 0.5))
    assert stop is not None and not stop.success


def test_plain_callables_combine_too() -> None:
    def stop_at_seven(observation: Observation) -> Stop | None:
        if observation.iteration == 7:
            return Stop("seven", success=True, status=42)
        return None

    combined = stopping.any_of(stopping.max_iter(10), stop_at_seven)
    assert combined(observe(7, 1.0)).status == 42
    assert combined.state_dict()["criteria"]["stop_at_seven"] == {}


def test_combination_state_is_stored_by_name_not_position() -> None:
    first = stopping.any_of(stopping.ftol(1e-3), stopping.patience(2, restore_best=False))
    run(first, [3.0, 2.0, 1.0])
    reordered = stopping.any_of(stopping.patience(2, restore_best=False), stopping.ftol(1e-3))
    reordered.load_state_dict(first.state_dict())
    assert reordered.criteria[0].best == 1.0
    assert reordered.criteria[1].state_dict()["values"] == [2.0, 1.0]


def test_repeated_kinds_get_distinct_names() -> None:
    combined = stopping.any_of(stopping.ftol(1e-3), stopping.ftol(1e-6, window=5))
    assert sorted(combined.state_dict()["criteria"]) == ["ftol", "ftol_1"]


def test_loading_mismatched_state_raises() -> None:
    with pytest.raises(ValueError, match="patience"):
        stopping.patience(2).load_state_dict(stopping.ftol(1e-3).state_dict())
    with pytest.raises(ValueError, match="holds criteria"):
        stopping.any_of(stopping.gtol(1.0)).load_state_dict(
            stopping.any_of(stopping.xtol(1.0)).state_dict()
        )


def plain(value: Any) -> bool:
    """Python numbers, strings, None, lists and dicts of them, and tensors (best params)."""
    if isinstance(value, dict):
        return all(isinstance(key, str) and plain(item) for key, item in value.items())
    if isinstance(value, list):
        return all(plain(item) for item in value)
    return value is None or isinstance(value, (bool, int, float, str, torch.Tensor))


def test_every_state_dict_is_plain_and_loads_with_weights_only() -> None:
    param = torch.ones(2)
    combined = stopping.any_of(
        stopping.max_iter(100),
        stopping.max_time(60),
        stopping.ftol(1e-9, window=3),
        stopping.gtol(1e-5),
        stopping.xtol(1e-9),
        stopping.target(-1.0),
        stopping.patience(5),
        stopping.divergence(),
        stopping.stalled(),
        stopping.all_of(stopping.ftol(1e-3), stopping.gtol(1e-3)),
    )
    grads = gradient_accessor(torch.ones(2))
    for iteration, value in enumerate([3.0, 2.0, 2.5]):
        combined(observe(iteration, value, params=lambda: [param], gradients=grads, step_norm=1.0))
    state = combined.state_dict()
    assert plain(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert loaded["criteria"]["divergence"] == {"kind": "divergence", "initial": 3.0, "best": 2.0}


def test_reset_forgets_what_was_seen() -> None:
    combined = stopping.any_of(stopping.ftol(1e-3), stopping.patience(1, restore_best=False))
    run(combined, [1.0, 2.0])
    combined.reset()
    assert combined.state_dict()["criteria"]["ftol"]["values"] == []
    assert combined.state_dict()["criteria"]["patience"]["best"] == math.inf


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("build", "error", "text"),
    [
        (lambda: stopping.max_iter(0), ValueError, "n=0"),
        (lambda: stopping.max_iter(-3), ValueError, "n=-3"),
        (lambda: stopping.max_iter(2.5), TypeError, "n=2.5"),
        (lambda: stopping.max_iter(True), TypeError, "n=True"),
        (lambda: stopping.max_time(0), ValueError, "seconds=0"),
        (lambda: stopping.max_time(math.nan), ValueError, "seconds=nan"),
        (lambda: stopping.ftol(-1e-9), ValueError, "tol=-1e-09"),
        (lambda: stopping.ftol(1e-9, window=0), ValueError, "window=0"),
        (lambda: stopping.gtol(-1.0), ValueError, "tol=-1.0"),
        (lambda: stopping.gtol(math.inf), ValueError, "tol=inf"),
        (lambda: stopping.gtol(1e-5, ord=0.5), ValueError, "ord=0.5"),
        (lambda: stopping.gtol("small"), TypeError, "tol='small'"),
        (lambda: stopping.xtol(-1.0), ValueError, "tol=-1.0"),
        (lambda: stopping.target(math.nan), ValueError, "value=nan"),
        (lambda: stopping.patience(0), ValueError, "n=0"),
        (lambda: stopping.patience(3, min_delta=-0.1), ValueError, "min_delta=-0.1"),
        (lambda: stopping.patience(3, mode="lowest"), ValueError, "mode='lowest'"),
        (lambda: stopping.patience(3, restore_best=1), TypeError, "restore_best=1"),
        (lambda: stopping.divergence(0), ValueError, "factor=0"),
        (lambda: stopping.stalled(0), ValueError, "n=0"),
        (lambda: stopping.divergence(-2.0), ValueError, "factor=-2.0"),
        (lambda: stopping.any_of(), ValueError, "at least one"),
        (lambda: stopping.all_of(stopping.max_iter(3), 5), TypeError, "criteria[1]"),
    ],
)
def test_bad_arguments_name_the_argument_and_value(build: Callable[[], Any], error: type, text: str) -> None:
    with pytest.raises(error) as raised:
        build()
    assert text in str(raised.value)


def test_criteria_read_as_the_call_that_builds_them() -> None:
    assert repr(stopping.gtol(1e-5)) == "gtol(tol=1e-05, ord=inf)"
    assert repr(stopping.any_of(stopping.max_iter(10))) == "any_of(max_iter(n=10))"


def test_target_on_a_metric_reached_from_below() -> None:
    criterion = stopping.target(0.97, monitor="val_accuracy", mode="max")
    assert criterion(stopping.Observation(iteration=1, fun=0.5, metrics={"val_accuracy": 0.96})) is None
    stop = criterion(stopping.Observation(iteration=2, fun=0.4, metrics={"val_accuracy": 0.975}))
    assert stop is not None and stop.success and "val_accuracy 0.975 >= 0.97" in stop.reason
    with pytest.raises(ValueError, match="mode"):
        stopping.target(0.9, mode="up")
