"""Multi-tensor Triton kernels: one launch updates every tensor of a bucket on a GPU.

``torch.compile`` of a rule (:mod:`steepest.engine.fused`) emits one kernel per tensor;
a GPT-2 has 150 of them, so launch overhead and small tensors keep that path at 75-98% of
the memory-bandwidth floor. Here one kernel covers a whole bucket: a table gives, for each
1024-element block, which tensor it belongs to and where it starts, and per-tensor pointer
tables give the addresses of the model's own params, grads and state (no flat copy, no
gather). 1024-element blocks and 8 warps measured 99% of the floor on an H100 (ANCHORS.md).

The arithmetic below is the rule's, written again in Triton's language for Adam/AdamW
(with AMSGrad) and SGD (momentum, Nesterov, dampening, weight decay), in float32 whatever
the parameter dtype. The readable source of truth stays in :mod:`steepest.rules`; the tests
check each kernel against it, on the CPU under ``TRITON_INTERPRET=1``. Other rules, and
buckets these kernels do not cover (non-contiguous tensors, low-precision state), take the
compiled path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from steepest.engine.fused import same_layout
from steepest.rules.adam import adam_update
from steepest.rules.sgd import sgd_update

BLOCK = 1024
WARPS = 8

BLOCK_SIZE: tl.constexpr = tl.constexpr(BLOCK)  # the same, as Triton code reads a global

_TRITON_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


@triton.jit
def _block_location(block_tensor, block_start, sizes):
    """(tensor index, element offsets, mask) of this program's block."""
    block = tl.program_id(0)
    tensor = tl.load(block_tensor + block)
    offsets = tl.load(block_start + block) + tl.arange(0, BLOCK_SIZE)
    return tensor, offsets, offsets < tl.load(sizes + tensor)


@triton.jit
def _pointer(table, row, tensor, count, DTYPE: tl.constexpr):
    """The address of tensor ``tensor`` in row ``row`` of a pointer table."""
    return tl.load(table + row * count + tensor).to(tl.pointer_type(DTYPE))


@triton.jit
def _adam_kernel(
    pointers,
    count,
    sizes,
    block_tensor,
    block_start,
    coefficients,
    DTYPE: tl.constexpr,
    AMSGRAD: tl.constexpr,
    WEIGHT_DECAY: tl.constexpr,
    DECOUPLED: tl.constexpr,
):
    tensor, offsets, mask = _block_location(block_tensor, block_start, sizes)
    param_ptr = _pointer(pointers, 0, tensor, count, DTYPE) + offsets
    grad_ptr = _pointer(pointers, 1, tensor, count, DTYPE) + offsets
    exp_avg_ptr = _pointer(pointers, 2, tensor, count, DTYPE) + offsets
    exp_avg_sq_ptr = _pointer(pointers, 3, tensor, count, DTYPE) + offsets
    lr = tl.load(coefficients + 0)
    beta1 = tl.load(coefficients + 1)
    beta2 = tl.load(coefficients + 2)
    eps = tl.load(coefficients + 3)
    weight_decay = tl.load(coefficients + 4)
    step_size = tl.load(coefficients + 5)
    bias_correction2_sqrt = tl.load(coefficients + 6)

    param = tl.load(param_ptr, mask=mask).to(tl.float32)
    grad = tl.load(grad_ptr, mask=mask).to(tl.float32)
    exp_avg = tl.load(exp_avg_ptr, mask=mask).to(tl.float32)
    exp_avg_sq = tl.load(exp_avg_sq_ptr, mask=mask).to(tl.float32)
    if WEIGHT_DECAY:
        if DECOUPLED:
            param = param * (1 - lr * weight_decay)
        else:
            grad = grad + weight_decay * param
    exp_avg = exp_avg + (1 - beta1) * (grad - exp_avg)
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad * grad
    second_moment = exp_avg_sq
    if AMSGRAD:
        max_ptr = _pointer(pointers, 4, tensor, count, DTYPE) + offsets
        second_moment = tl.maximum(tl.load(max_ptr, mask=mask).to(tl.float32), exp_avg_sq)
        tl.store(max_ptr, second_moment.to(DTYPE), mask=mask)
    denom = tl.sqrt(second_moment) / bias_correction2_sqrt + eps
    param = param - step_size * exp_avg / denom
    tl.store(param_ptr, param.to(DTYPE), mask=mask)
    tl.store(exp_avg_ptr, exp_avg.to(DTYPE), mask=mask)
    tl.store(exp_avg_sq_ptr, exp_avg_sq.to(DTYPE), mask=mask)


@triton.jit
def _sgd_kernel(
    pointers,
    count,
    sizes,
    block_tensor,
    block_start,
    coefficients,
    DTYPE: tl.constexpr,
    MOMENTUM: tl.constexpr,
    FRESH: tl.constexpr,
    NESTEROV: tl.constexpr,
    WEIGHT_DECAY: tl.constexpr,
):
    tensor, offsets, mask = _block_location(block_tensor, block_start, sizes)
    param_ptr = _pointer(pointers, 0, tensor, count, DTYPE) + offsets
    grad_ptr = _pointer(pointers, 1, tensor, count, DTYPE) + offsets
    lr = tl.load(coefficients + 0)
    momentum = tl.load(coefficients + 1)
    dampening = tl.load(coefficients + 2)
    weight_decay = tl.load(coefficients + 3)

    param = tl.load(param_ptr, mask=mask).to(tl.float32)
    grad = tl.load(grad_ptr, mask=mask).to(tl.float32)
    if WEIGHT_DECAY:
        grad = grad + weight_decay * param
    if MOMENTUM:
        buffer_ptr = _pointer(pointers, 2, tensor, count, DTYPE) + offsets
        if FRESH:
            buffer = grad
        else:
            buffer = momentum * tl.load(buffer_ptr, mask=mask).to(tl.float32) + (1 - dampening) * grad
        tl.store(buffer_ptr, buffer.to(DTYPE), mask=mask)
        if NESTEROV:
            grad = grad + momentum * buffer
        else:
            grad = buffer
    tl.store(param_ptr, (param - lr * grad).to(DTYPE), mask=mask)


def _adam(columns: dict[str, list[Tensor]], c: dict[str, Any]) -> tuple[Callable, list, list, dict]:
    amsgrad = "max_exp_avg_sq" in columns
    rows = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if amsgrad else [])
    values = [c["lr"], c["beta1"], c["beta2"], c["eps"], c["weight_decay"], c["step_size"]]
    values.append(c["bias_correction2_sqrt"])
    flags = dict(
        AMSGRAD=amsgrad, WEIGHT_DECAY=c["weight_decay"] != 0, DECOUPLED=bool(c["decoupled_weight_decay"])
    )
    return _adam_kernel, rows, values, flags


def _sgd(columns: dict[str, list[Tensor]], c: dict[str, Any]) -> tuple[Callable, list, list, dict]:
    momentum = "momentum_buffer" in columns
    values = [c["lr"], c["momentum"], c["dampening"], c["weight_decay"]]
    flags = dict(
        MOMENTUM=momentum,
        FRESH=bool(c["fresh"]),
        NESTEROV=bool(c["nesterov"]),
        WEIGHT_DECAY=c["weight_decay"] != 0,
    )
    return _sgd_kernel, ["momentum_buffer"] if momentum else [], values, flags


#: rule -> how to launch its kernel
KERNELS: dict[Callable[..., Any], Callable[..., tuple]] = {adam_update: _adam, sgd_update: _sgd}

_block_tables: dict[tuple, tuple[Tensor, Tensor, Tensor]] = {}


def _blocks(sizes: tuple[int, ...], device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """(sizes, tensor index per block, start per block) for a bucket's layout, built once."""
    key = (sizes, device)
    if key not in _block_tables:
        owners, starts = [], []
        for index, size in enumerate(sizes):
            for start in range(0, size, BLOCK):
                owners.append(index)
                starts.append(start)
        _block_tables[key] = tuple(
            torch.tensor(values, dtype=torch.int64, device=device) for values in (sizes, owners, starts)
        )
    return _block_tables[key]


def covers(rule: Callable[..., Any], params: list[Tensor], grads: list[Tensor], buffers: dict) -> bool:
    """Whether a kernel here can update this bucket: a covered rule, contiguous tensors of one
    supported dtype (state in the parameters' dtype)."""
    return rule in KERNELS and params[0].dtype in _TRITON_DTYPES and same_layout(params, grads, buffers)


def launch(
    rule: Callable[..., Any],
    params: list[Tensor],
    grads: list[Tensor],
    buffers: dict[str, list[Tensor]],
    coefficients: dict[str, Any],
) -> None:
    """Update a bucket with one kernel launch (check :func:`covers` first)."""
    kernel, rows, values, flags = KERNELS[rule](buffers, coefficients)
    device = params[0].device
    columns = [params, grads, *(buffers[name] for name in rows)]
    # one host-to-device copy for every address, one for every coefficient
    pointers = torch.tensor([[t.data_ptr() for t in column] for column in columns], dtype=torch.int64)
    pointers = pointers.to(device, non_blocking=True)
    scalars = torch.tensor([float(v) for v in values], dtype=torch.float32).to(device, non_blocking=True)
    sizes, owners, starts = _blocks(tuple(p.numel() for p in params), device)
    kernel[(len(owners),)](
        pointers,
        len(params),
        sizes,
        owners,
        starts,
        scalars,
        DTYPE=_TRITON_DTYPES[params[0].dtype],
        num_warps=WARPS,
        **flags,
    )
