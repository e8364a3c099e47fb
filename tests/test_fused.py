"""The fused path (``fused=True``): the rule compiled into one pass per tensor.

Anchor: the per-tensor reference path of the same optimizer. In float32, over 50 steps on
the shared mixed-shape problem (two groups, a scalar, a non-contiguous tensor, a parameter
without gradient), params and state agree to float32 rounding; two fused runs agree bit
for bit; state_dicts move between the paths; a learning rate or weight decay that changes
at every step never recompiles.

The gradients here are seeded noise that does not depend on the parameters: with a
gradient fed back from the parameters (the shared problem's ``sin(3 theta)``), a one-ulp
difference of a fused multiply-add grows with the trajectory's own sensitivity, which would
measure the problem, not the kernel.

The first param group of the shared problem is contiguous and the second holds a
non-contiguous tensor, so on the CPU the first takes PyTorch's own fused kernel where the rule
has one (Adam, AdamW, SGD, Adagrad) and the second the compiled rule: both are checked.

Compiling costs seconds per graph on a small CPU, so the full configuration table runs
under ``-m slow``; the default run covers the first configuration of every fusable rule.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.utils import counters

import steepest
from problem import FROZEN, clone_params, groups, make_params, max_relative_difference
from specs import SPECS, Spec
from steepest.engine import fused as fused_path

FUSABLE = [spec for spec in SPECS if spec.cls.supports_fused]
RTOL = 1e-6  # float32 rounding, accumulated over 50 steps


def relative_error(a: torch.Tensor, b: torch.Tensor, initial: torch.Tensor | None = None) -> float:
    """max |a - b| over the tensor's scale: the larger of max |b| and, for a parameter, its
    starting max |theta_0|. Float32 rounding is relative to the size of the numbers summed:
    a parameter that drifts from 1 towards 0 carries the rounding of the steps that moved it,
    which an entry-by-entry ratio would read as a large relative error."""
    a, b = a.detach().double(), b.detach().double()
    if not b.numel():
        return 0.0
    scale = b.abs().max()
    if initial is not None:
        scale = torch.maximum(scale, initial.detach().double().abs().max())
    return float((a - b).abs().max() / scale.clamp_min(1e-30))


def run(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], steps: int, start: int = 0):
    """``steps`` steps with seeded gradients that do not depend on the parameters."""
    for step in range(start, start + steps):
        for index, p in enumerate(params):
            if index != FROZEN:
                generator = torch.Generator().manual_seed(1000 * step + index)
                p.grad = torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.dtype)
        optimizer.step()


def _configs(all_of_them: bool) -> list:
    cases = []
    for spec in FUSABLE:
        for index, config in enumerate(spec.configs):
            marks = () if index == 0 or all_of_them else (pytest.mark.slow,)
            cases.append(pytest.param(spec, config, id=f"{spec.name}-{index}", marks=marks))
    return cases


def _pair(spec: Spec, config: dict, dtype=torch.float32):
    """A fused optimizer and a per-tensor one, on identical parameters."""
    fused_params, eager_params = make_params(dtype), make_params(dtype)
    fused = spec.cls(groups(fused_params, spec.group_override), **config, fused=True)
    eager = spec.cls(groups(eager_params, spec.group_override), **config, foreach=False)
    return fused, fused_params, eager, eager_params


def _assert_close(fused, fused_params, eager, eager_params, rtol=RTOL):
    initial = make_params(torch.float32)
    for index, (a, b) in enumerate(zip(fused_params, eager_params)):
        assert relative_error(a, b, initial[index]) <= rtol, f"param {index}"
        for key, value in eager.state.get(b, {}).items():
            ours = fused.state[a][key]
            assert ours.dtype == value.dtype and ours.shape == value.shape, key
            assert relative_error(ours, value) <= rtol, key


def spy_on_compiling(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The rules the fused path compiles from now on, in order (it still compiles them)."""
    compiled: list[object] = []
    real_runner = fused_path._compiled_runner
    monkeypatch.setattr(
        fused_path,
        "_compiled_runner",
        lambda rule, static: compiled.append(rule) or real_runner(rule, static),
    )
    return compiled


def test_every_elementwise_rule_is_fusable():
    names = {spec.cls.__name__ for spec in FUSABLE}
    assert {"SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "NAdam", "Lion"} <= names


@pytest.mark.parametrize(("spec", "config"), _configs(all_of_them=False))
def test_fused_equals_per_tensor_float32(spec: Spec, config: dict) -> None:
    fused, fused_params, eager, eager_params = _pair(spec, config)
    run(fused, fused_params, 50)
    run(eager, eager_params, 50)
    _assert_close(fused, fused_params, eager, eager_params)
    assert torch.equal(fused_params[FROZEN], make_params(torch.float32)[FROZEN])
    # the trajectory moved: agreement of two frozen runs would prove nothing
    assert max_relative_difference(fused_params[2], make_params(torch.float32)[2]) > 1e-3


@pytest.mark.parametrize(
    ("spec", "config"), [case for case in _configs(all_of_them=False) if not case.marks][:3]
)
def test_fused_runs_are_bit_identical(spec: Spec, config: dict) -> None:
    first, first_params, _, _ = _pair(spec, config)
    second, second_params, _, _ = _pair(spec, config)
    run(first, first_params, 20)
    run(second, second_params, 20)
    for a, b in zip(first_params, second_params):
        assert torch.equal(a, b)


@pytest.mark.parametrize("direction", ["fused_to_eager", "eager_to_fused"])
def test_state_dicts_move_between_paths(direction: str) -> None:
    spec = next(spec for spec in FUSABLE if spec.cls is steepest.Adam)
    config = {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True}
    fused, fused_params, eager, eager_params = _pair(spec, config)
    source, source_params = (fused, fused_params) if direction == "fused_to_eager" else (eager, eager_params)
    run(source, source_params, 10)
    target_params = clone_params(source_params)
    target_kwargs = {"foreach": False} if direction == "fused_to_eager" else {"fused": True}
    target = spec.cls(groups(target_params, spec.group_override), **config, **target_kwargs)
    target.load_state_dict(copy.deepcopy(source.state_dict()))
    run(source, source_params, 10, start=10)
    run(target, target_params, 10, start=10)
    for a, b, initial in zip(target_params, source_params, make_params(torch.float32)):
        assert relative_error(a, b, initial) <= RTOL


def test_changing_coefficients_never_recompile() -> None:
    params = make_params(torch.float32)
    schedule = steepest.schedules.warmup_cosine(0.05, warmup=5, total=40)
    optimizer = steepest.AdamW(
        groups(params, {"weight_decay": 0.3}), lr=schedule, betas=(0.8, 0.99), fused=True
    )
    run(optimizer, params, 2)
    graphs = counters["stats"]["unique_graphs"]
    run(optimizer, params, 20, start=2)
    optimizer.scale_lr(0.5)  # a back-off changes the rate again
    optimizer.param_groups[1]["weight_decay"] = 0.2
    run(optimizer, params, 5, start=22)
    assert counters["stats"]["unique_graphs"] == graphs


def test_fused_and_foreach_together_are_refused() -> None:
    with pytest.raises(ValueError, match="fused=True and foreach=True"):
        steepest.Adam(make_params()[:2], fused=True, foreach=True)
    with pytest.raises(TypeError, match="fused"):
        steepest.SGD(make_params()[:2], fused="yes")


def test_default_runs_ready_made_kernels_at_any_size_and_compiles_large_buckets_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compiled = spy_on_compiling(monkeypatch)
    found: list[bool] = []  # per fused call: whether a ready-made kernel covered the bucket
    real_native = fused_path.native_kernel

    def spy_native(*args, **kwargs):
        kernel = real_native(*args, **kwargs)
        found.append(kernel is not None)
        return kernel

    monkeypatch.setattr(fused_path, "native_kernel", spy_native)
    params = make_params(torch.float32)
    contiguous = params[:3]
    run(steepest.SGD(contiguous, lr=0.01, momentum=0.9), params, 2)
    assert found == [True, True] and compiled == []  # PyTorch's fused CPU SGD, even this small
    found.clear()
    run(steepest.SGD(params[:4], lr=0.01, momentum=0.9), params, 2)
    assert found == [False, False] and compiled == []  # a strided tensor: eager, not compiled
    found.clear()
    run(steepest.RMSprop(contiguous, lr=0.01), params, 2)
    assert found == [False, False] and compiled == []  # no ready-made RMSprop: eager
    monkeypatch.setattr(fused_path, "DEFAULT_FUSED_MIN_ELEMENTS", 1)
    run(steepest.RMSprop(contiguous, lr=0.01), params, 2)
    assert compiled  # a large bucket is worth compiling
    found.clear()
    compiled.clear()
    run(steepest.SGD(contiguous, lr=0.01, momentum=0.9, foreach=False), params, 2)
    assert found == [] and compiled == []  # an explicit eager choice is kept


def test_compile_failure_falls_back_or_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(rule, static):
        def runner(*args):
            raise RuntimeError("no C++ compiler")

        return runner

    monkeypatch.setattr(fused_path, "_compiled_runner", broken)
    monkeypatch.setattr(fused_path, "_unavailable", {})
    monkeypatch.setattr(fused_path, "DEFAULT_FUSED_MIN_ELEMENTS", 1)
    params, reference = make_params(torch.float32), make_params(torch.float32)
    with pytest.warns(RuntimeWarning, match="fused path is unavailable on cpu"):
        run(steepest.Adam(params[:4], lr=0.01), params, 3)
    run(steepest.Adam(reference[:4], lr=0.01, foreach=False), reference, 3)
    for a, b in zip(params, reference):
        assert torch.equal(a, b)  # the fallback is the eager path, nothing lost
    assert not fused_path.compile_available(torch.device("cpu"))
    with pytest.raises(RuntimeError, match="fused=True: compiling adam_update for cpu failed"):
        run(steepest.Adam(params[:4], lr=0.01, fused=True), params, 1)


def test_fused_false_forces_the_multi_tensor_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from steepest.engine import optimizer as engine

    built: list[int] = []
    real = engine.TensorList
    monkeypatch.setattr(engine, "TensorList", lambda tensors: built.append(1) or real(tensors))
    params = make_params(torch.float32)
    run(steepest.Adam(params[:4], lr=0.01, fused=False), params, 1)
    assert built  # multi-tensor even on the CPU, where the default is per tensor
    built.clear()
    run(steepest.Adam(params[:4], lr=0.01, fused=False, foreach=False), params, 1)
    assert not built  # an explicit foreach still decides


def test_cpu_takes_pytorchs_fused_kernel_for_contiguous_buckets(monkeypatch: pytest.MonkeyPatch) -> None:
    from steepest.rules.adam import adam_update

    params = make_params(torch.float32)
    optimizer = steepest.AdamW(groups(params, {}), lr=0.01, fused=True)
    run(optimizer, params, 1)  # fills the table
    used: list[int] = []
    real = fused_path.ATEN_CPU_KERNELS[adam_update]
    monkeypatch.setitem(
        fused_path.ATEN_CPU_KERNELS,
        adam_update,
        lambda params, *rest: used.append(len(params)) or real(params, *rest),
    )
    run(optimizer, params, 1, start=1)
    assert used == [2]  # the contiguous group (scalar, vector); the other one is compiled


# The compiled path in float64 against torch.optim, the anchor, for every rule with a twin: with
# weight decay, Nesterov, a 0-d parameter, and a non-contiguous one, which keeps PyTorch's own
# fused kernel off the bucket. torch.compile (2.13, CPU) once left a 0-d float64 parameter and its
# state untouched, and rounded every out-of-place `add(..., alpha=weight_decay)` to float32
# (differences of 1e-10 to 1e-8 after 10 steps where the eager paths agree to the last bit).
TWINS = [
    (steepest.SGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1}),
    (steepest.Adam, torch.optim.Adam, {"lr": 0.1, "weight_decay": 0.1, "amsgrad": True}),
    (steepest.AdamW, torch.optim.AdamW, {"lr": 0.1, "weight_decay": 0.1}),
    (steepest.NAdam, torch.optim.NAdam, {"lr": 0.1, "weight_decay": 0.1}),
    (
        steepest.RMSprop,
        torch.optim.RMSprop,
        {"lr": 0.01, "weight_decay": 0.1, "momentum": 0.5, "centered": True},
    ),
    (steepest.Adagrad, torch.optim.Adagrad, {"lr": 0.1, "weight_decay": 0.1}),
]


@pytest.mark.parametrize(("ours", "theirs", "options"), TWINS, ids=[twin[0].__name__ for twin in TWINS])
def test_the_compiled_path_in_float64_is_torch_optim_to_rounding(
    ours: type, theirs: type, options: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled = spy_on_compiling(monkeypatch)
    start = torch.Generator().manual_seed(0)
    initial = [
        torch.randn(shape, generator=start, dtype=torch.float64) for shape in [(), (3, 4), (5,), (6, 4)]
    ]
    initial[3] = initial[3].t()  # strided
    mine = [tensor.clone().requires_grad_() for tensor in initial]
    anchor = [tensor.clone().requires_grad_() for tensor in initial]
    optimizer, reference = ours(mine, fused=True, **options), theirs(anchor, **options)
    noise = torch.Generator().manual_seed(1)
    for _ in range(10):
        for a, b in zip(mine, anchor):
            a.grad = torch.randn(a.shape, generator=noise, dtype=torch.float64)
            b.grad = a.grad.clone()
        optimizer.step()
        reference.step()
    assert compiled  # the bucket ran compiled, not on a ready-made kernel
    for index, (a, b) in enumerate(zip(mine, anchor)):
        assert not torch.equal(a, initial[index]), f"param {index} never moved"
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=f"param {index}")
        for key, value in reference.state[b].items():
            if key != "step":
                torch.testing.assert_close(optimizer.state[a][key], value, rtol=1e-12, atol=1e-14, msg=key)
