"""A list of tensors that answers to torch.Tensor's in-place method names.

Update rules in ``steepest.rules`` are written once, as plain tensor arithmetic::

    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)

Called with ``torch.Tensor`` arguments that code is the readable per-tensor reference.
Called with ``TensorList`` arguments the very same lines run as multi-tensor kernels
(``torch._foreach_*``): one launch covers every tensor of a (device, dtype) group.
Called on one flat buffer per group it is a single pass over memory, which is what a
fused path compiles. The math never changes; only the container does.

Only the operations the rules need are here. Methods ending in ``_`` work in place and
return ``self`` so they chain like the tensor methods they mirror.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Union

import torch
from torch import Tensor

Scalar = float | int
Operand = Union["TensorList", Scalar]  # noqa: UP007 - a forward reference


class TensorList:
    """Tensors of one device and dtype, operated on together.

    Example:
        >>> a = TensorList([torch.ones(2), torch.ones(3)])
        >>> _ = a.mul_(2.0).add_(1.0)
        >>> [t.tolist() for t in a]
        [[3.0, 3.0], [3.0, 3.0, 3.0]]
    """

    __slots__ = ("tensors",)

    def __init__(self, tensors: Iterable[Tensor]) -> None:
        self.tensors: list[Tensor] = list(tensors)

    # -- container protocol --------------------------------------------------------
    def __len__(self) -> int:
        return len(self.tensors)

    def __iter__(self) -> Iterator[Tensor]:
        return iter(self.tensors)

    def __getitem__(self, index: int) -> Tensor:
        return self.tensors[index]

    def __repr__(self) -> str:
        shapes = ", ".join(str(tuple(t.shape)) for t in self.tensors)
        return f"TensorList([{shapes}])"

    # -- in-place arithmetic ---------------------------------------------------------
    def add_(self, other: Operand, *, alpha: Scalar = 1) -> TensorList:
        if isinstance(other, TensorList):
            torch._foreach_add_(self.tensors, other.tensors, alpha=alpha)
        else:
            torch._foreach_add_(self.tensors, other * alpha)
        return self

    def sub_(self, other: Operand, *, alpha: Scalar = 1) -> TensorList:
        return self.add_(other, alpha=-alpha)

    def mul_(self, other: Operand) -> TensorList:
        torch._foreach_mul_(self.tensors, _unwrap(other))
        return self

    def div_(self, other: Operand) -> TensorList:
        torch._foreach_div_(self.tensors, _unwrap(other))
        return self

    def addcmul_(self, tensor1: TensorList, tensor2: TensorList, *, value: Scalar = 1) -> TensorList:
        torch._foreach_addcmul_(self.tensors, tensor1.tensors, tensor2.tensors, value=value)
        return self

    def addcdiv_(self, tensor1: TensorList, tensor2: TensorList, *, value: Scalar = 1) -> TensorList:
        torch._foreach_addcdiv_(self.tensors, tensor1.tensors, tensor2.tensors, value=value)
        return self

    def lerp_(self, end: TensorList, weight: Scalar) -> TensorList:
        torch._foreach_lerp_(self.tensors, end.tensors, weight)
        return self

    def sqrt_(self) -> TensorList:
        torch._foreach_sqrt_(self.tensors)
        return self

    def sign_(self) -> TensorList:
        torch._foreach_sign_(self.tensors)
        return self

    def neg_(self) -> TensorList:
        torch._foreach_neg_(self.tensors)
        return self

    def zero_(self) -> TensorList:
        torch._foreach_zero_(self.tensors)
        return self

    def copy_(self, source: TensorList) -> TensorList:
        torch._foreach_copy_(self.tensors, source.tensors)
        return self

    # -- out-of-place ------------------------------------------------------------------
    def add(self, other: Operand, *, alpha: Scalar = 1) -> TensorList:
        if isinstance(other, TensorList):
            return TensorList(torch._foreach_add(self.tensors, other.tensors, alpha=alpha))
        return TensorList(torch._foreach_add(self.tensors, other * alpha))

    def mul(self, other: Operand) -> TensorList:
        return TensorList(torch._foreach_mul(self.tensors, _unwrap(other)))

    def div(self, other: Operand) -> TensorList:
        return TensorList(torch._foreach_div(self.tensors, _unwrap(other)))

    def addcmul(self, tensor1: TensorList, tensor2: TensorList, *, value: Scalar = 1) -> TensorList:
        return TensorList(torch._foreach_addcmul(self.tensors, tensor1.tensors, tensor2.tensors, value=value))

    def lerp(self, end: TensorList, weight: Scalar) -> TensorList:
        return TensorList(torch._foreach_lerp(self.tensors, end.tensors, weight))

    def sqrt(self) -> TensorList:
        return TensorList(torch._foreach_sqrt(self.tensors))

    def sign(self) -> TensorList:
        return TensorList(torch._foreach_sign(self.tensors))

    def neg(self) -> TensorList:
        return TensorList(torch._foreach_neg(self.tensors))

    def clone(self) -> TensorList:
        return TensorList(torch._foreach_mul(self.tensors, 1))

    def __neg__(self) -> TensorList:
        return self.neg()


def _unwrap(operand: Operand) -> list[Tensor] | Scalar:
    return operand.tensors if isinstance(operand, TensorList) else operand


# torch.Tensor has no in-place ``maximum_``; rules call this so that one line serves both.
def maximum_(target: Tensor | TensorList, other: Tensor | TensorList) -> Tensor | TensorList:
    """``target <- max(target, other)`` elementwise, in place, for a tensor or a TensorList."""
    if isinstance(target, TensorList):
        torch._foreach_maximum_(target.tensors, other.tensors)  # type: ignore[union-attr]
        return target
    if torch.compiler.is_compiling():
        # torch.compile refuses an out= tensor that is not contiguous; a copy fuses into the pass
        return target.copy_(torch.maximum(target, other))
    return torch.maximum(target, other, out=target)  # type: ignore[arg-type]


def nonzero(coefficient: float | Tensor) -> bool:
    """Whether a term with this coefficient is switched on (``weight_decay`` and the like).

    Rules write ``if nonzero(weight_decay):`` rather than ``!= 0`` because the fused path
    hands every nonzero coefficient over as a 0-d tensor (a new value must not recompile)
    and a zero as the number 0: the test then never reads a tensor's value, and a compiled
    rule leaves a switched-off term out entirely.
    """
    return isinstance(coefficient, Tensor) or coefficient != 0


def add_scaled(x: Tensor | TensorList, y: Tensor | TensorList, alpha: float | Tensor) -> Tensor | TensorList:
    """``x + alpha * y``, out of place (tensors or TensorLists): ``x.add(y, alpha=alpha)``.

    The fused path's coefficient is a 0-d tensor (:func:`nonzero`), and torch.compile (torch
    2.13) rounds a tensor ``alpha`` of an out-of-place ``add`` to float32, even for float64
    tensors (weight decay 0.1 became 0.10000000149); ``addcmul`` keeps it exact. A number
    takes ``add`` as torch.optim writes it, so the eager paths stay bit for bit torch's.
    """
    if isinstance(alpha, Tensor):
        return torch.addcmul(x, y, alpha)
    return x.add(y, alpha=alpha)


def as_lists(*columns: Sequence[Tensor]) -> tuple[TensorList, ...]:
    """Wrap parallel lists of tensors (params, grads, each state buffer) as TensorLists."""
    return tuple(TensorList(column) for column in columns)
