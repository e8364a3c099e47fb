"""Steps per second of ``steepest.train.fit`` against a minimal hand-written PyTorch loop.

Both loops do the same work on the CPU: the same model, data, AdamW optimizer, batch size and
shuffled batch order (a ``randperm`` per epoch, batches gathered by index), and per step one
forward pass, loss, backward pass, ``step`` and ``zero_grad``; no evaluation, no checkpoints.
Three pairs are compared:

* ``fit/hand``: fit with ``track_grad_norm=False`` against the plain hand loop;
* ``fit+norm/hand+norm``: fit with ``track_grad_norm=True`` (its default on the CPU) against
  the hand loop that also takes the global gradient norm each step
  (``steepest.clipping.global_norm``, as a float, as a loop that logs it would) and, as fit
  does for the regime diagnosis, the length of every fifth step (a copy of the parameters
  before it, the norm of the difference after);
* ``fit+norm/hand``: fit's default against the plain loop, for what the norm itself costs.

The ratio is fit's steps per second over the hand loop's: in the first two pairs, what fit's
own per-step work (records, callbacks, counters) costs. Target: >= 0.97.

How it is timed. On a shared machine, the speed of a whole run drifts by several percent with
what the other programs do, so two loops timed one after the other differ by more than the
3% to be measured. Here the two loops run in lockstep instead: fit trains its model, and an
``on_step_end`` callback runs one step of the hand loop on a twin model and data, so that fit
step k and hand step k run a millisecond apart, under the same conditions. Each loop's time per
step is the median of its step durations (a step another program interrupted is an outlier the
median ignores); a fit step is timed from the end of one callback to the start of the next,
so the callback's dispatch counts against fit. Both loops see their caches cooled by the other
alike. The ratio is taken per run; the table shows its median over the runs, with quartiles.

The harness is not neutral: timed this way, a hand loop against an identical hand loop shows
about 0.98 on this machine (a step timed from outside a call spans more code than one timed
from inside it). Each batch size therefore first measures that bias (``hand/hand``), and the
``corrected`` column divides fit's ratio by it.
Not a test. Run from the repository root::

    .venv/bin/python benchmarks/fit_overhead.py [--model mlp|cnn] [--runs 5] [--steps 1000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F

import steepest
from steepest import clipping
from steepest.train import fit
from steepest.train.fit import STEP_LENGTH_EVERY
from steepest.train.models import DigitsCNN

BATCH_SIZES = (32, 128)
EXAMPLES = 4096

#: The pairs the table shows: name -> (fit's track_grad_norm, the hand loop's grad_norm).
PAIRS = {
    "fit/hand": (False, False),
    "fit+norm/hand+norm": (True, True),
    "fit+norm/hand": (True, False),
}


def make_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "cnn":
        return DigitsCNN()  # the model of `steepest train`: its steps cost more than the MLP's
    # a tiny MLP, whose steps are so cheap that any per-step overhead shows: the worst case
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


class HandLoopInLockstep:
    """Callback: after each of fit's steps, one step of the loop a user would write by hand.

    The hand loop below is that loop, unrolled one step per call; with ``grad_norm`` it also
    takes the gradient norm. Records the duration of every step of both loops.
    """

    def __init__(
        self, model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int, grad_norm: bool
    ) -> None:
        self.model, self.X, self.y, self.batch_size, self.grad_norm = model, X, y, batch_size, grad_norm
        self.optimizer = steepest.AdamW(model.parameters(), lr=1e-3)
        self.params = list(model.parameters())
        self.generator = torch.Generator().manual_seed(0)
        self.order, self.first = torch.randperm(len(y), generator=self.generator), 0
        self.fit_seconds: list[float] = []
        self.hand_seconds: list[float] = []
        self.resumed: float | None = None  # when the last call returned to fit

    def on_step_end(self, trainer: object, record: object) -> None:
        start = time.perf_counter()
        if self.resumed is not None:
            self.fit_seconds.append(start - self.resumed)
        self.step()
        end = time.perf_counter()
        self.hand_seconds.append(end - start)
        self.resumed = end

    def step(self) -> None:
        """One step of the hand loop."""
        if self.first >= len(self.y):
            self.order, self.first = torch.randperm(len(self.y), generator=self.generator), 0
        index = self.order[self.first : self.first + self.batch_size]
        self.first += self.batch_size
        loss = F.cross_entropy(self.model(self.X[index]), self.y[index])
        loss.backward()
        measuring = self.grad_norm and (len(self.hand_seconds) + 1) % STEP_LENGTH_EVERY == 0
        if self.grad_norm:
            float(clipping.global_norm([p.grad for p in self.params]))
        if measuring:  # and the step's length, every fifth step, as fit measures it
            before = [p.detach().clone() for p in self.params]
        self.optimizer.step()
        if measuring:
            float(clipping.global_norm([p.detach() - old for p, old in zip(self.params, before)]))
        self.optimizer.zero_grad(set_to_none=True)


def speed_ratio(
    model_name: str, X: torch.Tensor, y: torch.Tensor, batch_size: int, steps: int, pair: tuple[bool, bool]
) -> float:
    """fit's steps per second over the hand loop's, in one lockstep run of ``steps`` steps."""
    fit_norm, hand_norm = pair
    hand = HandLoopInLockstep(make_model(model_name), X, y, batch_size, hand_norm)
    fit(
        make_model(model_name),
        (X, y),
        "cross_entropy",
        "adamw",
        lr=1e-3,
        max_steps=steps,
        batch_size=batch_size,
        metrics=(),
        track_grad_norm=fit_norm,
        callbacks=[hand],
    )
    return statistics.median(hand.hand_seconds) / statistics.median(hand.fit_seconds)


def harness_bias(model_name: str, X: torch.Tensor, y: torch.Tensor, batch_size: int, steps: int) -> float:
    """The ratio this harness shows for a loop with no overhead at all: hand loop against hand loop.

    The outer loop plays fit's part (a hand step, then the callback); its steps are timed from
    outside the callback as fit's are, the callback's from inside. The two loops do identical
    work, so any departure from 1 is the harness's own: an interval timed from outside a call
    spans more code (the call, the return, the timing itself) than one timed inside it.
    """
    outer = HandLoopInLockstep(make_model(model_name), X, y, batch_size, False)
    inner = HandLoopInLockstep(make_model(model_name), X, y, batch_size, False)
    for _ in range(steps):
        outer.step()
        inner.on_step_end(None, None)
    return statistics.median(inner.hand_seconds) / statistics.median(inner.fit_seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    parser.add_argument("--runs", type=int, default=5, help="lockstep runs per pair")
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps per run")
    args = parser.parse_args()
    torch.set_num_threads(1)  # steadier timings; both loops run under the same setting
    generator = torch.Generator().manual_seed(0)
    shape = (EXAMPLES, 1, 8, 8) if args.model == "cnn" else (EXAMPLES, 64)
    X = torch.randn(shape, generator=generator)
    y = torch.randint(0, 10, (EXAMPLES,), generator=generator)
    speed_ratio(args.model, X, y, 32, 20, (True, True))  # warm-up: first-call costs off the clock
    print(f"model {args.model}, {args.steps} steps per run, {args.runs} runs per pair")
    print(f"{'batch':>5}  {'ratio':<20} {'median':>7}  {'quartiles':<16} {'corrected':>9}")
    for batch_size in BATCH_SIZES:
        biases = [harness_bias(args.model, X, y, batch_size, args.steps) for _ in range(args.runs)]
        bias = statistics.median(biases)
        first, _, third = statistics.quantiles(biases, n=4, method="inclusive")
        print(f"{batch_size:>5}  {'hand/hand (harness)':<20} {bias:>7.3f}  [{first:.3f}, {third:.3f}]")
        for name, pair in PAIRS.items():
            ratios = [speed_ratio(args.model, X, y, batch_size, args.steps, pair) for _ in range(args.runs)]
            first, median, third = statistics.quantiles(ratios, n=4, method="inclusive")
            print(
                f"{batch_size:>5}  {name:<20} {median:>7.3f}  [{first:.3f}, {third:.3f}]   "
                f"{median / bias:>9.3f}"
            )
    print("ratio: fit's steps/s over the hand loop's; corrected: divided by the hand/hand ratio of")
    print("the same harness (what it shows for identical loops). Target >= 0.97 where both do the")
    print("same work (the first two pairs).")


if __name__ == "__main__":
    main()
