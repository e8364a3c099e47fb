"""Tests of steepest.clipping: torch.nn.utils as the oracle, and a per-row loop for AGC."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from steepest import clipping

NORM_TYPES = [1.0, 2.0, 3.5, math.inf]


def make_params(seed: int = 0, scale: float = 1.0) -> list[nn.Parameter]:
    """Parameters of several shapes and two dtypes; one has no grad."""
    generator = torch.Generator().manual_seed(seed)
    shapes_and_dtypes = [
        ((5, 3), torch.float64),
        ((7,), torch.float64),
        ((), torch.float64),
        ((2, 3, 4), torch.float32),
        ((4,), torch.float64),  # grad left None
        ((6, 2), torch.float32),
        ((3, 2, 3, 3), torch.float64),
    ]
    params = []
    for index, (shape, dtype) in enumerate(shapes_and_dtypes):
        p = nn.Parameter(torch.randn(shape, generator=generator, dtype=dtype))
        if index != 4:
            p.grad = scale * torch.randn(shape, generator=generator, dtype=dtype)
        params.append(p)
    return params


def clone_params(params: list[nn.Parameter]) -> list[nn.Parameter]:
    clones = []
    for p in params:
        q = nn.Parameter(p.detach().clone())
        q.grad = None if p.grad is None else p.grad.clone()
        clones.append(q)
    return clones


def assert_grads_equal(ours: list[nn.Parameter], theirs: list[nn.Parameter]) -> None:
    for p, q in zip(ours, theirs, strict=True):
        if q.grad is None:
            assert p.grad is None
            continue
        tolerance = 1e-12 if q.grad.dtype == torch.float64 else 1e-6
        torch.testing.assert_close(p.grad, q.grad, rtol=tolerance, atol=tolerance, equal_nan=True)


# ---------------------------------------------------------------------------------------------
# global norm: torch.nn.utils.clip_grad_norm_ is the oracle
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm_type", NORM_TYPES)
@pytest.mark.parametrize("max_norm", [0.3, 1e6])  # clipping active, and a no-op
@pytest.mark.parametrize("foreach", [None, True, False])
def test_clip_grad_norm_matches_torch(norm_type: float, max_norm: float, foreach: bool | None):
    ours, theirs = make_params(), make_params()
    total = clipping.clip_grad_norm_(ours, max_norm, norm_type, foreach=foreach)
    expected = nn.utils.clip_grad_norm_(theirs, max_norm, norm_type, foreach=foreach)
    assert total.dtype == expected.dtype
    torch.testing.assert_close(total, expected, rtol=1e-12, atol=1e-12)
    assert_grads_equal(ours, theirs)
    if max_norm < 1:  # the oracle did clip, so the comparison is not vacuous
        assert not torch.equal(ours[0].grad, make_params()[0].grad)
    else:
        assert torch.equal(ours[0].grad, make_params()[0].grad)


@pytest.mark.parametrize("norm_type", NORM_TYPES)
def test_global_norm_is_norm_of_concatenation(norm_type: float):
    grads = [p.grad.double() for p in make_params() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    expected = torch.linalg.vector_norm(flat, norm_type)
    torch.testing.assert_close(clipping.global_norm(grads, norm_type), expected, rtol=1e-12,
                               atol=0)


def test_clip_grad_norm_accepts_single_tensor_and_generator():
    ours, theirs = make_params(), make_params()
    total = clipping.clip_grad_norm_(ours[0], 0.5)
    expected = nn.utils.clip_grad_norm_(theirs[0], 0.5)
    torch.testing.assert_close(total, expected, rtol=1e-12, atol=0)
    assert_grads_equal(ours[:1], theirs[:1])
    total = clipping.clip_grad_norm_((p for p in ours[1:]), 0.5)
    expected = nn.utils.clip_grad_norm_((p for p in theirs[1:]), 0.5)
    torch.testing.assert_close(total, expected, rtol=1e-12, atol=0)
    assert_grads_equal(ours, theirs)


def test_clip_grad_norm_empty_and_all_none():
    assert torch.equal(clipping.clip_grad_norm_([], 1.0), nn.utils.clip_grad_norm_([], 1.0))
    p = nn.Parameter(torch.ones(3))
    assert clipping.clip_grad_norm_([p], 1.0).item() == 0.0
    assert p.grad is None


def test_scale_by_max_norm_returns_the_clamped_coefficient():
    grads = [torch.tensor([3.0, 4.0], dtype=torch.float64),
             torch.tensor([12.0], dtype=torch.float64)]
    total = clipping.global_norm(grads)
    assert total.item() == 13.0
    coefficient = clipping.scale_by_max_norm_(grads, 2.0, total)
    assert coefficient.item() == pytest.approx(2.0 / (13.0 + 1e-6), rel=1e-15)
    torch.testing.assert_close(clipping.global_norm(grads).item(), 2.0, rtol=1e-6, atol=0)
    # below the threshold the coefficient is exactly 1 and the grads are untouched
    before = [g.clone() for g in grads]
    assert clipping.scale_by_max_norm_(grads, 100.0, clipping.global_norm(grads)).item() == 1.0
    assert all(torch.equal(g, b) for g, b in zip(grads, before, strict=True))


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=12),
    max_norm=st.floats(1e-3, 1e3),
    norm_type=st.sampled_from(NORM_TYPES),
)
def test_clipped_norm_is_min_of_norm_and_max_norm(values, max_norm, norm_type):
    """After clipping the norm is norm * min(1, max_norm / (norm + 1e-6)) <= max_norm."""
    p = nn.Parameter(torch.zeros(len(values), dtype=torch.float64))
    p.grad = torch.tensor(values, dtype=torch.float64)
    before = p.grad.clone()
    total = clipping.clip_grad_norm_([p], max_norm, norm_type).item()
    after = torch.linalg.vector_norm(p.grad, norm_type).item()
    coefficient = min(1.0, max_norm / (total + 1e-6))
    assert after <= max_norm * (1 + 1e-12)
    assert after == pytest.approx(total * coefficient, rel=1e-12, abs=1e-300)
    # the same direction: the original gradient times the coefficient
    torch.testing.assert_close(p.grad, before * coefficient, rtol=1e-12, atol=1e-300)


def test_error_if_nonfinite():
    params = make_params()
    params[0].grad[0, 0] = math.inf
    with pytest.raises(RuntimeError, match="non-finite"):
        clipping.clip_grad_norm_(params, 1.0, error_if_nonfinite=True)
    with pytest.raises(RuntimeError, match="non-finite"):
        nn.utils.clip_grad_norm_(clone_params(params), 1.0, error_if_nonfinite=True)
    # without the check, the result is torch's (grads scaled by the non-finite norm)
    ours, theirs = clone_params(params), clone_params(params)
    total = clipping.clip_grad_norm_(ours, 1.0)
    expected = nn.utils.clip_grad_norm_(theirs, 1.0)
    assert math.isinf(total.item()) and math.isinf(expected.item())
    assert_grads_equal(ours, theirs)


def test_foreach_true_on_unsupported_device_raises():
    p = nn.Parameter(torch.empty(3, device="meta"))
    p.grad = torch.empty(3, device="meta")
    with pytest.raises(RuntimeError, match="foreach=True"):
        clipping.clip_grad_norm_([p], 1.0, foreach=True)
    with pytest.raises(RuntimeError, match="foreach=True"):
        clipping.clip_grad_value_([p], 1.0, foreach=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("norm_type", NORM_TYPES)
def test_clip_grad_norm_matches_torch_across_devices(norm_type: float):
    ours, theirs = make_params(), make_params()
    for params in (ours, theirs):
        for p in params[::2]:
            p.data = p.data.cuda()
            if p.grad is not None:
                p.grad = p.grad.cuda()
    total = clipping.clip_grad_norm_(ours, 0.3, norm_type)
    expected = nn.utils.clip_grad_norm_(theirs, 0.3, norm_type)
    assert total.device == expected.device
    torch.testing.assert_close(total, expected, rtol=1e-12, atol=1e-12)
    assert_grads_equal(ours, theirs)


# ---------------------------------------------------------------------------------------------
# value clipping
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("foreach", [None, True, False])
def test_clip_grad_value_matches_torch(foreach: bool | None):
    ours, theirs = make_params(scale=3.0), make_params(scale=3.0)
    assert clipping.clip_grad_value_(ours, 1.5, foreach=foreach) is None
    nn.utils.clip_grad_value_(theirs, 1.5, foreach=foreach)
    assert_grads_equal(ours, theirs)
    assert max(p.grad.abs().max().item() for p in ours if p.grad is not None) == 1.5


# ---------------------------------------------------------------------------------------------
# per-tensor norm clipping: torch's global clipping of each parameter alone is the oracle
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm_type", NORM_TYPES)
@pytest.mark.parametrize("foreach", [None, False])
def test_clip_grad_norm_per_tensor_matches_torch_one_at_a_time(norm_type, foreach):
    ours, theirs = make_params(), make_params()
    max_norm = 1.0
    norms = clipping.clip_grad_norm_per_tensor_(ours, max_norm, norm_type, foreach=foreach)
    expected = [nn.utils.clip_grad_norm_([p], max_norm, norm_type) for p in theirs
                if p.grad is not None]
    assert len(norms) == len(expected) == 6
    for norm, reference in zip(norms, expected, strict=True):
        torch.testing.assert_close(norm, reference, rtol=1e-12, atol=0)
    assert_grads_equal(ours, theirs)
    # some tensors were clipped and some were not, so both branches were compared
    assert min(n.item() for n in norms) < max_norm < max(n.item() for n in norms)


# ---------------------------------------------------------------------------------------------
# adaptive gradient clipping: a readable per-unit loop is the oracle
# ---------------------------------------------------------------------------------------------


def agc_reference(params: list[nn.Parameter], clip: float, eps: float) -> list[torch.Tensor]:
    """AGC unit by unit, in Python loops: Brock et al. 2021, timm's adaptive_clip_grad."""
    clipped = []
    for p in params:
        w, g = p.detach(), p.grad.clone()
        units = range(w.shape[0]) if w.ndim >= 2 else [None]
        for i in units:
            w_i = w if i is None else w[i]
            g_i = g if i is None else g[i]
            weight_norm = max(w_i.norm().item(), eps)
            grad_norm = g_i.norm().item()
            max_norm = clip * weight_norm
            if grad_norm >= max_norm:
                g_i.mul_(max_norm / max(grad_norm, 1e-6))
        clipped.append(g)
    return clipped


def agc_params() -> list[nn.Parameter]:
    generator = torch.Generator().manual_seed(1)
    shapes = [(6, 4), (5, 3, 3, 3), (6,), (), (3, 7)]
    params = []
    for shape in shapes:
        p = nn.Parameter(torch.randn(shape, generator=generator, dtype=torch.float64))
        # unit-dependent gradient scales, so that some units are clipped and others are not
        scale = torch.logspace(-3, 0, shape[0], dtype=torch.float64) if len(shape) >= 2 else 0.05
        if len(shape) >= 2:
            scale = scale.reshape(-1, *([1] * (len(shape) - 1)))
        p.grad = scale * torch.randn(shape, generator=generator, dtype=torch.float64)
        params.append(p)
    with torch.no_grad():
        params[-1][1].zero_()  # a zero unit: its weight norm is floored at eps
    return params


@pytest.mark.parametrize("clip", [0.01, 0.1])
def test_agc_matches_per_unit_loop(clip: float):
    params = agc_params()
    expected = agc_reference(params, clip, eps=1e-3)
    before = [p.grad.clone() for p in params]
    coefficients = clipping.clip_grad_agc_(params, clipping=clip, eps=1e-3)
    for p, reference in zip(params, expected, strict=True):
        torch.testing.assert_close(p.grad, reference, rtol=1e-12, atol=1e-15)
    clipped = torch.cat([(c < 1).reshape(-1) for c in coefficients])
    assert clipped.any() and not clipped.all()  # both branches exercised
    # the coefficients are what was applied
    for p, g, c in zip(params, before, coefficients, strict=True):
        torch.testing.assert_close(p.grad, g * c, rtol=1e-12, atol=0)


def test_agc_units_are_rows():
    w = nn.Parameter(torch.tensor([[1.0, 0.0], [0.0, 10.0]], dtype=torch.float64))
    w.grad = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    clipping.clip_grad_agc_([w], clipping=0.5)
    # row 0: ratio 1 / 1 > 0.5 -> scaled to norm 0.5; row 1: ratio 1 / 10 < 0.5 -> untouched
    torch.testing.assert_close(w.grad, torch.tensor([[0.0, 0.5], [1.0, 0.0]], dtype=torch.float64))


def test_agc_skips_params_without_grad():
    p, q = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2, 2))
    q.grad = torch.full((2, 2), 10.0)
    coefficients = clipping.clip_grad_agc_([p, q], clipping=0.01)
    assert p.grad is None and len(coefficients) == 1 and coefficients[0].shape == (2, 1)


def test_unitwise_norm_shapes():
    assert clipping.unitwise_norm(torch.ones(3, 4, 5)).shape == (3, 1, 1)
    assert clipping.unitwise_norm(torch.ones(3)).shape == ()
    torch.testing.assert_close(clipping.unitwise_norm(torch.ones(3, 4, 5)), torch.full((3, 1, 1),
                               math.sqrt(20)))


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------


def one_param() -> list[nn.Parameter]:
    p = nn.Parameter(torch.ones(2))
    p.grad = torch.ones(2)
    return [p]


@pytest.mark.parametrize("max_norm", [0.0, -1.0, math.nan, math.inf])
def test_bad_max_norm(max_norm: float):
    with pytest.raises(ValueError, match=rf"max_norm.*{max_norm}"):
        clipping.clip_grad_norm_(one_param(), max_norm)
    with pytest.raises(ValueError, match=rf"max_norm.*{max_norm}"):
        clipping.clip_grad_norm_per_tensor_(one_param(), max_norm)


@pytest.mark.parametrize("norm_type", [0.0, -2.0, math.nan])
def test_bad_norm_type(norm_type: float):
    with pytest.raises(ValueError, match=rf"norm_type.*{norm_type}"):
        clipping.clip_grad_norm_(one_param(), 1.0, norm_type)
    with pytest.raises(ValueError, match=rf"norm_type.*{norm_type}"):
        clipping.clip_grad_norm_per_tensor_(one_param(), 1.0, norm_type)
    with pytest.raises(ValueError, match=rf"norm_type.*{norm_type}"):
        clipping.clip_grad_agc_(one_param(), norm_type=norm_type)


@pytest.mark.parametrize("clip_value", [0.0, -0.5, math.nan])
def test_bad_clip_value(clip_value: float):
    with pytest.raises(ValueError, match=rf"clip_value.*{clip_value}"):
        clipping.clip_grad_value_(one_param(), clip_value)


def test_bad_agc_arguments():
    with pytest.raises(ValueError, match=r"clipping.*-0\.1"):
        clipping.clip_grad_agc_(one_param(), clipping=-0.1)
    with pytest.raises(ValueError, match=r"eps.*0\.0"):
        clipping.clip_grad_agc_(one_param(), eps=0.0)


def test_bad_input_leaves_grads_alone():
    params = one_param()
    with pytest.raises(ValueError):
        clipping.clip_grad_norm_(params, -1.0)
    assert torch.equal(params[0].grad, torch.ones(2))
