"""Weight initialization (Xavier, He, LeCun, orthogonal, or picked per layer) and its diagnosis.

* ``initialize(model, scheme)`` applies one scheme to the weight of every ``nn.Linear``,
  ``nn.Conv{1,2,3}d`` and ``nn.ConvTranspose{1,2,3}d`` layer and zeroes their biases, through
  ``torch.nn.init``. ``scheme="auto"`` picks the scheme and gain from the activation module that
  follows each layer in an ``nn.Sequential``. It returns what it did, layer by layer.
* ``init_report(model, batch)`` runs one forward and backward pass and says, layer by layer,
  whether activations or gradients vanish or explode, leaving the model as it found it.

Example::

    >>> import torch
    >>> from torch import nn
    >>> from steepest.init import initialize, init_report
    >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    >>> print(initialize(model, "auto", generator=0))  # doctest: +NORMALIZE_WHITESPACE
    layer  type    scheme  distribution  nonlinearity  gain   reason
    0      Linear  he      uniform       relu          1.414  followed by ReLU
    2      Linear  xavier  uniform       linear        1.000  no activation after it
    >>> init_report(model, torch.randn(32, 8)).ok
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from steepest.engine import validation

__all__ = [
    "InitReport",
    "InitSummary",
    "LayerInit",
    "LayerStats",
    "init_report",
    "initialize",
    "initialized_layers",
]

Scheme = Literal["xavier", "he", "lecun", "orthogonal", "auto"]
Distribution = Literal["uniform", "normal"]

SCHEMES: tuple[str, ...] = ("xavier", "he", "lecun", "orthogonal", "auto")
DISTRIBUTIONS: tuple[str, ...] = ("uniform", "normal")

# The layers whose weights are initialized.
LAYER_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)

# Modules that may sit between a layer and its activation without changing which activation it
# is: normalization, pooling, dropout and reshaping. "auto" looks through them.
TRANSPARENT_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, InstanceNorm*, SyncBatchNorm
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.RMSNorm,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._LPPoolNd,
    nn.modules.dropout._DropoutNd,
    nn.Flatten,
    nn.Unflatten,
    nn.Identity,
)

# Activations whose gain torch.nn.init.calculate_gain does not know but that behave like ReLU
# near initialization (zero for large negative inputs, identity for large positive ones): the
# common practice, and what "auto" does, is He initialization with ReLU's gain sqrt(2).
RELU_LIKE_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU6,
    nn.ELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
)


@dataclass(frozen=True)
class LayerInit:
    """What ``initialize`` did to one layer: the scheme, the gain and why."""

    name: str
    layer: str
    scheme: str
    distribution: str
    nonlinearity: str
    gain: float
    reason: str


class InitSummary(list[LayerInit]):
    """The list of ``LayerInit`` records returned by ``initialize``; ``str()`` is a table."""

    def __str__(self) -> str:
        rows = [
            (r.name, r.layer, r.scheme, r.distribution, r.nonlinearity, f"{r.gain:.3f}", r.reason)
            for r in self
        ]
        header = ("layer", "type", "scheme", "distribution", "nonlinearity", "gain", "reason")
        return _table(header, rows)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in (header, *rows)]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# choosing a scheme per layer
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Choice:
    scheme: str
    nonlinearity: str  # as torch.nn.init.calculate_gain names it
    slope: float  # negative slope for leaky_relu, else 0
    reason: str

    @property
    def gain(self) -> float:
        if self.nonlinearity == "leaky_relu":
            return float(nn.init.calculate_gain("leaky_relu", self.slope))
        return float(nn.init.calculate_gain(self.nonlinearity))


def _choice_for_scheme(scheme: str) -> _Choice:
    """The fixed choice of an explicit scheme: torch.nn.init's defaults for it."""
    if scheme == "he":
        return _Choice("he", "relu", 0.0, "scheme='he'")
    if scheme == "lecun":
        return _Choice("lecun", "linear", 0.0, "scheme='lecun'")
    return _Choice(scheme, "linear", 0.0, f"scheme={scheme!r}")


def _choice_for_activation(activation: nn.Module | None) -> _Choice:
    """The scheme and gain "auto" picks for a layer followed by ``activation``."""
    if activation is None:
        return _Choice("xavier", "linear", 0.0, "no activation after it")
    name = type(activation).__name__
    if isinstance(activation, LAYER_TYPES):
        return _Choice("xavier", "linear", 0.0, f"followed by {name}, no activation in between")
    if isinstance(activation, nn.ReLU):
        return _Choice("he", "relu", 0.0, f"followed by {name}")
    if isinstance(activation, nn.LeakyReLU):
        slope = float(activation.negative_slope)
        return _Choice("he", "leaky_relu", slope, f"followed by {name}({slope:g})")
    if isinstance(activation, nn.PReLU):
        slope = float(activation.weight.detach().mean())
        return _Choice("he", "leaky_relu", slope, f"followed by {name}, slope now {slope:g}")
    if isinstance(activation, RELU_LIKE_TYPES):
        return _Choice("he", "relu", 0.0, f"followed by {name}, treated as ReLU-like")
    if isinstance(activation, nn.Tanh):
        return _Choice("xavier", "tanh", 0.0, f"followed by {name}")
    if isinstance(activation, nn.Sigmoid):
        return _Choice("xavier", "sigmoid", 0.0, f"followed by {name}")
    if isinstance(activation, nn.SELU):
        # Self-normalizing networks need variance 1/fan_in (Klambauer et al. 2017), not the
        # 3/4 gain calculate_gain("selu") gives for other purposes.
        return _Choice("lecun", "linear", 0.0, f"followed by {name} (self-normalizing)")
    return _Choice("xavier", "linear", 0.0, f"followed by {name}, not a known activation")


def _sequential_leaves(sequential: nn.Sequential) -> Iterator[nn.Module]:
    """The modules of ``sequential`` in order, nested nn.Sequentials flattened into it."""
    for module in sequential:
        if isinstance(module, nn.Sequential):
            yield from _sequential_leaves(module)
        else:
            yield module


def _activation_after(model: nn.Module) -> dict[int, nn.Module | None]:
    """For each layer inside an nn.Sequential: the first module after it that is not transparent.

    Keyed by ``id(layer)``. Only nn.Sequential says in what order modules run; elsewhere the
    registration order is a guess (a block may register its activation once and call it twice),
    so layers outside an nn.Sequential are not in the map.
    """
    following: dict[int, nn.Module | None] = {}
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        leaves = list(_sequential_leaves(module))
        for index, leaf in enumerate(leaves):
            if not isinstance(leaf, LAYER_TYPES):
                continue
            nxt = next((m for m in leaves[index + 1:] if not isinstance(m, TRANSPARENT_TYPES)),
                       None)
            # An outer Sequential sees more of what follows than an inner one: keep what it saw.
            if following.get(id(leaf)) is None:
                following[id(leaf)] = nxt
    return following


# --------------------------------------------------------------------------------------------
# initialize
# --------------------------------------------------------------------------------------------


def initialized_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The (name, layer) pairs ``initialize`` touches, in its order (``model.named_modules()``).

    Example::

        >>> [name for name, _ in initialized_layers(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))]
        ['0']
    """
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LAYER_TYPES)]


def _checked_generator(generator: Any) -> torch.Generator | int | None:
    """A torch.Generator, None, or an integer seed in the range torch.Generator.manual_seed takes."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    try:
        return validation.torch_seed("generator", generator)
    except TypeError:
        raise TypeError(
            f"generator must be a torch.Generator, an int seed or None, got generator={generator!r}"
        ) from None


def _generator_for(
    generator: torch.Generator | int | None, device: torch.device,
    made: dict[torch.device, torch.Generator],
) -> torch.Generator | None:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if device not in made:
        made[device] = torch.Generator(device=device).manual_seed(generator)
    return made[device]


def _apply(weight: Tensor, choice: _Choice, distribution: str,
           generator: torch.Generator | None) -> None:
    uniform = distribution == "uniform"
    if choice.scheme == "xavier":
        init = nn.init.xavier_uniform_ if uniform else nn.init.xavier_normal_
        init(weight, gain=choice.gain, generator=generator)
    elif choice.scheme in ("he", "lecun"):
        # Kaiming with fan_in mode: Var(w) = gain^2 / fan_in; LeCun is the 'linear' gain 1.
        init = nn.init.kaiming_uniform_ if uniform else nn.init.kaiming_normal_
        init(weight, a=choice.slope, mode="fan_in", nonlinearity=choice.nonlinearity,
             generator=generator)
    else:
        nn.init.orthogonal_(weight, gain=choice.gain, generator=generator)


def initialize(
    model: nn.Module,
    scheme: Scheme = "xavier",
    distribution: Distribution = "uniform",
    generator: torch.Generator | int | None = None,
) -> InitSummary:
    """Initialize every Linear/Conv/ConvTranspose weight of ``model`` and zero their biases.

    ``Var(w) = gain^2 * 2 / (fan_in + fan_out)`` (xavier), ``gain^2 / fan_in`` (he: gain
    sqrt(2); lecun: gain 1), or ``w = gain * Q`` with Q orthogonal; ``b = 0``. Each uses
    ``torch.nn.init`` (xavier_*, kaiming_* in fan_in mode, orthogonal_), layer by layer in
    ``model.named_modules()`` order, so a seeded run equals the same torch.nn.init calls.
    Other modules (norms, embeddings) keep their own initialization.

    Args:
        model: the module to initialize in place.
        scheme: "xavier" (gain 1), "he" (ReLU gain), "lecun", "orthogonal" (gain 1), or "auto":
            per layer, from the activation module that follows it in an nn.Sequential (looking
            through norm, pooling, dropout and flatten layers): ReLU and ReLU-like (GELU, SiLU,
            ELU, ...) -> he; LeakyReLU(a) -> he with gain sqrt(2 / (1 + a^2)); Tanh -> xavier
            with gain 5/3; Sigmoid -> xavier; SELU -> lecun; none or unknown -> xavier (linear).
        distribution: "uniform" or "normal" (ignored by "orthogonal"). Default "uniform".
        generator: a ``torch.Generator``, an int seed (one generator per device), or None for
            the global RNG.

    Returns:
        An ``InitSummary``: one ``LayerInit`` record (name, type, scheme, gain, why) per layer;
        ``print`` it for a table.

    Example::

        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
        >>> [(r.scheme, round(r.gain, 3)) for r in initialize(model, "auto", generator=0)]
        [('xavier', 1.667)]

    References: Glorot & Bengio 2010; He et al. 2015; LeCun et al. 1998 ("Efficient BackProp");
    Saxe et al. 2014 (orthogonal).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    generator = _checked_generator(generator)

    # Every layer is checked before the first is touched, so that an error changes nothing.
    # (A model without such layers is left as it is: steepest train initializes every model.)
    layers = initialized_layers(model)
    for name, layer in layers:
        if isinstance(layer.weight, nn.parameter.UninitializedParameter):
            raise ValueError(
                f"layer {name!r} ({type(layer).__name__}) is lazy and not materialized yet: "
                "run one forward pass before initialize()"
            )
        if not (isinstance(layer.weight, Tensor) and layer.weight.is_floating_point()):
            found = layer.weight.dtype if isinstance(layer.weight, Tensor) else type(layer.weight).__name__
            raise TypeError(
                f"layer {name!r} ({type(layer).__name__}) has a weight of {found}: "
                "only floating-point weights can be initialized"
            )
    following = _activation_after(model) if scheme == "auto" else {}
    made: dict[torch.device, torch.Generator] = {}
    summary = InitSummary()
    with torch.no_grad():
        for name, layer in layers:
            if scheme != "auto":
                choice = _choice_for_scheme(scheme)
            elif id(layer) in following:
                choice = _choice_for_activation(following[id(layer)])
            else:
                choice = _Choice("xavier", "linear", 0.0, "not inside an nn.Sequential")
            weight = layer.weight
            _apply(weight, choice, distribution, _generator_for(generator, weight.device, made))
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
            summary.append(LayerInit(
                name=name or "(model)",
                layer=type(layer).__name__,
                scheme=choice.scheme,
                distribution="orthogonal" if choice.scheme == "orthogonal" else distribution,
                nonlinearity=(f"leaky_relu({choice.slope:g})"
                              if choice.nonlinearity == "leaky_relu" else choice.nonlinearity),
                gain=choice.gain,
                reason=choice.reason,
            ))
    return summary


# --------------------------------------------------------------------------------------------
# init_report
# --------------------------------------------------------------------------------------------

# A layer's activations "vanish" when their std falls below 1e-2 times the input's std and
# "explode" above 1e2 times; its weight gradient's std is compared in the same way with that of
# the layer closest to the loss (the last one run). Two orders of magnitude is far beyond what
# a sound initialization gives (it keeps both ratios near 1) and is reached within a handful of
# layers when each layer scales the signal by a constant factor away from 1.
VANISHING_RATIO = 1e-2
EXPLODING_RATIO = 1e2
# Seed of the fixed random direction of init_report's stand-in loss (a constant, so that two
# reports on the same model and batch agree, and the global RNG is left alone).
PROBE_SEED = 0


@dataclass(frozen=True)
class LayerStats:
    """One layer's activation and weight-gradient statistics from ``init_report``."""

    name: str
    layer: str
    activation_std: float
    gradient_std: float | None  # None when the weight does not require grad or got none
    activation_ratio: float  # activation_std / input std
    gradient_ratio: float | None  # gradient_std / gradient_std of the last layer run
    status: str  # "ok", "vanishing", "exploding", or "vanishing, exploding"
    reason: str


@dataclass(frozen=True)
class InitReport:
    """Per-layer activation and gradient statistics of one pass; ``str()`` is a table."""

    input_std: float
    loss: float
    layers: list[LayerStats] = field(default_factory=list)
    # What activation ratios divide by: input_std, or for integer inputs (token ids, whose std
    # says nothing about scale) the activation std of the first layer run.
    reference_std: float = 1.0
    vanishing_ratio: float = VANISHING_RATIO
    exploding_ratio: float = EXPLODING_RATIO

    @property
    def vanishing(self) -> list[str]:
        """Names of the layers flagged as vanishing."""
        return [s.name for s in self.layers if "vanishing" in s.status]

    @property
    def exploding(self) -> list[str]:
        """Names of the layers flagged as exploding."""
        return [s.name for s in self.layers if "exploding" in s.status]

    @property
    def ok(self) -> bool:
        """True when no layer is flagged."""
        return all(s.status == "ok" for s in self.layers)

    def __str__(self) -> str:
        def number(x: float | None) -> str:
            return "-" if x is None else f"{x:.3g}"

        rows = [
            (s.name, s.layer, number(s.activation_std), number(s.activation_ratio),
             number(s.gradient_std), number(s.gradient_ratio), s.status, s.reason)
            for s in self.layers
        ]
        header = ("layer", "type", "act std", "act/input", "grad std", "grad/last", "status",
                  "reason")
        verdict = "ok" if self.ok else (
            f"vanishing: {', '.join(self.vanishing) or '-'}; "
            f"exploding: {', '.join(self.exploding) or '-'}"
        )
        return (f"input std {self.input_std:.3g}, loss {self.loss:.3g}; "
                f"thresholds {self.vanishing_ratio:g} / {self.exploding_ratio:g}: {verdict}\n"
                + _table(header, rows))


def _flag(ratio: float | None, what: str, low: float, high: float) -> tuple[list[str], list[str]]:
    """Statuses and reasons for one ratio."""
    if ratio is None:
        return [], []
    if not math.isfinite(ratio) or ratio > high:
        return ["exploding"], [f"{what} ratio {ratio:.3g} > {high:g}"]
    if ratio < low:
        return ["vanishing"], [f"{what} ratio {ratio:.3g} < {low:g}"]
    return [], []


def _random_probe_loss(output: Tensor) -> Tensor:
    """``sum(r * output) / batch`` with ``r`` a fixed standard-normal tensor: the stand-in loss.

    Its gradient ``r / batch`` is a random direction independent of the output, so what reaches
    each layer measures the network's backward pass alone. With ``mean(output ** 2)`` the
    gradient is the output itself; through a ReLU net, whose deep features share a positive
    mean across samples, that adds up coherently in the last layer's weight gradient: in a
    He-initialized 10-layer ReLU net with one output, the first layer's gradient std came out
    80x below the last one's, at the "vanishing" threshold, against about 5x with this probe.
    """
    generator = torch.Generator().manual_seed(PROBE_SEED)
    direction = torch.randn(output.shape, generator=generator, dtype=torch.float32)
    batch = output.shape[0] if output.ndim > 0 else 1
    return (output.float() * direction.to(output.device)).sum() / batch


def _check_loss(loss: Any) -> None:
    """loss_fn's result is what autograd can start from: a tensor holding one number."""
    if not isinstance(loss, Tensor):
        raise TypeError(f"loss_fn must return a scalar tensor, got {loss!r:.80} ({type(loss).__name__})")
    if loss.numel() != 1:
        raise ValueError(f"loss_fn must return a scalar tensor, got a tensor of shape {tuple(loss.shape)}")


def _std(tensor: Tensor) -> Tensor:
    return tensor.detach().float().std() if tensor.numel() > 1 else tensor.detach().float().abs()


def init_report(
    model: nn.Module,
    batch: Tensor | Sequence[Tensor],
    loss_fn: Callable[..., Tensor] | None = None,
    target: Any = None,
    *,
    vanishing_ratio: float = VANISHING_RATIO,
    exploding_ratio: float = EXPLODING_RATIO,
) -> InitReport:
    """Flag layers whose activations or gradients vanish or explode, from one forward-backward pass.

    Layer l is "vanishing" if ``std(y_l) / std(x) < 1e-2`` or ``std(dL/dW_l) / std(dL/dW_last)
    < 1e-2``, and "exploding" if either ratio is above ``1e2`` or not finite (y_l the layer's
    output, x the input, W_last the weight of the Linear/Conv layer run last that got a
    gradient). For an integer input (token ids) the first layer's output stands in for x.

    The pass runs in training mode (batch statistics in batch norm, dropout active) because
    that is what the first optimizer steps see. The model is left as it was: gradients are
    taken with ``torch.autograd.grad`` (``.grad`` untouched), buffers such as batch-norm running
    statistics are restored, every module's train/eval flag is restored, and the RNG state
    dropout consumes is restored; parameters are never written.

    Args:
        model: the model; its Linear/Conv/ConvTranspose layers are measured.
        batch: the input, a tensor (``model(batch)``) or a sequence of them (``model(*batch)``).
        loss_fn: ``loss_fn(output, target)`` (or ``loss_fn(output)`` when ``target`` is None).
            Default: ``sum(r * output) / batch`` with ``r`` a fixed standard-normal tensor, a
            stand-in that sends a random gradient direction back through the network.
        target: passed to ``loss_fn``.
        vanishing_ratio, exploding_ratio: the thresholds (defaults 1e-2 and 1e2).

    Returns:
        An ``InitReport`` with one ``LayerStats`` per layer, in the order they first ran;
        ``.ok``, ``.vanishing``, ``.exploding``; ``print`` it for a table.

    Example::

        >>> model = nn.Sequential(*[nn.Sequential(nn.Linear(64, 64), nn.Tanh()) for _ in range(8)])
        >>> _ = initialize(model, "auto", generator=0)
        >>> init_report(model, torch.randn(128, 64)).ok
        True
        >>> with torch.no_grad():
        ...     for p in model.parameters():
        ...         _ = p.mul_(1e-3)
        >>> init_report(model, torch.randn(128, 64)).vanishing[:2]
        ['0.0', '1.0']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inputs = (batch,) if isinstance(batch, Tensor) else batch
    if not (isinstance(inputs, Sequence) and inputs and all(isinstance(x, Tensor) for x in inputs)):
        raise TypeError(
            f"batch must be a tensor or a non-empty sequence of tensors, got batch={batch!r:.80} "
            f"({type(batch).__name__})"
        )
    inputs = tuple(inputs)
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable or None, got {loss_fn!r}")
    vanishing_ratio = validation.positive("vanishing_ratio", vanishing_ratio)
    exploding_ratio = validation.positive("exploding_ratio", exploding_ratio)
    if not vanishing_ratio < exploding_ratio:
        raise ValueError(
            f"need vanishing_ratio < exploding_ratio, got vanishing_ratio={vanishing_ratio!r} and "
            f"exploding_ratio={exploding_ratio!r}"
        )
    layers = initialized_layers(model)
    if not layers:
        raise ValueError(f"model has no Linear/Conv layer to report on: {type(model).__name__}")

    names = {id(layer): name or "(model)" for name, layer in layers}
    by_id = {id(layer): layer for _, layer in layers}
    outputs: dict[int, Tensor] = {}  # first output of each layer, in the order layers ran

    def record(layer: nn.Module, _inputs: Any, output: Any) -> None:
        if id(layer) not in outputs and isinstance(output, Tensor):
            outputs[id(layer)] = _std(output)

    modes = {module: module.training for module in model.modules()}
    # Saved by owner and name, so that a module that rebinds a buffer in forward (rather than
    # updating it in place) gets the original tensor back, with its original values.
    buffers = [
        (module, name, buffer, buffer.detach().clone())
        for module in model.modules()
        for name, buffer in module._buffers.items()
        if buffer is not None
    ]
    cuda_devices = sorted({p.device.index or 0 for p in model.parameters() if p.is_cuda})
    handles = [layer.register_forward_hook(record) for _, layer in layers]
    try:
        with torch.random.fork_rng(devices=cuda_devices), torch.enable_grad():
            model.train()
            output = model(*inputs)
            if loss_fn is None:
                if not isinstance(output, Tensor):
                    raise TypeError(
                        f"model output is a {type(output).__name__}, not a tensor: pass loss_fn"
                    )
                loss = _random_probe_loss(output)
            else:
                loss = loss_fn(output) if target is None else loss_fn(output, target)
                _check_loss(loss)
            ran = [by_id[i] for i in outputs]
            trainable = [m for m in ran if m.weight.requires_grad]
            grads = (torch.autograd.grad(loss, [m.weight for m in trainable], allow_unused=True)
                     if trainable and loss.requires_grad else [None] * len(trainable))
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for module, name, buffer, saved in buffers:
                buffer.copy_(saved)
                module._buffers[name] = buffer
        for module, training in modes.items():
            module.training = training

    if not outputs:
        raise ValueError(
            f"none of the Linear/Conv layers of {type(model).__name__} ran in the forward pass"
        )
    gradient_stds: dict[int, Tensor] = {
        id(m): _std(g) for m, g in zip(trainable, grads, strict=True) if g is not None
    }
    # One device-to-host transfer for all the numbers.
    keys = list(outputs)
    values = torch.stack(
        [_std(inputs[0]).cpu(), loss.detach().float().cpu()]
        + [outputs[k].cpu() for k in keys]
        + [gradient_stds[k].cpu() for k in keys if k in gradient_stds]
    ).tolist()
    input_std, loss_value = values[0], values[1]
    activation_stds = dict(zip(keys, values[2:2 + len(keys)], strict=True))
    floating_input = inputs[0].is_floating_point() or inputs[0].is_complex()
    reference_std = input_std if floating_input else activation_stds[keys[0]]
    gradient_values = dict(zip([k for k in keys if k in gradient_stds], values[2 + len(keys):],
                               strict=True))
    # The reference is the last layer run that got a gradient: the one closest to the loss.
    last_gradient = next((gradient_values[k] for k in reversed(keys) if k in gradient_values),
                         None)

    stats = []
    for key in keys:
        activation_std = activation_stds[key]
        activation_ratio = activation_std / reference_std if reference_std > 0 else math.inf
        gradient_std = gradient_values.get(key)
        gradient_ratio = (
            gradient_std / last_gradient
            if gradient_std is not None and last_gradient is not None and last_gradient > 0
            else None
        )
        flags_a, reasons_a = _flag(activation_ratio, "activation", vanishing_ratio,
                                   exploding_ratio)
        flags_g, reasons_g = _flag(gradient_ratio, "gradient", vanishing_ratio, exploding_ratio)
        flags = sorted(set(flags_a + flags_g), reverse=True)  # "vanishing" before "exploding"
        stats.append(LayerStats(
            name=names[key],
            layer=type(by_id[key]).__name__,
            activation_std=activation_std,
            gradient_std=gradient_std,
            activation_ratio=activation_ratio,
            gradient_ratio=gradient_ratio,
            status=", ".join(flags) or "ok",
            reason="; ".join(reasons_a + reasons_g),
        ))
    return InitReport(input_std=input_std, loss=loss_value, layers=stats,
                      reference_std=reference_std,
                      vanishing_ratio=vanishing_ratio, exploding_ratio=exploding_ratio)
