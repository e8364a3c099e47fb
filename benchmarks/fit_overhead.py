"""Steps per second of ``steepest.train.fit`` against a minimal hand-written PyTorch loop.

Both do the same work on the CPU: the same MLP, data, AdamW optimizer, batch size and shuffled
batch order, no evaluation, no checkpoints. fit's extra per-step work (records, callbacks, the
loss as a Python float, the gradient norm) is what the ratio measures. Target: fit at most 3%
slower. Not a test: run ``python benchmarks/fit_overhead.py [--model mlp|cnn]``.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.nn import functional as F

import steepest
from steepest.train import fit
from steepest.train.models import DigitsCNN

STEPS = 600
REPEATS = 5


MODEL = "mlp"  # set by main(): "mlp" (a tiny MLP: the worst case for overhead) or "cnn"


def make_model() -> nn.Module:
    torch.manual_seed(0)
    if MODEL == "cnn":
        return DigitsCNN()  # the model of `steepest train`: its steps cost more than the MLP's
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def hand_loop(X: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    model = make_model()
    optimizer = steepest.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    start, step = time.perf_counter(), 0
    while step < STEPS:
        order = torch.randperm(len(y), generator=generator)
        for first in range(0, len(y), batch_size):
            index = order[first : first + batch_size]
            loss = F.cross_entropy(model(X[index]), y[index])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step == STEPS:
                break
    return STEPS / (time.perf_counter() - start)


def fit_loop(X: torch.Tensor, y: torch.Tensor, batch_size: int, track_grad_norm: bool) -> float:
    model = make_model()
    start = time.perf_counter()
    fit(
        model,
        (X, y),
        "cross_entropy",
        "adamw",
        lr=1e-3,
        max_steps=STEPS,
        batch_size=batch_size,
        metrics=(),
        track_grad_norm=track_grad_norm,
    )
    return STEPS / (time.perf_counter() - start)


def main() -> None:
    global MODEL
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    MODEL = parser.parse_args().model
    torch.set_num_threads(1)  # steadier timings; both loops run under the same setting
    generator = torch.Generator().manual_seed(0)
    shape = (4096, 1, 8, 8) if MODEL == "cnn" else (4096, 64)
    X, y = torch.randn(shape, generator=generator), torch.randint(0, 10, (4096,), generator=generator)
    print(f"model {MODEL}")
    print(
        f"{'batch':>6} {'hand loop steps/s':>18} {'fit steps/s':>12} {'ratio':>7} "
        f"{'fit+grad norm steps/s':>22} {'ratio':>7}"
    )
    for batch_size in (32, 128):
        # Interleave and keep the best of several repeats: the least disturbed measurement.
        hand = plain = norm = 0.0
        for _ in range(REPEATS):
            hand = max(hand, hand_loop(X, y, batch_size))
            plain = max(plain, fit_loop(X, y, batch_size, False))
            norm = max(norm, fit_loop(X, y, batch_size, True))
        print(
            f"{batch_size:>6} {hand:>18.1f} {plain:>12.1f} {plain / hand:>7.3f} "
            f"{norm:>22.1f} {norm / hand:>7.3f}"
        )
    print("ratio = fit steps/s / hand-loop steps/s (1.000 = no overhead; target >= 0.97)")


if __name__ == "__main__":
    main()
