"""COCO-format folders (MS-COCO 2014/2017, or anyone's own data): images + one instances JSON.

pycocotools indexes the file; the JSON is read here first so that a file that is not
JSON, or not an instances file, is an error naming it. Crowd annotations (``iscrowd=1``,
one region covering many instances) are not countable and stay out of the multiset.
"""
from __future__ import annotations

import contextlib
import io
import json
import os

from pycocotools.coco import COCO

from glimpse.data.detection import Annotations, make_record

REQUIRED = ("images", "annotations", "categories")


def load_coco(ann_file: str) -> COCO:
    """pycocotools' index of ``ann_file``, with clear errors for a missing or malformed file."""
    if not os.path.isfile(ann_file):
        raise FileNotFoundError(f"annotation file {ann_file} does not exist; give data.ann_file=PATH to a COCO instances JSON")
    try:
        with open(ann_file, encoding="utf-8") as f:
            dataset = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"annotation file {ann_file} is not JSON ({err}); give a COCO instances JSON") from err
    missing = [key for key in REQUIRED if not isinstance(dataset, dict) or key not in dataset]
    if missing:
        raise ValueError(f"annotation file {ann_file} is not a COCO instances file: it has no {', '.join(missing)}")
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco.createIndex()
    return coco


def read_coco(root: str, ann_file: str) -> Annotations:
    """One record per image of ``ann_file`` (files under ``root``); categories ordered by id."""
    coco = load_coco(ann_file)
    category_ids = sorted(coco.cats)
    names = [coco.cats[c]["name"] for c in category_ids]
    if len(set(names)) != len(names):
        raise ValueError(f"{ann_file}: category names repeat ({names}); each category needs its own name")
    position = {c: i for i, c in enumerate(category_ids)}
    unknown = [a for a in coco.dataset["annotations"] if a.get("category_id") not in position]
    if unknown:
        a = unknown[0]
        raise ValueError(
            f"{ann_file}: annotation id {a.get('id')} (image {a.get('image_id')}) names category_id "
            f"{a.get('category_id')}, which is not in its categories {category_ids} ({len(unknown)} such annotations)"
        )
    orphans = [a for a in coco.dataset["annotations"] if a.get("image_id") not in coco.imgs]
    if orphans:
        raise ValueError(f"{ann_file}: annotation id {orphans[0].get('id')} names image_id {orphans[0].get('image_id')}, "
                         f"which is not in its images ({len(orphans)} such annotations)")
    records = []
    for image_id in sorted(coco.imgs):
        info = coco.imgs[image_id]
        objects = [a for a in coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        boxes = [(x, y, x + w, y + h) for x, y, w, h in (a["bbox"] for a in objects)]
        source = f"{ann_file} (image id {image_id})"
        records.append(
            make_record(os.path.join(root, info["file_name"]), info.get("width", 0), info.get("height", 0),
                        [position[a["category_id"]] for a in objects], boxes, source)
        )
    return Annotations(names, records, ann_file)
