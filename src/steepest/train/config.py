"""The configuration of ``steepest train``: one schema for flags, TOML files and the saved run.

Every option of ``steepest train`` is one ``Option`` row in ``TRAIN_OPTIONS``: its name, type,
default, help and range check. The command line builds its flags from those rows
(``add_train_arguments``) and TOML files are checked against the same rows
(``validate_config``), so a flag and a file key can never disagree about a name, a default or a
range.

How a configuration is put together (``configure`` does all of it)::

    file values  = load_config("run.toml")                # parsed by tomllib, never executed
    config       = resolve_config(file values, flag values) # flags given win; defaults fill the rest
    config       = validate_config(config, ...)             # the whole thing, before any work
    dump_config(config) -> the run folder's config.toml     # and load_config reads it back equal

Example:
    >>> config = resolve_config({"epochs": 5}, {"lr": 0.01})
    >>> config = validate_config(config)
    >>> config["epochs"], config["lr"], config["optimizer"]
    (5, 0.01, 'adamw')
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steepest import rules
from steepest.train import data as _data_module
from steepest.train.loop import (
    HEAVY_BALL,
    INIT_SCHEMES,
    LEARNING_RATE_SCHEDULES,
    MAX_SEED,
    OPTIMIZER_CLASS_NAMES,
    TrainConfig,
    TrainConfigError,
)
from steepest.train.models import MODELS

try:  # tomllib is in the standard library from Python 3.11; tomli is the same parser for 3.10
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - exercised on Python 3.10 only
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]


class ConfigError(TrainConfigError):
    """A configuration problem found before any work starts; the message is one line.

    It is a ``ValueError`` (through ``TrainConfigError``), so the command line already reports
    it as ``steepest: error: ...`` with exit code 2.
    """


#: Data sets ``dataset`` may name (the data module's list); anything else must be an existing path.
DATASET_NAMES: tuple[str, ...] = tuple(getattr(_data_module, "DATASETS", ("digits",)))
#: Numeric precisions ``precision`` may name.
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
#: How progress is shown: ``auto`` picks ``bar`` on a terminal and ``plain`` lines otherwise.
PROGRESS_MODES: tuple[str, ...] = ("auto", "bar", "plain")

#: A validator returns None when the value is fine, else what is wrong ("must be >= 1").
Validator = Callable[[Any], "str | None"]


# --------------------------------------------------------------------------- validators


def at_least(lowest: float) -> Validator:
    """A validator for numbers >= ``lowest``; e.g. ``at_least(1)(0)`` -> ``"must be >= 1"``."""
    return lambda value: None if value >= lowest else f"must be >= {lowest:g}"


def positive_finite(value: float) -> str | None:
    """Refuse 0, negatives, nan and inf (learning rates, clipping norms)."""
    return None if math.isfinite(value) and value > 0 else "must be a finite number > 0"


def one_of(choices: tuple[str, ...] | Callable[[], tuple[str, ...]]) -> Validator:
    """A validator for a name among ``choices`` (any letter case), with a "did you mean"."""

    def check(value: str) -> str | None:
        names = choices() if callable(choices) else choices
        if value.lower() in names:
            return None
        return f"must be one of {', '.join(names)}{_did_you_mean(value.lower(), names)}"

    return check


def _seed_in_range(value: int) -> str | None:
    return None if 0 <= value <= MAX_SEED else "must be from 0 to 2**64 - 1"


def _momentum(value: float) -> str | None:
    # momentum >= 1 never forgets a gradient: the steps grow without bound
    return None if 0 <= value < 1 else "must be in [0, 1)"


def _nonnegative_finite(value: float) -> str | None:
    return None if math.isfinite(value) and value >= 0 else "must be a finite number >= 0"


def _fraction(value: float) -> str | None:
    return None if 0 < value <= 1 else "must be a fraction in (0, 1]"


_FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=@-]*")


#: The longest file name most file systems take (ext4, APFS, NTFS: 255 bytes or characters).
MAX_FOLDER_NAME_BYTES = 255


def _folder_name(value: str) -> str | None:
    # The run name becomes one folder under runs_dir: a separator or ".." would escape it.
    if len(value.encode("utf-8")) > MAX_FOLDER_NAME_BYTES:
        return f"must be at most {MAX_FOLDER_NAME_BYTES} characters long, got {len(value)}"
    if _FOLDER_NAME.fullmatch(value) and ".." not in value:
        return None
    return "must be a folder name: letters, digits and . _ - + = @, not starting with . or -"


def _model(value: str) -> str | None:
    # "package.module:attr" names the user's own nn.Module (a class or a factory); whether it
    # imports is checked when the run builds it, with its own error message.
    if ":" in value:
        module, _, attribute = value.partition(":")
        return None if module and attribute.isidentifier() else "must be module:attr, e.g. mypackage.nets:Net"
    return one_of(tuple(MODELS))(value)


def _dataset(value: str) -> str | None:
    if not value.strip():  # Path("") is the current folder: never what an empty value meant
        return f"must be one of {', '.join(DATASET_NAMES)} or the path of a data file or folder"
    if value.lower() in DATASET_NAMES:
        return None
    if Path(value).expanduser().exists():  # a data file, or a folder of them
        return None
    looks_like_path = "/" in value or "\\" in value or Path(value).suffix != ""
    if looks_like_path:
        return "no such file"
    return f"must be one of {', '.join(DATASET_NAMES)} or the path of a data file or folder"


def _tensorboard_installed(value: bool) -> str | None:
    # Refused here, before any work, rather than after an hour of training.
    if not value or importlib.util.find_spec("tensorboard") is not None:
        return None
    return "needs the tensorboard package (pip install tensorboard), or set tensorboard = false"


# --------------------------------------------------------------------------- the schema


@dataclass(frozen=True)
class Option:
    """One option of ``steepest train``: the same row serves the flag and the TOML key.

    Args:
        name: the TOML key and, with ``_`` as ``-``, the flag (``batch_size`` -> ``--batch-size``).
        type: ``str``, ``int``, ``float``, ``bool`` or ``Path`` (a path, kept as a string).
            An int is accepted where a float is expected; a bool is never a number.
        default: the value when neither file nor flag gives one; None means "not set".
        help: one line for ``--help``.
        validator: None or a function value -> problem ("must be >= 1") or None if fine.
        keywords: words accepted besides the type, e.g. ``("auto",)`` for ``lr``.
        lowercase: a name matched in any letter case (``AdamW``) and saved lowercased.

    Example:
        >>> Option("epochs", int, 20, "passes over the data", at_least(1)).flag
        '--epochs'
    """

    name: str
    type: type
    default: Any
    help: str
    validator: Validator | None = None
    keywords: tuple[str, ...] = ()
    lowercase: bool = False

    @property
    def flag(self) -> str:
        """The command-line flag, e.g. ``--batch-size``."""
        return "--" + self.name.replace("_", "-")

    def type_problem(self, value: Any) -> str | None:
        """What is wrong with the type of ``value`` (e.g. "must be an integer"), or None."""
        if isinstance(value, str) and value.lower() in self.keywords:
            return None
        words = f" or {' or '.join(repr(word) for word in self.keywords)}" if self.keywords else ""
        if self.type is bool:
            return None if isinstance(value, bool) else f"must be true or false{words}"
        if self.type is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
            return None if ok else f"must be an integer{words}"
        if self.type is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            return None if ok else f"must be a number{words}"
        if self.type in (str, Path):
            return None if isinstance(value, (str, Path)) else f"must be a string{words}"
        raise TypeError(f"option {self.name}: unsupported type {self.type!r}")  # a schema bug

    def normalize(self, value: Any) -> Any:
        """The canonical form of a valid value: ints as floats for floats, paths and keywords as str."""
        if isinstance(value, str) and value.lower() in self.keywords:
            return value.lower()
        if self.type is float:
            return float(value)
        if isinstance(value, Path):
            return str(value)
        if self.lowercase:
            return value.lower()
        return value

    def parse_flag(self, text: str) -> Any:
        """Convert a flag's text to this option's type (ranges are checked later, with the file's).

        Raises ``argparse.ArgumentTypeError``, which argparse turns into one line naming the flag.
        """
        if text.lower() in self.keywords:
            return text.lower()
        try:
            if self.type is int:
                return int(text)
            if self.type is float:
                return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                self.type_problem(text) + f", got {text!r}"  # type: ignore[operator]
            ) from None
        return text


def _optimizer_names() -> tuple[str, ...]:
    return tuple(OPTIMIZER_CLASS_NAMES)


# The default run (`make demo`) is defined once, by ``TrainConfig``, for ``train`` and the CLI.
_RUN = TrainConfig()

#: Every option of ``steepest train``, in the order ``--help`` and ``config.toml`` list them.
TRAIN_OPTIONS: tuple[Option, ...] = (
    # what to train, and how
    Option(
        "optimizer",
        str,
        _RUN.optimizer,
        f"update rule: {', '.join(OPTIMIZER_CLASS_NAMES)}",
        one_of(_optimizer_names),
        lowercase=True,
    ),
    Option(
        "lr",
        float,
        _RUN.lr,
        "peak learning rate; 'auto' chooses one, possibly with another method (the Adam family "
        "runs as Prodigy, SGD may run as MoMo, the rest get a range test) (default: one that "
        "works for the optimizer on the digits)",
        positive_finite,
        keywords=("auto",),
    ),
    Option("momentum", float, None,
           f"momentum of {', '.join(rules.taking('momentum', OPTIMIZER_CLASS_NAMES))}; for "
           f"{', '.join(sorted(HEAVY_BALL))} the default lr then scales by (1 - momentum), as the "
           "steps add up to lr / (1 - momentum) times the gradient (default: the optimizer's own)",
           _momentum),
    Option("weight_decay", float, None,
           "weight decay, as the optimizer applies it: an L2 term for sgd, adam, nadam, rmsprop, "
           "adagrad, dadaptadam, schedulefreesgd; decoupled for adamw, lion, prodigy, "
           "schedulefreeadamw; momo's own (default: the optimizer's own)",
           _nonnegative_finite),
    Option("epochs", int, _RUN.epochs, "passes over the training data", at_least(1)),
    Option("batch_size", int, _RUN.batch_size, "examples per mini-batch", at_least(1)),
    Option("seed", int, _RUN.seed, "seeds initialization and batch order: the same seed, the same numbers",
           _seed_in_range),
    Option("model", str, _RUN.model, f"network to train: {', '.join(MODELS)}, or your own as module:attr",
           _model),
    Option("dataset", str, "digits",
           f"a built-in data set ({', '.join(DATASET_NAMES)}), or a CSV, .npz or image folder's path",
           _dataset),
    Option("label_column", str, None, "CSV column holding the target (default: the last column)"),
    Option("label", str, None, "free text naming the run in reports and legends"),
    Option("schedule", str, _RUN.schedule,
           f"learning-rate schedule peaking at lr: {', '.join(LEARNING_RATE_SCHEDULES)}",
           one_of(tuple(LEARNING_RATE_SCHEDULES)), lowercase=True),
    Option("warmup", int, _RUN.warmup, "optimizer steps of linear warm-up (warmup_cosine, wsd, inverse_sqrt)",
           at_least(0)),
    Option("clip_norm", float, _RUN.clip_norm, "clip the global gradient norm to this (default: no clipping)",
           positive_finite),
    Option("init", str, _RUN.init, f"weight initialization, biases zero: {', '.join(INIT_SCHEMES)}",
           one_of(INIT_SCHEMES), lowercase=True),
    Option("accumulate", int, 1, "mini-batches whose gradients add up into one optimizer step",
           at_least(1)),
    Option("precision", str, "fp32", f"arithmetic of the forward and backward pass: {', '.join(PRECISIONS)}",
           one_of(PRECISIONS), lowercase=True),
    Option("compile", bool, False, "compile the model with torch.compile"),
    Option("on_nonfinite", str, None, "on a NaN/inf loss: raise, skip, backoff or stop (default: stop)",
           one_of(("raise", "skip", "backoff", "stop")), lowercase=True),
    Option("on_spike", str, None, "on a loss spike: skip, backoff or stop (default: carry on)",
           one_of(("skip", "backoff", "stop")), lowercase=True),
    Option("on_too_large", str, None,
           "when the live diagnosis finds the learning rate too large: backoff or stop (default: carry on)",
           one_of(("backoff", "stop")), lowercase=True),
    # where the run goes, and what it records
    Option("name", str, None, "run folder name under runs_dir (default: date, time and optimizer)",
           _folder_name),
    Option("runs_dir", Path, "runs", "folder that holds the run folders"),
    Option("log_every", int, 1, "optimizer steps between two lines of metrics.jsonl (a step that "
           "ends a diagnosis window, the guard acted on, or the run stopped on is always logged)",
           at_least(1)),
    Option("checkpoint_every", int, 1, "epochs between checkpoints (0: only at the end)", at_least(0)),
    Option("keep_last", int, 3, "checkpoints kept; older ones are deleted", at_least(1)),
    Option("eval_every", int, 1, "epochs between two validation passes", at_least(1)),
    Option("patience", int, None, "stop after this many evaluations without a better val_loss",
           at_least(1)),
    Option("target", float, None, "stop once val_accuracy reaches this fraction", _fraction),
    Option("tensorboard", bool, False, "also write TensorBoard event files", _tensorboard_installed),
    Option("progress", str, "auto", "progress display: a live bar on a terminal, plain lines otherwise",
           one_of(PROGRESS_MODES), lowercase=True),
    Option("quiet", bool, False, "print nothing while training"),
)

#: The options by name.
OPTIONS_BY_NAME: dict[str, Option] = {option.name: option for option in TRAIN_OPTIONS}
#: Options that are the optimizer's own keyword arguments, passed on where set.
OPTIMIZER_OPTIONS: tuple[str, ...] = ("momentum", "weight_decay")


def optimizer_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """The optimizer's keyword arguments a configuration sets, e.g. ``{"momentum": 0.9}``.

    Example:
        >>> optimizer_options({"optimizer": "sgd", "momentum": 0.9, "weight_decay": None})
        {'momentum': 0.9}
    """
    return {name: config[name] for name in OPTIMIZER_OPTIONS if config.get(name) is not None}


def default_config() -> dict[str, Any]:
    """Every option at its default, e.g. ``default_config()["epochs"] == 40``."""
    return {option.name: option.default for option in TRAIN_OPTIONS}


# --------------------------------------------------------------------------- command line


def add_train_arguments(parser: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    """Add one flag per ``TRAIN_OPTIONS`` row (or per row in ``names``) to ``parser``; flags not
    given stay out of ``args``. ``steepest lr-find`` takes the data, model and optimizer rows.

    Flags have no argparse default (``argparse.SUPPRESS``): ``vars(args)`` then holds only the
    flags the user typed, which is what ``resolve_config`` needs to let them override a file
    without a default silently overriding it too. Booleans get ``--x`` and ``--no-x``, so a
    flag can switch off what a file switched on.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_train_arguments(parser)
        >>> vars(parser.parse_args(["--epochs", "3", "--no-compile"]))
        {'epochs': 3, 'compile': False}
    """
    options = TRAIN_OPTIONS if names is None else [OPTIONS_BY_NAME[name] for name in names]
    for option in options:
        shown_default = "not set" if option.default is None else option.default
        # a help text that says what "not set" means already ("default: no clipping") keeps it
        said = "(default:" in option.help
        help_text = option.help if said else f"{option.help} (default: {shown_default})"
        if option.type is bool:
            parser.add_argument(
                option.flag,
                dest=option.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            parser.add_argument(
                option.flag,
                dest=option.name,
                type=option.parse_flag,
                default=argparse.SUPPRESS,
                metavar=option.name.upper(),
                help=help_text,
            )


# --------------------------------------------------------------------------- files


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a TOML file of train options; the file is parsed, never executed.

    Args:
        path: the ``--config`` file.

    Raises:
        ConfigError: the file is missing or is not valid TOML (the message names the file).

    Example:
        >>> load_config("run.toml")  # doctest: +SKIP
        {'optimizer': 'sgd', 'lr': 0.1, 'epochs': 5}
    """
    path = Path(path)
    if tomllib is None:  # pragma: no cover - Python 3.10 without tomli
        raise ConfigError(f"reading {path} needs Python 3.11 or the tomli package")
    if not path.is_file():
        problem = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(f"config file {path} {problem}")
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except OSError as error:  # unreadable: permissions, a disk error
        raise ConfigError(f"cannot read config file {path}: {error.strerror or error}") from None


def resolve_config(
    file_values: Mapping[str, Any], flag_values: Mapping[str, Any]
) -> dict[str, Any]:
    """Merge the layers: defaults, then the file, then the flags that were given.

    A flag value of None counts as "not given" (so an argparse namespace with None defaults
    works too). Unknown keys are kept, for ``validate_config`` to report.

    Example:
        >>> resolve_config({"epochs": 5, "seed": 1}, {"epochs": 7, "seed": None})["epochs"]
        7
    """
    config = default_config()
    config.update(file_values)
    config.update({key: value for key, value in flag_values.items() if value is not None})
    return config


def validate_config(
    config: Mapping[str, Any],
    file_values: Mapping[str, Any] | None = None,
    config_path: str | Path | None = None,
) -> dict[str, Any]:
    """Check the whole configuration before any work starts; return it normalized.

    Args:
        config: the resolved configuration (``resolve_config``).
        file_values: what the config file said, to name the file when a bad value came from it.
        config_path: the config file, for the messages.

    Returns:
        A copy with canonical values: ``optimizer`` lowercased, ints promoted for float options,
        paths as strings.

    Raises:
        ConfigError: one line naming the key, the value and where it came from, e.g.
            ``epochs = 'ten' in run.toml: must be an integer``.

    Example:
        >>> validate_config({**default_config(), "epoch": 3})
        Traceback (most recent call last):
        ...
        steepest.train.config.ConfigError: unknown option 'epoch'; did you mean 'epochs'?
    """
    file_values = file_values or {}

    def where(key: str) -> str:
        # A value from the file is the file's own object unless a flag replaced it (`is`: nan != nan).
        value = config[key]
        from_file = key in file_values and (file_values[key] is value or file_values[key] == value)
        if config_path is not None and from_file:
            return f" in {config_path}"
        return ""

    for key in config:
        if key not in OPTIONS_BY_NAME:
            raise ConfigError(
                f"unknown option {key!r}{where(key)}{_did_you_mean(key, tuple(OPTIONS_BY_NAME))}"
            )
    normalized: dict[str, Any] = {}
    for option in TRAIN_OPTIONS:
        value = config.get(option.name, option.default)
        if value is None:  # not set: only defaults are None, and None is always allowed
            normalized[option.name] = None
            continue
        problem = option.type_problem(value)
        if problem is None:
            value = option.normalize(value)
            if option.validator is not None and not (isinstance(value, str) and value in option.keywords):
                problem = option.validator(value)
        if problem is not None:
            raise ConfigError(f"{option.name} = {value!r}{where(option.name)}: {problem}")
        normalized[option.name] = value
    for name in optimizer_options(normalized):  # set, but does this optimizer take it?
        problem = rules.not_taking(normalized["optimizer"], name, OPTIMIZER_CLASS_NAMES)
        if problem is not None:
            raise ConfigError(f"{name} = {normalized[name]!r}{where(name)}: {problem}")
    return normalized


def configure(
    flag_values: Mapping[str, Any], config_path: str | Path | None = None
) -> dict[str, Any]:
    """Load ``config_path`` (if any), let the given flags override it, validate the whole result.

    This is ``steepest train --config run.toml [flags]`` in one call.

    Example:
        >>> configure({"epochs": 2})["epochs"]
        2
    """
    file_values = load_config(config_path) if config_path is not None else {}
    config = resolve_config(file_values, flag_values)
    return validate_config(config, file_values, config_path)


# --------------------------------------------------------------------------- writing TOML


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_string(text: str) -> str:
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:  # TOML forbids raw control characters
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # shortest text that reads back to the same float; valid TOML
    if isinstance(value, (str, Path)):
        return _toml_string(str(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value if item is not None) + "]"
    if isinstance(value, Mapping):
        items = [f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items() if v is not None]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} to TOML")


def dump_config(config: Mapping[str, Any], header: str | None = None) -> str:
    """Write ``config`` as TOML text that ``tomllib.loads`` reads back equal; None values are left out.

    Schema options come first in schema order, other keys after in their own order. Strings,
    numbers (nan and inf too), booleans, lists and nested mappings (as inline tables) are
    supported.

    Args:
        config: the values to write.
        header: optional comment line(s) written at the top.

    Example:
        >>> print(dump_config({"epochs": 3, "lr": 0.01, "clip_norm": None}), end="")
        lr = 0.01
        epochs = 3
    """
    order = {name: index for index, name in enumerate(OPTIONS_BY_NAME)}
    keys = sorted(config, key=lambda key: order.get(key, len(order)))  # stable: others keep order
    lines = [f"# {line}" for line in header.splitlines()] if header else []
    lines += [f"{_toml_key(str(key))} = {_toml_value(config[key])}" for key in keys
              if config[key] is not None]
    return "\n".join(lines) + "\n" if lines else ""


def _did_you_mean(word: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
