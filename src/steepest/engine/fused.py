"""The fused path: a rule compiled into one single pass over memory per bucket.

An optimizer step is memory traffic. Run eagerly, each line of a rule is its own pass
over every tensor (``exp_avg.lerp_`` reads and writes the first moment, ``exp_avg_sq.mul_``
the second, ...), so Adam moves its state several times per step. Compiled with
``torch.compile`` (Inductor: vectorised C++ on the CPU, Triton on GPUs) the same lines of
the same rule become one loop per tensor that reads params, grads and state once and
writes them once, the floor an elementwise rule can reach.

Two things keep a compiled rule from recompiling at every step:

* every coefficient (learning rate, betas, bias corrections) is handed over as data, an
  entry of one small tensor, so a schedule that changes the learning rate each step changes data, not code;
* a coefficient that is zero is handed over as the number 0 instead, so the rule's
  ``if nonzero(weight_decay):`` branches are decided at compile time and a switched-off
  term costs nothing. Booleans and ``None`` (amsgrad off, Nesterov) are static as well.

Where PyTorch already ships a fused kernel for a rule on the CPU (Adam, AdamW, SGD,
Adagrad: ``torch._fused_adam_`` and friends, vectorised C++ that measured about 10% faster
than the compiled rule on one core), the CPU path calls it instead of compiling: the same
single pass, no compile time, one well-kept kernel rather than a second one of ours. The
tests hold it to the rule, like every path.

On CUDA, the rules with a multi-tensor Triton kernel (:mod:`steepest.engine.triton_kernels`:
Adam/AdamW, SGD) update a whole bucket in one launch instead.

A rule is compiled once per (rule, static settings, tensor shapes): a model's shapes do not
change between steps, so a training run compiles each bucket once, on its first step.

Example:
    >>> opt = steepest.AdamW(model.parameters(), lr=1e-3, fused=True)
    >>> loss.backward(); opt.step()  # first step compiles (seconds); the next ones are one pass
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from steepest.engine.precision import stochastic_round_

# Below this many elements per bucket the default path compiles nothing: compiling costs
# seconds once, and a small model's step is dominated by Python rather than memory traffic.
# 2**22 elements (16 MB of float32 params) is where the compiled CPU step saves milliseconds
# per step (benchmarks/step_speed.py). PyTorch's ready-made CPU kernels cost no compilation
# and run by default at any size.
DEFAULT_FUSED_MIN_ELEMENTS = 2**22

_compiled: dict[tuple, Callable[..., None]] = {}


def _aten_adam(params, grads, buffers, c, steps) -> None:
    fused = torch._fused_adamw_ if c["decoupled_weight_decay"] else torch._fused_adam_
    fused(
        params,
        grads,
        buffers["exp_avg"],
        buffers["exp_avg_sq"],
        buffers.get("max_exp_avg_sq", []),
        steps,
        lr=c["lr"],
        beta1=c["beta1"],
        beta2=c["beta2"],
        weight_decay=c["weight_decay"],
        eps=c["eps"],
        amsgrad="max_exp_avg_sq" in buffers,
        maximize=False,  # the engine negated the gradients already
    )


def _aten_sgd(params, grads, buffers, c, steps) -> None:
    torch._fused_sgd_(
        params,
        grads,
        buffers.get("momentum_buffer", []),
        weight_decay=c["weight_decay"],
        momentum=c["momentum"],
        lr=c["lr"],
        dampening=c["dampening"],
        nesterov=c["nesterov"],
        maximize=False,
        is_first_step=bool(c["fresh"]) and "momentum_buffer" in buffers,
    )


def _aten_adagrad(params, grads, buffers, c, steps) -> None:
    torch._fused_adagrad_(
        params,
        grads,
        buffers["sum"],
        steps,
        lr=c["lr"],
        lr_decay=c["lr_decay"],
        weight_decay=c["weight_decay"],
        eps=c["eps"],
        maximize=False,
    )


def same_layout(params: list[Tensor], grads: list[Tensor], buffers: dict[str, list[Tensor]]) -> bool:
    """Every tensor contiguous and of the parameters' dtype: what a kernel that walks raw
    memory element by element (PyTorch's fused CPU kernels, the Triton kernels) needs."""
    dtype = params[0].dtype
    tensors = [*params, *grads, *(t for column in buffers.values() for t in column)]
    return all(t.is_contiguous() and t.dtype == dtype for t in tensors)


def _aten_kernels() -> dict[Callable[..., Any], Callable[..., None]]:
    from steepest.rules.adagrad import adagrad_update
    from steepest.rules.adam import adam_update
    from steepest.rules.sgd import sgd_update

    return {adam_update: _aten_adam, sgd_update: _aten_sgd, adagrad_update: _aten_adagrad}


#: rule -> PyTorch's own fused CPU kernel for it (filled on first use: rules import the engine)
ATEN_CPU_KERNELS: dict[Callable[..., Any], Callable[..., None]] = {}
_ATEN_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_unavailable: dict[str, str] = {}  # device type -> why compiling failed there


def compile_available(device: torch.device) -> bool:
    """Whether the fused path can run on ``device`` (False once compiling failed there)."""
    if device.type in _unavailable:
        return False
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
    return device.type in ("cpu", "cuda")


def runtime_coefficients(coefficients: dict[str, Any], device: torch.device) -> tuple[dict, tuple, Tensor]:
    """Split a rule's keyword arguments into static ones and runtime scalars.

    Returns ``(static, names, values)``: booleans, None and zeros are static (they choose
    code); every other number is an entry of ``values``, one float64 tensor on ``device``
    (one transfer per step), whose entries the compiled code reads by position. float64
    keeps the scalar arithmetic of the rule (``1 - lr * weight_decay``) as exact as the
    eager path's Python floats; each product with a tensor still runs in the tensor's dtype.
    """
    static, names, values = {}, [], []
    for name, value in coefficients.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value == 0:
            static[name] = value
        else:
            names.append(name)
            values.append(float(value))
    return static, tuple(names), torch.tensor(values, dtype=torch.float64).to(device)


def apply_per_tensor(
    rule: Callable[..., Any],
    params: list[Tensor],
    grads: list[Tensor],
    buffers: dict[str, list[Tensor]],
    static: dict[str, Any],
    names: tuple[str, ...] = (),
    values: Tensor | None = None,
    narrow: tuple[str, ...] = (),
    seeds: Tensor | None = None,
) -> None:
    """The rule applied tensor by tensor: what ``torch.compile`` turns into one pass each.

    ``static`` holds keyword arguments as they are; ``names`` are read from the 1-D tensor
    ``values`` (:func:`runtime_coefficients`). Buffers named in ``narrow`` are stored in a
    lower precision than the parameter (``state_dtype``): the rule updates a widened copy,
    which is stochastically rounded back with ``seeds[index * len(narrow) + k]``
    (:mod:`steepest.engine.precision`). Compiled, widening and rounding fuse into the same
    single pass.
    """
    runtime = {name: values[position] for position, name in enumerate(names)}
    for index in range(len(params)):
        state = {name: column[index] for name, column in buffers.items()}
        wide = {name: state[name].to(params[index].dtype) for name in narrow}
        rule(params[index], grads[index], **{**state, **wide}, **static, **runtime)
        for k, name in enumerate(narrow):
            stochastic_round_(state[name], wide[name], seeds[index * len(narrow) + k])


def _compiled_runner(rule: Callable[..., Any], static: dict[str, Any]) -> Callable[..., None]:
    """A compiled ``apply_per_tensor`` of its own for each rule and static setting.

    torch.compile caches compiled code per Python code object and recompiles at most a few
    times per object before giving up; a fresh code object per rule keeps one optimizer's
    recompiles (a new shape set) from using up another's.
    """
    key = (rule, tuple(sorted((name, repr(value)) for name, value in static.items())))
    if key not in _compiled:
        name = f"fused_{getattr(rule, '__name__', 'rule')}_{len(_compiled)}"
        code = apply_per_tensor.__code__.replace(co_name=name)
        function = types.FunctionType(
            code, apply_per_tensor.__globals__, code.co_name, apply_per_tensor.__defaults__
        )
        _compiled[key] = torch.compile(function, fullgraph=True, dynamic=False)
    return _compiled[key]


def native_kernel(
    rule: Callable[..., Any],
    params: list[Tensor],
    grads: list[Tensor],
    buffers: dict[str, list[Tensor]],
    narrow: tuple[str, ...] = (),
) -> Callable[..., None] | None:
    """A ready-made single-pass kernel for this bucket, or None: PyTorch's own fused kernel on
    the CPU, a multi-tensor Triton kernel on CUDA. Neither costs a compilation of ours."""
    device = params[0].device
    if narrow:
        return None
    if device.type == "cpu":
        # the cheap tests first: this runs at every step of every CPU bucket by default
        if not ATEN_CPU_KERNELS:
            ATEN_CPU_KERNELS.update(_aten_kernels())
        kernel = ATEN_CPU_KERNELS.get(rule)
        if kernel is None or params[0].dtype not in _ATEN_DTYPES:
            return None
        return kernel if same_layout(params, grads, buffers) else None
    if not same_layout(params, grads, buffers):
        return None
    if device.type == "cuda" and compile_available(device):
        from steepest.engine import triton_kernels  # imports Triton: only where a GPU runs it

        if triton_kernels.covers(rule, params, grads, buffers):
            return lambda params, grads, buffers, coefficients, steps: triton_kernels.launch(
                rule, params, grads, buffers, coefficients
            )
    return None


def run_fused(
    rule: Callable[..., Any],
    params: list[Tensor],
    grads: list[Tensor],
    buffers: dict[str, list[Tensor]],
    coefficients: dict[str, Any],
    *,
    required: bool,
    compile: bool = True,
    narrow: tuple[str, ...] = (),
    seeds: Tensor | None = None,
    steps: list[Tensor] | None = None,
) -> bool:
    """Run ``rule`` on one bucket as a single pass; False if it could not be compiled.

    ``steps`` are the bucket's per-tensor ``step`` tensors, already advanced (PyTorch's own
    kernels read them). ``compile=False`` runs a ready-made kernel (:func:`native_kernel`)
    or nothing: False when there is none.

    With ``required`` (``fused=True``) a compilation failure raises; otherwise (``fused=None``)
    it warns once per device type and the caller falls back to the eager path.
    """
    device = params[0].device
    kernel = native_kernel(rule, params, grads, buffers, narrow)
    if kernel is not None:
        kernel(params, grads, buffers, coefficients, steps)
        return True
    if not compile:
        return False
    if not required and not compile_available(device):
        return False  # compiling failed here before: stay eager without trying again
    static, names, values = runtime_coefficients(coefficients, device)
    runner = _compiled_runner(rule, {**static, "names": names, "narrow": narrow})
    # torch.compile (torch 2.13, CPU) drops in-place updates of a 0-d float64 input: the rule
    # sees 1-element views of such tensors instead, which share their storage.
    params, grads = _at_least_1d(params), _at_least_1d(grads)
    buffers = {name: _at_least_1d(column) for name, column in buffers.items()}
    try:
        runner(rule, params, grads, buffers, static, names, values, narrow, seeds)
    except Exception as error:  # the C++ compiler or Triton missing, an unsupported op
        if required:
            raise RuntimeError(
                f"fused=True: compiling {getattr(rule, '__name__', rule)} for {device.type} failed "
                f"({type(error).__name__}: {error}); use fused=False"
            ) from error
        _unavailable[device.type] = f"{type(error).__name__}: {error}"
        warnings.warn(
            f"steepest: the fused path is unavailable on {device.type} ({_unavailable[device.type]}); "
            "using the eager path",
            RuntimeWarning,
            stacklevel=4,
        )
        return False
    return True


def _at_least_1d(tensors: list[Tensor]) -> list[Tensor]:
    """The tensors, a 0-d one as a 1-element view of itself (the same storage)."""
    return [tensor.view(1) if tensor.dim() == 0 else tensor for tensor in tensors]
