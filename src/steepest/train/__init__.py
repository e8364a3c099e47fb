"""``steepest train``: the worked example of the documents as a library and a command.

Train a small CNN on scikit-learn's handwritten digits: Xavier initialization, mini-batch
forward pass, cross-entropy, backward pass, optimizer step, per-epoch validation, final test.

- ``data``: load, split and standardize the digits; mini-batch loaders.
- ``models``: the CNN, an MLP and softmax regression; ``init_xavier``.
- ``loop``: ``TrainConfig`` in, ``train(...)`` runs, ``TrainResult`` out.
"""

from steepest.train.data import DigitsSplits, Split, load_digits_splits, make_loader
from steepest.train.loop import (
    DEFAULT_LEARNING_RATES,
    INIT_SCHEMES,
    LEARNING_RATE_SCHEDULES,
    OPTIMIZER_CLASS_NAMES,
    EpochRecord,
    TrainConfig,
    TrainConfigError,
    TrainResult,
    evaluate,
    format_epoch,
    learning_rate_schedule,
    make_optimizer,
    train,
)
from steepest.train.models import MLP, MODELS, DigitsCNN, SoftmaxRegression, init_xavier

__all__ = [
    "DEFAULT_LEARNING_RATES",
    "INIT_SCHEMES",
    "LEARNING_RATE_SCHEDULES",
    "MLP",
    "MODELS",
    "OPTIMIZER_CLASS_NAMES",
    "DigitsCNN",
    "DigitsSplits",
    "EpochRecord",
    "SoftmaxRegression",
    "Split",
    "TrainConfig",
    "TrainConfigError",
    "TrainResult",
    "evaluate",
    "format_epoch",
    "learning_rate_schedule",
    "init_xavier",
    "load_digits_splits",
    "make_loader",
    "make_optimizer",
    "train",
]
