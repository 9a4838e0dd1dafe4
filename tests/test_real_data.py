"""Real-format data: tiny VOC and COCO folders built here, checked to the pixel and the box."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from glimpse.data.photo_datamodule import CocoDataModule, VOCDataModule
from glimpse.data.images import read_image, to_array

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(image_size=64, batch_size=2, num_workers=0)


def _photo(path: Path, size: tuple[int, int], mode: str = "RGB", colour=(200, 120, 40)) -> None:
    """A picture with texture (a gradient plus a block of ``colour``) so JPEG has something to keep."""
    w, h = size
    x = np.linspace(0, 255, w)[None, :].repeat(h, 0)
    rgb = np.stack([x, x[::-1, ::-1], np.full_like(x, 90)], -1).astype(np.uint8)
    rgb[h // 4 : h // 2, w // 4 : w // 2] = colour
    image = Image.fromarray(rgb)
    image = image.convert(mode) if mode != "RGB" else image
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=95) if path.suffix == ".jpg" else image.save(path)


# ---------------------------------------------------------------- VOC


def _voc_xml(filename: str, size: tuple[int, int], objects: list[tuple[str, int, tuple[int, int, int, int]]]) -> str:
    parts = [f"<annotation><folder>VOC2007</folder><filename>{filename}</filename>",
             f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"]
    for name, difficult, (x1, y1, x2, y2) in objects:
        parts.append(f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
                     f"<difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
                     f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")
    return "".join(parts) + "</annotation>"


VOC_IMAGES = {  # id: (mode, (width, height), objects with 1-based inclusive VOC boxes)
    "000001": ("RGB", (200, 100), [("dog", 0, (11, 21, 60, 80)), ("person", 1, (101, 1, 150, 50)),
                                   ("person", 0, (151, 51, 200, 100))]),
    "000002": ("L", (80, 120), [("cat", 0, (1, 1, 80, 60))]),
    "000003": ("CMYK", (120, 120), [("car", 0, (1, 1, 40, 40)), ("car", 0, (61, 61, 120, 120))]),
}


@pytest.fixture()
def voc_root(tmp_path) -> Path:
    devkit = tmp_path / "VOCdevkit"
    folder = devkit / "VOC2007"
    for image_id, (mode, size, objects) in VOC_IMAGES.items():
        _photo(folder / "JPEGImages" / f"{image_id}.jpg", size, mode)
        (folder / "Annotations").mkdir(parents=True, exist_ok=True)
        (folder / "Annotations" / f"{image_id}.xml").write_text(_voc_xml(f"{image_id}.jpg", size, objects))
    sets = folder / "ImageSets" / "Main"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("000001\n000002\n000003\n")
    (sets / "val.txt").write_text("000002\n")
    (sets / "test.txt").write_text("000003\n000001\n")
    return devkit


def test_voc_multisets_boxes_and_letterbox(voc_root):
    dm = VOCDataModule(root=str(voc_root), year=2007, **SMALL)
    names = dm.class_names
    assert names[:3] == ["aeroplane", "bicycle", "bird"] and dm.num_classes == 20
    assert dm.max_objects == 2  # the difficult person is not counted
    item = dm.datasets["train"][0]
    expected = torch.zeros(20, dtype=torch.long)
    expected[names.index("dog")] = expected[names.index("person")] = 1
    assert torch.equal(item["counts"], expected)
    assert item["labels"].tolist() == [names.index("dog"), names.index("person")]
    # 200 x 100 -> 64 x 32, centred: 16 rows of padding above. VOC (11, 21, 60, 80) is [10, 20, 60, 80).
    scale = 64 / 200
    want = torch.tensor([[10 * scale, 20 * scale + 16, 60 * scale, 80 * scale + 16],
                         [150 * scale, 50 * scale + 16, 200 * scale, 100 * scale + 16]])
    torch.testing.assert_close(item["boxes"], want, atol=1e-4, rtol=0)
    image = item["image"]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert image[:, :16].abs().sum() == 0 and image[:, 48:].abs().sum() == 0 and image[:, 16:48].mean() > 0.1

    gray = dm.datasets["val"][0]  # the grayscale JPEG, 80 x 120 -> 43 x 64, 10 columns of padding left
    assert gray["counts"][names.index("cat")] == 1 and int(gray["counts"].sum()) == 1
    assert torch.equal(gray["image"][0], gray["image"][1]) and torch.equal(gray["image"][0], gray["image"][2])
    assert gray["image"][:, :, :10].abs().sum() == 0 and gray["image"][:, :, 53:].abs().sum() == 0
    # boxes follow the pixels: x scales by the rounded width 43 / 80, y by 64 / 120
    torch.testing.assert_close(gray["boxes"][0], torch.tensor([10 + 0, 0, 10 + 80 * 43 / 80, 60 * 64 / 120]),
                               atol=1e-4, rtol=0)
    assert gray["labels"].tolist() == [names.index("cat"), -1]

    cmyk = dm.datasets["test"][0]
    assert cmyk["counts"][names.index("car")] == 2
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [3, 1, 2]


def test_voc_keep_difficult_and_class_filter(voc_root):
    dm = VOCDataModule(root=str(voc_root / ".."), keep_difficult=True, **SMALL)  # the folder above VOCdevkit works too
    assert dm.datasets["train"][0]["counts"][dm.class_names.index("person")] == 2 and dm.max_objects == 3
    dm = VOCDataModule(root=str(voc_root), classes=["person", "car"], val_image_set=None, **SMALL)
    assert dm.class_names == ["car", "person"]  # the dataset's order
    assert [item["counts"].tolist() for item in dm.datasets["test"]] == [[2, 0], [0, 1]]
    # the cat-only image has no object left (min_objects=1): train keeps 2 images, one held out for val
    assert len(dm.datasets["train"]) == len(dm.datasets["val"]) == 1
    with pytest.raises(ValueError, match=r"val\.txt: no image is left after the filters"):
        VOCDataModule(root=str(voc_root), classes=["person", "car"], **SMALL)
    dm = VOCDataModule(root=str(voc_root), test_image_set=None, **SMALL)
    assert dm.datasets["test"] is dm.datasets["val"]


# ---------------------------------------------------------------- image modes


def test_modes_are_converted_explicitly(tmp_path):
    rgba = np.array([[[200, 100, 50, 255], [200, 100, 50, 128]], [[10, 20, 30, 0], [255, 255, 255, 64]]], np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    image, size = read_image(str(tmp_path / "a.png"))
    assert size == (2, 2)
    want = (rgba[..., :3].astype(int) * rgba[..., 3:].astype(int) + 127) // 255  # composited onto black
    assert image.permute(1, 2, 0).numpy().tolist() == want.tolist()

    _photo(tmp_path / "c.jpg", (32, 24), "CMYK", colour=(255, 0, 0))
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    image, _ = read_image(str(tmp_path / "c.jpg"))
    reference = np.asarray(Image.open(tmp_path / "c.jpg").convert("RGB"))
    assert image.shape == (3, 24, 32) and np.array_equal(image.permute(1, 2, 0).numpy(), reference)
    block = image[:, 8:10, 10:14].float().mean((1, 2))  # the red block
    assert block[0] > 200 and block[1] < 60 and block[2] < 60

    sixteen = np.array([[0, 257 * 100], [65535, 1000]], np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "g.png")
    image, _ = read_image(str(tmp_path / "g.png"), channels=1)
    assert image.shape == (1, 2, 2) and image[0].tolist() == [[0, 100], [255, 4]]
    palette = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    assert to_array(palette).tolist() == [[[255, 0, 0], [0, 0, 255]]]
    assert to_array(Image.fromarray(np.array([[10, 200]], np.uint8)).convert("RGB"), channels=1)[..., 0].tolist() == [[10, 200]]


# ---------------------------------------------------------------- COCO


def _coco_folder(root: Path, annotations=None, categories=None) -> Path:
    """Images: a.jpg 100x50 (2 dogs + a crowd of cats), b.png RGBA 40x40 (a cat), c.jpg 30x30 (nothing)."""
    _photo(root / "images" / "a.jpg", (100, 50))
    _photo(root / "images" / "b.png", (40, 40), "RGBA")
    _photo(root / "images" / "c.jpg", (30, 30))
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 50},
                   {"id": 2, "file_name": "b.png", "width": 40, "height": 40},
                   {"id": 7, "file_name": "c.jpg", "width": 30, "height": 30}],
        "categories": categories or [{"id": 3, "name": "cat"}, {"id": 1, "name": "dog"}],
        "annotations": annotations or [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [10, 5, 20, 10], "area": 200, "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 3, "bbox": [0, 0, 100, 50], "area": 5000, "iscrowd": 1},
            {"id": 12, "image_id": 1, "category_id": 1, "bbox": [50, 20, 30, 30], "area": 900, "iscrowd": 0},
            {"id": 13, "image_id": 2, "category_id": 3, "bbox": [4, 4, 8, 8], "area": 64, "iscrowd": 0},
        ],
    }
    ann = root / "annotations" / "instances.json"
    ann.parent.mkdir(parents=True, exist_ok=True)
    ann.write_text(json.dumps(data))
    return ann


def test_coco_multisets_crowd_and_empty_images(tmp_path):
    ann = _coco_folder(tmp_path)
    dm = CocoDataModule(root=str(tmp_path / "images"), ann_file=str(ann), val_ann_file=str(ann), min_objects=0, **SMALL)
    assert dm.class_names == ["dog", "cat"]  # ordered by category id
    val = dm.datasets["val"]
    items = [val[i] for i in range(len(val))]
    assert [item["counts"].tolist() for item in items] == [[2, 0], [0, 1], [0, 0]]  # the crowd is not counted
    assert items[2]["num_objects"] == 0 and items[2]["labels"].tolist() == [-1, -1]
    # a.jpg 100 x 50 -> 64 x 32, 16 rows of padding above; bbox [x, y, w, h] -> [x1, y1, x2, y2]
    s = 0.64
    torch.testing.assert_close(items[0]["boxes"], torch.tensor([[10 * s, 5 * s + 16, 30 * s, 15 * s + 16],
                                                                [50 * s, 20 * s + 16, 80 * s, 50 * s + 16]]),
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(items[1]["boxes"][0], torch.tensor([4, 4, 12, 12]) * 1.6, atol=1e-4, rtol=0)
    assert dm.datasets["test"] is val
    with pytest.raises(ValueError, match=r"\['cat'\] are not among the checkpoint's \['dog'\]"):
        dm.use_classes(["dog"])
    dm.use_classes(["bird", "cat", "dog"])  # a checkpoint's classes, matched by name (as evaluate.py does)
    assert dm.num_classes == 3 and [val[i]["counts"].tolist() for i in range(3)] == [[0, 0, 2], [0, 1, 0], [0, 0, 0]]
    assert val[0]["labels"].tolist() == [2, 2]
    # defaults: images without objects are left out; min_area drops the small cat; max_objects drops a.jpg
    assert len(CocoDataModule(root=str(tmp_path / "images"), ann_file=str(ann), val_ann_file=str(ann), **SMALL).datasets["val"]) == 2
    dm = CocoDataModule(root=str(tmp_path / "images"), ann_file=str(ann), val_ann_file=str(ann), min_area=100, **SMALL)
    assert [item["counts"].tolist() for item in dm.datasets["val"]] == [[2, 0]]
    dm = CocoDataModule(root=str(tmp_path / "images"), ann_file=str(ann), val_ann_file=str(ann), max_objects=1, **SMALL)
    assert [item["counts"].tolist() for item in dm.datasets["val"]] == [[0, 1]] and dm.max_objects == 1


def test_coco_cache_gives_the_same_items(tmp_path):
    ann = _coco_folder(tmp_path)
    kwargs = dict(root=str(tmp_path / "images"), ann_file=str(ann), val_ann_file=str(ann), **SMALL)
    plain, cached = CocoDataModule(**kwargs).datasets["val"], CocoDataModule(cache=True, **kwargs).datasets["val"]
    for i in range(len(plain)):
        for key, value in plain[i].items():
            assert torch.equal(value, cached[i][key]), key


# ---------------------------------------------------------------- bad input


def test_bad_coco_input_names_the_file(tmp_path):
    ann = _coco_folder(tmp_path)
    images = str(tmp_path / "images")
    os.remove(tmp_path / "images" / "b.png")
    with pytest.raises(FileNotFoundError, match=r"b\.png.*skip_corrupt"):
        CocoDataModule(root=images, ann_file=str(ann), **SMALL)
    with pytest.warns(UserWarning, match=r"skipped 1 of 2 images.*b\.png \(missing\)"):
        dm = CocoDataModule(root=images, ann_file=str(ann), val_ann_file=str(ann), skip_corrupt=True, **SMALL)
    assert len(dm.datasets["val"]) == 1 and len(dm.datasets["val"].skipped) == 1

    _photo(tmp_path / "images" / "b.png", (40, 40), "RGBA")
    jpeg = (tmp_path / "images" / "a.jpg").read_bytes()
    (tmp_path / "images" / "a.jpg").write_bytes(jpeg[: len(jpeg) // 2])  # truncated
    dm = CocoDataModule(root=images, ann_file=str(ann), val_ann_file=str(ann), **SMALL)
    with pytest.raises(ValueError, match=r"a\.jpg is corrupt or truncated"):
        dm.datasets["val"][0]
    for cache in (False, True):
        with pytest.warns(UserWarning, match=r"skipped 1 of 2 images.*a\.jpg.*truncated"):
            dm = CocoDataModule(root=images, ann_file=str(ann), val_ann_file=str(ann), skip_corrupt=True, cache=cache,
                                **SMALL)
        assert [item["counts"].tolist() for item in dm.datasets["val"]] == [[0, 1]]

    bad = _coco_folder(tmp_path / "unknown", annotations=[
        {"id": 5, "image_id": 1, "category_id": 9, "bbox": [1, 1, 2, 2], "iscrowd": 0}])
    with pytest.raises(ValueError, match=r"instances\.json: annotation id 5 .*category_id 9"):
        CocoDataModule(root=images, ann_file=str(bad), **SMALL)
    outside = _coco_folder(tmp_path / "outside", annotations=[
        {"id": 6, "image_id": 2, "category_id": 1, "bbox": [30, 30, 20, 5], "iscrowd": 0}])
    with pytest.raises(ValueError, match=r"instances\.json \(image id 2\): box .* outside its 40x40 image .*b\.png"):
        CocoDataModule(root=images, ann_file=str(outside), **SMALL)
    text = tmp_path / "notjson.json"
    text.write_text("images: [1, 2]\n")
    with pytest.raises(ValueError, match=r"notjson\.json is not JSON"):
        CocoDataModule(root=images, ann_file=str(text), **SMALL)
    with pytest.raises(ValueError, match="data.ann_file is required"):
        CocoDataModule(root=images, **SMALL)


def test_bad_voc_input_names_the_file(voc_root):
    xml = voc_root / "VOC2007" / "Annotations" / "000002.xml"
    xml.write_text(_voc_xml("000002.jpg", (80, 120), [("unicorn", 0, (1, 1, 10, 10))]))
    with pytest.raises(ValueError, match=r"000002\.xml: object class 'unicorn'"):
        VOCDataModule(root=str(voc_root), **SMALL)
    xml.write_text(_voc_xml("000002.jpg", (80, 120), [("cat", 0, (1, 1, 90, 10))]))
    with pytest.raises(ValueError, match=r"000002\.xml: box .* outside its 80x120 image"):
        VOCDataModule(root=str(voc_root), **SMALL)
    with pytest.raises(FileNotFoundError, match="VOC2012"):
        VOCDataModule(root=str(voc_root), year=2012, **SMALL)


# ---------------------------------------------------------------- export, backbone, training


def test_multiset_mnist_export_round_trips_through_coco(tmp_path):
    from glimpse.data import MultisetMNISTDataModule
    from glimpse.data.export_coco import export

    mnist = MultisetMNISTDataModule(train_size=8, val_size=6, test_size=6, num_workers=0)
    files = export(mnist, tmp_path / "out")
    coco = COCO(str(files["val"]))  # pycocotools opens it
    assert len(coco.imgs) == 6 and sorted(c["name"] for c in coco.cats.values()) == [str(d) for d in range(10)]
    out = tmp_path / "out"
    back = CocoDataModule(root=str(out / "train"), ann_file=str(files["train"]), val_root=str(out / "val"),
                          val_ann_file=str(files["val"]), test_root=str(out / "test"), test_ann_file=str(files["test"]),
                          image_size=100, channels=1, num_workers=0)
    assert back.class_names == mnist.class_names
    for split in ("train", "val", "test"):
        assert len(back.datasets[split]) == len(mnist.datasets[split])
        for i in range(len(mnist.datasets[split])):
            want, got = mnist.datasets[split][i], back.datasets[split][i]
            n = int(want["num_objects"])
            assert int(got["num_objects"]) == n and torch.equal(got["counts"], want["counts"])
            assert torch.equal(got["labels"][:n], want["labels"][:n])
            torch.testing.assert_close(got["boxes"][:n], want["boxes"][:n], atol=1e-4, rtol=0)
            assert torch.equal(got["image"], want["image"])  # lossless PNG, no resize at 100 x 100
    with pytest.raises(ValueError, match="not empty"):
        export(mnist, out)


def test_export_coco_command(tmp_path, capsys):
    from glimpse.data.export_coco import main

    assert main([str(tmp_path / "cli"), "data.train_size=3", "data.val_size=2", "data.test_size=2",
                 "data.num_workers=0"]) == 0
    coco = COCO(str(tmp_path / "cli" / "annotations" / "instances_test.json"))
    assert len(coco.imgs) == 2 and all((tmp_path / "cli" / "test" / i["file_name"]).is_file() for i in coco.imgs.values())
    assert main([]) == 2 and "python -m glimpse.data.export_coco OUT" in capsys.readouterr().err
    assert main([str(tmp_path / "x"), "data.canvas_size=10"]) == 2
    assert "max_digit_size" in capsys.readouterr().err


def test_resnet_backbone_weights_freeze_and_lr(tmp_path, monkeypatch):
    import torchvision

    from glimpse.models.backbone import ResNetBackbone
    from glimpse.module import GlimpseModule

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty torchvision cache
    with pytest.raises(FileNotFoundError, match=r"resnet18-f37072fd\.pth .* in .*torch/hub/checkpoints/.*weights_path"):
        ResNetBackbone("resnet18", weights="IMAGENET1K_V1")
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    backbone = ResNetBackbone("resnet18", stages=2, weights_path=str(tmp_path / "r18.pth"), freeze=True)
    assert torch.equal(backbone.features[4][0].conv1.weight, reference.layer1[0].conv1.weight)
    assert backbone.out_channels == 128 and backbone(torch.rand(1, 3, 64, 64)).shape == (1, 128, 8, 8)
    gray_backbone = ResNetBackbone("resnet18", stages=2, weights_path=str(tmp_path / "r18.pth"), in_channels=1).eval()
    gray = torch.rand(1, 1, 64, 64)
    backbone.eval()
    torch.testing.assert_close(gray_backbone(gray), backbone(gray.repeat(1, 3, 1, 1)))  # grayscale = repeated RGB
    with pytest.raises(FileNotFoundError, match="weights_path"):
        ResNetBackbone("resnet18", weights_path=str(tmp_path / "none.pth"))
    with pytest.raises(ValueError, match="not a readable torch state dict"):
        (tmp_path / "junk.pth").write_text("junk")
        ResNetBackbone("resnet18", weights_path=str(tmp_path / "junk.pth"))

    policy = {"_target_": "glimpse.models.policy.GlimpsePolicy", "hidden": 16,
              "backbone": {"_target_": "glimpse.models.backbone.ResNetBackbone", "stages": 1, "freeze": True}}
    module = GlimpseModule(policy, {}, num_classes=2, class_names=["a", "b"], max_steps=3, backbone_lr=1e-5)
    module.train()
    assert not module.policy.backbone.features[1].training  # frozen batch-norm statistics
    groups = module.parameter_groups()
    assert len(groups) == 1 and not any(p.requires_grad for p in module.policy.backbone.parameters())
    policy["backbone"]["freeze"] = False
    module = GlimpseModule(policy, {}, num_classes=2, class_names=["a", "b"], max_steps=3, backbone_lr=1e-5)
    groups = module.parameter_groups()
    assert groups[1]["lr"] == 1e-5 and len(groups[1]["params"]) == len(list(module.policy.backbone.parameters()))
    assert sum(len(g["params"]) for g in groups) == len(list(module.parameters()))


def _script(name: str):
    """train.py / evaluate.py as modules, to run their functions in this process."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"glimpse_{name}", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compose(config: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config, overrides=overrides)


TINY_RUN = ["data.image_size=64", "data.batch_size=2", "data.num_workers=0", "trainer.max_epochs=1",
            "trainer.deterministic=false", "trainer.enable_progress_bar=false", "model.policy.hidden=16",
            "model.policy.key_dim=16", "model.warmup_steps=1", "logger=none", "callbacks.heatmaps=null"]


def test_smoke_training_and_evaluation_on_voc(voc_root, tmp_path):
    data = ["data=voc", f"data.root={voc_root}"]
    metrics = _script("train").train(_compose("train", data + TINY_RUN + [f"paths.output_dir={tmp_path / 'run'}"]))
    assert 0 <= metrics["test/multiset/f1"] <= 1 and (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    cfg = _compose("evaluate", data + TINY_RUN[:3] + [f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}",
                                                     f"paths.output_dir={tmp_path / 'eval'}", "trainer.enable_progress_bar=false"])
    metrics = _script("evaluate").evaluate(cfg)
    assert set(metrics) >= {"multiset/exact_match", "multiset/f1"} and (tmp_path / "eval" / "trajectories.png").is_file()
    # the VOC checkpoint (RGB) on Multiset-MNIST (grayscale): an error naming data.channels, nothing written
    ckpt = str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    cfg = _compose("evaluate", ["data=multiset_mnist", "data.test_size=4", "data.num_workers=0",
                                f"ckpt_path={ckpt}", f"paths.output_dir={tmp_path / 'mnist'}"])
    with pytest.raises(ValueError, match=r"data.channels: the checkpoint reads 3-channel images"):
        _script("evaluate").evaluate(cfg)
    assert not (tmp_path / "mnist" / "metrics.json").exists()
    # and classes it does not know: an error naming those that do not match
    from glimpse.module import load_checkpoint

    with pytest.raises(ValueError, match=r"unmatched: \[.*'0'.*'cat'"):
        load_checkpoint(ckpt).check_classes([str(d) for d in range(10)])


def test_smoke_training_on_coco_with_resnet18(tmp_path):
    import torchvision

    ann = _coco_folder(tmp_path / "coco")
    weights = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    data = ["data=coco", f"data.root={tmp_path / 'coco' / 'images'}", f"data.ann_file={ann}", f"data.val_ann_file={ann}"]
    model = ["model=resnet18", "model.policy.backbone.stages=2", f"model.policy.backbone.weights_path={weights}",
             "model.policy.backbone.freeze=true"]
    metrics = _script("train").train(_compose("train", data + model + TINY_RUN + [f"paths.output_dir={tmp_path / 'run'}"]))
    assert 0 <= metrics["val/multiset/f1"] <= 1
    from glimpse.module import load_checkpoint

    os.remove(weights)  # the checkpoint holds every weight: evaluating elsewhere needs no .pth file
    module = load_checkpoint(str(tmp_path / "run" / "checkpoints" / "last.ckpt"))
    assert module.hparams.policy["backbone"]["weights_path"] == str(weights)  # the record of what ran
    assert module.class_names == ["dog", "cat"] and module.policy.backbone.frozen


@pytest.mark.parametrize("bad", [pytest.param("not_json", marks=pytest.mark.slow), "truncated"])
def test_bad_input_exits_2_from_train(tmp_path, bad):
    ann = _coco_folder(tmp_path)
    if bad == "not_json":
        ann.write_text("{images: oops")
        message = "instances.json is not JSON"
    else:
        jpeg = (tmp_path / "images" / "a.jpg").read_bytes()
        (tmp_path / "images" / "a.jpg").write_bytes(jpeg[: len(jpeg) // 2])  # fails mid-training, in the loader
        message = "a.jpg is corrupt or truncated"  # raised in a DataLoader worker, reported as one line
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "data=coco", f"data.root={tmp_path / 'images'}",
                           f"data.ann_file={ann}", *[o for o in TINY_RUN if "num_workers" not in o],
                           "data.num_workers=1", f"paths.output_dir={tmp_path / 'run'}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_smoke_experiment_on_voc_with_resnet18_the_command_as_documented(voc_root, tmp_path):
    """``python train.py experiment=smoke data=voc data.root=... model=resnet18``: the smoke run's
    sizes cap the photo splits (train_size / val_size / test_size: the first N images)."""
    out = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "experiment=smoke", "data=voc", f"data.root={voc_root}",
                           "model=resnet18", "logger=none", f"paths.output_dir={out}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["test/multiset/f1"] <= 1 and (out / "checkpoints" / "last.ckpt").is_file()
    assert sorted(p.name for p in (out / "heatmaps").iterdir()), "the smoke's heatmaps on photographs"


def test_photo_split_sizes_keep_the_first_images(voc_root):
    dm = VOCDataModule(root=str(voc_root), train_size=2, val_size=1, test_size=1, **SMALL)
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [2, 1, 1]
    full = VOCDataModule(root=str(voc_root), **SMALL)
    assert torch.equal(dm.datasets["test"][0]["image"], full.datasets["test"][0]["image"])
    with pytest.raises(ValueError, match=r"data.train_size=0: the first N images"):
        VOCDataModule(root=str(voc_root), train_size=0, **SMALL)
