"""``steepest train``: the worked example of the documents as a library and a command.

Train a small CNN on scikit-learn's handwritten digits: Xavier initialization, mini-batch
forward pass, cross-entropy, backward pass, optimizer step, per-epoch validation, final test.

- ``data``: load, split and standardize the digits; mini-batch loaders.
- ``models``: the CNN, an MLP and softmax regression; ``init_xavier``.
- ``loop``: ``TrainConfig`` in, ``train(...)`` runs it through ``fit``, ``TrainResult`` (one
  EpochRecord per epoch, the test scores) out.
- ``fit``: the library's one training loop, for any model and data: accumulation, mixed
  precision, evaluation, stopping criteria, callbacks, checkpoints that resume exactly.
- ``checkpoint``: atomic, verified, ``weights_only``-safe checkpoint files.
"""

from steepest.train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from steepest.train.data import (
    DATASETS,
    DataSplits,
    DigitsSplits,
    Split,
    load_dataset,
    load_digits_splits,
    make_loader,
)
from steepest.train.fit import LOSSES, EvalRecord, FitResult, StepRecord, Trainer, fit
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
from steepest.train.models import MLP, MODELS, DigitsCNN, SoftmaxRegression, build_model, init_xavier

__all__ = [
    "DATASETS",
    "DEFAULT_LEARNING_RATES",
    "LOSSES",
    "CheckpointError",
    "DataSplits",
    "EvalRecord",
    "FitResult",
    "StepRecord",
    "Trainer",
    "build_model",
    "fit",
    "latest_checkpoint",
    "load_checkpoint",
    "load_dataset",
    "save_checkpoint",
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
