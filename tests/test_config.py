"""steepest.train.config: TOML files, flag overrides, validation messages, the TOML writer."""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import pytest
import tomllib
from hypothesis import given
from hypothesis import strategies as st

from steepest.train.config import (
    OPTIONS_BY_NAME,
    TRAIN_OPTIONS,
    ConfigError,
    add_train_arguments,
    configure,
    default_config,
    dump_config,
    load_config,
    optimizer_options,
    resolve_config,
    validate_config,
)
from steepest.train.loop import TrainConfig, TrainConfigError

REQUIRED_OPTIONS = {
    "optimizer", "lr", "epochs", "batch_size", "seed", "model", "dataset", "label", "schedule", "warmup",
    "clip_norm", "init", "accumulate", "precision", "compile", "name", "runs_dir", "checkpoint_every",
    "keep_last", "eval_every", "patience", "target", "tensorboard",
}


def parse_flags(*argv: str) -> dict:
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return vars(parser.parse_args(list(argv)))


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_schema_has_every_required_option_once() -> None:
    names = [option.name for option in TRAIN_OPTIONS]
    assert REQUIRED_OPTIONS <= set(names)
    assert len(names) == len(set(names))
    # the defaults themselves pass validation: a run with no flags and no file must start
    assert validate_config(default_config())["runs_dir"] == "runs"


def test_flags_built_from_schema_only_hold_what_was_typed() -> None:
    assert parse_flags() == {}
    assert parse_flags("--batch-size", "32", "--lr", "auto", "--compile") == {
        "batch_size": 32, "lr": "auto", "compile": True
    }
    assert parse_flags("--no-tensorboard") == {"tensorboard": False}


def test_file_then_flags_then_defaults(tmp_path: Path) -> None:
    path = write(tmp_path / "run.toml", 'optimizer = "SGD"\nlr = 0.1\nepochs = 5\nlabel = "baseline"\n')
    config = configure(parse_flags("--epochs", "7", "--seed", "3"), path)
    assert config["optimizer"] == "sgd"  # from the file, normalized to lower case
    assert config["lr"] == 0.1  # from the file
    assert config["epochs"] == 7  # the flag overrides the file
    assert config["seed"] == 3  # flag only
    assert config["batch_size"] == OPTIONS_BY_NAME["batch_size"].default  # default
    assert config["label"] == "baseline"


def test_flag_can_switch_off_a_boolean_the_file_switched_on(tmp_path: Path) -> None:
    path = write(tmp_path / "run.toml", "compile = true\n")
    assert configure({}, path)["compile"] is True
    assert configure(parse_flags("--no-compile"), path)["compile"] is False


def test_resolved_config_saved_and_reloaded_equal(tmp_path: Path) -> None:
    path = write(tmp_path / "run.toml", 'optimizer = "lion"\nlr = 3e-4\nclip_norm = 1\ntarget = 0.97\n')
    config = configure(parse_flags("--label", 'quote " and \\ backslash', "--epochs", "2"), path)
    saved = write(tmp_path / "config.toml", dump_config(config))
    reloaded = load_config(saved)
    assert "name" not in reloaded  # None values are omitted
    assert validate_config(resolve_config(reloaded, {})) == config


def test_int_for_float_option_becomes_float() -> None:
    config = validate_config(resolve_config({"clip_norm": 1, "lr": 2}, {}))
    assert config["clip_norm"] == 1.0 and isinstance(config["clip_norm"], float)


@pytest.mark.parametrize(
    ("toml_text", "key", "fragments"),
    [
        ("epoch = 3\n", "epoch", ["unknown option", "did you mean 'epochs'"]),
        ("optimiser = 'sgd'\n", "optimiser", ["did you mean 'optimizer'"]),
        ('epochs = "ten"\n', "epochs", ["'ten'", "must be an integer"]),
        ("epochs = 2.5\n", "epochs", ["2.5", "must be an integer"]),
        ("lr = true\n", "lr", ["True", "must be a number or 'auto'"]),
        ("lr = -0.1\n", "lr", ["-0.1", "> 0"]),
        ("lr = nan\n", "lr", ["nan", "> 0"]),
        ("epochs = 0\n", "epochs", ["0", ">= 1"]),
        ("seed = -1\n", "seed", ["-1", "2**64"]),
        ("warmup = -5\n", "warmup", ["-5", ">= 0"]),
        ("target = 1.5\n", "target", ["1.5", "(0, 1]"]),
        ("optimizer = 'adamm'\n", "optimizer", ["adamm", "did you mean 'adam'"]),
        ("schedule = 'cosin'\n", "schedule", ["cosin", "cosine"]),
        ("precision = 'fp8'\n", "precision", ["fp8", "fp32"]),
        ("compile = 1\n", "compile", ["1", "true or false"]),
        ("name = '../escape'\n", "name", ["../escape", "folder name"]),
        ("dataset = 'data/missing.csv'\n", "dataset", ["data/missing.csv", "no such file"]),
        ("dataset = 'mnist'\n", "dataset", ["mnist", "digits"]),
        ("optimizer = 'sgd'\nmomentum = 1.0\n", "momentum", ["1.0", "[0, 1)"]),
        ("weight_decay = -0.1\n", "weight_decay", ["-0.1", ">= 0"]),
        ("momentum = 0.9\n", "momentum", ["0.9", "adamw takes no momentum", "sgd, rmsprop"]),
    ],
)
def test_each_bad_value_in_a_file_gives_one_line_naming_key_value_and_file(
    tmp_path: Path, toml_text: str, key: str, fragments: list[str]
) -> None:
    path = write(tmp_path / "run.toml", toml_text)
    with pytest.raises(ConfigError) as caught:
        configure({}, path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"unknown option {key!r}") or message.startswith(f"{key} = ")
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_bad_flag_value_does_not_blame_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "run.toml", "epochs = 3\n")
    with pytest.raises(ConfigError, match=r"^batch_size = 0: must be >= 1$"):
        configure({"batch_size": 0}, path)


def test_bad_flag_text_is_an_argparse_error() -> None:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_train_arguments(parser)
    with pytest.raises(argparse.ArgumentError, match="must be an integer, got 'ten'"):
        parser.parse_args(["--epochs", "ten"])


def test_missing_config_file_and_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file .*nope.toml does not exist"):
        configure({}, tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="is a folder, not a file"):  # it said "does not exist"
        configure({}, tmp_path)
    path = write(tmp_path / "broken.toml", "epochs = = 3\n")
    with pytest.raises(ConfigError, match="broken.toml is not valid TOML"):
        load_config(path)


def test_existing_dataset_path_is_accepted(tmp_path: Path) -> None:
    data = write(tmp_path / "points.csv", "x,y\n1,2\n")
    assert configure({"dataset": str(data)})["dataset"] == str(data)


def test_tensorboard_refused_before_work_when_not_installed() -> None:
    import importlib.util

    if importlib.util.find_spec("tensorboard") is not None:
        assert configure({"tensorboard": True})["tensorboard"] is True
    else:
        with pytest.raises(ConfigError, match="tensorboard = True: needs the tensorboard package"):
            configure({"tensorboard": True})


def test_config_error_is_what_the_cli_already_reports() -> None:
    assert issubclass(ConfigError, ValueError) and issubclass(ConfigError, TrainConfigError)


def test_dump_writes_schema_keys_in_order_and_escapes() -> None:
    text = dump_config({"extra": [1, 2.5, "a"], "epochs": 3, "optimizer": "sgd", "label": 'a"b\n\x01'})
    assert text.splitlines() == [
        'optimizer = "sgd"',
        "epochs = 3",
        'label = "a\\"b\\n\\u0001"',
        'extra = [1, 2.5, "a"]',
    ]


def test_dump_special_floats() -> None:
    loaded = tomllib.loads(dump_config({"a": math.inf, "b": -math.inf, "c": 1e-300, "d": math.nan}))
    assert loaded["a"] == math.inf and loaded["b"] == -math.inf and loaded["c"] == 1e-300
    assert math.isnan(loaded["d"])


toml_scalars = (
    st.text()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.booleans()
)
toml_values = (
    toml_scalars | st.lists(toml_scalars, max_size=4) | st.dictionaries(st.text(), toml_scalars, max_size=3)
)


@given(st.dictionaries(st.text(min_size=1), toml_values, max_size=6))
def test_dump_round_trips_through_tomllib(values: dict) -> None:
    assert tomllib.loads(dump_config(values)) == values


def test_dump_refuses_what_toml_cannot_hold() -> None:
    with pytest.raises(TypeError, match="cannot write object"):
        dump_config({"x": object()})


def test_the_cli_and_train_share_one_default_run() -> None:
    # `steepest train` with no flags is `train(TrainConfig())`: the settings both have agree
    config, run = default_config(), TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        assert config[field.name] == getattr(run, field.name), field.name


def test_optimizer_options_are_the_ones_set_and_each_goes_where_it_is_taken() -> None:
    config = validate_config({**default_config(), "optimizer": "RMSprop", "momentum": 0, "weight_decay": 1})
    assert optimizer_options(config) == {"momentum": 0.0, "weight_decay": 1.0}
    assert optimizer_options(default_config()) == {}
    for name in ("adam", "adamw", "nadam", "adagrad", "lion"):  # weight decay: every one of them
        config = validate_config({**default_config(), "optimizer": name, "weight_decay": 0.1})
        assert config["weight_decay"] == 0.1
    with pytest.raises(ConfigError, match=r"^momentum = 0.5: adagrad takes no momentum"):
        validate_config({**default_config(), "optimizer": "adagrad", "momentum": 0.5})
