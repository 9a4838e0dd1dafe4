"""Photographs with instance annotations (COCO, VOC) as multiset items.

A format reader (coco.py, voc.py) turns its files into `Annotations`: one `ImageRecord` per
image with its objects' categories and boxes in the file's pixels. `select_objects` applies
the class filter, the minimum area and the multiset-size limits; `DetectionDataset` decodes,
letterboxes and emits the same item dict as MultisetMNIST, so model and metrics see no
difference.
"""
from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.utils.data import Dataset

from glimpse.data.images import CorruptImageError, check_image, letterbox, letterbox_geometry, read_image

log = logging.getLogger("glimpse")

BOX_TOLERANCE = 1.0  # px a box may overhang its image (annotation rounding); clipped, beyond is an error
SHOWN = 5  # how many file names an error or warning lists


@dataclass(frozen=True)
class ImageRecord:
    """One image: ``labels`` (n,) index the reader's category names, ``boxes`` (n, 4) are
    [x1, y1, x2, y2] in the file's pixels (x2/y2 exclusive); ``source`` says where the
    annotation came from, for error messages."""

    path: str
    width: int
    height: int
    labels: np.ndarray
    boxes: np.ndarray
    source: str


@dataclass(frozen=True)
class Annotations:
    category_names: list[str]
    records: list[ImageRecord]
    source: str  # the annotation file (or folder) they were read from


def make_record(path: str, width: int, height: int, labels: Sequence[int], boxes: Sequence[Sequence[float]], source: str) -> ImageRecord:
    """Validate one image's annotation: a positive size and boxes inside it (within 1 px,
    which is clipped); anything else is a ValueError that names ``source`` and the image."""
    if width <= 0 or height <= 0:
        raise ValueError(f"{source}: image {path} has size {width}x{height}; the annotation must give its real size")
    boxes_np = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels_np = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(boxes_np):
        x1, y1, x2, y2 = boxes_np.T
        bad = (
            ~np.isfinite(boxes_np).all(1) | (x2 < x1) | (y2 < y1) | (x1 < -BOX_TOLERANCE) | (y1 < -BOX_TOLERANCE)
            | (x2 > width + BOX_TOLERANCE) | (y2 > height + BOX_TOLERANCE)
        )
        if bad.any():
            box = [round(float(v), 2) for v in boxes_np[np.flatnonzero(bad)[0]]]
            raise ValueError(
                f"{source}: box [x1, y1, x2, y2] = {box} lies outside its {width}x{height} image {path} "
                f"({int(bad.sum())} such boxes); fix the annotation or the image size it states"
            )
        boxes_np = np.clip(boxes_np, 0, [width, height, width, height])
    return ImageRecord(path, int(width), int(height), labels_np, boxes_np.astype(np.float32), source)


def select_objects(
    annotations: Annotations,
    class_names: Sequence[str],
    *,
    strict: bool,
    min_area: float = 0.0,
    min_objects: int = 0,
    max_objects: int | None = None,
) -> list[ImageRecord]:
    """Records whose labels index ``class_names``, keeping objects of those classes with box
    area >= ``min_area`` (file pixels), and images whose multiset then has ``min_objects`` to
    ``max_objects`` objects. With ``strict``, an object of a category outside ``class_names``
    is an error (no class filter was asked for) instead of being left out."""
    index = {name: i for i, name in enumerate(class_names)}
    remap = np.array([index.get(name, -1) for name in annotations.category_names] + [-1], dtype=np.int64)
    if strict and (remap[:-1] < 0).any():
        unknown = [n for n, r in zip(annotations.category_names, remap) if r < 0]
        raise ValueError(
            f"{annotations.source} has categories {unknown} that the training split does not have "
            f"({list(class_names)}); list the classes to use in data.classes"
        )
    kept, too_many = [], 0
    for record in annotations.records:
        labels = remap[record.labels]
        x1, y1, x2, y2 = record.boxes.T
        keep = (labels >= 0) & ((x2 - x1) * (y2 - y1) >= min_area)
        n = int(keep.sum())
        if max_objects is not None and n > max_objects:
            too_many += 1
        elif n >= min_objects:
            kept.append(replace(record, labels=labels[keep], boxes=record.boxes[keep]))
    log.info(
        "%s: %d of %d images kept (%d with more than max_objects=%s objects, the rest below min_objects=%d)",
        annotations.source, len(kept), len(annotations.records), too_many, max_objects, min_objects,
    )
    if not kept:
        raise ValueError(
            f"{annotations.source}: no image is left after the filters (classes={list(class_names)}, "
            f"min_area={min_area}, min_objects={min_objects}, max_objects={max_objects}); loosen them"
        )
    return kept


class DetectionDataset(Dataset):
    """Letterboxed images with their multisets; items shaped like MultisetMNIST's.

    Item: "image" float32 [channels, H, W] in [0, 1]; "counts" int64 [num_classes]; "labels"
    int64 [max_objects] (annotation order, padded with -1); "boxes" float32 [max_objects, 4]
    [x1, y1, x2, y2] in the letterboxed image's pixels, padded with 0; "num_objects", "index".

    Missing files are an error (``skip_corrupt=False``) or are left out with one warning and a
    count in ``skipped``; with ``skip_corrupt`` every image is also decoded once up front, so
    a truncated file is found before training, not in the middle of it. ``cache`` keeps all
    letterboxed images in memory as uint8 (for small datasets; workers share it by fork).
    """

    def __init__(
        self,
        records: list[ImageRecord],
        class_names: Sequence[str],
        *,
        image_size: tuple[int, int],
        channels: int = 3,
        max_objects: int,
        skip_corrupt: bool = False,
        cache: bool = False,
        name: str = "",
    ) -> None:
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.image_size = tuple(image_size)
        self.channels = channels
        self.max_objects = max_objects
        self.name = name
        self.skipped: list[tuple[str, str]] = []  # (path, what is wrong)
        missing = [r.path for r in records if not os.path.isfile(r.path)]
        if missing and not skip_corrupt:
            raise FileNotFoundError(
                f"{len(missing)} image file(s) of {name or 'the dataset'} do not exist: {', '.join(missing[:SHOWN])}"
                f"{' ...' if len(missing) > SHOWN else ''}; put them there, or set data.skip_corrupt=true to leave them out"
            )
        self.skipped += [(p, "missing") for p in missing]
        gone = set(missing)
        self.records = [r for r in records if r.path not in gone]
        self._cache: torch.Tensor | None = None
        self._cached_boxes: list[torch.Tensor] = []
        if cache:
            self._fill_cache(skip_corrupt)
        elif skip_corrupt:
            with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
                problems = list(pool.map(check_image, [r.path for r in self.records]))
            self._drop([p for p in problems])
        if self.skipped:
            listed = ", ".join(f"{p} ({why})" for p, why in self.skipped[:SHOWN])
            warnings.warn(
                f"data.skip_corrupt: skipped {len(self.skipped)} of {len(records)} images of {name or 'the dataset'}: "
                f"{listed}{' ...' if len(self.skipped) > SHOWN else ''}",
                stacklevel=2,
            )
        if not self.records:
            raise ValueError(f"{name or 'the dataset'}: every image file is missing or corrupt")

    def _drop(self, problems: list[str | None]) -> None:
        """Leave out the records whose entry in ``problems`` is a message."""
        self.skipped += [(r.path, why) for r, why in zip(self.records, problems) if why]
        self.records = [r for r, why in zip(self.records, problems) if not why]

    def _fill_cache(self, skip_corrupt: bool) -> None:
        def load(i: int):
            try:
                return self._load(i)
            except CorruptImageError as err:
                if not skip_corrupt:
                    raise
                return str(err)

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            loaded = list(pool.map(load, range(len(self.records))))
        self._drop([x if isinstance(x, str) else None for x in loaded])
        loaded = [x for x in loaded if not isinstance(x, str)]
        if loaded:
            self._cache = torch.stack([image for image, _ in loaded])  # uint8 [N, C, H, W]
            self._cached_boxes = [boxes for _, boxes in loaded]
            log.info("%s: cached %d images (%.1f MB)", self.name, len(loaded), self._cache.numel() / 2**20)

    def __len__(self) -> int:
        return len(self.records)

    def use_classes(self, class_names: Sequence[str]) -> None:
        """Index labels by ``class_names`` (matched by name; a superset of this dataset's)."""
        unknown = [name for name in self.class_names if name not in class_names]
        if unknown:
            raise ValueError(f"{self.name}: classes {unknown} are not among {list(class_names)}")
        remap = np.array([list(class_names).index(name) for name in self.class_names], dtype=np.int64)
        self.records = [replace(r, labels=remap[r.labels]) for r in self.records]
        self.class_names, self.num_classes = list(class_names), len(class_names)

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 letterboxed image (C, H, W) and its boxes (n, 4)."""
        record = self.records[index]
        new_w, new_h, _, _ = letterbox_geometry(record.width, record.height, self.image_size)
        image, file_size = read_image(record.path, self.channels, draft_size=(new_w, new_h))
        if file_size != (record.width, record.height):
            raise ValueError(
                f"image file {record.path} is {file_size[0]}x{file_size[1]} but {record.source} says "
                f"{record.width}x{record.height}; fix the annotation"
            )
        boxes = torch.from_numpy(record.boxes)
        decoded_h, decoded_w = image.shape[-2:]
        if (decoded_w, decoded_h) != file_size:  # a JPEG decoded at reduced scale: boxes onto its pixels
            boxes = boxes * torch.tensor([decoded_w / record.width, decoded_h / record.height] * 2)
        return letterbox(image, boxes, self.image_size)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self._cache is not None:
            image, boxes = self._cache[index], self._cached_boxes[index]
        else:
            image, boxes = self._load(index)
        n = boxes.shape[0]
        labels = torch.full((self.max_objects,), -1, dtype=torch.int64)
        labels[:n] = torch.from_numpy(self.records[index].labels)
        padded = torch.zeros(self.max_objects, 4, dtype=torch.float32)
        padded[:n] = boxes
        return {
            "image": image.float().div_(255.0),
            "counts": torch.bincount(labels[:n], minlength=self.num_classes),
            "labels": labels,
            "boxes": padded,
            "num_objects": torch.tensor(n, dtype=torch.int64),
            "index": torch.tensor(index, dtype=torch.int64),
        }
