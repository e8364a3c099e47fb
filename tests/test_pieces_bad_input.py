"""Bad input to the small pieces (stopping, plateau, SafeStep, the regime monitor, init,
clipping, schedules, compare) fails at once with a ValueError or TypeError that names the
argument and its value, and never leaves an object half changed."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from steepest import clipping, schedules, stopping
from steepest.init import init_report, initialize
from steepest.lr.compare import RunSpec, compare
from steepest.lr.diagnosis import RegimeMonitor, UpdateTracker
from steepest.lr.safety import SafeStep
from steepest.plateau import reduce_on_plateau
from steepest.rules import SGD
from steepest.stopping import Observation

# ------------------------------------------------------------------------- load_state_dict


def same_state(first: Any, second: Any) -> bool:
    """Equal state_dicts, nan equal to nan and tensors compared by value."""
    if isinstance(first, dict):
        return isinstance(second, dict) and first.keys() == second.keys() and all(
            same_state(first[key], second[key]) for key in first
        )
    if isinstance(first, (list, tuple)):
        return len(first) == len(second) and all(map(same_state, first, second))
    if isinstance(first, torch.Tensor):
        return torch.equal(first, second)
    if isinstance(first, float) and math.isnan(first):
        return isinstance(second, float) and math.isnan(second)
    return first == second


def patience_seen() -> stopping.Patience:
    criterion = stopping.patience(5, restore_best=False)
    for iteration, value in enumerate([3.0, 2.0, 2.5]):
        criterion(Observation(iteration=iteration, fun=value))
    return criterion


def ftol_seen() -> stopping.FunctionTolerance:
    criterion = stopping.ftol(1e-9, window=2)
    for iteration, value in enumerate([3.0, 2.0, 1.0]):
        criterion(Observation(iteration=iteration, fun=value))
    return criterion


def divergence_seen() -> stopping.Divergence:
    criterion = stopping.divergence()
    for iteration, value in enumerate([3.0, 2.0]):
        criterion(Observation(iteration=iteration, fun=value))
    return criterion


def combination_seen() -> stopping.AnyOf:
    criterion = stopping.any_of(stopping.patience(5, restore_best=False), stopping.divergence())
    for iteration, value in enumerate([3.0, 2.0, 2.5]):
        criterion(Observation(iteration=iteration, fun=value))
    return criterion


def plateau_seen() -> Any:
    schedule = reduce_on_plateau(0.1, factor=0.5, patience=1)
    for metric in [1.0, 1.0, 1.0, 0.5]:
        schedule.report(metric)
    return schedule


def guard_seen() -> SafeStep:
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    guard = SafeStep(SGD([w], lr=0.1))
    for _ in range(3):
        loss = (w**2).sum()
        loss.backward()
        guard.step(loss)
    return guard


def monitor_seen() -> RegimeMonitor:
    monitor = RegimeMonitor(window=5)
    for step in range(7):
        monitor.observe(step, 10.0 * 0.9**step, grad_norm=1.0, lr=0.1)
    return monitor


def guard_state(**changes: Any) -> dict[str, Any]:
    return {**guard_seen().state_dict(), **changes}


def monitor_state(**changes: Any) -> dict[str, Any]:
    return {**monitor_seen().state_dict(), **changes}


BAD_STATES = [
    # (make the object, the bad state, error, what the message must say)
    (patience_seen,
     {"kind": "patience", "best": 0.5, "best_iteration": 7, "checks_without_improvement": "x"},
     TypeError, "got state_dict['checks_without_improvement']='x'"),
    (patience_seen, {"kind": "patience"}, ValueError,
     "lacks ['best', 'best_iteration', 'checks_without_improvement']"),
    (patience_seen,
     {"kind": "patience", "best": 0.5, "best_iteration": -1, "checks_without_improvement": 0},
     ValueError, "got state_dict['best_iteration']=-1"),
    (patience_seen, {"kind": "patience", "best": 0.5, "best_iteration": 1, "checks_without_improvement": 0,
                     "best_params": [1.0]},
     TypeError, "state_dict['best_params'][0] must be a tensor, got state_dict['best_params'][0]=1.0"),
    (patience_seen, [("best", 0.5)], TypeError, "state_dict must be the dict patience.state_dict() returns"),
    (ftol_seen, {"kind": "ftol", "values": 5}, TypeError, "state_dict['values'] must be a list, got "
     "state_dict['values']=5"),
    (ftol_seen, {"kind": "ftol", "values": [1.0, "x"]}, TypeError, "got state_dict['values'][1]='x'"),
    (divergence_seen, {"kind": "divergence", "initial": "x", "best": 1.0}, TypeError,
     "state_dict['initial'] must be a real number, got state_dict['initial']='x'"),
    (combination_seen,
     {"kind": "any_of", "criteria": {"patience": {"kind": "patience", "best": 0.1, "best_iteration": 9,
                                                  "checks_without_improvement": 0},
                                     "divergence": {"kind": "divergence"}}},
     ValueError, "state_dict['criteria']['divergence'] is not the state of a divergence criterion: "
     "it lacks ['initial', 'best']"),
    (combination_seen, {"kind": "any_of", "criteria": [1, 2]}, TypeError,
     "state_dict['criteria'] must be a dict"),
    (plateau_seen, {"scale": 0.5, "best": 0.1, "bad_reports": "x", "cooldown_left": 0, "reductions": 0},
     TypeError, "got state['bad_reports']='x'"),
    (plateau_seen, {"scale": -0.5, "best": 0.1, "bad_reports": 0, "cooldown_left": 0, "reductions": 0},
     ValueError, "got state['scale']=-0.5"),
    (plateau_seen, {"scale": 0.5, "best": 0.1}, ValueError,
     "lacks ['bad_reports', 'cooldown_left', 'reductions']"),
    (guard_seen, {"calls": 99, "skips": 0, "backoffs": 0, "spikes": 0, "recent": "ab"}, TypeError,
     "state['recent'] must be a list, got state['recent']='ab'"),
    (guard_seen, {"calls": 99, "skips": 0, "backoffs": 0, "spikes": 0, "recent": [], "lr_cut": 0.0},
     ValueError, "got state['lr_cut']=0.0"),
    (guard_seen, {"calls": 99, "skips": 0}, ValueError, "lacks ['backoffs', 'spikes', 'recent']"),
    (monitor_seen, lambda: monitor_state(slow_windows=3, history="x"), TypeError,
     "state['history'] must be a list, got state['history']='x'"),
    (monitor_seen, lambda: monitor_state(slow_windows=3, history=[{"regime": "good"}]), ValueError,
     "state['history'][0] is not a Diagnosis.to_dict() record"),
    (monitor_seen, lambda: monitor_state(first_loss=1.0, current={"steps": [5, 6], "losses": [1.0]}),
     ValueError, "state['current']['losses'] has 1 values for 2 steps"),
]


@pytest.mark.parametrize(
    ("make", "state", "error", "message"),
    BAD_STATES,
    ids=[f"{make.__name__}-{message[:40]}" for make, _, _, message in BAD_STATES],
)
def test_a_bad_state_dict_raises_naming_the_field_and_changes_nothing(
    make: Callable[[], Any], state: Any, error: type[Exception], message: str
) -> None:
    target = make()
    before = target.state_dict()
    with pytest.raises(error, match=re.escape(message)):
        target.load_state_dict(state() if callable(state) else state)
    assert same_state(target.state_dict(), before)


@pytest.mark.parametrize(
    ("make", "fresh"),
    [
        (patience_seen, lambda: stopping.patience(5, restore_best=False)),
        (ftol_seen, lambda: stopping.ftol(1e-9, window=2)),
        (divergence_seen, stopping.divergence),
        (combination_seen,
         lambda: stopping.any_of(stopping.patience(5, restore_best=False), stopping.divergence())),
        (plateau_seen, lambda: reduce_on_plateau(0.1, factor=0.5, patience=1)),
        (guard_seen, lambda: SafeStep(SGD([torch.zeros(2, requires_grad=True)], lr=0.1))),
        (monitor_seen, lambda: RegimeMonitor(window=5)),
    ],
    ids=["patience", "ftol", "divergence", "any_of", "plateau", "safe_step", "regime_monitor"],
)
def test_a_good_state_dict_still_loads(make: Callable[[], Any], fresh: Callable[[], Any]) -> None:
    saved = make().state_dict()
    target = fresh()
    target.load_state_dict(saved)
    assert same_state(target.state_dict(), saved)


def test_patience_best_params_round_trip_and_stay_optional() -> None:
    criterion = stopping.patience(3)
    criterion(Observation(iteration=0, fun=1.0, params=lambda: [torch.tensor([1.0, 2.0])]))
    resumed = stopping.patience(3)
    resumed.load_state_dict(criterion.state_dict())
    assert torch.equal(resumed.best_params[0], torch.tensor([1.0, 2.0]))
    older = {key: value for key, value in criterion.state_dict().items() if key != "best_params"}
    resumed.load_state_dict(older)  # a state without the key: no parameters kept
    assert resumed.best_params is None and resumed.best == 1.0


def test_a_combination_loads_a_user_written_part_untouched() -> None:
    class Counter:
        def __init__(self) -> None:
            self.loaded: Any = None

        def __call__(self, observation: Observation) -> None:
            return None

        def state_dict(self) -> dict[str, Any]:
            return {"seen": 4}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            self.loaded = state

    counter = Counter()
    combined = stopping.any_of(stopping.stalled(), counter)
    combined.load_state_dict({"kind": "any_of", "criteria": {"stalled": {"kind": "stalled", "unchanged": 1},
                                                             "Counter": {"seen": 4}}})
    assert counter.loaded == {"seen": 4} and combined.criteria[0].unchanged == 1


def test_a_criterion_written_outside_declaring_no_fields_still_loads_its_state() -> None:
    class Counting(stopping.Criterion):
        kind = "counting"

        def __init__(self) -> None:
            self.seen = 0

        def __call__(self, observation: Observation) -> None:
            self.seen += 1

        def _state(self) -> dict[str, Any]:
            return {"seen": self.seen}

        def _load_state(self, state: Any) -> None:
            self.seen = int(state["seen"])

    saved = Counting()
    saved.seen = 3
    resumed = stopping.any_of(Counting(), stopping.stalled())
    resumed.load_state_dict(stopping.any_of(saved, stopping.stalled()).state_dict())
    assert resumed.criteria[0].seen == 3


# ----------------------------------------------------------------------------- Observation


def test_an_observation_of_a_non_number_is_refused_naming_fun() -> None:
    with pytest.raises(TypeError, match=re.escape("fun must be a real number, got fun='x'")):
        Observation(iteration=0, fun="x")  # type: ignore[arg-type]
    message = "fun must be a single number, got a tensor of shape (2,)"
    with pytest.raises(ValueError, match=re.escape(message)):
        Observation(iteration=0, fun=torch.ones(2))  # type: ignore[arg-type]
    # a one-element tensor (a loss) and non-finite values are observations like any other
    assert stopping.divergence()(Observation(iteration=0, fun=torch.tensor(math.nan))).status == 7


# -------------------------------------------------------------------- SafeStep, UpdateTracker


@pytest.mark.parametrize(
    ("grad_norm", "error", "message"),
    [
        (-1.0, ValueError, "grad_norm must be >= 0 (a norm), got grad_norm=-1.0"),
        ("x", TypeError, "grad_norm must be a real number, got grad_norm='x'"),
        (torch.ones(2), TypeError, "grad_norm must be a real number or a one-element tensor, got a tensor"),
        (True, TypeError, "grad_norm must be a real number, got grad_norm=True"),
    ],
)
def test_safe_step_refuses_a_bad_grad_norm_before_counting_the_call(
    grad_norm: Any, error: type[Exception], message: str
) -> None:
    guard = guard_seen()
    before = guard.state_dict()
    with pytest.raises(error, match=re.escape(message)):
        guard.check(1.0, grad_norm=grad_norm)
    assert guard.state_dict() == before
    assert guard.check(1.0, grad_norm=torch.tensor(0.5)).action == "step"  # a good one is taken


def test_safe_step_refuses_a_regime_window_the_monitor_cannot_take() -> None:
    # Windows of 2 or 3 passed, then failed at the first regime check, naming "window".
    with pytest.raises(ValueError, match="regime_window must be >= 4, got regime_window=3"):
        SafeStep(SGD([torch.zeros(2, requires_grad=True)], lr=0.1), on_too_large="stop", regime_window=3)


@pytest.mark.parametrize(
    ("source", "error", "message"),
    [
        (5, TypeError, "optimizer must be an optimizer or an iterable of tensors, got optimizer=5 (int)"),
        ([1.0], TypeError, "got optimizer[0]=1.0 (float)"),
        ([], ValueError, "optimizer must hold at least one tensor, got optimizer=[]"),
    ],
)
def test_update_tracker_refuses_what_it_cannot_measure(
    source: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        UpdateTracker(source)


def test_update_tracker_of_a_generator_measures_every_step() -> None:
    w = torch.zeros(2)
    tracker = UpdateTracker(p for p in [w])  # as model.parameters() gives them
    for _ in range(2):
        tracker.snapshot()
        w.add_(torch.tensor([3.0, 4.0]))
        assert tracker.norm() == pytest.approx(5.0)


# ------------------------------------------------------------------------------------ init


def test_initialize_checks_every_layer_before_changing_one() -> None:
    integer_layer = nn.Linear(2, 2)
    integer_layer.weight = nn.Parameter(torch.ones(2, 2, dtype=torch.long), requires_grad=False)
    model = nn.Sequential(nn.Linear(2, 2), integer_layer)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(TypeError, match=re.escape("layer '1' (Linear) has a weight of torch.int64")):
        initialize(model, generator=0)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


def test_a_model_without_layers_is_left_alone_by_initialize_and_refused_by_init_report() -> None:
    # steepest train initializes every model, a user's LSTM-only one too: nothing to do is no error
    model = nn.Sequential(nn.ReLU())
    assert initialize(model) == []
    with pytest.raises(ValueError, match="model has no Linear/Conv layer to .*: Sequential"):
        init_report(model, torch.randn(4, 2))


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"vanishing_ratio": True}, TypeError, "got vanishing_ratio=True"),
        ({"vanishing_ratio": "a"}, TypeError, "got vanishing_ratio='a'"),
        ({"exploding_ratio": math.nan}, ValueError, "got exploding_ratio=nan"),
        ({"vanishing_ratio": -1.0}, ValueError, "got vanishing_ratio=-1.0"),
        ({"vanishing_ratio": 10.0, "exploding_ratio": 1.0}, ValueError,
         "need vanishing_ratio < exploding_ratio, got vanishing_ratio=10.0 and exploding_ratio=1.0"),
        ({"batch": None}, TypeError,
         "batch must be a tensor or a non-empty sequence of tensors, got batch=None"),
        ({"batch": 5}, TypeError, "got batch=5 (int)"),
        ({"loss_fn": lambda output: output.sum(1)}, ValueError,
         "loss_fn must return a scalar tensor, got a tensor of shape (4,)"),
        ({"loss_fn": lambda output: 1.0}, TypeError, "loss_fn must return a scalar tensor, got 1.0 (float)"),
    ],
)
def test_init_report_bad_arguments(arguments: dict[str, Any], error: type[Exception], message: str) -> None:
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh())
    before = [p.detach().clone() for p in model.parameters()]
    arguments = {"batch": torch.randn(4, 2), **arguments}
    with pytest.raises(error, match=re.escape(message)):
        init_report(model, **arguments)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    assert all(p.grad is None for p in model.parameters())


def test_initialize_takes_numpy_seeds_and_refuses_seeds_torch_cannot() -> None:
    def weights(generator: Any) -> torch.Tensor:
        model = nn.Linear(3, 3)
        initialize(model, generator=generator)
        return model.weight.detach()

    assert torch.equal(weights(np.int64(3)), weights(3))
    message = f"generator must be a seed in [-2**63, 2**64 - 1] (torch's range), got generator={2**70}"
    with pytest.raises(ValueError, match=re.escape(message)):
        initialize(nn.Linear(2, 2), generator=2**70)
    with pytest.raises(TypeError, match=re.escape("got generator=1.5")):
        initialize(nn.Linear(2, 2), generator=1.5)  # type: ignore[arg-type]


# -------------------------------------------------------------------------------- clipping


def one_gradient() -> nn.Parameter:
    w = nn.Parameter(torch.zeros(2))
    w.grad = torch.tensor([3.0, 4.0])
    return w


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"max_norm": "1.0"}, TypeError, "got max_norm='1.0'"),
        ({"max_norm": True}, TypeError, "got max_norm=True"),
        # torch documents a float; a tensor would be read back from the device every call
        ({"max_norm": torch.tensor(1.0)}, TypeError, "got max_norm=tensor(1.)"),
        ({"max_norm": None}, TypeError, "got max_norm=None"),
        ({"max_norm": [1.0]}, TypeError, "got max_norm=[1.0]"),
        ({"norm_type": "2"}, TypeError, "norm_type must be a real number > 0 or inf, got norm_type='2'"),
        ({"norm_type": "fro"}, TypeError, "got norm_type='fro'"),
        ({"norm_type": True}, TypeError, "got norm_type=True"),
        ({"norm_type": None}, TypeError, "got norm_type=None"),
        ({"foreach": "no"}, TypeError, "got foreach='no'"),
        ({"error_if_nonfinite": "no"}, TypeError, "got error_if_nonfinite='no'"),
    ],
)
def test_clip_grad_norm_refuses_arguments_of_the_wrong_kind(
    arguments: dict[str, Any], error: type[Exception], message: str
) -> None:
    w = one_gradient()
    with pytest.raises(error, match=re.escape(message)):
        clipping.clip_grad_norm_([w], **{"max_norm": 1.0, **arguments})
    assert torch.equal(w.grad, torch.tensor([3.0, 4.0]))


def test_clip_grad_value_refuses_a_string() -> None:
    w = one_gradient()
    with pytest.raises(TypeError, match=re.escape("got clip_value='0.5'")):
        clipping.clip_grad_value_([w], "0.5")  # type: ignore[arg-type]
    assert torch.equal(w.grad, torch.tensor([3.0, 4.0]))


def test_clip_grad_norm_takes_the_string_inf_as_torch_documents() -> None:
    ours, theirs = one_gradient(), one_gradient()
    total = clipping.clip_grad_norm_([ours], 1.0, "inf")  # type: ignore[arg-type]
    torch.testing.assert_close(total, nn.utils.clip_grad_norm_([theirs], 1.0, "inf"))
    torch.testing.assert_close(ours.grad, theirs.grad)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: clipping.clip_grad_norm_([1.0], 1),
         "parameters must be tensors, got parameters[0]=1.0 (float)"),
        (lambda: clipping.clip_grad_norm_(1.0, 1), "parameters must be a tensor or an iterable of tensors"),
        (lambda: clipping.clip_grad_agc_([1.0]), "parameters must be tensors, got parameters[0]=1.0"),
        (lambda: clipping.global_norm([1.0]), "tensors must be tensors, got tensors[0]=1.0 (float)"),
        (lambda: clipping.global_norm(1.0), "tensors must be a list of tensors, got tensors=1.0 (float)"),
        (lambda: clipping.tensor_norms([torch.ones(1), "x"]), "tensors must be tensors, got tensors[1]='x'"),
        (lambda: clipping.unitwise_norm(1.0), "x must be a tensor, got x=1.0 (float)"),
    ],
)
def test_what_is_not_a_tensor_is_named(call: Callable[[], Any], message: str) -> None:
    with pytest.raises(TypeError, match=re.escape(message)):
        call()


def test_an_integer_gradient_is_a_type_error() -> None:
    w = torch.ones(2, dtype=torch.long)
    w.grad = torch.tensor([3, 4])
    message = "parameters[0].grad must be floating point, got dtype torch.int64"
    with pytest.raises(TypeError, match=re.escape(message)):
        clipping.clip_grad_norm_([w], 1.0)
    with pytest.raises(TypeError, match=re.escape("tensors must be floating point, got tensors[0] of dtype")):
        clipping.global_norm([w.grad])
    assert torch.equal(w.grad, torch.tensor([3, 4]))


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda g: clipping.scale_by_max_norm_(g, -1.0, clipping.global_norm(g)), ValueError,
         "got max_norm=-1.0"),
        (lambda g: clipping.scale_by_max_norm_(g, math.nan, clipping.global_norm(g)), ValueError,
         "got max_norm=nan"),
        (lambda g: clipping.scale_by_max_norm_(g, 1.0, 5.0), TypeError, "total_norm must be a tensor"),
        (lambda g: clipping.scale_each_by_max_norm_(g, -1.0, clipping.tensor_norms(g)), ValueError,
         "got max_norm=-1.0"),
        (lambda g: clipping.clamp_by_value_(g, -1.0), ValueError, "got clip_value=-1.0"),
        (lambda g: clipping.adaptive_clip_(g, [torch.ones(2)], clipping=-1.0), ValueError,
         "got clipping=-1.0"),
        (lambda g: clipping.adaptive_clip_(g, [torch.ones(2)], eps=0.0), ValueError, "got eps=0.0"),
        (lambda g: clipping.adaptive_clip_(g, [1.0]), TypeError, "params must be tensors, got params[0]=1.0"),
        (lambda g: clipping.global_norm(g, norm_type=-1), ValueError,
         "norm_type must be > 0 (or inf), got norm_type=-1"),
        (lambda g: clipping.global_norm(g, norm_type=0), ValueError,
         "norm_type must be > 0 (or inf), got norm_type=0"),
        (lambda g: clipping.tensor_norms(g, norm_type=0), ValueError, "got norm_type=0"),
    ],
)
def test_tensor_level_helpers_refuse_what_would_flip_or_poison_the_gradient(
    call: Callable[[list[torch.Tensor]], Any], error: type[Exception], message: str
) -> None:
    grads = [torch.tensor([1.0, 1.0])]
    with pytest.raises(error, match=re.escape(message)):
        call(grads)
    assert torch.equal(grads[0], torch.tensor([1.0, 1.0]))


# ------------------------------------------------------------------------------- schedules


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: schedules.multistep(peak=1, milestones={10: 1}), TypeError,
         "milestones must be a sequence of ints, got milestones={10: 1}"),
        (lambda: schedules.multistep(peak=1, milestones={20, 10}), TypeError,
         "milestones must be a sequence of ints, got milestones={"),
        (lambda: schedules.join([1.0, 2.0], boundaries={3: 1}), TypeError,
         "boundaries must be a sequence, got boundaries={3: 1}"),
        (lambda: schedules.steps_per_epoch(100, 7, drop_last="no"), TypeError, "got drop_last='no'"),
        (lambda: schedules.by_name(["cosine"]), TypeError,
         "name must be a schedule's name (a str), got name=['cosine']"),
        (lambda: schedules.Schedule.from_dict({"name": ["x"]}), TypeError, "got name=['x'] (list)"),
        (lambda: schedules.Schedule.from_dict({"name": "cosine", "peak": 1}), ValueError,
         "missing argument(s) ['total'] for cosine"),
        (lambda: schedules.plot(schedules.cosine(peak=1.0, total=10), 10.0), TypeError,
         "steps must be a number of steps (an int) or an iterable of int steps, got steps=10.0 (float)"),
        (lambda: schedules.cosine(peak=1.0, total=10).values(5.0), TypeError, "got steps=5.0 (float)"),
        (lambda: schedules.cosine(peak=1.0, total=10).values(-1), ValueError, "got steps=-1"),
    ],
)
def test_schedule_bad_arguments(call: Callable[[], Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        call()


def test_values_takes_a_count_of_steps_as_plot_does() -> None:
    schedule = schedules.cosine(peak=1.0, total=10)
    assert schedule.values(5) == schedule.values(range(5)) and len(schedule.values(5)) == 5
    assert schedules.steps_per_epoch(100, 7, drop_last=True) == 14


# --------------------------------------------------------------------------------- compare


def test_a_run_whose_options_are_none_has_no_options() -> None:
    assert RunSpec("sgd", 1e-3, None).options == {}
    comparison = compare("rosenbrock", [("sgd", 1e-3, None)], steps=3)
    assert comparison.runs[0].spec.options == {} and comparison.runs[0].steps == 3


def test_a_run_whose_options_are_not_a_dict_is_named() -> None:
    message = "runs[0]: options must be a dict of the optimizer's keyword arguments or None, got options=5"
    with pytest.raises(TypeError, match=re.escape(message)):
        compare("rosenbrock", [("sgd", 1e-3, 5)], steps=3)
