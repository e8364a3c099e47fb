"""Optimizer state in bfloat16 against float32 state: steps to the same targets.

``state_dtype=torch.bfloat16`` halves the optimizer's memory (Adam: the two moments) and
rounds every state update stochastically (``steepest.engine.precision``). The question is
what it costs in optimization quality. On the problems of ``benchmarks/tuning_free.py``
(same targets, same starts and seeds) this finds each family's oracle rate with full-precision
state, then runs the same optimizer at that rate with bfloat16 state, and prints the steps to
the target of both and their ratio (1.00x: no loss of quality; "miss": never got there).

    python benchmarks/state_precision.py                 # every problem (tens of minutes)
    python benchmarks/state_precision.py --quick         # the three objectives
    python benchmarks/state_precision.py --problems mlp  # one problem

The objectives run in float64 (their parameters are float64; the state is then bfloat16
holding float64 updates, the hardest case); the networks run in float32. Not a test.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from tuning_free import FAMILIES, QUICK, TASKS, Method, add_task_arguments, oracle, ratio  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_task_arguments(parser, seeds=3)
    args = parser.parse_args()
    names = args.problems or (QUICK if args.quick else list(TASKS))
    torch.set_num_threads(1)
    header = f"{'problem':<30}{'target':<19}{'family':<14}{'lr':>9}{'float32 state':>15}{'bf16 state':>12}"
    header += f"{'ratio':>8}"
    rows = []
    for name in names:
        task = TASKS[name](args)
        for family in FAMILIES:
            best, lr = oracle(task, family)
            if lr is None:
                rows.append(
                    f"{task.name:<30}{task.target:<19}{family:<14}{'-':>9}{'miss':>15}{'-':>12}{'-':>8}"
                )
                continue
            cls, options = FAMILIES[family]
            narrow = task.run(
                Method(family, family, cls, lr, {**options, "state_dtype": torch.bfloat16}), task.budget
            )
            steps = "miss" if narrow.steps is None else str(narrow.steps)
            rows.append(
                f"{task.name:<30}{task.target:<19}{family:<14}{lr:>9.3g}{best.steps:>15}{steps:>12}"
                f"{ratio(narrow.steps, best.steps):>8}"
            )
            print(rows[-1], flush=True)
    print()
    print(header)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
