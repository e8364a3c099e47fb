"""Bad input to the optimizer engine: a clear error, naming the argument and its value, raised
before anything changes.

Every test here checks the error's type and text and, where the input arrives once the
optimizer holds state (add_param_group, load_state_dict, step), that its state_dict, param
groups and parameters are exactly what they were before the call.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

import steepest
from steepest import rules
from steepest.plateau import reduce_on_plateau
from steepest.rules import OPTIMIZERS

pytestmark = pytest.mark.usefixtures("single_thread")

NAMES = sorted(OPTIMIZERS)
CLOSURE_NAMES = ("lbfgs", "newton", "newtoncg")
TAKE_BETAS = rules.taking("betas")
TAKE_FUSED = rules.taking("fused")


# -- a small problem every optimizer can take a step on ----------------------------------------
def make_params() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    # The first parameter is a matrix, so no flat vector of a closure optimizer's state has
    # the shape of a parameter.
    return [
        torch.randn(2, 2, generator=generator).requires_grad_(True),
        torch.randn(3, generator=generator).requires_grad_(True),
    ]


def quadratic(params: list[torch.Tensor]) -> torch.Tensor:
    return sum((p - 1.0).abs().pow(2).sum() for p in params)  # (abs: complex parameters too)


def take_steps(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], steps: int = 2) -> None:
    """``steps`` steps of ``optimizer`` on the quadratic, however the optimizer is driven."""
    twice = rules.differentiates_twice(optimizer)  # Newton differentiates the closure's loss

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = quadratic(params)
        if not twice:
            loss.backward()
        return loss

    for _ in range(steps):
        if rules.requires_closure(optimizer):
            optimizer.step(closure)
        else:
            optimizer.zero_grad()
            loss = quadratic(params)
            loss.backward()
            optimizer.step(**rules.loss_keywords(optimizer, loss))


def stepped(name: str, **kwargs: Any) -> tuple[torch.optim.Optimizer, list[torch.Tensor]]:
    """The optimizer called ``name`` on fresh parameters, after two steps (so it holds state)."""
    params = make_params()
    optimizer = OPTIMIZERS[name](params, **kwargs)
    take_steps(optimizer, params)
    return optimizer, params


# -- "nothing changed" -------------------------------------------------------------------------
def snapshot(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Everything an error must leave as it was, deep-copied."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return copy.deepcopy(
        {
            "state_dict": optimizer.state_dict(),
            "params": [p.detach() for p in params],
            "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups],
            "group_sizes": [len(group["params"]) for group in optimizer.param_groups],
            "schedules": len(getattr(optimizer, "_schedules", [])),
            "step_count": getattr(optimizer, "step_count", None),
        }
    )


def assert_same(before: Any, after: Any, where: str = "") -> None:
    """Equal to the bit: tensors by torch.equal (dtype included), NaN equal to NaN."""
    assert type(before) is type(after), where
    if isinstance(before, dict):
        assert before.keys() == after.keys(), where
        for key in before:
            assert_same(before[key], after[key], f"{where}[{key!r}]")
    elif isinstance(before, (list, tuple)):
        assert len(before) == len(after), where
        for index, (a, b) in enumerate(zip(before, after)):
            assert_same(a, b, f"{where}[{index}]")
    elif isinstance(before, torch.Tensor):
        assert before.dtype == after.dtype and torch.equal(before, after), where
    elif isinstance(before, float) and math.isnan(before):
        assert math.isnan(after), where
    else:
        assert before == after, where


def assert_refused(
    optimizer: torch.optim.Optimizer,
    call: Callable[[], Any],
    error: type[Exception],
    *texts: str,
) -> None:
    """``call`` raises ``error`` whose message holds every one of ``texts``, changing nothing."""
    before = snapshot(optimizer)
    with pytest.raises(error) as raised:
        call()
    for text in texts:
        assert text in str(raised.value), (text, str(raised.value))
    assert_same(before, snapshot(optimizer))


# -- add_param_group checks everything the constructor does, before adding ---------------------
@pytest.mark.parametrize(
    ("name", "setting", "first", "other"),
    [
        ("momo", "beta", 0.9, 0.5),
        ("momo", "lower_bound", 0.0, 0.1),
        ("lbfgs", "history_size", 10, 5),
        ("newton", "damping", 0.0, 1.0),
    ],
)
def test_a_group_that_disagrees_on_a_shared_setting_is_not_added(name, setting, first, other) -> None:
    optimizer, _ = stepped(name)
    late = torch.zeros(2, requires_grad=True)
    assert_refused(
        optimizer,
        lambda: optimizer.add_param_group({"params": [late], setting: other}),
        ValueError,
        f"{setting} must be {first!r}",
        f"{setting}={other!r}",
    )


@pytest.mark.parametrize("name", CLOSURE_NAMES)
def test_a_closure_optimizer_refuses_a_group_of_another_dtype(name: str) -> None:
    optimizer, _ = stepped(name)
    late = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    assert_refused(
        optimizer,
        lambda: optimizer.add_param_group({"params": [late]}),
        ValueError,
        "parameter 2 is torch.float64",
    )


@pytest.mark.parametrize("name", ["newton", "newtoncg"])
def test_newton_refuses_a_complex_group(name: str) -> None:
    optimizer, _ = stepped(name)
    late = torch.zeros(2, dtype=torch.complex64, requires_grad=True)
    with pytest.raises(TypeError, match="parameter 0 is torch.complex64"):
        OPTIMIZERS[name]([late])
    assert_refused(
        optimizer,
        lambda: optimizer.add_param_group({"params": [late]}),
        TypeError,
        "parameter 2 is torch.complex64",
    )


# -- integer and bool parameters are refused by every optimizer, at once -----------------------
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
@pytest.mark.parametrize("name", NAMES)
def test_integer_parameters_are_refused(name: str, dtype: torch.dtype) -> None:
    whole = torch.zeros(3, dtype=dtype)
    with pytest.raises(TypeError, match=f"parameter 0 must be floating point, got {dtype}"):
        OPTIMIZERS[name]([whole])
    optimizer, _ = stepped(name)
    assert_refused(
        optimizer,
        lambda: optimizer.add_param_group({"params": [whole]}),
        TypeError,
        f"parameter 2 must be floating point, got {dtype}",
    )


@pytest.mark.parametrize("name", [name for name in NAMES if name not in ("newton", "newtoncg")])
def test_complex_parameters_are_still_accepted(name: str) -> None:
    # Every rule but Newton's steps complex parameters as pairs of reals, as torch.optim does.
    start = torch.full((3,), 2 + 1j, dtype=torch.complex64)
    param = start.clone().requires_grad_(True)
    optimizer = OPTIMIZERS[name]([param])
    take_steps(optimizer, [param], 1)
    assert not torch.equal(param.detach(), start)


# -- the execution options are checked alike everywhere ----------------------------------------
@pytest.mark.parametrize("fused", ["no", "yes", 0, 1])
@pytest.mark.parametrize("name", TAKE_FUSED)
def test_fused_is_none_true_or_false(name: str, fused: Any) -> None:
    with pytest.raises(TypeError, match=f"fused must be None, True or False, got fused={fused!r}"):
        OPTIMIZERS[name](make_params(), fused=fused)
    optimizer, _ = stepped(name)
    assert_refused(
        optimizer,
        lambda: optimizer.add_param_group({"params": [torch.zeros(2, requires_grad=True)], "fused": fused}),
        TypeError,
        f"fused={fused!r}",
    )


@pytest.mark.parametrize(
    ("state_dtype", "error"),
    [
        (torch.float32, ValueError),
        (torch.float16, ValueError),
        (torch.float64, ValueError),
        (torch.int8, TypeError),  # cannot hold moments at all: the wrong kind of dtype
        ("bfloat16", TypeError),
    ],
)
def test_state_dtype_out_of_range_is_a_value_error(state_dtype: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=f"state_dtype={state_dtype!r}"):
        steepest.Adam(make_params(), state_dtype=state_dtype)


@pytest.mark.parametrize(("setting", "value"), [("fused", True), ("state_dtype", torch.bfloat16)])
@pytest.mark.parametrize("name", [name for name in NAMES if name not in TAKE_FUSED])
def test_an_execution_option_the_rule_cannot_honour_is_refused_in_a_group(
    name: str, setting: str, value: Any
) -> None:
    # Once taken and ignored (fused=True), or a crash at the first step after some moment
    # buffers had moved (state_dtype, on Prodigy, D-Adaptation and MoMo).
    text = f"{setting}={value!r}: {type(OPTIMIZERS[name](make_params())).__name__} has no fused path"
    with pytest.raises(ValueError, match=text):
        OPTIMIZERS[name]([{"params": make_params(), setting: value}])
    optimizer, _ = stepped(name)
    new_group = {"params": [torch.zeros(2, 2, requires_grad=True)], setting: value}
    assert_refused(optimizer, lambda: optimizer.add_param_group(new_group), ValueError, text)
    params = make_params()  # the defaults are no such request
    take_steps(OPTIMIZERS[name]([{"params": params, "fused": False, "state_dtype": None}]), params)


# -- load_state_dict checks the whole state_dict first -----------------------------------------
def saved(name: str) -> dict[str, Any]:
    """A state_dict of the optimizer called ``name``, after two steps on other parameters."""
    optimizer, _ = stepped(name)
    return copy.deepcopy(optimizer.state_dict())


@pytest.mark.parametrize(
    ("steepest_entry", "error", "text"),
    [
        ({"step_count": "abc"}, TypeError, "step_count']='abc'"),
        ({"step_count": 1.5}, TypeError, "step_count']=1.5"),
        ({"step_count": -1}, ValueError, "step_count']=-1"),
        ({}, ValueError, "no 'step_count'"),
        ("abc", TypeError, "state_dict['steepest'] must be a dict"),
        ({"step_count": 2, "hyperparameters": []}, TypeError, "['hyperparameters'] must be a dict"),
    ],
)
@pytest.mark.parametrize("name", NAMES)
def test_a_bad_steepest_entry_is_refused_before_loading(name, steepest_entry, error, text) -> None:
    optimizer, _ = stepped(name)
    state_dict = saved(name)
    state_dict["steepest"] = steepest_entry
    assert_refused(optimizer, lambda: optimizer.load_state_dict(state_dict), error, text)


def test_a_bad_saved_plateau_state_is_refused_before_loading() -> None:
    optimizer, params = stepped("sgd", lr=reduce_on_plateau(0.1, patience=0))
    optimizer.report(1.0)
    state_dict = copy.deepcopy(optimizer.state_dict())
    del state_dict["steepest"]["hyperparameters"]["0.lr"]["best"]
    state_dict["steepest"]["step_count"] = 7
    take_steps(optimizer, params, 1)
    assert_refused(optimizer, lambda: optimizer.load_state_dict(state_dict), ValueError, "'0.lr'", "best")


@pytest.mark.parametrize(
    ("setting", "value", "error", "text"),
    [
        ("lr", -5.0, ValueError, "lr=-5.0"),
        ("lr", "fast", TypeError, "lr='fast'"),
        ("lr", float("nan"), ValueError, "lr=nan"),
    ],
)
@pytest.mark.parametrize("name", NAMES)
def test_loaded_hyperparameters_are_checked_as_the_constructor_does(name, setting, value, error, text):
    optimizer, _ = stepped(name)
    state_dict = saved(name)
    state_dict["param_groups"][0][setting] = value
    assert_refused(optimizer, lambda: optimizer.load_state_dict(state_dict), error, text, "param group 0")


@pytest.mark.parametrize("name", TAKE_BETAS)
def test_loaded_betas_are_checked(name: str) -> None:
    optimizer, _ = stepped(name)
    state_dict = saved(name)
    state_dict["param_groups"][0]["betas"] = (1.5, 0.9)
    assert_refused(optimizer, lambda: optimizer.load_state_dict(state_dict), ValueError, "betas[0]=1.5")


@pytest.mark.parametrize("name", TAKE_FUSED)
def test_a_loaded_fused_is_checked(name: str) -> None:
    optimizer, _ = stepped(name)
    state_dict = saved(name)
    state_dict["param_groups"][0]["fused"] = "no"
    assert_refused(optimizer, lambda: optimizer.load_state_dict(state_dict), TypeError, "fused='no'")


@pytest.mark.parametrize(("name", "setting", "value"), [("momo", "beta", 0.5), ("lbfgs", "history_size", 5)])
def test_loaded_groups_must_agree_on_shared_settings(name: str, setting: str, value: Any) -> None:
    params = make_params()
    optimizer = OPTIMIZERS[name]([{"params": params[:1]}, {"params": params[1:]}])
    take_steps(optimizer, params)
    state_dict = copy.deepcopy(optimizer.state_dict())
    state_dict["param_groups"][1][setting] = value
    assert_refused(
        optimizer, lambda: optimizer.load_state_dict(state_dict), ValueError, f"{setting}={value}", "group 1"
    )


@pytest.mark.parametrize("path", ["default", "foreach=False", "foreach=True", "fused=True"])
def test_adam_refuses_a_moment_of_another_shape_on_every_path(path: str) -> None:
    # The fused CPU kernel would read past the end of the short buffer without a word.
    kwargs = {} if path == "default" else {path.split("=")[0]: True if path.endswith("True") else False}
    optimizer, _ = stepped("adam", **kwargs)
    state_dict = saved("adam")
    state_dict["state"][1]["exp_avg"] = torch.zeros(7)
    assert_refused(
        optimizer,
        lambda: optimizer.load_state_dict(state_dict),
        ValueError,
        "state_dict['state'][1]['exp_avg'] has shape (7,)",
        "parameter 1 has shape (3,)",
    )


@pytest.mark.parametrize("name", NAMES)
def test_every_declared_buffer_must_have_its_parameters_shape(name: str) -> None:
    settings = {"momentum": 0.9} if name == "sgd" else {}  # (plain SGD keeps no buffer)
    optimizer, _ = stepped(name, **settings)
    names = optimizer._buffer_names(optimizer.param_groups[0])
    if not names:  # L-BFGS and Newton keep no per-parameter buffers: their own state loads
        optimizer.load_state_dict(saved(name))
        return
    for buffer in names:
        state_dict = copy.deepcopy(optimizer.state_dict())
        state_dict["state"][0][buffer] = torch.zeros(4)
        assert_refused(
            optimizer,
            lambda state_dict=state_dict: optimizer.load_state_dict(state_dict),
            ValueError,
            f"[{buffer!r}] has shape (4,)",
            "parameter 0 has shape (2, 2)",
        )
        state_dict["state"][0][buffer] = 0.0
        assert_refused(
            optimizer,
            lambda state_dict=state_dict: optimizer.load_state_dict(state_dict),
            TypeError,
            f"[{buffer!r}] must be a tensor",
        )


@pytest.mark.parametrize("name", [name for name in NAMES if name not in CLOSURE_NAMES])
def test_a_bad_scalar_state_is_refused(name: str) -> None:
    optimizer, _ = stepped(name)
    scalars = optimizer._scalar_state(optimizer.param_groups[0])
    if not scalars:
        pytest.skip(f"{name} keeps no per-parameter scalar state")
    for scalar in scalars:
        state_dict = saved(name)
        state_dict["state"][1][scalar] = "abc"
        assert_refused(
            optimizer,
            lambda state_dict=state_dict: optimizer.load_state_dict(state_dict),
            TypeError,
            f"state_dict['state'][1][{scalar!r}]",
        )


def test_a_state_dict_of_the_wrong_structure_is_refused() -> None:
    optimizer, _ = stepped("adam")
    for state_dict, error, text in [
        ([], TypeError, "state_dict must be a dict"),
        ({"state": {}}, ValueError, "no 'param_groups'"),
        ({"state": [], "param_groups": []}, TypeError, "state_dict['state'] must be a dict"),
        ({"state": {}, "param_groups": [{"lr": 0.1}]}, TypeError, "'params' list"),
        ({"state": {}, "param_groups": [{"params": [0], "lr": 0.1}]}, ValueError, "[1] parameters"),
    ]:
        load = lambda state_dict=state_dict: optimizer.load_state_dict(state_dict)  # noqa: E731
        assert_refused(optimizer, load, error, text)


@pytest.mark.parametrize("name", NAMES)
def test_missing_hyperparameters_keep_this_optimizers_values(name: str) -> None:
    # A state_dict from another optimizer or an older version: what torch.optim's twins do
    # for the hyperparameters they added over time (amsgrad, maximize, foreach, ...).
    state_dict = saved(name)
    state_dict["param_groups"] = [{"params": g["params"], "lr": 0.25} for g in state_dict["param_groups"]]
    params = make_params()
    optimizer = OPTIMIZERS[name](params)
    fresh = {k: v for k, v in optimizer.param_groups[0].items() if k not in ("params", "lr")}
    optimizer.load_state_dict(state_dict)
    loaded = {k: v for k, v in optimizer.param_groups[0].items() if k not in ("params", "lr")}
    assert loaded == fresh
    assert optimizer.param_groups[0]["lr"] == 0.25
    take_steps(optimizer, params, 1)
    assert all(bool(torch.isfinite(p).all()) for p in params)


def test_adam_loads_an_sgd_state_dict_as_torch_adam_does() -> None:
    sgd_state = torch.optim.SGD(make_params(), lr=0.1, momentum=0.9).state_dict()
    params = make_params()
    ours, theirs = steepest.Adam(params), torch.optim.Adam(make_params())
    ours.load_state_dict(copy.deepcopy(sgd_state))
    theirs.load_state_dict(copy.deepcopy(sgd_state))
    for key in ("amsgrad", "maximize", "foreach", "fused", "decoupled_weight_decay"):
        assert ours.param_groups[0][key] == theirs.param_groups[0][key], key
    assert ours.param_groups[0]["betas"] == (0.9, 0.999)  # torch leaves it out and fails at step
    take_steps(ours, params, 1)


@pytest.mark.parametrize("name", [name for name in NAMES if name not in CLOSURE_NAMES])
def test_a_step_saved_as_a_python_int_loads_as_a_tensor(name: str) -> None:
    # torch before 1.12 and the dadaptation and prodigyopt packages save ``step`` as an int:
    # it failed at the next step (two tensors in a bucket) or stopped counting (one tensor).
    optimizer, params = stepped(name)
    saved = copy.deepcopy(optimizer.state_dict())
    if not any("step" in entry for entry in saved["state"].values()):
        pytest.skip(f"{name} keeps no per-parameter step")
    for entry in saved["state"].values():
        entry["step"] = int(entry["step"])
    runs = []
    for state_dict in (copy.deepcopy(optimizer.state_dict()), saved):
        resumed = [p.detach().clone().requires_grad_(True) for p in params]
        follower = OPTIMIZERS[name](resumed)
        follower.load_state_dict(state_dict)
        take_steps(follower, resumed, 3)
        runs.append((resumed, [entry["step"] for entry in follower.state.values()]))
    (expected, expected_steps), (got, steps) = runs
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    assert all(torch.is_tensor(step) and float(step) == 5 for step in steps), steps
    assert [s.dtype for s in steps] == [s.dtype for s in expected_steps]


# -- MoMo's loss -------------------------------------------------------------------------------
@pytest.mark.parametrize("loss", [float("nan"), float("inf"), -float("inf"), torch.tensor(float("nan"))])
def test_momo_applies_a_loss_that_is_not_finite_as_given(loss: Any) -> None:
    # as torch.optim applies a non-finite gradient: the parameters turn non-finite, which a run's
    # guard sees; the Polyak step once fell back to the full lr and went on silently
    optimizer, params = stepped("momo")
    quadratic(params).backward()
    optimizer.step(loss=loss)
    assert all(not bool(torch.isfinite(p).any()) for p in params)
    assert not optimizer.all_finite()


@pytest.mark.parametrize(
    ("loss", "text"),
    [("x", "loss='x'"), ([1.0], "loss=[1.0]"), (torch.ones(2), "shape (2,)"), (1 + 2j, "loss=(1+2j)")],
)
def test_momo_refuses_a_loss_that_is_no_real_number(loss: Any, text: str) -> None:
    optimizer, params = stepped("momo")
    quadratic(params).backward()
    assert_refused(optimizer, lambda: optimizer.step(loss=loss), TypeError, text)


# -- schedules that give something other than a number -----------------------------------------
@pytest.mark.parametrize(
    ("schedule", "text"),
    [
        (lambda step: "x", "lr='x' (str) (a schedule's value at step 0)"),
        (lambda step: None, "lr=None (NoneType) (a schedule's value at step 0)"),
        (lambda step: [0.1], "lr=[0.1] (list) (a schedule's value at step 0)"),
        (lambda step: torch.ones(2), "a tensor of shape (2,) (a schedule's value at step 0)"),
        (lambda: 0.1, "lr(step)"),
        (lambda step, other: 0.1, "lr(step)"),
    ],
)
def test_a_schedule_that_gives_no_number_is_refused_naming_it(schedule: Callable, text: str) -> None:
    with pytest.raises(TypeError) as raised:
        steepest.SGD(make_params(), lr=schedule)
    assert text in str(raised.value)
    with pytest.raises(TypeError, match=r"betas\[1\]"):
        steepest.Adam(make_params(), betas=(0.9, lambda step: "x"))


def test_a_schedule_that_goes_bad_later_is_refused_before_that_step() -> None:
    optimizer, params = stepped("sgd", lr=lambda step: 0.1 if step < 2 else "x")  # steps 0 and 1
    assert optimizer.param_groups[0]["lr"] == 0.1
    quadratic(params).backward()
    assert_refused(optimizer, optimizer.step, TypeError, "lr='x'", "step 2")


def test_a_schedule_still_accepts_a_one_element_tensor() -> None:
    optimizer = steepest.SGD(make_params(), lr=lambda step: torch.tensor(0.25))
    assert optimizer.param_groups[0]["lr"] == 0.25


# -- report's metric ---------------------------------------------------------------------------
@pytest.mark.parametrize("plateau", [False, True])
@pytest.mark.parametrize(
    ("metric", "text"),
    [("x", "metric='x'"), (None, "metric=None"), (torch.ones(3), "shape (3,)"), (True, "metric=True")],
)
def test_report_refuses_a_metric_that_is_no_real_number(plateau: bool, metric: Any, text: str) -> None:
    lr = reduce_on_plateau(0.1, patience=0) if plateau else 0.1
    optimizer, _ = stepped("sgd", lr=lr)
    assert_refused(optimizer, lambda: optimizer.report(metric), TypeError, text)


def test_a_nan_metric_counts_as_no_improvement_as_in_torch() -> None:
    ours = steepest.SGD(make_params(), lr=reduce_on_plateau(0.1, patience=1))
    theirs = torch.optim.SGD(make_params(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(theirs, patience=1)
    for metric in [1.0, float("nan"), torch.tensor(float("nan")), 0.5]:
        ours.report(metric)
        scheduler.step(float(metric))
        assert ours.param_groups[0]["lr"] == pytest.approx(theirs.param_groups[0]["lr"], rel=1e-12)
    assert ours.param_groups[0]["lr"] == pytest.approx(0.01)  # cut once, by the two NaNs
    assert steepest.SGD(make_params()).report(float("nan")) is False  # nothing to cut: no error


@pytest.mark.parametrize("name", ["lbfgs", "newton", "newtoncg"])
@pytest.mark.parametrize(
    ("returned", "text"), [(None, "loss=None"), ("x", "loss='x'"), ("vector", "shape (3,)")]
)
def test_a_closure_that_returns_no_loss_is_named(name: str, returned: object, text: str) -> None:
    # once "float() argument must be ... not 'NoneType'" or "only one element tensors ..."
    param = torch.zeros(3, requires_grad=True)
    optimizer = steepest.rules.by_name(name)([param])

    def closure() -> object:
        return (param - 1) ** 2 if returned == "vector" else returned

    with pytest.raises(TypeError, match="the closure's loss") as error:
        optimizer.step(closure)
    assert text in str(error.value)
    for entry in optimizer.state_dict()["state"].values():  # nothing counted, nothing moved
        assert (entry.get("func_evals", 0), entry.get("n_iter", 0)) == (0, 0)
    assert torch.equal(param, torch.zeros(3))


@pytest.mark.parametrize("name", ["sgd", "rmsprop", "adagrad", "nadam", "lion"])
@pytest.mark.parametrize("foreach", [False, True])
def test_a_rate_beyond_the_dtypes_range_diverges_instead_of_raising(name: str, foreach: bool) -> None:
    # add_'s alpha once refused lr=1e308 in float32 ("cannot be converted ... without overflow")
    param = torch.ones(3, requires_grad=True)
    param.grad = torch.ones(3)
    steepest.rules.by_name(name)([param], lr=1e308, foreach=foreach).step()
    assert not bool(torch.isfinite(param).any())
