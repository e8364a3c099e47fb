"""Generic tests for every optimizer in specs.SPECS.

The anchor is torch.optim: in float64, each steepest twin follows torch's trajectory,
params and state, to 1e-12 relative, per tensor and multi-tensor; Lion follows a readable
implementation of its paper. Then the engine's contracts: checkpoints, param groups,
gradients that are None, dtypes, torch tooling (lr_scheduler, GradScaler), bad input.
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch

import steepest
from problem import (  # the shared test problem
    FROZEN,
    clone_params,
    groups,
    make_params,
    max_relative_difference,
    run,
    set_gradients,
)
from specs import SPECS, TORCH_TWINS, Spec

RTOL = 1e-12


def assert_states_close(ours: dict, theirs: dict, rtol: float = RTOL) -> None:
    assert set(ours) == set(theirs), (set(ours), set(theirs))
    for key in theirs:
        if torch.is_tensor(theirs[key]):
            assert ours[key].dtype == theirs[key].dtype, key
            assert max_relative_difference(ours[key], theirs[key]) <= rtol, key
        else:
            assert ours[key] == theirs[key], key


def assert_params_close(ours: list[torch.Tensor], theirs: list[torch.Tensor], rtol: float = RTOL):
    for index, (a, b) in enumerate(zip(ours, theirs)):
        diff = max_relative_difference(a, b)
        assert diff <= rtol, f"param {index}: max relative difference {diff:.3g}"


def _twin_configs():
    for spec in TORCH_TWINS:
        for index, config in enumerate(spec.configs):
            yield pytest.param(spec, config, id=f"{spec.name}-{index}")


def twin_configs() -> list:
    return list(_twin_configs())


def _all_configs():
    for spec in SPECS:
        for index, config in enumerate(spec.configs):
            yield pytest.param(spec, config, id=f"{spec.name}-{index}")


def all_configs() -> list:
    return list(_all_configs())


# -- correctness against the anchor --------------------------------------------------------
@pytest.mark.parametrize("foreach", [False, True], ids=["per_tensor", "multi_tensor"])
@pytest.mark.parametrize(("spec", "config"), twin_configs())
def test_matches_torch_optim_float64(spec: Spec, config: dict, foreach: bool) -> None:
    ours_params, torch_params = make_params(), make_params()
    ours = spec.cls(groups(ours_params, spec.group_override), **config, foreach=foreach)
    theirs = spec.torch_cls(groups(torch_params, spec.group_override), **config, foreach=foreach)
    for step in range(25):
        set_gradients(ours_params, step)
        set_gradients(torch_params, step)
        ours.step()
        theirs.step()
        assert_params_close(ours_params, torch_params)
    assert torch.equal(ours_params[FROZEN], torch_params[FROZEN])
    for p_ours, p_theirs in zip(ours_params, torch_params):
        assert_states_close(ours.state.get(p_ours, {}), theirs.state.get(p_theirs, {}))
    # the trajectory moved: a comparison of two frozen runs would prove nothing
    assert max_relative_difference(ours_params[2], make_params()[2]) > 1e-3


@pytest.mark.parametrize(("spec", "config"), [p for p in all_configs() if p.values[0].reference])
def test_matches_paper_reference(spec: Spec, config: dict) -> None:
    ours_params, reference_params = make_params(), make_params()
    ours = spec.cls(groups(ours_params, spec.group_override), **config, foreach=False)
    reference_states: list[dict] = [{} for _ in reference_params]
    for step in range(25):
        set_gradients(ours_params, step)
        set_gradients(reference_params, step)
        ours.step()
        with torch.no_grad():
            for group_index, members in enumerate(([0, 1], [2, 3])):
                settings = {**config, **(spec.group_override if group_index else {})}
                spec.reference(
                    [reference_params[i] for i in members],
                    [reference_params[i].grad for i in members],
                    [reference_states[i] for i in members],
                    **settings,
                )
        assert_params_close(ours_params, reference_params, rtol=1e-11)
    for p, reference_state in zip(ours_params, reference_states):
        for key, value in reference_state.items():
            assert max_relative_difference(ours.state[p][key], value) <= 1e-11


@pytest.mark.parametrize(("spec", "config"), all_configs())
def test_multi_tensor_equals_per_tensor(spec: Spec, config: dict) -> None:
    per_tensor_params, multi_tensor_params = make_params(), make_params()
    per_tensor = spec.cls(groups(per_tensor_params, spec.group_override), **config, foreach=False)
    multi_tensor = spec.cls(groups(multi_tensor_params, spec.group_override), **config, foreach=True)
    run(per_tensor, per_tensor_params, 20)
    run(multi_tensor, multi_tensor_params, 20)
    assert_params_close(multi_tensor_params, per_tensor_params)
    for a, b in zip(multi_tensor_params, per_tensor_params):
        assert_states_close(multi_tensor.state.get(a, {}), per_tensor.state.get(b, {}))


@pytest.mark.parametrize("direction", ["torch_to_steepest", "steepest_to_torch"])
@pytest.mark.parametrize(("spec", "config"), twin_configs())
def test_state_dict_moves_between_torch_and_steepest(spec: Spec, config: dict, direction: str):
    source_cls, target_cls = (spec.torch_cls, spec.cls)
    if direction == "steepest_to_torch":
        source_cls, target_cls = target_cls, source_cls
    source_params = make_params()
    source = source_cls(groups(source_params, spec.group_override), **config)
    run(source, source_params, 10)
    target_params = clone_params(source_params)
    target = target_cls(groups(target_params, spec.group_override), **config)
    # deepcopy, as a checkpoint would: load_state_dict may share the source's state tensors
    target.load_state_dict(copy.deepcopy(source.state_dict()))
    run(source, source_params, 10, start=10)
    run(target, target_params, 10, start=10)
    assert_params_close(target_params, source_params)


# -- checkpoints -------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("spec", "config"), all_configs())
def test_checkpoint_resumes_bit_identically(spec: Spec, config: dict, dtype: torch.dtype) -> None:
    params = make_params(dtype)
    optimizer = spec.cls(groups(params, spec.group_override), **config)
    run(optimizer, params, 7)

    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "params": [p.detach() for p in params]}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)  # plain tensors and containers only

    resumed_params = clone_params(checkpoint["params"])
    resumed = spec.cls(groups(resumed_params, spec.group_override), **config)
    resumed.load_state_dict(checkpoint["optimizer"])
    run(optimizer, params, 8, start=7)
    run(resumed, resumed_params, 8, start=7)
    for a, b in zip(resumed_params, params):
        assert a.dtype == dtype
        assert torch.equal(a, b)
    for a, b in zip(resumed_params, params):
        for key, value in optimizer.state.get(b, {}).items():
            assert torch.equal(resumed.state[a][key], value), key


# -- engine contracts ----------------------------------------------------------------------
def quadratic(x: torch.Tensor) -> torch.Tensor:
    """0.5 x^T A x with eigenvalues from 1 to 10; minimum 0 at the origin."""
    scales = torch.linspace(1.0, 10.0, x.numel(), dtype=x.dtype)
    return 0.5 * (scales * x * x).sum()


def rosenbrock(x: torch.Tensor) -> torch.Tensor:
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


@pytest.mark.parametrize("spec", SPECS, ids=str)
@pytest.mark.parametrize(
    ("objective", "start", "steps", "factor"),
    [(quadratic, [1.0] * 10, 300, 1e-2), (rosenbrock, [-1.5, 2.0], 2000, 1e-1)],
    ids=["quadratic", "rosenbrock"],
)
def test_descends(spec: Spec, objective, start, steps: int, factor: float) -> None:
    x = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    extra = {"momentum": 0.9} if spec.cls is steepest.SGD else {}
    optimizer = spec.cls([x], lr=spec.descent_lr, **extra)
    initial = float(objective(x.detach()))
    for _ in range(steps):
        optimizer.zero_grad()
        loss = objective(x)
        loss.backward()
        optimizer.step()
    final = float(objective(x))
    assert math.isfinite(final)
    assert final < factor * initial, (initial, final)


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_maximize_ascends_what_minimize_descends(spec: Spec) -> None:
    config = spec.configs[0]
    down, up = make_params(), make_params()
    minimizer = spec.cls(groups(down, spec.group_override), **{**config, "maximize": False})
    maximizer = spec.cls(groups(up, spec.group_override), **{**config, "maximize": True})
    for step in range(10):
        set_gradients(down, step)
        set_gradients(up, step)
        for p in up:
            if p.grad is not None:
                p.grad.neg_()  # the gradient of -f
        minimizer.step()
        maximizer.step()
    assert_params_close(up, down, rtol=0.0)


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_param_groups_equal_separate_optimizers(spec: Spec) -> None:
    config = spec.configs[0]
    joint_params, split_params = make_params(), make_params()
    joint = spec.cls(groups(joint_params, spec.group_override), **config)
    first = spec.cls([split_params[0], split_params[1]], **config)
    second = spec.cls(split_params[2:4], **{**config, **spec.group_override})
    for step in range(10):
        set_gradients(joint_params, step)
        set_gradients(split_params, step)
        joint.step()
        first.step()
        second.step()
    assert_params_close(joint_params, split_params, rtol=0.0)
    assert joint.param_groups[1]["lr"] == spec.group_override["lr"]


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_add_param_group_joins_the_step(spec: Spec) -> None:
    first, late = torch.ones(3, requires_grad=True), torch.ones(2, requires_grad=True)
    optimizer = spec.cls([first], **spec.configs[0])
    optimizer.add_param_group({"params": [late], "lr": 0.5 * spec.configs[0]["lr"]})
    first.grad, late.grad = torch.ones(3), torch.ones(2)
    optimizer.step()
    assert not torch.equal(late.detach(), torch.ones(2))
    assert optimizer.param_groups[1]["lr"] == 0.5 * spec.configs[0]["lr"]
    with pytest.raises(ValueError, match="more than once"):
        optimizer.add_param_group({"params": [first]})
    with pytest.raises(ValueError, match="lr"):
        optimizer.add_param_group({"params": [torch.ones(1, requires_grad=True)], "lr": -1.0})
    assert len(optimizer.param_groups) == 2


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_parameter_without_gradient_is_untouched(spec: Spec) -> None:
    params = make_params()
    optimizer = spec.cls(groups(params, spec.group_override), **spec.configs[0])
    before = params[FROZEN].detach().clone()
    run(optimizer, params, 5)
    assert torch.equal(params[FROZEN], before)
    state = optimizer.state.get(params[FROZEN], {})
    assert all(float(v) == 0 for k, v in state.items() if k == "step")
    # zero_grad(set_to_none=True) then step: nothing moves at all
    snapshot = [p.detach().clone() for p in params]
    optimizer.zero_grad(set_to_none=True)
    optimizer.step()
    for p, q in zip(params, snapshot):
        assert torch.equal(p, q)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_dtype_is_preserved(spec: Spec, dtype: torch.dtype) -> None:
    if dtype == torch.bfloat16 and not spec.bfloat16:
        pytest.skip(f"{spec.name} does not train bfloat16 parameters (see its spec row)")
    x = torch.full((10,), 1.0, dtype=dtype, requires_grad=True)
    extra = {"momentum": 0.9} if spec.cls is steepest.SGD else {}
    optimizer = spec.cls([x], lr=spec.descent_lr, **extra)
    initial = float(quadratic(x.detach().float()))
    for _ in range(300):
        optimizer.zero_grad()
        quadratic(x).backward()
        optimizer.step()
    assert x.dtype == dtype
    for key, value in optimizer.state[x].items():
        if key not in ("step", "mu_product"):
            assert value.dtype == dtype, key
    assert float(quadratic(x.detach().float())) < 0.1 * initial


@pytest.mark.parametrize(("spec", "config"), twin_configs())
def test_complex_parameters_match_torch(spec: Spec, config: dict) -> None:
    generator = torch.Generator().manual_seed(3)
    start = torch.randn(4, dtype=torch.complex128, generator=generator)
    ours_x, torch_x = start.clone().requires_grad_(), start.clone().requires_grad_()
    ours, theirs = spec.cls([ours_x], **config), spec.torch_cls([torch_x], **config)
    for _ in range(10):
        for x in (ours_x, torch_x):
            x.grad = torch.sin(x.detach())
        ours.step()
        theirs.step()
    assert max_relative_difference(torch.view_as_real(ours_x), torch.view_as_real(torch_x)) <= RTOL


# -- torch tooling -------------------------------------------------------------------------
def test_works_under_torch_lr_scheduler() -> None:
    ours_params, torch_params = make_params(), make_params()
    ours = steepest.SGD(ours_params[:4], lr=0.1, momentum=0.9)
    theirs = torch.optim.SGD(torch_params[:4], lr=0.1, momentum=0.9)
    schedulers = [torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5) for o in (ours, theirs)]
    for step in range(12):
        set_gradients(ours_params, step)
        set_gradients(torch_params, step)
        ours.step()
        theirs.step()
        for scheduler in schedulers:
            scheduler.step()
    assert ours.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**4)
    assert_params_close(ours_params, torch_params)


def test_works_under_grad_scaler() -> None:
    """GradScaler unscales, skips steps with infinite gradients, and updates its scale."""
    results = []
    for cls in (steepest.Adam, torch.optim.Adam):
        x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
        optimizer = cls([x], lr=0.1)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        for step in range(6):
            optimizer.zero_grad()
            loss = quadratic(x)
            scaler.scale(loss).backward()
            if step == 2:
                x.grad[0] = float("inf")  # this step must be skipped
            scaler.step(optimizer)
            scaler.update()
        results.append((x.detach().clone(), scaler.get_scale(), optimizer.state[x]["step"]))
    (ours, ours_scale, ours_steps), (theirs, theirs_scale, theirs_steps) = results
    assert torch.allclose(ours, theirs, rtol=1e-6, atol=0)
    assert ours_scale == theirs_scale < 2.0**10
    assert float(ours_steps) == float(theirs_steps) == 5.0


def test_nonfinite_gradient_is_detectable() -> None:
    x = torch.ones(3, requires_grad=True)
    optimizer = steepest.Adam([x], lr=0.1)
    x.grad = torch.tensor([1.0, float("nan"), 1.0])
    assert optimizer.all_finite()
    optimizer.step()
    assert not optimizer.all_finite()


def test_closure_is_evaluated_with_gradients_enabled() -> None:
    x = torch.ones(2, requires_grad=True)
    optimizer = steepest.SGD([x], lr=0.1)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = quadratic(x)
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert float(loss) == pytest.approx(float(quadratic(torch.ones(2))))
    assert torch.allclose(x.detach(), torch.tensor([0.9, 0.0]), atol=1e-6)


def test_sparse_gradient_is_refused_clearly() -> None:
    x = torch.ones(3, requires_grad=True)
    optimizer = steepest.Adam([x])
    x.grad = torch.ones(3).to_sparse()
    refused = r"sparse gradients \(parameter of shape \(3,\)\): use a dense gradient"
    with pytest.raises(RuntimeError, match=refused):
        optimizer.step()


def test_is_a_torch_optimizer() -> None:
    x = torch.ones(2, requires_grad=True)
    optimizer = steepest.AdamW([x])
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert optimizer.param_groups[0]["weight_decay"] == 1e-2
    assert "AdamW" in repr(optimizer)


# -- bad input -------------------------------------------------------------------------------
def _bad_input_cases():
    for spec in SPECS:
        for index, (kwargs, error, text) in enumerate(spec.bad_inputs):
            yield pytest.param(spec, kwargs, error, text, id=f"{spec.name}-{index}")


def bad_input_cases() -> list:
    return list(_bad_input_cases())


@pytest.mark.parametrize(("spec", "kwargs", "error", "text"), bad_input_cases())
def test_bad_hyperparameters_are_refused(spec: Spec, kwargs: dict, error: type, text: str) -> None:
    with pytest.raises(error) as raised:
        spec.cls([torch.ones(2, requires_grad=True)], **kwargs)
    message = str(raised.value)
    assert text in message
    name = next(iter(kwargs)) if len(kwargs) == 1 else None
    if name is not None:
        assert name in message


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_bad_params_are_refused(spec: Spec) -> None:
    with pytest.raises(ValueError, match="params is empty"):
        spec.cls([])
    x = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="more than once"):
        spec.cls([x, x])
    with pytest.raises(TypeError, match=r"params\[1\].*list"):
        spec.cls([x, [1.0, 2.0]])
    with pytest.raises(TypeError, match="single Tensor"):
        spec.cls(x)
    with pytest.raises(ValueError, match="lr"):
        spec.cls([{"params": [x], "lr": float("nan")}])


def test_foreach_none_runs_per_tensor_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from steepest.engine import optimizer as engine

    built: list[object] = []
    real = engine.TensorList
    monkeypatch.setattr(engine, "TensorList", lambda tensors: built.append(1) or real(tensors))
    params = make_params()
    for foreach, expected in ((None, False), (True, True)):
        built.clear()
        optimizer = steepest.Adam(params[:4], lr=0.01, foreach=foreach)
        run(optimizer, params, 1)
        assert bool(built) is expected


def test_adagrad_fills_each_groups_sum_with_that_groups_initial_value() -> None:
    # A deliberate difference from torch.optim.Adagrad (2.13), which fills every group's sum, an
    # added group's too, with the constructor's value and ignores the group's own.
    first, second, third = (torch.zeros(2, dtype=torch.float64) for _ in range(3))
    optimizer = steepest.Adagrad(
        [{"params": [first]}, {"params": [second], "initial_accumulator_value": 0.5}],
        initial_accumulator_value=0.1,
    )
    optimizer.add_param_group({"params": [third], "initial_accumulator_value": 2.0})
    for param in (first, second, third):
        param.grad = torch.full_like(param, 0.5)
    optimizer.step()
    for param, value in ((first, 0.1), (second, 0.5), (third, 2.0)):
        assert torch.equal(optimizer.state[param]["sum"], torch.full_like(param, value + 0.25))
        step = 0.01 * 0.5 / ((value + 0.25) ** 0.5 + 1e-10)  # lr g / (sqrt(sum) + eps)
        torch.testing.assert_close(param, torch.full_like(param, -step))
