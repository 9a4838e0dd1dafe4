r"""Write any dataset the project reads as a COCO-format folder.

    python -m glimpse.data.export_coco OUT [data=...] [data.key=value ...]

OUT/annotations/instances_<split>.json and OUT/<split>/<index>.png for train, val and test:
the images exactly as the model sees them (PNG, lossless), one non-crowd annotation per
object with its box. Read it back with

    python train.py data=coco data.root=OUT/train data.ann_file=OUT/annotations/instances_train.json \
        data.val_root=OUT/val data.val_ann_file=OUT/annotations/instances_val.json \
        data.test_root=OUT/test data.test_ann_file=OUT/annotations/instances_test.json
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

SPLITS = ("train", "val", "test")
CONFIG_DIR = Path(os.environ.get("PROJECT_ROOT", Path(__file__).resolve().parents[2])) / "configs"


def coco_dict(items: list[dict], class_names: list[str], file_names: list[str]) -> dict:
    """A COCO instances dict for items (dicts with boxes, labels, num_objects and the image's
    "size" (height, width))."""
    images, annotations = [], []
    for image_id, (item, file_name) in enumerate(zip(items, file_names), start=1):
        height, width = item["size"]
        images.append({"id": image_id, "file_name": file_name, "width": int(width), "height": int(height)})
        n = int(item["num_objects"])
        for (x1, y1, x2, y2), label in zip(item["boxes"][:n].tolist(), item["labels"][:n].tolist()):
            w, h = x2 - x1, y2 - y1
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                                "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": 0})
    categories = [{"id": i + 1, "name": name, "supercategory": "object"} for i, name in enumerate(class_names)]
    return {"info": {"description": "exported by glimpse.data.export_coco"}, "images": images,
            "annotations": annotations, "categories": categories}


def write_png(image: torch.Tensor, path: Path) -> None:
    """float [C, H, W] in [0, 1] -> an 8-bit grayscale or RGB PNG."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else np.ascontiguousarray(array)).save(path)


def export_split(dataset: Dataset, class_names: list[str], out: Path, split: str, num_workers: int = 0) -> Path:
    """Write one split's images and instances JSON; returns the JSON's path."""
    folder = out / split
    folder.mkdir(parents=True)
    loader = DataLoader(dataset, batch_size=64, num_workers=num_workers, collate_fn=list)
    items, names = [], []
    for batch in loader:
        for item in batch:
            name = f"{len(names):06d}.png"
            write_png(item["image"], folder / name)
            items.append({k: v for k, v in item.items() if k != "image"} | {"size": tuple(item["image"].shape[-2:])})
            names.append(name)
    ann_file = out / "annotations" / f"instances_{split}.json"
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps(coco_dict(items, class_names, names)))
    return ann_file


def export(datamodule, out: str | Path) -> dict[str, Path]:
    """Export the datamodule's train / val / test splits to ``out`` (which must not hold files)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty; give a new folder to export into")
    return {split: export_split(datamodule.datasets[split], list(datamodule.class_names), out, split,
                                getattr(datamodule, "num_workers", 0)) for split in SPLITS}


def main(argv: list[str]) -> int:
    positional = [a for a in argv if "=" not in a]
    if len(positional) != 1 or positional[0].startswith("-"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from hydra.utils import instantiate

    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("export_coco", overrides=[a for a in argv if "=" in a])
        datamodule = instantiate(cfg.data)
        files = export(datamodule, positional[0])
    except (HydraException, ValueError, FileNotFoundError) as err:
        cause = err
        while cause.__cause__ is not None:
            cause = cause.__cause__
        print(f"error: {cause}", file=sys.stderr)
        return 2
    for split, ann_file in files.items():
        print(f"{split}: {ann_file.parent.parent / split} + {ann_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
