"""Data for training: the embedded data sets and the user's own files, split three ways.

``load_dataset(name_or_path)`` returns a :class:`DataSplits` (train / validation / test as
(inputs, targets) tensors) for an embedded data set (``DATASETS``: digits, breast_cancer, wine,
diabetes, synthetic_classification, synthetic_regression), a CSV or ``.npz`` file, or a folder
of images with one sub-folder per class. ``load_digits_splits`` is the worked example's digits.

The worked example's data: scikit-learn's 8x8 handwritten digits, split three ways.

The digits ship inside scikit-learn (1,797 images, 10 classes), so training never downloads
anything. They are split once into train / validation / test: the validation split is what the
per-epoch progress line reports, the test split is touched only for the final number, so the
number we print at the end was never used to make a decision.
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset

#: Side length of one digit image, in pixels.
IMAGE_SIZE = 8
#: Number of classes (the digits 0-9).
NUM_CLASSES = 10


@dataclass(frozen=True)
class Split:
    """One part of the data set: images shaped (N, 1, 8, 8) as float32, labels (N,) as int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class DigitsSplits:
    """The train, validation and test splits, standardized with the training split's statistics."""

    train: Split
    val: Split
    test: Split


def load_digits_splits(
    val_fraction: float = 0.1, test_fraction: float = 0.2, split_seed: int = 0
) -> DigitsSplits:
    """Load the digits, split them (stratified by class) and standardize them.

    Args:
        val_fraction: share of all images held out for per-epoch validation (default 0.1).
        test_fraction: share of all images held out for the final test accuracy (default 0.2).
        split_seed: ``random_state`` of the split. It is separate from the training seed on
            purpose: runs with different training seeds (or different optimizers) are scored on
            the same test images, so their numbers differ only because training differed.

    Standardization uses one mean and one standard deviation over all pixels of the training
    split, not one per pixel: a per-pixel scale would treat pixels independently (several border
    pixels are always 0) and distort the image the convolution looks at. Statistics come from the
    training split only, so nothing about validation or test images leaks into training.

    Example:
        >>> splits = load_digits_splits()
        >>> splits.train.images.shape[1:]
        torch.Size([1, 8, 8])
    """
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"{name} must be strictly between 0 and 1, got {fraction}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must leave images to train on, "
            f"got {val_fraction} + {test_fraction}"
        )

    digits = load_digits()
    images, labels = digits.images, digits.target
    rest_images, test_images, rest_labels, test_labels = train_test_split(
        images, labels, test_size=test_fraction, stratify=labels, random_state=split_seed
    )
    # The validation share is of the whole set, so rescale it to a share of what is left.
    train_images, val_images, train_labels, val_labels = train_test_split(
        rest_images,
        rest_labels,
        test_size=val_fraction / (1.0 - test_fraction),
        stratify=rest_labels,
        random_state=split_seed,
    )

    train_tensor = torch.as_tensor(train_images, dtype=torch.float32)
    mean, std = train_tensor.mean(), train_tensor.std()

    def make_split(split_images, split_labels) -> Split:
        pixels = (torch.as_tensor(split_images, dtype=torch.float32) - mean) / std
        return Split(
            images=pixels.unsqueeze(1),  # add the channel axis the convolution expects
            labels=torch.as_tensor(split_labels, dtype=torch.int64),
        )

    return DigitsSplits(
        train=make_split(train_images, train_labels),
        val=make_split(val_images, val_labels),
        test=make_split(test_images, test_labels),
    )


def make_loader(
    split: Split, batch_size: int, shuffle: bool, generator: torch.Generator | None = None
) -> DataLoader:
    """Wrap a split in a DataLoader that yields (images, labels) mini-batches.

    Pass a seeded ``generator`` when shuffling: the batch order then depends on it alone, not on
    the global random state, so a run is reproducible from its seed.
    """
    return DataLoader(
        TensorDataset(split.images, split.labels),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
    )


# ------------------------------------------------------------------------------ load_dataset

#: Image files an image folder may hold (compared in lower case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

#: A label column with at most this many distinct whole numbers is taken as class labels
#: when ``task="auto"``; more distinct values (or fractions) make it a regression target.
MAX_AUTO_CLASSES = 50


@dataclass(frozen=True)
class DataSplits:
    """A data set split three ways, as (inputs, targets) tensor pairs ready for ``fit``.

    Inputs are float32 and standardized with statistics of the training split only. Class
    targets are int64 indices 0..num_classes-1 (``class_names[i]`` names class i); regression
    targets are float32, standardized too (``target_mean``/``target_std`` undo it).

    Attributes:
        name: the data set's name or path.
        task: ``"classification"`` or ``"regression"``.
        train, val, test: (inputs, targets) pairs; a split of fraction 0 is empty.
        input_shape: the shape of one example, e.g. ``(64,)`` or ``(1, 8, 8)``.
        num_classes: number of classes (None for regression).
    """

    name: str
    task: str
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    input_shape: tuple[int, ...]
    num_classes: int | None
    class_names: tuple[str, ...] = ()
    feature_names: tuple[str, ...] = ()
    target_mean: float = 0.0
    target_std: float = 1.0
    extra: dict[str, object] = field(default_factory=dict, repr=False)

    @property
    def num_features(self) -> int:
        """Number of input values of one example (the product of ``input_shape``)."""
        return math.prod(self.input_shape)


def _sklearn_loader(name: str) -> Callable[[], tuple[np.ndarray, np.ndarray, str, tuple[str, ...]]]:
    """(inputs, targets, task, feature names) of an embedded data set."""
    import sklearn.datasets as sk

    def load() -> tuple[np.ndarray, np.ndarray, str, tuple[str, ...]]:
        if name == "digits":
            digits = sk.load_digits()
            return digits.images[:, None, :, :], digits.target, "classification", ()
        if name == "synthetic_classification":
            inputs, targets = sk.make_classification(
                n_samples=1000, n_features=20, n_informative=10, n_classes=3, random_state=0
            )
            return inputs, targets, "classification", ()
        if name == "synthetic_regression":
            inputs, targets = sk.make_regression(n_samples=1000, n_features=20, noise=10.0, random_state=0)
            return inputs, targets, "regression", ()
        bunch = {"breast_cancer": sk.load_breast_cancer, "wine": sk.load_wine, "diabetes": sk.load_diabetes}[
            name
        ]()
        task = "regression" if name == "diabetes" else "classification"
        return bunch.data, bunch.target, task, tuple(str(n) for n in bunch.feature_names)

    return load


#: The data sets that ship with the package (through scikit-learn) or are generated.
DATASETS: tuple[str, ...] = (
    "digits",
    "breast_cancer",
    "wine",
    "diabetes",
    "synthetic_classification",
    "synthetic_regression",
)


def _read_csv(path: Path, label: str | None) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Numeric feature columns and the label column (numbers or class names) of a CSV file."""
    with open(path, encoding="utf-8") as file:
        header = [name.strip() for name in file.readline().strip().split(",")]
    if len(header) < 2:
        raise ValueError(f"path={str(path)!r}: a CSV needs a header row with at least two columns")
    label_name = header[-1] if label is None else label
    if label_name not in header:
        raise ValueError(f"label={label!r} is not a column of {str(path)!r}; its columns are {header}")
    with warnings.catch_warnings():
        # numpy warns (two lines on stderr) about a file with no rows: reported below instead
        warnings.simplefilter("ignore", UserWarning)
        table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=str, ndmin=2)
    if table.size == 0:
        raise ValueError(f"path={str(path)!r} has a header row but no rows of data")
    if table.shape[1] != len(header):
        raise ValueError(f"path={str(path)!r}: rows have {table.shape[1]} values, the header {len(header)}")
    label_index = header.index(label_name)
    feature_names = tuple(name for index, name in enumerate(header) if index != label_index)
    try:
        features = np.delete(table, label_index, axis=1).astype(np.float64)
    except ValueError as error:
        raise ValueError(f"path={str(path)!r}: the feature columns must be numbers ({error})") from None
    labels = np.char.strip(table[:, label_index])
    try:
        labels = labels.astype(np.float64)
    except ValueError:
        pass  # class names such as "cat": mapped to indices below
    return features, labels, feature_names


def _read_npz(path: Path, label: str | None) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        names = list(archive.files)
        input_key = next((key for key in ("X", "x", "inputs", "features", "data") if key in names), None)
        label_key = label or next((key for key in ("y", "labels", "targets", "target") if key in names), None)
        if label_key not in names:
            raise ValueError(f"label={label_key!r} is not an array of {str(path)!r}; it holds {names}")
        if input_key is None:
            rest = [key for key in names if key != label_key]
            if len(rest) != 1:
                raise ValueError(f"path={str(path)!r}: name the inputs X (it holds {names})")
            input_key = rest[0]
        return archive[input_key].astype(np.float64), archive[label_key]


def _read_image_folder(
    path: Path, image_size: int | tuple[int, int], grayscale: bool
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Images of ``path/<class>/*`` resized to ``image_size``, as (N, C, H, W) in [0, 1]."""
    if importlib.util.find_spec("PIL") is None:
        raise ValueError(
            f"path={str(path)!r} is an image folder; reading images needs Pillow (pip install Pillow)"
        )
    from PIL import Image

    width, height = (image_size, image_size) if isinstance(image_size, int) else image_size
    class_folders = sorted(folder for folder in path.iterdir() if folder.is_dir())
    if not class_folders:
        raise ValueError(f"path={str(path)!r} has no sub-folders: an image folder holds one folder per class")
    images, labels = [], []
    for index, folder in enumerate(class_folders):
        for file in sorted(folder.iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(file) as image:
                    image = image.convert("L" if grayscale else "RGB").resize((width, height), Image.BILINEAR)
                    pixels = np.asarray(image, dtype=np.float64) / 255.0
            except (OSError, ValueError) as error:  # PIL.UnidentifiedImageError is an OSError
                raise ValueError(f"{str(file)!r} is not an image Pillow can read ({error})") from None
            images.append(pixels[None] if grayscale else pixels.transpose(2, 0, 1))
            labels.append(index)
    if not images:
        raise ValueError(
            f"path={str(path)!r}: no image files ({', '.join(IMAGE_SUFFIXES)}) in its class folders"
        )
    return np.stack(images), np.asarray(labels), tuple(folder.name for folder in class_folders)


def _check_finite(key: str, values: np.ndarray, what: str) -> None:
    """Refuse NaN or infinite values, naming the first: a model trained on them diverges at once."""
    bad = np.argwhere(~np.isfinite(values))
    if len(bad):
        row, *position = bad[0].tolist()
        if len(position) == 1:  # a table: the column a spreadsheet would show
            where = f"example {row + 1}, column {position[0] + 1}"
        else:
            where = f"example {row + 1}, index {tuple(position)}"
        raise ValueError(
            f"{key!r}: the {what} hold {int(len(bad))} NaN or infinite value(s), the first "
            f"{float(values[tuple(bad[0])])} at {where}"
        )


def _split_indices(
    targets: np.ndarray, classification: bool, val_fraction: float, test_fraction: float, split_seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of train / val / test, stratified by class where possible."""
    from sklearn.model_selection import train_test_split

    def split(indices: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
        if fraction == 0.0:
            return indices, indices[:0]
        stratify = targets[indices] if classification else None
        try:
            return tuple(
                train_test_split(indices, test_size=fraction, stratify=stratify, random_state=split_seed)
            )
        except ValueError:
            # A class too small to appear in every split: fall back to a plain random split.
            warnings.warn("some class is too small to stratify the split; splitting at random", stacklevel=4)
            return tuple(train_test_split(indices, test_size=fraction, random_state=split_seed))

    everything = np.arange(len(targets))
    rest, test = split(everything, test_fraction)
    # The validation share is of the whole set, so rescale it to a share of what is left.
    train, val = split(rest, val_fraction / (1.0 - test_fraction))
    return train, val, test


def load_dataset(
    name_or_path: str | Path,
    label: str | None = None,
    task: str = "auto",
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    image_size: int | tuple[int, int] = 32,
    grayscale: bool = False,
) -> DataSplits:
    """Load a data set by name or from a file or folder, split it and standardize it.

    Args:
        name_or_path: one of ``DATASETS``, a ``.csv`` file (header row; numeric features),
            a ``.npz`` file (arrays ``X`` and ``y``), or a folder with one sub-folder of
            images per class.
        label: the label column of a CSV (default: the last) or the label array of a npz.
        task: ``"classification"``, ``"regression"`` or ``"auto"`` (default): class names or
            at most ``MAX_AUTO_CLASSES`` distinct whole numbers make a classification.
        val_fraction, test_fraction: shares of all examples held out (defaults 0.1, 0.2);
            stratified by class for a classification.
        split_seed: ``random_state`` of the split (default 0).
        image_size: side (or (width, height)) images are resized to (default 32).
        grayscale: read images as one gray channel instead of RGB (default False).

    Example:
        >>> data = load_dataset("wine")
        >>> data.task, data.num_classes, data.input_shape
        ('classification', 3, (13,))
    """
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction < 1.0:
            raise ValueError(f"{name} must be a number in [0, 1), got {name}={fraction!r}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")
    if task not in ("auto", "classification", "regression"):
        raise ValueError(f"task must be 'auto', 'classification' or 'regression', got task={task!r}")

    feature_names: tuple[str, ...] = ()
    class_names: tuple[str, ...] = ()
    images = False
    key = str(name_or_path)
    if key == "":
        raise ValueError("name_or_path='' names no data set; give a data set's name or a path")
    if key in DATASETS:
        if label is not None:
            raise ValueError(f"label={label!r}: the built-in data set {key!r} has its own labels")
        inputs, targets, known_task, feature_names = _sklearn_loader(key)()
        task = known_task if task == "auto" else task
        images = key == "digits"
    else:
        path = Path(name_or_path)
        if not path.exists():
            raise ValueError(
                f"name_or_path={key!r} is neither a data set ({', '.join(DATASETS)}) "
                "nor an existing file or folder"
            )
        if path.is_dir():
            inputs, targets, class_names = _read_image_folder(path, image_size, grayscale)
            task, images = "classification", True
        elif path.suffix.lower() == ".csv":
            inputs, targets, feature_names = _read_csv(path, label)
        elif path.suffix.lower() == ".npz":
            inputs, targets = _read_npz(path, label)
        else:
            raise ValueError(f"name_or_path={key!r}: expected a .csv or .npz file or an image folder")
    if len(targets) != len(inputs) or len(targets) < 3:
        raise ValueError(
            f"{key!r}: needs at least 3 examples with one label each, got {len(inputs)} and {len(targets)}"
        )
    _check_finite(key, np.asarray(inputs, dtype=np.float64), "features")

    if task == "auto":
        numeric = targets.dtype.kind in "fiub"
        whole = numeric and bool(np.all(np.mod(targets.astype(np.float64), 1.0) == 0.0))
        distinct = len(np.unique(targets))
        task = "classification" if not numeric or (whole and distinct <= MAX_AUTO_CLASSES) else "regression"
    if task == "classification":
        values, targets = np.unique(targets, return_inverse=True)
        if len(values) < 2:
            raise ValueError(
                f"{key!r}: every example has the label {values[0].item()!r}; a classification needs "
                "at least two classes"
            )
        if not class_names:
            class_names = tuple(str(value.item() if hasattr(value, "item") else value) for value in values)
        targets_tensor = torch.as_tensor(targets.reshape(-1), dtype=torch.int64)
    elif targets.dtype.kind not in "fiub":
        raise ValueError(f"{key!r}: task='regression' needs numeric labels, got {targets[:3].tolist()}...")
    else:
        _check_finite(key, targets.astype(np.float64).reshape(-1, 1), "labels")
        targets_tensor = torch.as_tensor(targets.astype(np.float64), dtype=torch.float32)

    train, val, test = _split_indices(
        targets_tensor.numpy(), task == "classification", val_fraction, test_fraction, split_seed
    )
    inputs_tensor = torch.as_tensor(inputs, dtype=torch.float32)
    train_inputs = inputs_tensor[torch.as_tensor(train)]
    if images:
        # One mean and std per channel: a per-pixel scale would distort the image a
        # convolution looks at (border pixels of the digits are always 0).
        axes = [0, *range(2, inputs_tensor.ndim)]
        mean, std = train_inputs.mean(dim=axes, keepdim=True), train_inputs.std(dim=axes, keepdim=True)
    else:
        mean, std = train_inputs.mean(dim=0), train_inputs.std(dim=0)
    std = torch.where(std > 0, std, torch.ones_like(std))  # constant features stay constant
    inputs_tensor = (inputs_tensor - mean) / std
    if not bool(torch.isfinite(inputs_tensor).all()):  # finite in float64, not in float32
        raise ValueError(
            f"{key!r}: the features are too large for float32 (largest magnitude "
            f"{float(np.max(np.abs(np.asarray(inputs, dtype=np.float64)))):.3g}): rescale them"
        )
    target_mean, target_std = 0.0, 1.0
    if task == "regression":
        # Standardized targets put every regression on the same loss scale (and the same lr).
        train_targets = targets_tensor[torch.as_tensor(train)]
        target_mean, target_std = float(train_targets.mean()), float(train_targets.std()) or 1.0
        targets_tensor = (targets_tensor - target_mean) / target_std
        if not (math.isfinite(target_mean) and math.isfinite(target_std)):
            raise ValueError(f"{key!r}: the labels are too large for float32: rescale them")

    def pick(indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.int64)
        return inputs_tensor[index], targets_tensor[index]

    return DataSplits(
        name=key,
        task=task,
        train=pick(train),
        val=pick(val),
        test=pick(test),
        input_shape=tuple(inputs_tensor.shape[1:]),
        num_classes=len(class_names) if task == "classification" else None,
        class_names=class_names,
        feature_names=feature_names,
        target_mean=target_mean,
        target_std=target_std,
    )
