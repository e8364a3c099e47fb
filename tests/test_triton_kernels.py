"""The multi-tensor Triton kernels, against the rules they implement.

Without a GPU the kernels run on the CPU under Triton's interpreter (``TRITON_INTERPRET=1``,
set here before Triton compiles anything), which executes the same kernel code with NumPy:
the block table, the pointer tables, the masks and the arithmetic are all exercised. On a
machine with CUDA the same checks run compiled on the GPU, through the optimizers.
"""

from __future__ import annotations

import importlib
import os
import sys

import pytest
import torch

pytest.importorskip("triton")

import steepest  # noqa: E402
from steepest.rules.adam import adam_bias_corrections, adam_update  # noqa: E402
from steepest.rules.sgd import sgd_update  # noqa: E402

SHAPES = [(3000,), (7,), (), (40, 30), (1024,), (1025,)]  # block edges, a scalar, a matrix


@pytest.fixture(scope="module")
def kernels():
    """The kernel module, loaded under the interpreter (restored afterwards)."""
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    sys.modules.pop("steepest.engine.triton_kernels", None)
    module = importlib.import_module("steepest.engine.triton_kernels")
    yield module
    sys.modules.pop("steepest.engine.triton_kernels", None)
    if previous is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = previous


def tensors(names, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    made = {}
    for name in names:
        column = [torch.randn(shape, generator=generator).to(dtype) for shape in SHAPES]
        made[name] = [t.abs() for t in column] if name.startswith(("exp_avg_sq", "max")) else column
    return made


def relative_error(ours, reference):
    return max(
        float((a.double() - b.double()).abs().max() / b.double().abs().max()) for a, b in zip(ours, reference)
    )


ADAM_CASES = {
    "adam": dict(weight_decay=0.0, decoupled_weight_decay=False, amsgrad=False),
    "adam-l2": dict(weight_decay=0.1, decoupled_weight_decay=False, amsgrad=False),
    "adamw-amsgrad": dict(weight_decay=0.1, decoupled_weight_decay=True, amsgrad=True),
}


@pytest.mark.parametrize("case", ADAM_CASES, ids=str)
def test_adam_kernel_equals_the_rule(kernels, case):
    settings = ADAM_CASES[case]
    names = ["param", "grad", "exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if settings["amsgrad"] else [])
    reference, ours = tensors(names), tensors(names)
    coefficients = dict(
        lr=0.01,
        beta1=0.9,
        beta2=0.999,
        eps=1e-8,
        weight_decay=settings["weight_decay"],
        decoupled_weight_decay=settings["decoupled_weight_decay"],
        **adam_bias_corrections(0.01, 0.9, 0.999, 3.0),
    )
    buffers = names[2:]
    for index in range(len(SHAPES)):
        adam_update(
            reference["param"][index],
            reference["grad"][index],
            **{name: reference[name][index] for name in buffers},
            **coefficients,
        )
    assert kernels.covers(adam_update, ours["param"], ours["grad"], {n: ours[n] for n in buffers})
    kernels.launch(adam_update, ours["param"], ours["grad"], {n: ours[n] for n in buffers}, coefficients)
    for name in ["param", *buffers]:
        assert relative_error(ours[name], reference[name]) <= 1e-6, name
    assert relative_error(ours["param"], tensors(["param"])["param"]) > 1e-4  # it moved


@pytest.mark.parametrize(
    "settings",
    [
        dict(momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0, fresh=False),
        dict(momentum=0.9, dampening=0.0, nesterov=False, weight_decay=0.01, fresh=True),
        dict(momentum=0.9, dampening=0.1, nesterov=False, weight_decay=0.0, fresh=False),
        dict(momentum=0.9, dampening=0.0, nesterov=True, weight_decay=0.01, fresh=False),
    ],
    ids=["plain", "first-step", "dampened", "nesterov"],
)
def test_sgd_kernel_equals_the_rule(kernels, settings):
    names = ["param", "grad"] + (["momentum_buffer"] if settings["momentum"] else [])
    reference, ours = tensors(names), tensors(names)
    buffers = names[2:]
    for index in range(len(SHAPES)):
        sgd_update(
            reference["param"][index],
            reference["grad"][index],
            **{name: reference[name][index] for name in buffers},
            lr=0.1,
            **settings,
        )
    kernels.launch(
        sgd_update, ours["param"], ours["grad"], {n: ours[n] for n in buffers}, dict(lr=0.1, **settings)
    )
    for name in ["param", *buffers]:
        assert relative_error(ours[name], reference[name]) <= 1e-6, name


def test_kernels_leave_uncovered_buckets_to_the_compiled_path(kernels):
    made = tensors(["param", "grad", "exp_avg", "exp_avg_sq"])
    buffers = {"exp_avg": made["exp_avg"], "exp_avg_sq": made["exp_avg_sq"]}
    assert kernels.covers(adam_update, made["param"], made["grad"], buffers)
    transposed = [made["param"][3].t()]
    assert not kernels.covers(adam_update, transposed, transposed, {"exp_avg": transposed})
    narrow = {"exp_avg": [t.bfloat16() for t in made["exp_avg"]], "exp_avg_sq": made["exp_avg_sq"]}
    assert not kernels.covers(adam_update, made["param"], made["grad"], narrow)
    assert not kernels.covers(
        steepest.rules.lion_update, made["param"], made["grad"], {"exp_avg": made["exp_avg"]}
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    "cls, kwargs", [(steepest.AdamW, {"amsgrad": True}), (steepest.SGD, {"momentum": 0.9})]
)
def test_fused_optimizer_on_cuda_matches_per_tensor(cls, kwargs):
    params = [torch.randn(s, device="cuda", requires_grad=True) for s in SHAPES]
    reference = [p.detach().clone().requires_grad_() for p in params]
    fused, eager = (
        cls(params, lr=0.01, fused=True, **kwargs),
        cls(reference, lr=0.01, foreach=False, **kwargs),
    )
    for step in range(50):
        generator = torch.Generator(device="cuda").manual_seed(step)
        for p, q in zip(params, reference):
            p.grad = torch.randn(p.shape, device="cuda", generator=generator)
            q.grad = p.grad.clone()
        fused.step()
        eager.step()
    assert relative_error(params, reference) <= 1e-6
