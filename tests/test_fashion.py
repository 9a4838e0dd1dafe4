"""Fashion-MNIST and full MNIST from their IDX files as distributed (gzipped or not), with class names.

The loader is tested on small IDX files written here; ``test_debian_package_files`` reads the
real Fashion-MNIST where Debian's ``dataset-fashion-mnist`` package installed it. It is skipped
when the files are absent, except under ``CI=true``: CI installs the package
(``apt-get install dataset-fashion-mnist``), so there a missing package fails the test.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import struct
from pathlib import Path

import gymnasium
import numpy as np
import pytest

from glimpse.data import MultisetMNIST, MultisetMNISTDataModule, load_digits
from glimpse.data.digits import FASHION_MNIST_CLASSES, FASHION_MNIST_DEBIAN_ROOT, IDX_VAL_SIZE, read_idx

from conftest import TINY, run

N_TRAIN, N_TEST = IDX_VAL_SIZE + 40, 30  # the last 5,000 training items are the val pool


def idx_bytes(array: np.ndarray) -> bytes:
    """A uint8 array in the IDX format: magic (0, 0, 0x08, ndim), big-endian uint32 dims, the data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, gzipped: bool) -> Path:
    if gzipped:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(idx_bytes(array), compresslevel=1))
    else:
        path.write_bytes(idx_bytes(array))
    return path


def fake_pools(seed: int = 0) -> dict[str, np.ndarray]:
    """Images whose first pixel row encodes their index (so a test can tell which item landed where)."""
    rng = np.random.default_rng(seed)
    pools = {}
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        images = (rng.random((n, 28, 28)) < 0.3).astype(np.uint8) * 200
        images[:, 0, :4] = np.stack([np.arange(n) >> s & 255 for s in (24, 16, 8, 0)], 1)
        pools[f"{prefix}-images-idx3-ubyte"] = images
        pools[f"{prefix}-labels-idx1-ubyte"] = rng.integers(0, 10, n).astype(np.uint8)
    return pools


def write_folder(folder: Path, gzipped: bool, seed: int = 0) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    pools = fake_pools(seed)
    for name, array in pools.items():
        write_idx(folder / name, array, gzipped)
    return pools


# ---------------------------------------------------------------- IDX files


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzipped"])
def test_read_idx_returns_the_written_array(tmp_path, gzipped):
    images = np.arange(3 * 28 * 28, dtype=np.int64).reshape(3, 28, 28).astype(np.uint8)
    labels = np.array([9, 0, 4], dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(str(write_idx(tmp_path / "images", images, gzipped)), 3), images)
    np.testing.assert_array_equal(read_idx(str(write_idx(tmp_path / "labels", labels, gzipped)), 1), labels)


def test_a_gzipped_file_is_recognised_by_its_content_not_its_name(tmp_path):
    labels = np.array([1, 2, 3], dtype=np.uint8)
    path = tmp_path / "train-labels-idx1-ubyte"  # gzipped, but named as the plain file
    path.write_bytes(gzip.compress(idx_bytes(labels)))
    np.testing.assert_array_equal(read_idx(str(path), 1), labels)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x00\x00\x08\x01" + struct.pack(">I", 5) + bytes(4), r"header says 5 = 5 bytes of data, the file holds 4"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 2) + bytes(3), r"header says 2 = 2 bytes of data, the file holds 3"),
        (b"\x00\x00\x08\x03" + struct.pack(">III", 1, 28, 28) + bytes(784), r"expected 00 00 08 01"),  # images, not labels
        (b"\x00\x00\x0d\x01" + struct.pack(">I", 1) + bytes(4), r"first bytes are 00 00 0d 01"),  # float32 data
        (b"GIF89a", r"not an IDX file"),
        (b"", r"first bytes are missing"),
        (b"\x00\x00\x08\x01\x00", r"header is cut short"),
    ],
    ids=["truncated", "too-long", "wrong-ndim", "wrong-type", "not-idx", "empty", "short-header"],
)
def test_an_invalid_idx_file_names_itself_and_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as caught:
        read_idx(str(path), 1)
    assert str(path) in str(caught.value)


def test_a_truncated_gzip_file_says_so(tmp_path):
    whole = gzip.compress(idx_bytes(np.zeros((50, 28, 28), dtype=np.uint8)))
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz: not a readable gzip file"):
        read_idx(str(path), 3)


# ---------------------------------------------------------------- pools


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzipped"])
@pytest.mark.parametrize("source, layout", [("fashion_mnist", "."), ("fashion_mnist", "FashionMNIST/raw"),
                                            ("mnist", "."), ("mnist", "MNIST/raw"), ("torchvision", "MNIST/raw")])
def test_idx_sources_split_train_val_test_as_distributed(tmp_path, gzipped, source, layout):
    pools = write_folder(tmp_path / layout, gzipped)
    splits = load_digits(source, str(tmp_path))
    train_images, train_labels = pools["train-images-idx3-ubyte"], pools["train-labels-idx1-ubyte"]
    np.testing.assert_array_equal(splits["train"][0], train_images[:40])  # the first 55,000 of 60,000
    np.testing.assert_array_equal(splits["train"][1], train_labels[:40])
    np.testing.assert_array_equal(splits["val"][0], train_images[40:])  # the last 5,000
    np.testing.assert_array_equal(splits["test"][0], pools["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(splits["test"][1], pools["t10k-labels-idx1-ubyte"])
    assert all(labels.dtype == np.int64 and not labels.flags.writeable for _, labels in splits.values())
    assert all(images.shape[1:] == (28, 28) and not images.flags.writeable for images, _ in splits.values())


def test_missing_fashion_files_say_which_and_how_to_get_them(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", fake_pools()["train-images-idx3-ubyte"], gzipped=True)
    with pytest.raises(FileNotFoundError) as caught:
        load_digits("fashion_mnist", str(tmp_path))
    message = str(caught.value)
    assert "\n" not in message and "train-images" not in re.search(r": missing ([^;]*);", message).group(1)
    for name in ("train-labels-idx1-ubyte[.gz]", "t10k-images-idx3-ubyte[.gz]", "t10k-labels-idx1-ubyte[.gz]",
                 "apt-get install dataset-fashion-mnist", "data.digit_root=DIR", "Nothing is downloaded"):
        assert name in message


def test_missing_mnist_files_say_where_to_put_them(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing train-images-idx3-ubyte\[.gz\].*MNIST/raw/"):
        load_digits("mnist", str(tmp_path))
    with pytest.raises(ValueError, match=r"data.digit_source=mnist needs data.digit_root=DIR"):
        load_digits("mnist")


def test_images_that_are_not_28_px_are_refused(tmp_path):
    pools = fake_pools()
    pools["train-images-idx3-ubyte"] = np.zeros((N_TRAIN, 32, 32), dtype=np.uint8)
    for name, array in pools.items():
        write_idx(tmp_path / name, array, gzipped=False)
    with pytest.raises(ValueError, match=r"images of 32 x 32 px; the canvases need 28 x 28"):
        load_digits("mnist", str(tmp_path))


def test_labels_and_images_of_different_lengths_are_refused(tmp_path):
    pools = fake_pools()
    pools["t10k-labels-idx1-ubyte"] = pools["t10k-labels-idx1-ubyte"][:-1]
    for name, array in pools.items():
        write_idx(tmp_path / name, array, gzipped=True)
    with pytest.raises(ValueError, match=rf"holds {N_TEST} images but .*t10k-labels-idx1-ubyte.gz {N_TEST - 1} labels"):
        load_digits("fashion_mnist", str(tmp_path))


# ---------------------------------------------------------------- canvases, datamodule, env


def test_canvases_of_fashion_items_carry_their_labels_and_names(tmp_path):
    pools = write_folder(tmp_path, gzipped=True)
    dataset = MultisetMNIST(split="test", size=20, digit_source="fashion_mnist", digit_root=str(tmp_path),
                            min_digit_size=28, max_digit_size=28)
    assert dataset.class_names == list(FASHION_MNIST_CLASSES)
    test_labels = pools["t10k-labels-idx1-ubyte"].astype(np.int64)
    for i in range(20):
        plan, item = dataset._plan(i), dataset[i]
        k = len(plan.digit_ids)
        # at 28 px an item is pasted unresized: its first row encodes its index in the test file
        for j in range(k):
            top, left = int(plan.tops[j]), int(plan.lefts[j])
            code = (item["image"][0, top, left:left + 4] * 255).round().long().tolist()
            assert sum(v << s for v, s in zip(code, (24, 16, 8, 0))) == plan.digit_ids[j]
        assert item["labels"][:k].tolist() == test_labels[plan.digit_ids].tolist()
        assert item["counts"].tolist() == np.bincount(test_labels[plan.digit_ids], minlength=10).tolist()


def test_datamodule_and_env_name_the_fashion_classes(tmp_path):
    write_folder(tmp_path, gzipped=False)
    data = dict(digit_source="fashion_mnist", digit_root=str(tmp_path))
    datamodule = MultisetMNISTDataModule(train_size=8, val_size=4, test_size=4, **data)
    assert datamodule.class_names == list(FASHION_MNIST_CLASSES) and datamodule.num_classes == 10
    batch = next(iter(datamodule.test_dataloader()))
    assert batch["image"].shape == (4, 1, 100, 100) and batch["counts"].sum(1).min() >= 1

    env = gymnasium.make("glimpse/MultisetMNIST-v0", data={"size": 4, **data}, render_mode="rgb_array")
    assert env.unwrapped.task.class_names == FASHION_MNIST_CLASSES
    assert MultisetMNISTDataModule(train_size=8).class_names == [str(c) for c in range(10)]  # digits stay digits


def test_label_names_can_be_given_and_must_match_the_classes(tmp_path):
    write_folder(tmp_path, gzipped=True)
    names = [f"glyph {c}" for c in range(10)]
    dataset = MultisetMNIST(split="val", size=2, digit_source="mnist", digit_root=str(tmp_path), label_names=names)
    assert dataset.class_names == names
    with pytest.raises(ValueError, match=r"label_names has 3 names for num_classes=10"):
        MultisetMNIST(split="val", size=2, label_names=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"is one string; give a list of 10 names"):
        MultisetMNIST(split="val", size=2, label_names="[a,b,c,d,e,f,g,h,i,j]")  # a quoted Hydra list


def test_train_and_evaluate_on_multiset_fashion_name_the_classes(tmp_path):
    """The commands end to end with data=multiset_fashion (on small IDX files, so it runs anywhere)."""
    root = tmp_path / "fashion"
    write_folder(root, gzipped=True)
    out = tmp_path / "train"
    run("train.py", "experiment=smoke", "data=multiset_fashion", f"data.digit_root={root}", *TINY, "logger=csv",
        f"paths.output_dir={out}")
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["test/multiset/f1"] <= 1.0
    hparams = next((out / "csv").rglob("hparams.yaml")).read_text()
    assert "Ankle boot" in hparams and "T-shirt/top" in hparams  # what the loggers (CSV, W&B) record

    report = tmp_path / "eval"
    run("evaluate.py", f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}", "data=multiset_fashion",
        f"data.digit_root={root}", "data.test_size=16", "data.num_workers=0", "logger=none",
        "heatmaps.methods=[gradient]", "heatmaps.max_images=4", f"paths.output_dir={report}")
    table = (report / "report.md").read_text().split("## Per class")[1]
    assert all(f"| {name} |" in table for name in FASHION_MNIST_CLASSES)


def test_a_missing_fashion_folder_is_one_error_line_and_exit_2(tmp_path):
    proc = run("train.py", "data=multiset_fashion", f"data.digit_root={tmp_path}", f"paths.output_dir={tmp_path / 'o'}",
               "logger=none", check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: Fashion-MNIST not found") and "apt-get install dataset-fashion-mnist" in lines[-1]


# ---------------------------------------------------------------- the real files


def test_debian_package_files():
    """The real Fashion-MNIST as `apt-get install dataset-fashion-mnist` installs it."""
    if not os.path.isdir(FASHION_MNIST_DEBIAN_ROOT):
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {FASHION_MNIST_DEBIAN_ROOT} is missing: CI installs it with "
                        "`apt-get install -y dataset-fashion-mnist`")
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    splits = load_digits("fashion_mnist")
    assert {split: len(labels) for split, (_, labels) in splits.items()} == {"train": 55000, "val": 5000, "test": 10000}
    assert np.bincount(splits["test"][1]).tolist() == [1000] * 10
    train_and_val = np.concatenate([splits["train"][1], splits["val"][1]])
    assert np.bincount(train_and_val).tolist() == [6000] * 10
    assert splits["test"][1][:5].tolist() == [9, 2, 1, 1, 6]  # Ankle boot, Pullover, Trouser, Trouser, Shirt
    item = MultisetMNIST(split="test", size=1, digit_source="fashion_mnist")[0]
    assert item["image"].shape == (1, 100, 100) and 1 <= item["num_objects"] <= 4


def test_trajectory_titles_wrap_long_class_names_and_keep_digit_titles_on_two_lines():
    import torch

    from glimpse.heatmaps.render import multiset_title

    digits = [str(d) for d in range(10)]
    four = torch.tensor([1, 0, 2, 0, 1, 0, 0, 0, 0, 0])
    assert multiset_title(four, four, digits) == "true {0, 2, 2, 4}\npred {0, 2, 2, 4}"
    clothes = torch.tensor([2, 1, 0, 0, 0, 0, 1, 0, 0, 0])  # T-shirt/top x2, Trouser, Shirt
    title = multiset_title(clothes, clothes, list(FASHION_MNIST_CLASSES), width=34)
    lines = title.split("\n")
    assert len(lines) == 4 and all(len(line) <= 34 for line in lines), lines
    assert lines[0].startswith("true {T-shirt/top") and lines[2].startswith("pred {")
    assert " ".join(line.strip() for line in lines[:2]) == "true {T-shirt/top, T-shirt/top, Trouser, Shirt}"
