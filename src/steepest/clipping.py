"""Gradient clipping: global-norm, per-tensor-norm, value and adaptive (unit-wise) clipping.

Two layers, one set of formulas:

* Tensor-level functions over a list of gradient tensors (``global_norm``, ``tensor_norms``,
  ``scale_by_max_norm_``, ``scale_each_by_max_norm_``, ``clamp_by_value_``, ``unitwise_norm``,
  ``adaptive_clip_``). They take plain tensors, run a few ``torch._foreach_*`` kernels per
  (device, dtype) group, return tensors (never Python floats) and so never synchronize the
  device with the host. The optimizer engine calls these inside its step, so they check their
  arguments in Python only (kinds and ranges of numbers, never a tensor's values).
* Parameter-level functions (``clip_grad_norm_``, ``clip_grad_value_``,
  ``clip_grad_norm_per_tensor_``, ``clip_grad_agc_``) that read ``p.grad`` from an iterable of
  parameters, skip parameters whose grad is ``None``, validate their arguments and call the
  tensor-level functions. ``clip_grad_norm_`` and ``clip_grad_value_`` match
  ``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_``.

Example::

    >>> import torch
    >>> from steepest import clipping
    >>> w = torch.nn.Parameter(torch.ones(3))
    >>> w.grad = torch.tensor([3.0, 4.0, 0.0])
    >>> clipping.clip_grad_norm_([w], max_norm=1.0)
    tensor(5.)
    >>> w.grad
    tensor([0.6000, 0.8000, 0.0000])
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from steepest.engine import validation

__all__ = [
    "adaptive_clip_",
    "clamp_by_value_",
    "clip_grad_agc_",
    "clip_grad_norm_",
    "clip_grad_norm_per_tensor_",
    "clip_grad_value_",
    "global_norm",
    "scale_by_max_norm_",
    "scale_each_by_max_norm_",
    "tensor_norms",
    "unitwise_norm",
]

ParamsOrTensor = Tensor | Iterable[Tensor]

# Added to a norm before dividing by it, as torch.nn.utils.clip_grad_norm_ does, so that a zero
# gradient gives a finite coefficient (clamped to 1) instead of inf or nan.
NORM_EPS = 1e-6

# Device types with multi-tensor (foreach) kernels, as in torch.utils._foreach_utils; on CPU the
# foreach ops run a per-tensor loop in C++, which is still cheaper than one in Python.
_FOREACH_DEVICE_TYPES = frozenset({"cpu", "cuda", "xpu", "mtia"})


# --------------------------------------------------------------------------------------------
# argument checks and grouping
# --------------------------------------------------------------------------------------------


# The tensor-level functions run inside optimizer steps, so their checks look at Python values
# and types only: nothing here reads a tensor's values (that would synchronize with the device).
# A non-finite total norm is torch's business too: error_if_nonfinite opts into that check.

_positive = validation.positive  # max_norm, clip_value, clipping, eps: finite and > 0


def _checked_norm_type(norm_type: float | str) -> float:
    """p of a p-norm: a real number > 0, or inf (torch's clip_grad_norm_ also takes ``"inf"``)."""
    if isinstance(norm_type, str) and norm_type == "inf":
        return math.inf
    if isinstance(norm_type, bool) or not isinstance(norm_type, numbers.Real):
        raise TypeError(
            f"norm_type must be a real number > 0 or inf, got norm_type={norm_type!r} "
            f"({type(norm_type).__name__})"
        )
    number = float(norm_type)
    if not number > 0.0:  # also rejects nan
        raise ValueError(f"norm_type must be > 0 (or inf), got norm_type={norm_type!r}")
    return number


def _tensor_list(name: str, tensors: Sequence[Tensor]) -> Sequence[Tensor]:
    """``tensors`` if it is a list, tuple or other sequence (its items are checked where they
    are grouped)."""
    if isinstance(tensors, (str, bytes)) or not isinstance(tensors, Sequence):
        raise TypeError(
            f"{name} must be a list of tensors, got {name}={tensors!r:.80} ({type(tensors).__name__})"
        )
    return tensors


def _with_grads(parameters: ParamsOrTensor) -> list[Tensor]:
    """The parameters whose grad is not None; a TypeError names anything that is not a tensor
    with a floating-point (or complex) gradient."""
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    elif isinstance(parameters, (str, bytes)) or not isinstance(parameters, Iterable):
        raise TypeError(
            f"parameters must be a tensor or an iterable of tensors, got parameters={parameters!r:.80} "
            f"({type(parameters).__name__})"
        )
    with_grads = []
    for index, param in enumerate(parameters):
        if not isinstance(param, Tensor):
            raise TypeError(
                f"parameters must be tensors, got parameters[{index}]={param!r:.80} ({type(param).__name__})"
            )
        grad = param.grad
        if grad is not None:
            if not (grad.is_floating_point() or grad.is_complex()):
                raise TypeError(f"parameters[{index}].grad must be floating point, got dtype {grad.dtype}")
            with_grads.append(param)
    return with_grads


def _grads_of(parameters: ParamsOrTensor) -> list[Tensor]:
    return [p.grad for p in _with_grads(parameters)]


def _group_indices(
    tensors: Sequence[Tensor], name: str = "grads"
) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    """Indices of ``tensors`` grouped by (device, dtype), groups in order of first appearance.

    Also the check, at no cost to a good call, that they are floating-point tensors: a
    non-tensor fails the attribute lookup, and the dtype is looked at once per group.
    """
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    try:
        for index, tensor in enumerate(tensors):
            groups.setdefault((tensor.device, tensor.dtype), []).append(index)
    except AttributeError:
        index, item = next((i, t) for i, t in enumerate(tensors) if not isinstance(t, Tensor))
        raise TypeError(
            f"{name} must be tensors, got {name}[{index}]={item!r:.80} ({type(item).__name__})"
        ) from None
    for (_, dtype), indices in groups.items():
        if not (dtype.is_floating_point or dtype.is_complex):
            raise TypeError(f"{name} must be floating point, got {name}[{indices[0]}] of dtype {dtype}")
    return groups


def _use_foreach(foreach: bool | None, tensors: Sequence[Tensor], device: torch.device) -> bool:
    """Whether to run the foreach kernels on this group; ``foreach=True`` where impossible raises.

    Like torch, ``foreach=None`` takes the foreach path only for plain dense tensors (tensor
    subclasses such as DTensor go through their own per-tensor ops).
    """
    validation.optional_boolean("foreach", foreach)
    device_ok = device.type in _FOREACH_DEVICE_TYPES
    if foreach is None:
        return device_ok and all(type(t) is Tensor for t in tensors)
    if foreach and not device_ok:
        raise RuntimeError(
            f"foreach=True was passed, but can't use the foreach API on {device.type} tensors"
        )
    return foreach


# --------------------------------------------------------------------------------------------
# tensor-level functions (what the optimizer engine calls)
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def tensor_norms(
    tensors: Sequence[Tensor], norm_type: float = 2.0, *, foreach: bool | None = None
) -> list[Tensor]:
    """The p-norm of each tensor, as 0-dim tensors in input order.

    ``n_i = ||t_i||_p``, one ``torch._foreach_norm`` per (device, dtype) group.

    Example::

        >>> tensor_norms([torch.tensor([3.0, 4.0]), torch.tensor([-2.0])])
        [tensor(5.), tensor(2.)]
    """
    return _tensor_norms(_tensor_list("tensors", tensors), _checked_norm_type(norm_type), foreach)


def _tensor_norms(tensors: Sequence[Tensor], norm_type: float, foreach: bool | None) -> list[Tensor]:
    """tensor_norms once its arguments are checked (global_norm checks them only once too)."""

    def group_norms(group: Sequence[Tensor], device: torch.device) -> list[Tensor]:
        if _use_foreach(foreach, group, device):
            return list(torch._foreach_norm(group, norm_type))
        return [torch.linalg.vector_norm(t, norm_type) for t in group]

    groups = _group_indices(tensors, "tensors")
    if len(groups) == 1:  # one device and dtype, the usual case: no regrouping (every step)
        ((device, _),) = groups
        return group_norms(tensors, device)
    norms: list[Tensor | None] = [None] * len(tensors)
    for (device, _), indices in groups.items():
        for i, norm in zip(indices, group_norms([tensors[i] for i in indices], device), strict=True):
            norms[i] = norm
    return norms  # type: ignore[return-value]


@torch.no_grad()
def global_norm(
    tensors: Sequence[Tensor], norm_type: float = 2.0, *, foreach: bool | None = None
) -> Tensor:
    """The p-norm of all tensors taken together, as if flattened and concatenated into one vector.

    ``||g||_p = || (||g_1||_p, ..., ||g_k||_p) ||_p``; a 0-dim tensor on the first tensor's device
    (``tensor(0.)`` for an empty list). No host synchronization.

    Example::

        >>> global_norm([torch.tensor([3.0]), torch.tensor([4.0])])
        tensor(5.)
    """
    norm_type = _checked_norm_type(norm_type)
    if len(_tensor_list("tensors", tensors)) == 0:
        return torch.tensor(0.0)
    norms = _tensor_norms(tensors, norm_type, foreach)
    first_device = tensors[0].device
    if any(norm.device != first_device for norm in norms):
        norms = [norm.to(first_device) for norm in norms]
    return torch.linalg.vector_norm(torch.stack(norms), norm_type)


@torch.no_grad()
def scale_by_max_norm_(
    grads: Sequence[Tensor],
    max_norm: float,
    total_norm: Tensor,
    *,
    foreach: bool | None = None,
) -> Tensor:
    """Scale ``grads`` in place so that their joint norm is at most ``max_norm``.

    ``g <- g * min(1, max_norm / (total_norm + 1e-6))``. ``total_norm`` is usually
    ``global_norm(grads)``; the multiply is done even when the coefficient is 1 so that no
    ``if coef < 1`` forces a device-to-host sync.

    Returns:
        The clamped clip coefficient, a 0-dim tensor on ``total_norm``'s device.

    Example::

        >>> g = [torch.tensor([3.0, 4.0])]
        >>> scale_by_max_norm_(g, 1.0, global_norm(g))
        tensor(0.2000)
    """
    max_norm = _positive("max_norm", max_norm)
    if not isinstance(total_norm, Tensor):
        raise TypeError(f"total_norm must be a tensor (global_norm's), got total_norm={total_norm!r:.80}")
    groups = _group_indices(_tensor_list("grads", grads))
    coefficient = torch.clamp(max_norm / (total_norm + NORM_EPS), max=1.0)
    for (device, _), indices in groups.items():
        group = [grads[i] for i in indices]
        coefficient_here = coefficient.to(device)
        if _use_foreach(foreach, group, device):
            torch._foreach_mul_(group, coefficient_here)
        else:
            for grad in group:
                grad.mul_(coefficient_here)
    return coefficient


@torch.no_grad()
def scale_each_by_max_norm_(
    grads: Sequence[Tensor],
    max_norm: float,
    norms: Sequence[Tensor],
    *,
    foreach: bool | None = None,
) -> list[Tensor]:
    """Scale each gradient in place so that its own norm is at most ``max_norm``.

    ``g_i <- g_i * min(1, max_norm / (n_i + 1e-6))`` with ``n_i = norms[i]`` (usually
    ``tensor_norms(grads)``): the same rule as ``scale_by_max_norm_``, tensor by tensor.

    Returns:
        The clamped clip coefficient of each gradient (0-dim tensors, input order).

    Example::

        >>> g = [torch.tensor([3.0, 4.0]), torch.tensor([0.5])]
        >>> scale_each_by_max_norm_(g, 1.0, tensor_norms(g))
        [tensor(0.2000), tensor(1.)]
    """
    max_norm = _positive("max_norm", max_norm)
    if len(_tensor_list("grads", grads)) != len(_tensor_list("norms", norms)):
        raise ValueError(f"got {len(grads)} grads but {len(norms)} norms")
    groups = _group_indices(grads)
    coefficients: list[Tensor | None] = [None] * len(grads)
    for (device, _), indices in groups.items():
        group = [grads[i] for i in indices]
        # One stacked vector per group: three kernels whatever the number of tensors.
        group_norms = torch.stack([norms[i].to(device) for i in indices])
        group_coefficients = torch.clamp(max_norm / (group_norms + NORM_EPS), max=1.0).unbind()
        if _use_foreach(foreach, group, device):
            torch._foreach_mul_(group, group_coefficients)
        else:
            for grad, coefficient in zip(group, group_coefficients, strict=True):
                grad.mul_(coefficient)
        for i, coefficient in zip(indices, group_coefficients, strict=True):
            coefficients[i] = coefficient
    return coefficients  # type: ignore[return-value]


@torch.no_grad()
def clamp_by_value_(
    grads: Sequence[Tensor], clip_value: float, *, foreach: bool | None = None
) -> None:
    """Clamp every gradient entry in place to ``[-clip_value, clip_value]``.

    ``g <- clamp(g, -c, c)``.

    Example::

        >>> g = [torch.tensor([-3.0, 0.5, 2.0])]
        >>> clamp_by_value_(g, 1.0)
        >>> g[0]
        tensor([-1.0000,  0.5000,  1.0000])
    """
    clip_value = _positive("clip_value", clip_value)
    for (device, _), indices in _group_indices(_tensor_list("grads", grads)).items():
        group = [grads[i] for i in indices]
        if _use_foreach(foreach, group, device):
            torch._foreach_clamp_min_(group, -clip_value)
            torch._foreach_clamp_max_(group, clip_value)
        else:
            for grad in group:
                grad.clamp_(min=-clip_value, max=clip_value)


def unitwise_norm(x: Tensor, norm_type: float = 2.0) -> Tensor:
    """The p-norm of each output unit of ``x``: per row along dim 0, or of the whole tensor.

    ``u_i = ||x[i, ...]||_p`` for ``x.ndim >= 2`` (shape ``(n, 1, ..., 1)``, broadcastable
    against ``x``; for a conv weight ``(out, in, *kernel)`` one norm per output channel);
    ``||x||_p`` (0-dim) for vectors and scalars. Matches ``unitwise_norm`` of timm's and
    DeepMind's NFNet code, in PyTorch's (out, in, ...) layout.

    Example::

        >>> unitwise_norm(torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
        tensor([[5.],
                [1.]])
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a tensor, got x={x!r:.80} ({type(x).__name__})")
    norm_type = _checked_norm_type(norm_type)
    if x.ndim <= 1:
        return torch.linalg.vector_norm(x, norm_type)
    return torch.linalg.vector_norm(x, norm_type, dim=tuple(range(1, x.ndim)), keepdim=True)


@torch.no_grad()
def adaptive_clip_(
    grads: Sequence[Tensor],
    params: Sequence[Tensor],
    clipping: float = 0.01,
    eps: float = 1e-3,
    norm_type: float = 2.0,
) -> list[Tensor]:
    """Adaptive gradient clipping: cap each unit's gradient norm at a fraction of its weight norm.

    ``g_i <- g_i * min(1, clipping * max(||w_i||, eps) / max(||g_i||, 1e-6))`` for every unit
    ``i`` (``unitwise_norm``). ``params[k]`` is the parameter whose gradient is ``grads[k]``.
    Per tensor one or two norm kernels (units have different shapes, so no foreach norm), then
    foreach arithmetic per (device, dtype) group.

    Returns:
        The clip coefficient of every unit (``unitwise_norm``'s shape for each tensor); the
        fraction of units clipped is ``mean(c < 1)``.

    Example::

        >>> w, g = torch.tensor([[1.0, 0.0]]), [torch.tensor([[0.0, 1.0]])]
        >>> adaptive_clip_(g, [w], clipping=0.1)
        [tensor([[0.1000]])]

    Reference: Brock et al. 2021, "High-Performance Large-Scale Image Recognition Without
    Normalization" (NFNets), section 4.1.
    """
    clipping = _positive("clipping", clipping)
    eps = _positive("eps", eps)
    norm_type = _checked_norm_type(norm_type)
    if len(_tensor_list("grads", grads)) != len(_tensor_list("params", params)):
        raise ValueError(f"got {len(grads)} grads but {len(params)} params")
    groups = _group_indices(grads)
    _group_indices(params, "params")  # checked (floating-point tensors) before any grad changes
    coefficients: list[Tensor | None] = [None] * len(grads)
    for _, indices in groups.items():
        group = [grads[i] for i in indices]
        max_norms = [unitwise_norm(params[i].detach(), norm_type) for i in indices]
        torch._foreach_clamp_min_(max_norms, eps)
        torch._foreach_mul_(max_norms, clipping)
        grad_norms = [unitwise_norm(grad, norm_type) for grad in group]
        torch._foreach_clamp_min_(grad_norms, NORM_EPS)
        group_coefficients = torch._foreach_div(max_norms, grad_norms)
        torch._foreach_clamp_max_(group_coefficients, 1.0)
        # Broadcasting multiply (coefficient shape (n, 1, ...) against (n, ...)).
        torch._foreach_mul_(group, group_coefficients)
        for i, coefficient in zip(indices, group_coefficients, strict=True):
            coefficients[i] = coefficient
    return coefficients  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# parameter-level functions (what users call between backward() and step())
# --------------------------------------------------------------------------------------------


def clip_grad_norm_(
    parameters: ParamsOrTensor,
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
) -> Tensor:
    """Clip the gradients of ``parameters`` so that their global norm is at most ``max_norm``.

    ``g <- g * min(1, max_norm / (||g||_p + 1e-6))`` with ``||g||_p`` over all gradients as one
    vector; same result as ``torch.nn.utils.clip_grad_norm_``.

    Args:
        parameters: parameters (or one tensor) whose ``.grad`` is clipped in place; grads that
            are ``None`` are skipped.
        max_norm: largest allowed global norm, a positive finite number (not a tensor, which
            would be read back from the device at every call).
        norm_type: p of the p-norm, > 0; ``float("inf")`` (or ``"inf"``, as torch takes it)
            for the max-abs norm. Default 2.
        error_if_nonfinite: raise ``RuntimeError`` if the total norm is nan or inf (this
            check synchronizes with the device). Default False.
        foreach: use the multi-tensor kernels (None: where available).

    Returns:
        The global norm of the gradients before clipping (0-dim tensor).

    Example::

        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> w.grad = torch.tensor([3.0, 4.0])
        >>> clip_grad_norm_([w], 1.0)
        tensor(5.)
    """
    max_norm = _positive("max_norm", max_norm)
    norm_type = _checked_norm_type(norm_type)
    validation.boolean("error_if_nonfinite", error_if_nonfinite)
    validation.optional_boolean("foreach", foreach)
    grads = _grads_of(parameters)
    total_norm = global_norm(grads, norm_type, foreach=foreach)
    if error_if_nonfinite and not bool(torch.isfinite(total_norm)):
        raise RuntimeError(
            f"The total norm of order {norm_type} for gradients from `parameters` is non-finite, "
            "so it cannot be clipped. To disable this error and scale the gradients by the "
            "non-finite norm anyway, set `error_if_nonfinite=False`"
        )
    if grads:
        scale_by_max_norm_(grads, max_norm, total_norm, foreach=foreach)
    return total_norm


def clip_grad_value_(
    parameters: ParamsOrTensor, clip_value: float, foreach: bool | None = None
) -> None:
    """Clamp every gradient entry of ``parameters`` to ``[-clip_value, clip_value]`` in place.

    ``g <- clamp(g, -c, c)``; same result as ``torch.nn.utils.clip_grad_value_``. ``clip_value``
    must be positive and finite; grads that are ``None`` are skipped.

    Example::

        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> w.grad = torch.tensor([-3.0, 0.5])
        >>> clip_grad_value_([w], 1.0)
        >>> w.grad
        tensor([-1.0000,  0.5000])
    """
    clip_value = _positive("clip_value", clip_value)
    validation.optional_boolean("foreach", foreach)
    clamp_by_value_(_grads_of(parameters), clip_value, foreach=foreach)


def clip_grad_norm_per_tensor_(
    parameters: ParamsOrTensor,
    max_norm: float,
    norm_type: float = 2.0,
    foreach: bool | None = None,
) -> list[Tensor]:
    """Clip each parameter's gradient independently so that its own norm is at most ``max_norm``.

    ``g_k <- g_k * min(1, max_norm / (||g_k||_p + 1e-6))`` for each parameter ``k``.

    Returns:
        The pre-clip norm of each gradient (0-dim tensors), in the order of the parameters,
        skipping those whose grad is ``None``.

    Example::

        >>> a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
        >>> a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([0.5])
        >>> clip_grad_norm_per_tensor_([a, b], 1.0)
        [tensor(5.), tensor(0.5000)]
        >>> a.grad, b.grad
        (tensor([0.6000, 0.8000]), tensor([0.5000]))
    """
    max_norm = _positive("max_norm", max_norm)
    norm_type = _checked_norm_type(norm_type)
    validation.optional_boolean("foreach", foreach)
    grads = _grads_of(parameters)
    norms = tensor_norms(grads, norm_type, foreach=foreach)
    scale_each_by_max_norm_(grads, max_norm, norms, foreach=foreach)
    return norms


def clip_grad_agc_(
    parameters: ParamsOrTensor,
    clipping: float = 0.01,
    eps: float = 1e-3,
    norm_type: float = 2.0,
) -> list[Tensor]:
    """Adaptive gradient clipping (AGC) of ``parameters``, unit by unit (NFNets).

    ``g_i <- g_i * min(1, clipping * max(||w_i||, eps) / max(||g_i||, 1e-6))`` for every
    output unit ``i`` (a row along dim 0 of a matrix or conv weight; the whole tensor for
    vectors and scalars). The paper does not clip the final classifier layer: pass the other
    parameters only if you follow it. For ``ConvTranspose`` weights, laid out
    ``(in, out, ...)``, the unit is an input channel.

    Args:
        parameters: parameters (or one tensor) whose ``.grad`` is clipped in place; grads that
            are ``None`` are skipped.
        clipping: the largest allowed ratio ``||g_i|| / max(||w_i||, eps)``; positive, finite.
            The paper uses 0.01 to 0.16 depending on batch size. Default 0.01.
        eps: floor on a unit's weight norm, so that zero-initialized units (biases, gains) can
            still move; positive, finite. Default 1e-3.
        norm_type: p of the unit norms, > 0. Default 2.

    Returns:
        The clip coefficient of every unit, one tensor per clipped gradient.

    Example::

        >>> w = torch.nn.Parameter(torch.tensor([[1.0, 0.0]]))
        >>> w.grad = torch.tensor([[0.0, 1.0]])
        >>> clip_grad_agc_([w], clipping=0.1)
        [tensor([[0.1000]])]
        >>> w.grad
        tensor([[0.0000, 0.1000]])

    Reference: Brock et al. 2021, "High-Performance Large-Scale Image Recognition Without
    Normalization", arXiv:2102.06171.
    """
    clipping = _positive("clipping", clipping)
    eps = _positive("eps", eps)
    norm_type = _checked_norm_type(norm_type)
    with_grads = _with_grads(parameters)
    return adaptive_clip_([p.grad for p in with_grads], with_grads, clipping, eps, norm_type)
