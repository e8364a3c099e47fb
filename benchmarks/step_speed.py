"""Optimizer step time: steepest's execution paths against torch.optim's, side by side.

For each parameter set and rule this prints milliseconds per step, the share of the
memory-bandwidth floor (bytes a step must move / measured bandwidth) and the ratio to
torch's fused path, all measured in one run on the same tensors:

* torch.optim for-loop, foreach and fused (``fused=True``);
* steepest per-tensor, multi-tensor and fused (``fused=True``: on the CPU PyTorch's own fused
  kernel where the rule has one (SGD, Adam, AdamW), on CUDA the multi-tensor Triton kernel,
  else the rule compiled into one pass per tensor by ``torch.compile``; the first step's time,
  compilation included, is printed apart);
* with ``--bf16-state``, steepest fused with bfloat16 moments (``state_dtype=torch.bfloat16``).

The floor counts the bytes an elementwise rule cannot avoid (float32: AdamW reads params,
grads and two moments and writes params and moments, 28 bytes per parameter; SGD-momentum
20). The bandwidth is the best of a large copy and a large in-place add (``a += b``), both
counted without write-allocate traffic; the in-place add moves memory the way an optimizer
step does (every line written was just read), so on CPUs, where a copy's destination is
also read into the cache, it is the higher and fairer of the two.

    python benchmarks/step_speed.py                      # CPU: ~5M and ~34M parameter sets
    python benchmarks/step_speed.py --device cuda        # GPU: GPT-2 124M and 1.3B-like sets
    python benchmarks/step_speed.py --end-to-end         # + a GPT-2-small-like training step

Timings are the best of ``--repeats`` steps after a warm-up step. Not a test.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import steepest

# Bytes one step moves per float32 parameter: reads and writes of params, grads and state.
BYTES_PER_PARAMETER = {"SGD-momentum": 20, "Adam": 28, "AdamW": 28}
# With bfloat16 moments, each moment moves 2 bytes each way instead of 4.
BYTES_PER_PARAMETER_BF16_STATE = {"SGD-momentum": 16, "Adam": 20, "AdamW": 20}


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
        # the digits MLP of fit_overhead.py (64-256-256-10): a step of Python, not of memory
        "digits MLP": [(256, 64), (256,), (256, 256), (256,), (10, 256), (10,)],
        "MLP-like": [(1024, 1024)] * 5 + [(1024,)] * 21,
        "GPT-like": gpt_like_shapes(512, 8, vocab=8_000),
    },
    "cuda": {"GPT-2 124M": gpt_like_shapes(768, 12), "GPT 1.3B": gpt_like_shapes(2048, 24)},
}


def memory_bandwidth(device: torch.device, numel: int = 64 * 2**20) -> float:
    """Bytes per second of the faster of a large copy (8 bytes/element) and ``a += b`` (12)."""
    a, b = torch.randn(numel, device=device), torch.randn(numel, device=device)
    copy_seconds = add_seconds = float("inf")
    for _ in range(5):
        start = _now(device)
        a.copy_(b)
        copy_seconds = min(copy_seconds, _now(device) - start)
        start = _now(device)
        a.add_(b)
        add_seconds = min(add_seconds, _now(device) - start)
    return max(8 * numel / copy_seconds, 12 * numel / add_seconds)


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def time_step(optimizer: torch.optim.Optimizer, device: torch.device, repeats: int) -> tuple[float, float]:
    """(first step's seconds, best later step's seconds): the first allocates state (and compiles)."""
    start = _now(device)
    optimizer.step()
    first = _now(device) - start
    best = float("inf")
    for _ in range(repeats):
        start = _now(device)
        optimizer.step()
        best = min(best, _now(device) - start)
    return first, best


def make_params(shapes: list[tuple[int, ...]], device: torch.device) -> list[torch.Tensor]:
    params = []
    for shape in shapes:
        p = torch.randn(shape, device=device, requires_grad=True)
        p.grad = torch.randn(shape, device=device) * 1e-3
        params.append(p)
    return params


def step_table(device: torch.device, repeats: int, bf16_state: bool) -> None:
    bandwidth = memory_bandwidth(device)
    print(f"device {device}, torch {torch.__version__}, memory bandwidth {bandwidth / 1e9:.1f} GB/s\n")
    rules = {
        "SGD-momentum": (torch.optim.SGD, steepest.SGD, {"lr": 1e-3, "momentum": 0.9}),
        "Adam": (torch.optim.Adam, steepest.Adam, {"lr": 1e-3}),
        "AdamW": (torch.optim.AdamW, steepest.AdamW, {"lr": 1e-3}),
    }
    header = f"{'parameter set':<24}{'rule':<14}{'path':<28}{'ms':>9}{'% floor':>9}{'vs torch fused':>16}"
    print(header)
    print("-" * len(header))
    compile_seconds = []
    for set_name, shapes in PARAMETER_SETS["cuda" if device.type == "cuda" else "cpu"].items():
        params = make_params(shapes, device)
        count = sum(p.numel() for p in params)
        label = f"{set_name} {count / 1e6:.2g}M/{len(shapes)}t"
        for rule, (torch_class, steepest_class, kwargs) in rules.items():
            floors = {"": BYTES_PER_PARAMETER[rule] * count / bandwidth}
            paths = {
                "torch for-loop": torch_class(params, foreach=False, **kwargs),
                "torch foreach": torch_class(params, foreach=True, **kwargs),
                "torch fused": torch_class(params, fused=True, **kwargs),
                "steepest per-tensor": steepest_class(params, foreach=False, **kwargs),
                "steepest multi-tensor": steepest_class(params, foreach=True, **kwargs),
                "steepest fused": steepest_class(params, fused=True, **kwargs),
                "steepest default": steepest_class(params, **kwargs),  # what fused=None picks
            }
            if bf16_state:
                paths["steepest fused, bf16 state"] = steepest_class(
                    params, fused=True, state_dtype=torch.bfloat16, **kwargs
                )
            bf16_floor = BYTES_PER_PARAMETER_BF16_STATE[rule] * count / bandwidth
            times = {}
            for name, optimizer in paths.items():
                first, times[name] = time_step(optimizer, device, repeats)
                if "steepest fused" in name:
                    compile_seconds.append((label, rule, name, first))
            for name, seconds in times.items():
                floor = bf16_floor if "bf16" in name else floors[""]
                print(
                    f"{label:<24}{rule:<14}{name:<28}{seconds * 1e3:>9.2f}"
                    f"{100 * floor / seconds:>8.0f}%{times['torch fused'] / seconds:>15.2f}x"
                )
            print()
        del params
    print("first step of each steepest fused path (state allocation + compilation):")
    for label, rule, name, seconds in compile_seconds:
        print(f"  {label:<24}{rule:<14}{name:<28}{seconds:>7.1f} s")


class Block(nn.Module):
    """A GPT-2 block: pre-norm attention and MLP (causal)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        mask = torch.triu(torch.ones(n, n, dtype=torch.bool, device=x.device), diagonal=1)
        h = self.norm1(x)
        x = x + self.attention(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    """GPT-2-small-like: 12 layers, width 768, 12 heads, 50257-token vocabulary (124M)."""

    def __init__(self, vocab: int = 50_257, width: int = 768, layers: int = 12, context: int = 1024):
        super().__init__()
        self.tokens, self.positions = nn.Embedding(vocab, width), nn.Embedding(context, width)
        self.blocks = nn.Sequential(*[Block(width, width // 64) for _ in range(layers)])
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tokens(idx) + self.positions(torch.arange(idx.shape[1], device=idx.device))
        return self.head(self.norm(self.blocks(x)))


def end_to_end(device: torch.device, repeats: int, batch: int, length: int) -> None:
    """A training step (forward, backward, step) of a GPT-2-small-like model: optimizer paths compared."""
    torch.manual_seed(0)
    model = GPT().to(device)
    idx = torch.randint(0, 50_257, (batch, length + 1), device=device)
    loss_fn = nn.CrossEntropyLoss()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    count = sum(p.numel() for p in model.parameters())
    print(f"\nend-to-end training step, GPT-2-small-like ({count / 1e6:.0f}M), batch {batch} x {length}")
    optimizers = {
        "torch fused AdamW": torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True),
        "steepest fused AdamW": steepest.AdamW(model.parameters(), lr=1e-4, fused=True),
    }
    for name, optimizer in optimizers.items():
        best_step = best_total = float("inf")
        for attempt in range(repeats + 1):
            start = _now(device)
            with autocast:
                logits = model(idx[:, :-1])
                loss = loss_fn(logits.reshape(-1, logits.shape[-1]).float(), idx[:, 1:].reshape(-1))
            loss.backward()
            middle = _now(device)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            end = _now(device)
            if attempt:  # the first one allocates state and compiles
                best_step, best_total = min(best_step, end - middle), min(best_total, end - start)
        print(f"  {name:<24} step {best_step * 1e3:8.1f} ms   whole training step {best_total * 1e3:8.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, help="CPU threads (default: torch's); 1 is steadier on a shared machine"
    )
    parser.add_argument("--bf16-state", action="store_true", help="also time bfloat16 moments")
    parser.add_argument("--end-to-end", action="store_true", help="also time a GPT-2-small training step")
    parser.add_argument("--batch", type=int, default=None, help="end-to-end batch (8 on GPU, 1 on CPU)")
    parser.add_argument("--length", type=int, default=None, help="end-to-end sequence length (1024 / 128)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"threads {torch.get_num_threads()}")
    step_table(device, args.repeats, args.bf16_state)
    if args.end_to_end:
        on_gpu = device.type == "cuda"
        end_to_end(
            device,
            max(args.repeats // 2, 2),
            args.batch or (8 if on_gpu else 1),
            args.length or (1024 if on_gpu else 128),
        )


if __name__ == "__main__":
    main()
