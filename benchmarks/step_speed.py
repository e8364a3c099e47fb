"""Optimizer step time: steepest's execution paths against torch.optim's, side by side.

For each parameter set and rule this prints milliseconds per step, the share of the
memory-bandwidth floor (bytes a step must move / measured copy bandwidth) and the ratio to
torch's fastest path, all measured in one run on the same tensors.

    python benchmarks/step_speed.py                 # CPU: ~6M and ~34M parameter sets
    python benchmarks/step_speed.py --device cuda   # GPU: GPT-2 124M and 1.3B-like sets

The fused single-pass path of issue 7 is not built yet: the rows say what steepest runs today
(per-tensor reference and multi-tensor ``torch._foreach_*``).
"""

from __future__ import annotations

import argparse
import time

import torch

import steepest

# Bytes one step moves per float32 parameter: reads and writes of params, grads and state.
BYTES_PER_PARAMETER = {"SGD-momentum": 20, "Adam": 28, "AdamW": 28}


def gpt_like_shapes(
    width: int, layers: int, vocab: int = 50_257, context: int = 1024
) -> list[tuple[int, ...]]:
    """Tensor shapes of a GPT-2-style transformer: embeddings, then per layer 12 tensors."""
    shapes: list[tuple[int, ...]] = [(vocab, width), (context, width)]
    for _ in range(layers):
        shapes += [(width,), (width,), (3 * width, width), (3 * width,), (width, width), (width,)]
        shapes += [(width,), (width,), (4 * width, width), (4 * width,), (width, 4 * width), (width,)]
    return shapes + [(width,), (width,)]


PARAMETER_SETS = {
    "cpu": {
        "MLP-like": [(1024, 1024)] * 5 + [(1024,)] * 21,
        "GPT-like": gpt_like_shapes(512, 8, vocab=8_000),
    },
    "cuda": {"GPT-2 124M": gpt_like_shapes(768, 12), "GPT 1.3B": gpt_like_shapes(2048, 24)},
}


def copy_bandwidth(device: torch.device, numel: int = 64 * 2**20) -> float:
    """Bytes per second of a large device-to-device copy (read + write)."""
    source, target = torch.randn(numel, device=device), torch.empty(numel, device=device)
    best = float("inf")
    for _ in range(5):
        start = _now(device)
        target.copy_(source)
        best = min(best, _now(device) - start)
    return 2 * 4 * numel / best


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def time_step(optimizer: torch.optim.Optimizer, device: torch.device, repeats: int) -> float:
    optimizer.step()  # state allocation and warm-up
    best = float("inf")
    for _ in range(repeats):
        start = _now(device)
        optimizer.step()
        best = min(best, _now(device) - start)
    return best


def make_params(shapes: list[tuple[int, ...]], device: torch.device) -> list[torch.Tensor]:
    params = []
    for shape in shapes:
        p = torch.randn(shape, device=device, requires_grad=True)
        p.grad = torch.randn(shape, device=device) * 1e-3
        params.append(p)
    return params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    bandwidth = copy_bandwidth(device)
    print(f"device {device}, torch {torch.__version__}, copy bandwidth {bandwidth / 1e9:.1f} GB/s\n")
    rules = {
        "SGD-momentum": (torch.optim.SGD, steepest.SGD, {"lr": 1e-3, "momentum": 0.9}),
        "Adam": (torch.optim.Adam, steepest.Adam, {"lr": 1e-3}),
        "AdamW": (torch.optim.AdamW, steepest.AdamW, {"lr": 1e-3}),
    }
    header = f"{'parameter set':<28}{'rule':<14}{'path':<26}{'ms':>9}{'% floor':>9}{'vs torch fused':>16}"
    print(header)
    print("-" * len(header))
    for set_name, shapes in PARAMETER_SETS["cuda" if device.type == "cuda" else "cpu"].items():
        params = make_params(shapes, device)
        count = sum(p.numel() for p in params)
        label = f"{set_name} {count / 1e6:.1f}M/{len(shapes)}t"
        for rule, (torch_class, steepest_class, kwargs) in rules.items():
            floor = BYTES_PER_PARAMETER[rule] * count / bandwidth
            paths = {
                "torch for-loop": torch_class(params, foreach=False, **kwargs),
                "torch foreach": torch_class(params, foreach=True, **kwargs),
                "torch fused": torch_class(params, fused=True, **kwargs),
                "steepest per-tensor": steepest_class(params, foreach=False, **kwargs),
                "steepest multi-tensor": steepest_class(params, foreach=True, **kwargs),
            }
            times = {name: time_step(opt, device, args.repeats) for name, opt in paths.items()}
            for name, seconds in times.items():
                print(
                    f"{label:<28}{rule:<14}{name:<26}{seconds * 1e3:>9.2f}"
                    f"{100 * floor / seconds:>8.0f}%{times['torch fused'] / seconds:>15.2f}x"
                )
            print()


if __name__ == "__main__":
    main()
