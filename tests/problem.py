"""The shared test problem of the optimizer tests: mixed shapes (scalar, vector, matrix,
non-contiguous), two param groups and one parameter whose gradient stays None, with
gradients that depend on where the parameters are. Used by test_optimizers (torch twins and
the spec table) and test_lr_free (Prodigy, D-Adapt, schedule-free) alike."""

from __future__ import annotations

from typing import Any

import torch

FROZEN = 4  # index of the parameter whose grad stays None
GROUP_MEMBERS = ([0, 1, FROZEN], [2, 3])  # parameter indices of the two param groups


# -- a shared problem: mixed shapes, two param groups, one parameter without gradient ------
def make_params(dtype: torch.dtype = torch.float64, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)

    scalar = randn()
    vector = randn(5)
    matrix = randn(4, 3)
    non_contiguous = randn(3, 6)[:, ::2]
    frozen = randn(2)
    params = [scalar, vector, matrix, non_contiguous, frozen]
    assert not params[3].is_contiguous()
    return [p.requires_grad_() for p in params]


def clone_params(params: list[torch.Tensor]) -> list[torch.Tensor]:
    out = []
    for p in params:
        copy = torch.empty_strided(p.shape, p.stride(), dtype=p.dtype)
        copy.copy_(p.detach())
        out.append(copy.requires_grad_())
    return out


def groups(params: list[torch.Tensor], override: dict[str, Any]) -> list[dict[str, Any]]:
    first, second = GROUP_MEMBERS
    return [{"params": [params[i] for i in first]}, {"params": [params[i] for i in second], **override}]


def set_gradients(params: list[torch.Tensor], step: int) -> None:
    """A gradient that depends on where the parameters are, plus seeded noise."""
    for index, p in enumerate(params):
        if index == FROZEN:
            continue
        generator = torch.Generator().manual_seed(1000 * step + index)
        noise = torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.dtype)
        p.grad = torch.sin(3 * p.detach()) + 0.3 * noise


def run(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], steps: int, start: int = 0):
    for step in range(start, start + steps):
        set_gradients(params, step)
        optimizer.step()


def max_relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    scale = torch.maximum(a.abs(), b.abs()).clamp_min(1e-300)
    return float(((a - b).abs() / scale).max()) if a.numel() else 0.0
