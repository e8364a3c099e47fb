"""Low-precision state (``state_dtype=torch.bfloat16``) and its stochastic rounding.

Anchors: the float32-state run of the same optimizer (closed form for a decaying moment,
and the same trajectory to bfloat16 resolution), and round-to-nearest, which provably stalls
an exponential moving average whose per-step change is below half a bfloat16 ulp.
"""

from __future__ import annotations

import io

import pytest
import torch

import steepest
from problem import clone_params, groups, make_params, run
from specs import SPECS
from steepest.engine.precision import random_bits, stochastic_round_

BF16 = torch.bfloat16


# -- the rounding itself ---------------------------------------------------------------
def test_stochastic_rounding_is_unbiased():
    value = torch.full((100_000,), 1.0 + 2**-10)  # an eighth of the way from 1.0 to the next bfloat16
    rounded = stochastic_round_(torch.empty(100_000, dtype=BF16), value, seed=3)
    assert set(rounded.float().unique().tolist()) == {1.0, 1.0078125}
    assert abs(float(rounded.float().mean()) - float(value[0])) < 2e-5
    negative = stochastic_round_(torch.empty(100_000, dtype=BF16), -value, seed=4)
    assert abs(float(negative.float().mean()) + float(value[0])) < 2e-5


def test_stochastic_rounding_keeps_exact_values_and_specials():
    value = torch.tensor([0.0, -0.0, 3.0, -2.5, float("inf"), float("-inf"), float("nan")])
    rounded = stochastic_round_(torch.empty(7, dtype=BF16), value, seed=1).float()
    assert torch.equal(rounded[:6], value[:6])
    assert torch.signbit(rounded[1]) and torch.isnan(rounded[6])


def test_random_bits_depend_on_seed_and_position_only():
    shape = torch.Size([64, 3])
    first, again = random_bits(shape, 5, torch.device("cpu")), random_bits(shape, 5, torch.device("cpu"))
    assert torch.equal(first, again) and int(first.min()) >= 0 and int(first.max()) < 2**16
    assert not torch.equal(first, random_bits(shape, 6, torch.device("cpu")))
    assert len(first.unique()) > 150  # well spread, not a constant


def test_compiled_rounding_equals_eager():
    value = torch.randn(10_000)
    eager = stochastic_round_(torch.empty(10_000, dtype=BF16), value, torch.tensor(7))
    compiled = torch.compile(stochastic_round_, fullgraph=True)(
        torch.empty(10_000, dtype=BF16), value, torch.tensor(7)
    )
    assert torch.equal(eager, compiled)


# -- optimizers with bfloat16 state ----------------------------------------------------------
FUSABLE = [spec for spec in SPECS if spec.cls.supports_fused]


@pytest.mark.parametrize("spec", FUSABLE, ids=str)
def test_bf16_state_halves_memory_and_follows_float32_state(spec):
    config = spec.configs[-1]
    wide_params, narrow_params = make_params(torch.float32), make_params(torch.float32)
    wide = spec.cls(groups(wide_params, spec.group_override), **config, foreach=False)
    narrow = spec.cls(groups(narrow_params, spec.group_override), **config, state_dtype=BF16)
    run(wide, wide_params, 30)
    run(narrow, narrow_params, 30)
    for a, b in zip(narrow_params, wide_params):
        assert a.dtype == torch.float32
        scale = float(b.detach().abs().max()) or 1.0
        assert float((a - b).detach().abs().max()) <= 0.02 * scale  # bfloat16 resolution, 30 steps
        for key, value in wide.state.get(b, {}).items():
            ours = narrow.state[a][key]
            if key in ("step", "mu_product"):  # CPU scalar state keeps torch's scalar dtype
                assert ours.dtype == value.dtype
            else:  # a buffer shaped like the parameter: half the bytes
                assert ours.dtype == BF16 and ours.shape == value.shape


def test_moving_average_decays_with_stochastic_rounding_where_nearest_stalls():
    """v <- 0.999 v, in bfloat16: a 0.1% decay is below half an ulp (0.2%), so round-to-nearest
    never moves v; stochastic rounding follows 0.999^t on average."""
    param = torch.zeros(20_000, requires_grad=True)
    optimizer = steepest.Adam([param], lr=0.0, betas=(0.9, 0.999), state_dtype=BF16)
    param.grad = torch.ones(20_000)
    optimizer.step()  # v = 0.001
    param.grad = torch.zeros(20_000)
    for _ in range(300):
        optimizer.step()
    expected = 0.001 * 0.999**300
    got = float(optimizer.state[param]["exp_avg_sq"].float().mean())
    assert abs(got - expected) < 0.02 * expected
    nearest = torch.tensor(0.001, dtype=BF16)
    for _ in range(300):
        nearest = (nearest.float() * 0.999).to(BF16)
    assert abs(float(nearest) - expected) > 0.2 * expected  # the stall the rounding avoids


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
def test_bf16_state_resumes_bit_identically(fused):
    spec = next(spec for spec in FUSABLE if spec.cls is steepest.AdamW)
    config = {"lr": 0.01, "weight_decay": 0.1}
    params = make_params(torch.float32)
    optimizer = spec.cls(groups(params, spec.group_override), **config, state_dtype=BF16, fused=fused)
    run(optimizer, params, 7)
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "params": [p.detach() for p in params]}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed_params = clone_params(checkpoint["params"])
    resumed = spec.cls(groups(resumed_params, spec.group_override), **config, state_dtype=BF16, fused=fused)
    resumed.load_state_dict(checkpoint["optimizer"])
    assert resumed.state[resumed_params[0]]["exp_avg"].dtype == BF16  # not left widened by torch
    run(optimizer, params, 8, start=7)
    run(resumed, resumed_params, 8, start=7)
    for a, b in zip(resumed_params, params):
        assert torch.equal(a, b)


def test_bf16_state_fused_equals_eager_to_bf16_resolution():
    spec = next(spec for spec in FUSABLE if spec.cls is steepest.Adam)
    fused_params, eager_params = make_params(torch.float32), make_params(torch.float32)
    fused = spec.cls(groups(fused_params, spec.group_override), lr=0.01, state_dtype=BF16, fused=True)
    eager = spec.cls(groups(eager_params, spec.group_override), lr=0.01, state_dtype=BF16, foreach=False)
    run(fused, fused_params, 20)
    run(eager, eager_params, 20)
    for a, b in zip(fused_params, eager_params):
        assert float((a - b).abs().max()) <= 1e-2 * (float(b.detach().abs().max()) or 1.0)


def test_bad_state_dtype_is_refused():
    with pytest.raises(TypeError, match="state_dtype.*torch.int8"):
        steepest.Adam(make_params()[:2], state_dtype=torch.int8)
    complex_param = torch.zeros(3, dtype=torch.complex64, requires_grad=True)
    complex_param.grad = torch.ones(3, dtype=torch.complex64)
    optimizer = steepest.Adam([complex_param], state_dtype=BF16)
    with pytest.raises(ValueError, match="state_dtype=torch.bfloat16 needs real parameters"):
        optimizer.step()
