"""Loading photographs: what JPEG draft decoding and the in-memory cache buy, and ResNet cost.

Writes N textured 640 x 480 JPEGs (COCO's typical size) with a COCO JSON to a temp folder,
then measures, in one run: items/s of DetectionDataset with draft decoding (the default),
with full-size decoding, and from the decoded-image cache; and images/s of the resnet18
backbone (stages=3) forward against the default small ConvBackbone at the same size.
Ratios are the numbers to keep: absolute times drift on a shared machine.

    python benchmarks/real_data.py [--images 64] [--size 224]
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from PIL import Image

from glimpse.data import images as images_module
from glimpse.data.photo_datamodule import CocoDataModule
from glimpse.models.backbone import ConvBackbone, ResNetBackbone
from train_throughput import timed  # benchmarks/ is on sys.path when this script runs


def write_folder(root: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    entries, annotations = [], []
    for i in range(n):
        noise = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
        Image.fromarray(noise).resize((640, 480), Image.BICUBIC).save(root / f"{i}.jpg", quality=90)
        entries.append({"id": i + 1, "file_name": f"{i}.jpg", "width": 640, "height": 480})
        annotations.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [100, 100, 200, 150], "iscrowd": 0})
    ann = root / "instances.json"
    ann.write_text(json.dumps({"images": entries, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}))
    return ann


def items_per_second(dataset) -> float:
    start = time.perf_counter()
    for i in range(len(dataset)):
        dataset[i]
    return len(dataset) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a DataLoader worker (PyTorch sets 1 thread there)
    with tempfile.TemporaryDirectory() as tmp:
        ann = write_folder(Path(tmp), args.images)
        kwargs = dict(root=tmp, ann_file=str(ann), val_ann_file=str(ann), image_size=args.size, num_workers=0)
        draft = items_per_second(CocoDataModule(**kwargs).datasets["val"])
        real_read = images_module.read_image
        with mock.patch("glimpse.data.detection.read_image", lambda p, c, draft_size=None: real_read(p, c)):
            full = items_per_second(CocoDataModule(**kwargs).datasets["val"])
        start = time.perf_counter()
        cached_dm = CocoDataModule(cache=True, **kwargs)
        fill = args.images * 2 / (time.perf_counter() - start)  # train + val caches
        cached = items_per_second(cached_dm.datasets["val"])
    torch.set_num_threads(2)
    batch = torch.rand(16, 3, args.size, args.size)
    resnet, conv = ResNetBackbone("resnet18").eval(), ConvBackbone(in_channels=3).eval()
    with torch.no_grad():
        t_resnet, t_conv = timed(lambda: resnet(batch), 5), timed(lambda: conv(batch), 5)
    print(f"machine: {platform.machine()}, torch {torch.__version__}; loading in 1 thread, models in 2; "
          f"{args.images} JPEGs 640x480 -> {args.size}x{args.size}")
    print(f"full decode: {full:.0f} items/s | draft decode: {draft:.0f} items/s (x{draft / full:.2f}) | "
          f"cache: {cached:.0f} items/s (x{cached / draft:.1f} over draft), filling it {fill:.0f} images/s")
    print(f"forward, batch 16: resnet18 (stages=3) {16 / t_resnet:.0f} images/s | ConvBackbone {16 / t_conv:.0f} "
          f"images/s | ratio {t_resnet / t_conv:.2f}")


if __name__ == "__main__":
    main()
