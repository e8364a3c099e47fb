"""The ``steepest`` command line: ``steepest <command> [options]``.

Every command is a subparser whose ``run`` function takes the parsed arguments and returns an
exit code. Error policy, a contract with scripts that call us: bad input (a value out of range,
an unknown name, settings the optimizer rejects) prints one line ``steepest: error: ...`` on
stderr and exits with code 2, without usage text or traceback. Anything else that goes wrong is
a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import math
import os
import signal
import sys
import textwrap
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import torch

from steepest import lr, problems, rules, schedules
from steepest.lr.range_test import check_sweep
from steepest.train import TrainConfigError, command
from steepest.train.config import OPTIONS_BY_NAME, add_train_arguments, configure
from steepest.train.data import DataSplits
from steepest.train.report import report_main

#: Exit code of a run that could not finish (the loss diverged).
FAILED = 1
#: Exit code for bad command-line input, as argparse and the Unix convention use.
USAGE_ERROR = 2
#: Exit code after Ctrl-C: 128 + SIGINT, what a shell reports for an interrupted program.
INTERRUPTED = 130
#: Exit code when the reader of stdout went away: 128 + SIGPIPE, as a shell reports it.
BROKEN_PIPE = 128 + getattr(signal, "SIGPIPE", 13)


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


def nonnegative_int(text: str) -> int:
    """Parse a whole number >= 0 (warm-up steps)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


#: lr-find's longest sweep: a curve of 10,000 rates is finer than any suggestion rule reads, and
#: each step is a training step.
MAX_SWEEP_STEPS = 10_000


def sweep_steps(text: str) -> int:
    """Parse lr-find's ``--steps``: a whole number the range test accepts.

    The range test's own check decides (it needs a few steps to read a curve), so its minimum
    is stated once, in the library.
    """
    value = positive_int(text)
    try:
        check_sweep(min_lr=1.0, max_lr=2.0, steps=value, repeats=1, batch_size=1, seed=0)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if value > MAX_SWEEP_STEPS:  # (1e9 steps allocated their curves first: 15 GB, then a hang)
        raise argparse.ArgumentTypeError(f"at most {MAX_SWEEP_STEPS} steps, got {value}")
    return value


def optimizer_name(text: str) -> str:
    """Parse an optimizer name, any letter case, "-" and "_" ignored (``sgd``, ``L-BFGS``)."""
    try:
        rules.by_name(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"unknown optimizer {text!r}; choose from {', '.join(sorted(rules.OPTIMIZERS))}"
        ) from None
    return text


#: The ``steepest train`` options ``lr-find`` takes too: the same data, model and optimizer
#: flags, made from the same schema rows, so both commands share names, defaults and checks.
LR_FIND_OPTIONS: tuple[str, ...] = (
    "optimizer",
    "momentum",
    "weight_decay",
    "model",
    "dataset",
    "label_column",
    "batch_size",
    "seed",
    "init",
)


def run_train(args: argparse.Namespace) -> int:
    """``steepest train``: a complete training run into ``runs/<name>/`` (see steepest.train.command)."""
    flags = {
        key: value
        for key, value in vars(args).items()
        if key not in ("command", "run", "config", "resume", "overwrite", "takes_extra")
    }
    # Flush every line: piped into tee or a log file, progress still shows as it happens.
    return command.run(
        flags, args.config, args.resume, overwrite=args.overwrite, say=functools.partial(print, flush=True)
    )


def run_report(args: argparse.Namespace) -> int:
    """``steepest report runs/a [runs/b ...]``: a self-contained HTML report of one or more runs."""
    return report_main(args.runs, args.output)


def _schedule_arguments(name: str, flags: Sequence[str]) -> dict[str, object]:
    """``--peak 3e-3 --warmup 500`` -> ``{"peak": 0.003, "warmup": 500}``, typed by the schedule.

    Each flag is a field of the schedule's dataclass (dashes become underscores); its type
    comes from the field's annotation: int step counts, float values, str choices, bool
    switches (a bare ``--three-phase``), and comma-separated int tuples (``--milestones 1,2``).
    """
    if name not in schedules.SCHEDULES:
        raise UsageError(f"unknown schedule {name!r}; choose from {', '.join(sorted(schedules.SCHEDULES))}")
    kind = schedules.SCHEDULES[name]
    types = typing.get_type_hints(kind)
    fields = {field.name for field in dataclasses.fields(kind)}
    arguments: dict[str, object] = {}
    index = 0
    while index < len(flags):
        flag = flags[index]
        key = flag[2:].replace("-", "_") if flag.startswith("--") else None
        if key not in fields:
            raise UsageError(f"{name} has no option {flag!r}; it takes --{', --'.join(sorted(fields))}")
        kind_of_value = types[key]
        if kind_of_value is bool:
            arguments[key] = True
            index += 1
            continue
        if index + 1 >= len(flags):
            raise UsageError(f"{flag} needs a value")
        text = flags[index + 1]
        try:
            if kind_of_value is int:
                arguments[key] = int(text)
            elif kind_of_value is float:
                arguments[key] = float(text)
            elif "tuple" in str(kind_of_value):
                arguments[key] = tuple(int(item) for item in text.split(","))
            else:
                arguments[key] = text
        except ValueError:
            raise UsageError(
                f"{flag} expects {getattr(kind_of_value, '__name__', kind_of_value)}, got {text!r}"
            ) from None
        index += 2
    return arguments


#: A schedule plot samples at most this many steps, evenly spaced, the first and the last
#: included: a 1000-pixel-wide picture shows no more, and a schedule of 10**9 steps would
#: otherwise take minutes and hundreds of GB to evaluate at every step.
PLOT_POINTS = 2000


def plotted_steps(steps: int, points: int = PLOT_POINTS) -> range | list[int]:
    """The steps a plot of ``steps`` steps samples: all of them, or ``points`` evenly spaced."""
    if steps <= points:
        return range(steps)
    # integer arithmetic: exact for any step count, first step 0 and last step steps - 1
    return [index * (steps - 1) // (points - 1) for index in range(points)]


def run_schedule_plot(args: argparse.Namespace, extra: Sequence[str]) -> int:
    """``steepest schedule plot NAME --arg value ... -o lr.png``: draw a schedule to a PNG."""
    arguments = _schedule_arguments(args.name, extra)
    try:
        schedule = schedules.by_name(args.name, **arguments)
    except (ValueError, TypeError) as error:
        raise UsageError(str(error)) from None
    steps = args.steps or arguments.get("total") or 1000
    if not isinstance(steps, int) or steps < 1:
        raise UsageError(f"--steps must be a positive integer, got {steps!r}")
    output = args.output if args.output is not None else f"{args.name}.png"
    check_plot_output(output)
    sampled = plotted_steps(steps)
    try:
        values = schedule.values(sampled)
    except OverflowError:  # float ** float raises rather than returning inf (exponential growth)
        raise UsageError(f"{schedule!r} grows past the largest float within {steps} steps") from None
    # The library takes any real value on purpose (a schedule may drive momentum, or rise from
    # "peak" to "floor", both kept); as a learning rate, a negative or infinite one is nonsense.
    bad = next(
        ((step, value) for step, value in zip(sampled, values) if not (math.isfinite(value) and value >= 0)),
        None,
    )
    if bad is not None:
        raise UsageError(
            f"{schedule!r} is {bad[1]:g} at step {bad[0]}: a learning rate must be finite and >= 0"
        )
    # Each line of the legend is the schedule's repr, which can be wider than the figure:
    # wrapped, constrained layout fits it instead of warning that it cannot.
    label = textwrap.fill(repr(schedule), width=90)
    schedules.plot(schedule, sampled, path=output, labels=[label])
    print(f"{schedule!r}: start {values[0]:.4g}, max {max(values):.4g}, end {values[-1]:.4g}")
    print(f"wrote {output}")
    return 0


def data_and_model(config: dict[str, typing.Any]) -> tuple[DataSplits, torch.nn.Module]:
    """The data and the initialized model ``steepest train`` would build from ``config``, checked
    on a batch as ``train`` checks them.

    Bad input (no such data file, a CNN for tabular data, a model that does not import or does
    not fit the data) is a ConfigError: one line, exit code 2.
    """
    data, model = command.load_data_and_model(config)
    command.check_model_on_data(config, data, model)
    command.initialize_model(config, model)
    return data, model


def run_lr_find(args: argparse.Namespace) -> int:
    """``steepest lr-find``: a range test on the data and model of ``train``; print and plot it."""
    check_plot_output(args.output)
    flags = {name: value for name, value in vars(args).items() if name in LR_FIND_OPTIONS}
    config = configure(flags, args.config)
    data, model = data_and_model(config)
    try:
        result = lr.range_test(
            model,
            data.train,
            command.configured_optimizer(config),
            loss_fn=command.loss_function(data),
            min_lr=args.min_lr,
            max_lr=args.max_lr,
            steps=args.steps,
            repeats=args.repeats,
            batch_size=config["batch_size"],
            seed=config["seed"],
        )
    except ValueError as error:
        # The range test raises ValueError only for what it was given: the data (a NaN
        # feature makes the loss NaN before any step), the model, the settings.
        raise UsageError(f"lr-find: {error}") from None
    print(lr.lr_find_summary(result))
    result.plot(args.output)
    print(f"wrote {args.output}")
    return 0


def check_output_folder(output: str) -> None:
    """Refuse an output file whose folder does not exist now, not after the runs were spent."""
    folder = Path(output).resolve().parent
    if not folder.is_dir():
        raise UsageError(f"-o {output}: folder {folder} does not exist")


def check_plot_output(output: str) -> None:
    """Refuse, before any work, a picture file that matplotlib would not write as asked.

    The name must end in a format matplotlib writes (``.png``, ``.pdf``, ``.svg``, ...):
    without one it would silently add ``.png`` (``-o ''`` writes a hidden ``.png``, ``-o
    DIR`` writes ``DIR.png``), and with an unknown one it fails after the work is done.
    """
    from matplotlib.figure import Figure

    if not output:
        raise UsageError("-o: give a file name, e.g. -o plot.png")
    if Path(output).is_dir():
        raise UsageError(f"-o {output}: is a folder; give a file name, e.g. -o {Path(output) / 'plot.png'}")
    check_output_folder(output)
    formats = Figure().canvas.get_supported_filetypes()
    suffix = Path(output).suffix.lower().removeprefix(".")
    if suffix not in formats:
        raise UsageError(
            f"-o {output}: the name must end in a picture format: "
            + ", ".join(f".{name}" for name in sorted(formats))
        )


def run_compare(args: argparse.Namespace) -> int:
    """``steepest compare PROBLEM --optimizer ... --lr ...``: runs side by side, a table and a PNG."""
    check_plot_output(args.output)
    if args.regimes:
        if len(args.optimizer) != 1 or (args.lr is not None and len(args.lr) != 1):
            raise UsageError(
                "--regimes takes one --optimizer and at most one --lr (the good rate), "
                f"got --optimizer {' '.join(args.optimizer)}"
                + ("" if args.lr is None else f" --lr {' '.join(f'{rate:g}' for rate in args.lr)}")
            )
        if args.momentum is not None and len(args.momentum) != 1:
            raise UsageError(
                f"--regimes takes at most one --momentum, got --momentum {' '.join(map(str, args.momentum))}"
            )
        good = None if args.lr is None else args.lr[0]
        options = _momentum_options(args.optimizer[0], args.momentum[0] if args.momentum else None)
        try:
            comparison = lr.three_regimes(
                args.problem, args.optimizer[0], good, steps=args.steps, options=options
            )
        except ValueError as error:  # the rates it derives from --lr (x30) are checked there
            raise UsageError(f"--regimes: {error}") from None
    else:
        # every optimizer at every rate and momentum; without --lr, each at its own default rate
        runs = [
            lr.RunSpec(name, rate, _momentum_options(name, momentum))
            for name in args.optimizer
            for rate in args.lr or [None]
            for momentum in args.momentum or [None]
        ]
        try:
            comparison = lr.compare(args.problem, runs, steps=args.steps)
        except ValueError as error:  # runs it cannot make (settings the optimizer rejects)
            raise UsageError(str(error)) from None
    for note in comparison.notes:
        print(note)
    print(comparison.summary())
    comparison.plot(args.output)
    print(f"wrote {args.output}")
    return 0


def _momentum_options(optimizer: str, momentum: float | None) -> dict[str, float]:
    """``{"momentum": momentum}`` for an optimizer that takes it; a UsageError for one that does not."""
    if momentum is None:
        return {}
    problem = rules.not_taking(optimizer, "momentum")
    if problem is not None:
        raise UsageError(f"--momentum: {problem}")
    return {"momentum": momentum}


def momentum_value(text: str) -> float:
    """Parse a momentum as ``steepest train --momentum`` does (its schema row): a number in [0, 1)."""
    option = OPTIONS_BY_NAME["momentum"]
    value = option.parse_flag(text)
    problem = option.validator(value)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{problem}, got {text!r}")
    return value


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

    train_parser = commands.add_parser(
        "train",
        help="train a model (default: a CNN on the handwritten digits) into a run folder",
        description=(
            "Train a model by mini-batch gradient descent: data, model, progress, checkpoints "
            "that resume exactly, metrics.jsonl and report.html in runs/<name>/. Every flag can "
            "also come from a TOML file (--config); flags override the file."
        ),
        allow_abbrev=False,
    )
    train_parser.add_argument("--config", default=None, help="TOML file of train options")
    train_parser.add_argument(
        "--resume", default=None, metavar="RUN_FOLDER", help="continue the run in this folder exactly"
    )
    train_parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in the existing run folder of this --name, deleting what it holds",
    )
    add_train_arguments(train_parser)
    train_parser.set_defaults(run=run_train)

    report_parser = commands.add_parser(
        "report",
        help="HTML report of one run, or of several runs overlaid",
        description="Write a self-contained report.html with loss, accuracy, learning-rate and "
        "gradient-norm curves and a summary table; several run folders are overlaid to compare.",
        allow_abbrev=False,
    )
    report_parser.add_argument("runs", nargs="+", help="run folders")
    report_parser.add_argument(
        "-o",
        "--output",
        default=None,
        help="HTML file to write (default: RUN/report.html for one run, report.html here for several)",
    )
    report_parser.set_defaults(run=run_report)

    schedule_parser = commands.add_parser(
        "schedule", help="preview learning-rate schedules", allow_abbrev=False
    )
    schedule_commands = schedule_parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    plot_parser = schedule_commands.add_parser(
        "plot",
        help="draw a schedule to a picture file (.png, .svg, .pdf, ...)",
        description="Draw a schedule, e.g. `steepest schedule plot warmup_cosine --peak 3e-3 "
        "--warmup 500 --total 10000 -o lr.png`. The schedule's own arguments follow its name "
        f"as --flags. Schedules: {', '.join(sorted(schedules.SCHEDULES))}.",
        allow_abbrev=False,
    )
    plot_parser.add_argument("name", help="schedule name")
    plot_parser.add_argument(
        "-o",
        "--output",
        default=None,
        help="picture to write, its format named by its extension: .png, .pdf, .svg, ... (default: NAME.png)",
    )
    plot_parser.add_argument(
        "--steps", type=positive_int, default=None, help="steps to draw (default: total, or 1000)"
    )
    plot_parser.set_defaults(run=run_schedule_plot, takes_extra=True)

    find_parser = commands.add_parser(
        "lr-find",
        help="learning-rate range test on the data and model train would use",
        description="Sweep the learning rate upward over short runs (several repeats), print "
        "the suggested rates and their spread, and plot the curve. The schedule peaks it prints "
        "are derived from the consensus rate c and the rate of lowest loss e: peak = min(m x c, "
        "max(e, c)), m = 2 for warmup_cosine, 3 for one_cycle. Data, model, "
        "optimizer, batch size, seed and init take the same flags (and --config file) as train.",
        allow_abbrev=False,
    )
    find_parser.add_argument(
        "--config", default=None, help="TOML file of train options (the ones lr-find takes are read)"
    )
    add_train_arguments(find_parser, LR_FIND_OPTIONS)
    for action in find_parser._actions:  # train's help on the default lr is no concern of a sweep
        if action.dest == "momentum":
            action.help = "momentum of the optimizers that take one (default: the optimizer's own)"
    find_parser.add_argument(
        "--min-lr", type=positive_float, default=1e-6, help="first rate of the sweep (default: 1e-6)"
    )
    find_parser.add_argument(
        "--max-lr", type=positive_float, default=10.0, help="last rate of the sweep (default: 10)"
    )
    find_parser.add_argument("--steps", type=sweep_steps, default=100, help="steps per sweep (default: 100)")
    find_parser.add_argument(
        "--repeats", type=positive_int, default=3, help="sweeps (batch orders) (default: 3)"
    )
    find_parser.add_argument(
        "-o",
        "--output",
        default="lr_find.png",
        help="picture of the curve, with the suggestions and the spread marked; a file name ending "
        "in .png, .pdf, .svg, ... (not a folder) (default: lr_find.png)",
    )
    find_parser.set_defaults(run=run_lr_find)

    compare_parser = commands.add_parser(
        "compare",
        help="one problem, several optimizers or learning rates: curves side by side",
        description="Run a built-in problem once per optimizer and learning rate (every "
        "combination) from the same start; print one line per run (final loss, learning-rate "
        "regime) and draw the loss curves, with the paths over contours for a 2-D problem. "
        "--regimes draws one optimizer at a rate too small, a good one (given by --lr, or "
        "chosen as lr=auto would choose it) and one too large. E.g. `steepest compare rosenbrock "
        "--optimizer sgd adam --lr 1e-3 1e-2 -o compare.png`.",
        allow_abbrev=False,
    )
    compare_parser.add_argument(
        "problem",
        choices=sorted(problems.PROBLEMS),
        metavar="PROBLEM",
        help=f"a built-in problem: {', '.join(sorted(problems.PROBLEMS))}",
    )
    compare_parser.add_argument(
        "--optimizer", nargs="+", type=optimizer_name, default=["sgd"], help="optimizers (default: sgd)"
    )
    compare_parser.add_argument(
        "--lr",
        nargs="+",
        type=positive_float,
        default=None,
        help="learning rates (default: each optimizer's own)",
    )
    compare_parser.add_argument(
        "--momentum",
        nargs="+",
        type=momentum_value,
        default=None,
        help="momentum values, for optimizers that take one (sgd, rmsprop, ...): plain descent "
        "against heavy ball with --optimizer sgd --momentum 0 0.9 (default: each optimizer's own)",
    )
    compare_parser.add_argument(
        "--regimes", action="store_true", help="the three regimes: too small, good, too large"
    )
    compare_parser.add_argument(
        "--steps", type=positive_int, default=500, help="iterations per run (default: 500)"
    )
    compare_parser.add_argument(
        "-o",
        "--output",
        default="compare.png",
        help="picture to write: a file name ending in .png, .pdf, .svg, ... (default: compare.png)",
    )
    compare_parser.set_defaults(run=run_compare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command in ``argv`` (default: ``sys.argv[1:]``) and return its exit code."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if getattr(args, "takes_extra", False):
            return args.run(args, extra)
        if extra:
            raise UsageError(f"unrecognized arguments: {' '.join(extra)}")
        if args.command == "lr-find" and args.min_lr >= args.max_lr:
            raise UsageError(f"--min-lr must be below --max-lr, got {args.min_lr:g} >= {args.max_lr:g}")
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
    except BrokenPipeError:
        # The reader went away (`steepest lr-find | head -3`): stop quietly, as `cat` would. The
        # interpreter flushes stdout again at exit; point it at devnull so that does not fail.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, io.UnsupportedOperation):  # not a real file (captured)
            pass
        return BROKEN_PIPE
