"""Lightning DataModules over photographs: COCO-format folders and PASCAL VOC.

Like MultisetMNISTDataModule they expose ``datasets`` ("train" / "val" / "test"),
``num_classes``, ``class_names`` and ``max_objects`` (the longest multiset), which train.py
hands to the model.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import lightning.pytorch as pl
import numpy as np
from torch.utils.data import DataLoader

from glimpse.data.coco import read_coco
from glimpse.data.loaders import ResumableOrder, seeded_loader
from glimpse.data.detection import Annotations, DetectionDataset, ImageRecord, select_objects
from glimpse.data.voc import read_voc

log = logging.getLogger("glimpse")
SPLITS = ("train", "val", "test")


class DetectionDataModule(ResumableOrder, pl.LightningDataModule):
    """Photographs with instance annotations; subclasses say how each split's files are read.

    The class list comes from the training split (``classes`` keeps a subset, in the
    dataset's order). Each image's multiset counts its objects of those classes with box
    area >= ``min_area`` (file pixels); images with fewer than ``min_objects`` or more than
    ``max_objects`` objects are left out (the 2018 multiset paper filtered COCO this way).
    A split without its own files is held out of train (``val_fraction``), or, for test,
    is the val split. Images are letterboxed to ``image_size`` (int, or [H, W]).
    ``train_size`` / ``val_size`` / ``test_size`` keep the first N images of a split (null: all).
    """

    def __init__(
        self,
        *,
        batch_size: int = 32,
        num_workers: int = 4,
        pin_memory: bool = False,
        seed: int = 0,
        image_size: int | Sequence[int] = 224,
        channels: int = 3,
        classes: Sequence[str] | None = None,
        min_area: float = 0.0,
        min_objects: int = 1,
        max_objects: int | None = None,
        val_fraction: float = 0.1,
        skip_corrupt: bool = False,
        cache: bool = False,
        train_size: int | None = None,
        val_size: int | None = None,
        test_size: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.batch_size, self.num_workers, self.pin_memory, self.seed = batch_size, num_workers, pin_memory, seed
        size = [image_size] * 2 if isinstance(image_size, int) else list(image_size)
        checks = [
            (len(size) == 2 and all(isinstance(v, int) and v >= 8 for v in size),
             f"data.image_size={image_size}: give one int or [height, width], each >= 8 px"),
            (channels in (1, 3), f"data.channels={channels}: choose 3 (RGB) or 1 (grayscale)"),
            (min_area >= 0, f"data.min_area={min_area}: must be >= 0"),
            (min_objects >= 0, f"data.min_objects={min_objects}: must be >= 0"),
            (max_objects is None or max_objects >= max(min_objects, 1),
             f"data.max_objects={max_objects}: must be >= 1 and >= data.min_objects={min_objects}, or null"),
            (0 < val_fraction < 1, f"data.val_fraction={val_fraction}: must be in (0, 1)"),
        ] + [(n is None or (isinstance(n, int) and not isinstance(n, bool) and n >= 1),
              f"data.{split}_size={n}: the first N images of the {split} split, an integer >= 1 (null: all)")
             for split, n in (("train", train_size), ("val", val_size), ("test", test_size))]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.image_size = tuple(size)
        self.channels = channels
        annotations = self.read_splits()
        self.class_names = self._class_names(annotations["train"], classes)
        self.num_classes = len(self.class_names)
        filters = dict(min_area=min_area, min_objects=min_objects, max_objects=max_objects)
        records = {
            split: select_objects(annotations[split], self.class_names, strict=classes is None, **filters)
            for split in SPLITS if annotations.get(split) is not None
        }
        if "val" not in records:
            records["train"], records["val"] = self._hold_out(records["train"], val_fraction, seed)
        for split, n in (("train", train_size), ("val", val_size), ("test", test_size)):
            if n is not None and split in records:  # a few batches (experiment=smoke)
                records[split] = records[split][:n]
        longest = max(len(r.labels) for split_records in records.values() for r in split_records)
        self.max_objects = max(max_objects or longest, 1)
        kwargs = dict(image_size=self.image_size, channels=channels, max_objects=self.max_objects,
                      skip_corrupt=skip_corrupt, cache=cache)
        self.datasets = {split: DetectionDataset(r, self.class_names, name=f"the {split} split", **kwargs)
                         for split, r in records.items()}
        if "test" not in self.datasets:
            log.warning("no test files given: the test split is the val split")
            self.datasets["test"] = self.datasets["val"]

    def use_classes(self, class_names: Sequence[str]) -> None:
        """Match the classes by name to a checkpoint's ``class_names`` (their order, and any
        classes this data lacks); a class the checkpoint does not know is an error."""
        unknown = [name for name in self.class_names if name not in class_names]
        if unknown:
            raise ValueError(f"the data's classes {unknown} are not among the checkpoint's {list(class_names)}")
        for dataset in {id(d): d for d in self.datasets.values()}.values():
            dataset.use_classes(class_names)
        self.class_names, self.num_classes = list(class_names), len(class_names)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        """The train order comes from a generator seeded by ``seed``, as for Multiset-MNIST."""
        return seeded_loader(self.datasets[split], self.batch_size, shuffle, self.seed, self.num_workers, self.pin_memory)

    def read_splits(self) -> dict[str, Annotations | None]:
        """Annotations of "train", and of "val" / "test" where the config gives their files."""
        raise NotImplementedError(f"{type(self).__name__} must say how its splits are read (see CocoDataModule, VOCDataModule)")

    @staticmethod
    def _class_names(train: Annotations, classes: Sequence[str] | None) -> list[str]:
        if classes is None:
            return list(train.category_names)
        unknown = [c for c in classes if c not in train.category_names]
        if unknown or not classes:
            raise ValueError(
                f"data.classes={list(classes)}: {unknown or 'empty'}; {train.source} has categories {train.category_names}"
            )
        return [name for name in train.category_names if name in set(classes)]

    @staticmethod
    def _hold_out(records: list[ImageRecord], fraction: float, seed: int) -> tuple[list[ImageRecord], list[ImageRecord]]:
        """Image-disjoint random train / val split, the same for the same seed."""
        if len(records) < 2:
            raise ValueError("the training split has fewer than 2 images: nothing to hold out for validation; "
                             "give the val split its own files")
        order = np.random.default_rng(seed).permutation(len(records))
        n_val = min(max(1, round(fraction * len(records))), len(records) - 1)
        log.info("no val files given: holding out %d of %d training images (data.val_fraction=%s)",
                 n_val, len(records), fraction)
        return [records[i] for i in sorted(order[n_val:])], [records[i] for i in sorted(order[:n_val])]


def _path(value: str) -> str:
    return os.path.abspath(os.path.expanduser(str(value)))


def _required(value: str | None, key: str, what: str) -> str:
    if not value:
        raise ValueError(f"data.{key} is required: {what}")
    return _path(value)


class CocoDataModule(DetectionDataModule):
    """Any COCO-format folder: ``root`` (images) + ``ann_file`` (instances JSON) per split.

    ``val_root`` / ``test_root`` default to ``root``. MS-COCO 2014 is this with its own files.
    """

    def __init__(
        self,
        root: str | None = None,
        ann_file: str | None = None,
        val_root: str | None = None,
        val_ann_file: str | None = None,
        test_root: str | None = None,
        test_ann_file: str | None = None,
        **common,
    ) -> None:
        self.files = {
            "train": (_required(root, "root", "the folder of the training images"),
                      _required(ann_file, "ann_file", "the COCO instances JSON of the training images")),
        }
        for split, split_root, split_ann in (("val", val_root, val_ann_file), ("test", test_root, test_ann_file)):
            if split_ann:
                self.files[split] = (_path(split_root or root), _path(split_ann))
        super().__init__(**common)

    def read_splits(self) -> dict[str, Annotations | None]:
        return {split: read_coco(root, ann) for split, (root, ann) in self.files.items()}


class VOCDataModule(DetectionDataModule):
    """A PASCAL VOC folder: ``root`` is VOCdevkit (holding VOC<year>/), one image set per split.

    ``val_image_set`` / ``test_image_set`` null: held out of train / the val split.
    """

    def __init__(
        self,
        root: str | None = None,
        year: int | str = 2007,
        image_set: str = "train",
        val_image_set: str | None = "val",
        test_image_set: str | None = "test",
        keep_difficult: bool = False,
        **common,
    ) -> None:
        self.root = _required(root, "root", "the VOCdevkit folder that holds VOC<year>/")
        self.year = year
        self.image_sets = {"train": image_set, "val": val_image_set, "test": test_image_set}
        self.keep_difficult = keep_difficult
        super().__init__(**common)

    def read_splits(self) -> dict[str, Annotations | None]:
        return {
            split: read_voc(self.root, self.year, image_set, keep_difficult=self.keep_difficult)
            for split, image_set in self.image_sets.items() if image_set
        }
