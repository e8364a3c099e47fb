"""Tests of steepest.init: torch.nn.init with the same seed is the oracle for initialize."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from steepest.init import InitReport, init_report, initialize, initialized_layers


def mixed_model() -> nn.Module:
    """Every kind of layer initialize touches, nested, plus modules it must leave alone."""
    return nn.Sequential(
        nn.Conv1d(2, 3, 3),
        nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4)),
        nn.Conv3d(2, 2, 2),
        nn.ConvTranspose2d(4, 3, 2),
        nn.Embedding(5, 3),
        nn.Linear(7, 5),
        nn.ReLU(),
        nn.Linear(5, 2),
    )


def torch_reference(init: Callable[..., torch.Tensor], **kwargs) -> nn.Module:
    """mixed_model() initialized by hand with torch.nn.init, after torch.manual_seed(0)."""
    model = mixed_model()
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.ConvTranspose2d):
            init(module.weight, **kwargs)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


SCHEME_ORACLES = [
    ("xavier", "uniform", nn.init.xavier_uniform_, {}),
    ("xavier", "normal", nn.init.xavier_normal_, {}),
    ("he", "uniform", nn.init.kaiming_uniform_, {"nonlinearity": "relu"}),
    ("he", "normal", nn.init.kaiming_normal_, {"nonlinearity": "relu"}),
    ("lecun", "uniform", nn.init.kaiming_uniform_, {"nonlinearity": "linear"}),
    ("lecun", "normal", nn.init.kaiming_normal_, {"nonlinearity": "linear"}),
    ("orthogonal", "uniform", nn.init.orthogonal_, {}),
]


@pytest.mark.parametrize(("scheme", "distribution", "init", "kwargs"), SCHEME_ORACLES)
def test_initialize_equals_torch_nn_init_with_same_seed(scheme, distribution, init, kwargs):
    expected = torch_reference(init, **kwargs)
    model = mixed_model()
    untouched = {k: v.clone() for k, v in model.state_dict().items()
                 if k.startswith(("1.1.", "4."))}  # BatchNorm2d and Embedding
    torch.manual_seed(0)
    summary = initialize(model, scheme, distribution)
    for (name, ours), (_, theirs) in zip(model.state_dict().items(),
                                         expected.state_dict().items(), strict=True):
        if name in untouched:
            assert torch.equal(ours, untouched[name]), name
        else:
            assert torch.equal(ours, theirs), name
    assert [r.name for r in summary] == ["0", "1.0", "2", "3", "5", "7"]
    assert {r.scheme for r in summary} == {scheme}


def test_biases_are_zero():
    model = mixed_model()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(3.0)
    initialize(model, "he", generator=0)
    biases = [m.bias for _, m in initialized_layers(model) if m.bias is not None]
    assert len(biases) == 5
    assert all(torch.count_nonzero(b) == 0 for b in biases)


def test_generator_argument_equals_seeded_torch_calls():
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4))
    generator = torch.Generator().manual_seed(7)
    initialize(model, "xavier", "normal", generator=generator)
    reference = torch.Generator().manual_seed(7)
    w0 = nn.init.xavier_normal_(torch.empty(5, 6), generator=reference)
    w2 = nn.init.xavier_normal_(torch.empty(4, 5), generator=reference)
    assert torch.equal(model[0].weight, w0) and torch.equal(model[2].weight, w2)


def test_int_seed_is_deterministic_and_leaves_global_rng_alone():
    models = [nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)) for _ in range(3)]

    def weights(model: nn.Module, seed: int) -> list[torch.Tensor]:
        initialize(model, "auto", generator=seed)
        return [p.detach().clone() for p in model.parameters()]

    state = torch.get_rng_state()
    first, again, other = weights(models[0], 3), weights(models[1], 3), weights(models[2], 4)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])


@pytest.mark.parametrize("distribution", ["uniform", "normal"])
@pytest.mark.parametrize(
    ("scheme", "fan_in", "fan_out", "expected_std"),
    [
        ("he", 512, 512, math.sqrt(2 / 512)),
        ("lecun", 400, 300, math.sqrt(1 / 400)),
        ("xavier", 400, 300, math.sqrt(2 / 700)),
    ],
)
def test_weight_std_matches_the_scheme(scheme, fan_in, fan_out, expected_std, distribution):
    layer = nn.Linear(fan_in, fan_out)
    initialize(layer, scheme, distribution, generator=0)
    assert layer.weight.std().item() == pytest.approx(expected_std, rel=0.05)
    assert abs(layer.weight.mean().item()) < 0.05 * expected_std


def test_orthogonal_rows_are_orthonormal():
    layer = nn.Linear(64, 32)
    initialize(layer, "orthogonal", generator=0)
    w = layer.weight.detach()
    torch.testing.assert_close(w @ w.T, torch.eye(32), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# "auto"
# ---------------------------------------------------------------------------------------------


def auto_record(*modules: nn.Module):
    model = nn.Sequential(*modules)
    return initialize(model, "auto", generator=0)[0], model


@pytest.mark.parametrize(
    ("activation", "scheme", "gain"),
    [
        (nn.ReLU(), "he", math.sqrt(2)),
        (nn.LeakyReLU(0.2), "he", math.sqrt(2 / (1 + 0.2**2))),
        (nn.GELU(), "he", math.sqrt(2)),
        (nn.SiLU(), "he", math.sqrt(2)),
        (nn.Tanh(), "xavier", 5 / 3),
        (nn.Sigmoid(), "xavier", 1.0),
        (nn.SELU(), "lecun", 1.0),
        (nn.Softmax(dim=-1), "xavier", 1.0),  # not an activation auto knows: linear
    ],
)
def test_auto_picks_from_the_following_activation(activation, scheme, gain):
    record, _ = auto_record(nn.Linear(16, 16), activation)
    assert (record.scheme, record.name) == (scheme, "0")
    assert record.gain == pytest.approx(gain, rel=1e-12)
    assert type(activation).__name__ in record.reason


@pytest.mark.parametrize(
    ("activation", "oracle"),
    [
        (nn.ReLU(), lambda w, g: nn.init.kaiming_uniform_(w, nonlinearity="relu", generator=g)),
        (nn.LeakyReLU(0.1), lambda w, g: nn.init.kaiming_uniform_(w, a=0.1, generator=g)),
        (nn.Tanh(), lambda w, g: nn.init.xavier_uniform_(
            w, gain=nn.init.calculate_gain("tanh"), generator=g)),
        (nn.SELU(), lambda w, g: nn.init.kaiming_uniform_(w, nonlinearity="linear", generator=g)),
    ],
)
def test_auto_weights_equal_the_torch_call_it_names(activation, oracle):
    _, model = auto_record(nn.Linear(9, 7), activation)
    expected = oracle(torch.empty(7, 9), torch.Generator().manual_seed(0))
    assert torch.equal(model[0].weight, expected)


def test_auto_looks_through_norm_pooling_dropout_flatten():
    record, _ = auto_record(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.MaxPool2d(2),
                            nn.Dropout(0.1), nn.Flatten(), nn.ReLU())
    assert record.scheme == "he"


def test_auto_stops_at_the_next_layer():
    summary = initialize(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Tanh()), "auto")
    assert [(r.scheme, r.nonlinearity) for r in summary] == [("xavier", "linear"),
                                                               ("xavier", "tanh")]
    assert "no activation" in summary[0].reason


def test_auto_crosses_nested_sequential_boundaries():
    model = nn.Sequential(nn.Sequential(nn.Linear(4, 4)), nn.Sequential(nn.ReLU()))
    assert initialize(model, "auto")[0].scheme == "he"


def test_auto_outside_sequential_falls_back_to_xavier():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.act = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.fc(x))

    (record,) = initialize(Block(), "auto")
    assert (record.name, record.scheme, record.gain) == ("fc", "xavier", 1.0)
    assert "not inside an nn.Sequential" in record.reason


def test_summary_str_is_a_table():
    text = str(initialize(nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1)), "auto"))
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["layer", "type", "scheme"]
    assert lines[1].split()[:3] == ["0", "Linear", "he"] and "1.414" in lines[1]
    assert lines[2].split()[:3] == ["2", "Linear", "xavier"]


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------


def test_bad_arguments():
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="scheme.*'glorot'"):
        initialize(model, "glorot")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="distribution.*'gaussian'"):
        initialize(model, "he", "gaussian")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="model.*dict"):
        initialize({"w": torch.ones(2)}, "he")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="generator.*'seed'"):
        initialize(model, "he", generator="seed")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="model.*Tensor"):
        init_report(torch.ones(2), torch.ones(2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no Linear/Conv layer"):
        init_report(nn.ReLU(), torch.ones(2))


def test_lazy_layer_is_refused_until_materialized():
    model = nn.Sequential(nn.LazyLinear(3), nn.ReLU())
    with pytest.raises(ValueError, match="lazy"):
        initialize(model, "he")
    model(torch.ones(2, 5))
    assert initialize(model, "auto")[0].scheme == "he"


# ---------------------------------------------------------------------------------------------
# init_report
# ---------------------------------------------------------------------------------------------


def deep_net(activation: type[nn.Module], depth: int = 8, width: int = 32) -> nn.Sequential:
    blocks = [nn.Sequential(nn.Linear(width, width), activation()) for _ in range(depth)]
    return nn.Sequential(*blocks, nn.Linear(width, 4))


def batch(n: int = 64, width: int = 32) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("activation", [nn.Tanh, nn.ReLU])
def test_report_well_initialized_net_is_ok(activation):
    model = deep_net(activation)
    initialize(model, "auto", generator=0)
    report = init_report(model, batch())
    assert report.ok, str(report)
    assert len(report.layers) == 9 and report.vanishing == [] and report.exploding == []


@pytest.mark.parametrize("activation", [nn.Tanh, nn.ReLU])
def test_report_flags_tiny_weights_as_vanishing(activation):
    model = deep_net(activation)
    initialize(model, "auto", generator=0)
    with torch.no_grad():
        for _, layer in initialized_layers(model):
            layer.weight.mul_(1e-3)
    report = init_report(model, batch())
    assert not report.ok
    assert report.vanishing[:3] == ["0.0", "1.0", "2.0"]
    assert report.layers[1].activation_ratio < 1e-2
    assert "vanishing" in str(report)


def test_report_flags_large_weights_as_exploding():
    model = deep_net(nn.ReLU)
    initialize(model, "he", generator=0)
    with torch.no_grad():
        for _, layer in initialized_layers(model):
            layer.weight.mul_(3.0)
    report = init_report(model, batch())
    assert "8" in report.exploding and "0.0" not in report.exploding
    assert report.layers[-1].activation_ratio > 1e2


def test_report_flags_vanishing_gradients_of_deep_sigmoid_net():
    """Activations are fine in a deep sigmoid net; its early layers' gradients are not."""
    model = deep_net(nn.Sigmoid, depth=10)
    initialize(model, "auto", generator=0)
    report = init_report(model, batch(), nn.CrossEntropyLoss(),
                         torch.randint(0, 4, (64,), generator=torch.Generator().manual_seed(0)))
    first = report.layers[0]
    assert first.activation_ratio > 1e-2 and first.gradient_ratio < 1e-2
    assert first.status == "vanishing" and "gradient ratio" in first.reason
    assert report.layers[-1].status == "ok" and report.layers[-1].gradient_ratio == 1.0


def test_report_leaves_the_model_as_it_was():
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    initialize(model, "auto", generator=0)
    model.eval()
    model[3].train()  # a mixed mode must come back as it was
    model[0].weight.grad = torch.full_like(model[0].weight, 7.0)  # an existing grad is kept
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    inputs = torch.randn(5, 2, 6, 6)
    rng = torch.get_rng_state()  # dropout draws from it during the pass, and must give it back

    report = init_report(model, inputs, nn.CrossEntropyLoss(), torch.tensor([0, 1, 2, 0, 1]))

    assert [s.name for s in report.layers] == ["0", "5"]
    assert all(s.gradient_std is not None and s.gradient_std > 0 for s in report.layers)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key  # parameters and BatchNorm running stats
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(model[0].weight.grad, torch.full_like(model[0].weight, 7.0))
    assert model[5].weight.grad is None
    assert torch.equal(torch.get_rng_state(), rng)


def test_report_is_deterministic_and_default_loss_needs_a_tensor_output():
    model = deep_net(nn.Tanh, depth=3)
    initialize(model, "auto", generator=0)
    assert init_report(model, batch()).layers == init_report(model, batch()).layers

    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(32, 2)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y = self.fc(x)
            return y, -y

    with pytest.raises(TypeError, match="loss_fn"):
        init_report(TwoHeads(), batch())
    report = init_report(TwoHeads(), batch(), loss_fn=lambda out: out[0].pow(2).mean())
    assert isinstance(report, InitReport) and report.layers[0].name == "fc"


def test_report_on_integer_input_measures_against_the_first_layer():
    model = nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4))
    initialize(model, "auto", generator=0)
    tokens = torch.randint(0, 50, (8, 5), generator=torch.Generator().manual_seed(0))
    report = init_report(model, tokens)  # the token ids' std (about 14) is not a scale
    assert report.ok, str(report)
    assert report.layers[0].activation_ratio == 1.0
    assert report.reference_std == report.layers[0].activation_std


def test_report_refuses_a_model_whose_layers_do_not_run():
    class Skips(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unused = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    with pytest.raises(ValueError, match="ran"):
        init_report(Skips(), torch.ones(3, 2, requires_grad=True))
