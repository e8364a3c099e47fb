"""The ``steepest`` command line: ``steepest <command> [options]``.

Every command is a subparser whose ``run`` function takes the parsed arguments and returns an
exit code. Error policy, a contract with scripts that call us: bad input (a value out of range,
an unknown name, settings the optimizer rejects) prints one line ``steepest: error: ...`` on
stderr and exits with code 2, without usage text or traceback. Anything else that goes wrong is
a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from collections.abc import Sequence
from typing import NoReturn

from steepest.train import MODELS, OPTIMIZER_CLASS_NAMES, TrainConfig, TrainConfigError, train
from steepest.train.loop import MAX_SEED

#: Exit code of a run that could not finish (the loss diverged).
FAILED = 1
#: Exit code for bad command-line input, as argparse and the Unix convention use.
USAGE_ERROR = 2
#: Exit code after Ctrl-C: 128 + SIGINT, what a shell reports for an interrupted program.
INTERRUPTED = 130


class UsageError(Exception):
    """Bad command-line input; ``main`` prints it as one line and returns ``USAGE_ERROR``."""


class _OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise UsageError instead of printing usage and exiting.

    argparse's own ``error`` prints the whole usage block, then exits from deep inside
    ``parse_args``; raising lets ``main`` print a single line and return its code.
    """

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def positive_float(text: str) -> float:
    """Parse a finite number > 0 (learning rates): nan and inf are refused too."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """Parse a whole number >= 1 (epochs, batch sizes)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def seed_int(text: str) -> int:
    """Parse a seed: a whole number from 0 to 2**64 - 1, the range torch accepts."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(
            f"must be an integer from 0 to 2**64 - 1, got {text!r}"
        )
    return value


def run_train(args: argparse.Namespace) -> int:
    """``steepest train``: train on the digits, print one line per epoch and the test accuracy."""
    config = TrainConfig(
        optimizer=args.optimizer,
        lr=args.lr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        model=args.model,
    )
    # Flush every line: piped into tee or a log file, progress still shows as it happens.
    result = train(config, log=functools.partial(print, flush=True))
    return FAILED if result.diverged else 0


def build_parser() -> argparse.ArgumentParser:
    """The parser of all commands. Each subparser sets ``run``, the function that executes it."""
    parser = _OneLineErrorParser(
        prog="steepest",
        description="Gradient-based optimization on PyTorch.",
        # Abbreviations (--opt for --optimizer) would turn ambiguous, and break scripts, as
        # soon as a later release adds a flag sharing the prefix.
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    defaults = TrainConfig()
    train_parser = commands.add_parser(
        "train",
        help="train a CNN on the handwritten digits (the worked example)",
        description=(
            "Train a small CNN on scikit-learn's 8x8 handwritten digits: Xavier "
            "initialization, mini-batch cross-entropy, one optimizer step per batch. Prints "
            "loss and accuracy after every epoch and the held-out test accuracy at the end."
        ),
        allow_abbrev=False,
    )
    train_parser.add_argument(
        "--optimizer",
        type=str.lower,  # case-insensitive: AdamW, adamw and ADAMW all work
        choices=list(OPTIMIZER_CLASS_NAMES),
        default=defaults.optimizer,
        help=f"update rule (default: {defaults.optimizer})",
    )
    train_parser.add_argument(
        "--lr",
        type=positive_float,
        default=None,
        help="learning rate (default: one that works for the chosen optimizer on this "
        f"problem, {defaults.learning_rate:g} for {defaults.optimizer})",
    )
    train_parser.add_argument(
        "--epochs",
        type=positive_int,
        default=defaults.epochs,
        help=f"passes over the training images (default: {defaults.epochs})",
    )
    train_parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=defaults.batch_size,
        help=f"images per optimizer step (default: {defaults.batch_size})",
    )
    train_parser.add_argument(
        "--seed",
        type=seed_int,
        default=defaults.seed,
        help="seeds initialization and batch order; the same seed prints the same numbers "
        f"(default: {defaults.seed})",
    )
    train_parser.add_argument(
        "--model",
        choices=list(MODELS),
        default=defaults.model,
        help=f"network to train (default: {defaults.model})",
    )
    train_parser.set_defaults(run=run_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command in ``argv`` (default: ``sys.argv[1:]``) and return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return args.run(args)
    except (UsageError, TrainConfigError) as error:
        # TrainConfigError is raised before the first training step only, so this cannot
        # hide a failure in the middle of a run.
        print(f"steepest: error: {error}", file=sys.stderr)
        return USAGE_ERROR
    except SystemExit as exit_request:
        # --help prints and then exits from inside parse_args; report its code instead.
        code = exit_request.code
        return code if isinstance(code, int) else 0
    except KeyboardInterrupt:
        print("steepest: interrupted", file=sys.stderr)
        return INTERRUPTED
