"""The worked example's data: scikit-learn's 8x8 handwritten digits, split three ways.

The digits ship inside scikit-learn (1,797 images, 10 classes), so training never downloads
anything. They are split once into train / validation / test: the validation split is what the
per-epoch progress line reports, the test split is touched only for the final number, so the
number we print at the end was never used to make a decision.
"""

from __future__ import annotations

from dataclasses import dataclass

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
