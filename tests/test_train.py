"""End-to-end: the real commands on small real data, and bad input that loses nothing."""
import csv
import json

import pytest

from glimpse.heatmaps.gradients import METHODS

from conftest import TINY, load_benchmark, run


def test_smoke_experiment_writes_checkpoint_metrics_and_wandb_run(smoke_run):
    out, proc = smoke_run
    assert (out / "checkpoints" / "last.ckpt").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    for split in ("val", "test"):
        for key in ("exact_match", "precision", "recall", "f1"):
            value = metrics[f"{split}/multiset/{key}"]
            assert 0.0 <= value <= 1.0
    for key in ("pointing_game", "energy_pointing_game", "deletion_auc", "insertion_auc"):  # HeatmapMetrics callback
        assert 0.0 <= metrics[f"val/attribution/saliency_map/{key}"] <= 1.0
    assert list((out / "wandb").glob("offline-run-*")), "the offline W&B run is kept under the output dir"
    assert "epoch 1 | step" in proc.stdout  # the one-line summary per epoch


def test_evaluate_scores_the_checkpoint(smoke_run, tmp_path):
    out, _ = smoke_run
    run("evaluate.py", f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}", "data.test_size=32", "data.num_workers=0",
        f"paths.output_dir={tmp_path}", "logger=wandb", "heatmaps.methods=all")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) >= {"multiset/exact_match", "multiset/precision", "multiset/recall", "multiset/f1"}
    for who in ("", "random/", "saliency/"):  # the model and its two baselines
        for key in ("glimpse_hit_rate", "object_coverage", "attention_energy_in_box"):
            assert 0.0 <= metrics[f"localisation/{who}{key}"] <= 1.0
    for method in ("saliency_map", *METHODS):  # heatmaps.methods=all: every attribution method
        for key in ("pointing_game", "energy_pointing_game", "deletion_auc", "insertion_auc"):
            assert 0.0 <= metrics[f"attribution/{method}/{key}"] <= 1.0, (method, key)
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# glimpse evaluation") and "![trajectories](trajectories.png)" in report
    assert "## Per class" in report and "![worst](worst.png)" in report and "![steps](steps.png)" in report
    for picture in ("trajectories.png", "worst.png", "steps.png"):
        assert (tmp_path / picture).stat().st_size > 10_000
    # each headline metric beside its bootstrap interval, which holds the value
    row = next(line for line in report.splitlines() if line.startswith("| `multiset/f1`"))
    value, interval = row.split("|")[2:4]
    low, high = (float(x) for x in interval.split("–"))
    assert low <= float(value) <= high
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert runs and list(runs[0].glob("*.wandb")), "logger=wandb keeps the evaluation's numbers in an offline run"


def test_train_test_metrics_equal_evaluate_on_the_best_checkpoint_and_on_its_coco_export(smoke_run, tmp_path):
    """train.py's test numbers, evaluate.py's on the checkpoint it tested, and evaluate.py's on
    the same canvases exported as a COCO folder (PNG files read back by the COCO reader, the
    channels and size taken from the checkpoint): three routes, one set of numbers."""
    from glimpse.data.export_coco import main as export_coco

    out, _ = smoke_run
    trained = json.loads((out / "metrics.json").read_text())
    best = sorted((out / "checkpoints").glob("epoch_*.ckpt"))
    assert len(best) == 1
    keys = ("multiset/exact_match", "multiset/precision", "multiset/recall", "multiset/f1",
            "localisation/glimpse_hit_rate", "localisation/object_coverage")

    mnist = tmp_path / "mnist"  # the smoke run's test split: 64 canvases in batches of 32
    run("evaluate.py", f"ckpt_path={best[0]}", "data.test_size=64", "data.batch_size=32", "data.num_workers=0",
        "heatmaps.methods=[saliency_map]", "heatmaps.max_images=8", f"paths.output_dir={mnist}")
    scored = json.loads((mnist / "metrics.json").read_text())
    for key in keys:
        assert scored[key] == pytest.approx(trained[f"test/{key}"], abs=1e-6), key

    folder = tmp_path / "coco"
    assert export_coco([str(folder), "data.train_size=2", "data.val_size=2", "data.test_size=64",
                        "data.num_workers=0"]) == 0
    ann = folder / "annotations" / "instances_test.json"
    coco = tmp_path / "coco_eval"
    proc = run("evaluate.py", f"ckpt_path={best[0]}", "data=coco", f"data.root={folder / 'test'}", f"data.ann_file={ann}",
               f"data.val_ann_file={ann}", "heatmaps.max_images=8", f"paths.output_dir={coco}")
    assert "data from the checkpoint: data.channels=1, data.image_size=100" in proc.stdout
    scored = json.loads((coco / "metrics.json").read_text())
    for key in keys:
        assert scored[key] == pytest.approx(trained[f"test/{key}"], abs=1e-6), key

    # a channel count the checkpoint cannot read: one line naming the data key, nothing written
    proc = run("evaluate.py", f"ckpt_path={best[0]}", "data=coco", f"data.root={folder / 'test'}", f"data.ann_file={ann}",
               "data.channels=3", f"paths.output_dir={tmp_path / 'rgb'}", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: data.channels=3") and "1-channel" in proc.stderr
    assert not (tmp_path / "rgb").exists()


def test_csv_logger_records_what_metrics_json_holds_and_reinforce_runs_without_logger(tmp_path):
    run("train.py", *TINY, "trainer.max_epochs=2", "logger=csv", f"paths.output_dir={tmp_path / 'csv'}", "test=false")
    logged = list(csv.DictReader(next((tmp_path / "csv" / "csv").rglob("metrics.csv")).open()))
    vals = [row for row in logged if row.get("val/multiset/f1")]
    written = json.loads((tmp_path / "csv" / "metrics.json").read_text())
    assert float(vals[-1]["val/multiset/f1"]) == pytest.approx(written["val/multiset/f1"], abs=1e-6)
    # FitClock: each validation's row holds the fit's wall seconds so far, rising; the time-to-accuracy
    # benchmark reads those rows back as its curve
    clock = [float(row["time/fit_seconds"]) for row in vals]
    assert len(clock) == 2 and 0 < clock[0] < clock[1], clock
    assert not any(key.startswith("time/") for key in written), "metrics.json keeps the val/ and test/ metrics"
    benchmark = load_benchmark("time_to_accuracy")
    points = benchmark.curve(tmp_path / "csv")
    assert [p["epoch"] for p in points] == [0, 1] and [p["seconds"] for p in points] == clock
    assert [p["f1"] for p in points] == [float(row["val/multiset/f1"]) for row in vals]
    assert benchmark.first_reaching(points, 0.0, 0.0) == clock[0]
    assert benchmark.first_reaching(points, 1.01, 0.0) != benchmark.first_reaching(points, 1.01, 0.0)  # nan: never
    run("train.py", *TINY, "logger=none", "objective=reinforce", f"paths.output_dir={tmp_path / 'none'}", "test=false")
    metrics = json.loads((tmp_path / "none" / "metrics.json").read_text())
    assert {"val/multiset/f1", "val/localisation/glimpse_hit_rate"} <= set(metrics)
    assert not any(key.startswith("test/") for key in metrics), "test=false runs no test"


def test_evaluate_missing_or_foreign_checkpoint(tmp_path):
    proc = run("evaluate.py", f"ckpt_path={tmp_path / 'missing.ckpt'}", f"paths.output_dir={tmp_path / 'a'}", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "no checkpoint at" in proc.stderr
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    proc = run("evaluate.py", f"ckpt_path={junk}", f"paths.output_dir={tmp_path / 'b'}", check=False)
    assert proc.returncode == 2 and "not a readable checkpoint" in proc.stderr
    proc = run("evaluate.py", f"ckpt_path={junk}", "heatmaps.methods=[saliency_map,gradcam_typo]",
               f"paths.output_dir={tmp_path / 'c'}", check=False)
    assert proc.returncode == 2 and "gradcam_typo" in proc.stderr and "saliency_map" in proc.stderr
    assert not any((tmp_path / d).exists() for d in "abc")


@pytest.mark.slow  # about 400 optimiser steps: a minute or two on 2 idle cores
def test_a_trained_model_beats_the_best_constant_prediction_on_the_same_images(tmp_path):
    """One digit per canvas: the trained model names it better than any constant guess (the
    test split's most frequent digit, chosen with hindsight) on the same 128 test canvases."""
    import torch

    from glimpse.data.mnist_datamodule import MultisetMNISTDataModule
    from glimpse.metrics import MultisetMetrics

    sizes = ["data.min_digits=1", "data.max_digits=1", "data.train_size=2048", "data.val_size=128", "data.test_size=128"]
    run("train.py", "experiment=smoke", "logger=none", *sizes, "trainer.max_epochs=6", "callbacks.heatmaps=null",
        "callbacks.heatmap_metrics=null", f"paths.output_dir={tmp_path}")
    trained = json.loads((tmp_path / "metrics.json").read_text())["test/multiset/f1"]
    data = MultisetMNISTDataModule(train_size=1, val_size=1, test_size=128, min_digits=1, max_digits=1, batch_size=32)
    data.setup()
    test = data.datasets["test"]
    counts = torch.stack([test[i]["counts"] for i in range(len(test))])
    constant = []
    for digit in range(10):
        metrics = MultisetMetrics()
        guess = torch.zeros_like(counts)
        guess[:, digit] = 1
        metrics.update(guess, counts)
        constant.append(float(metrics.compute()["multiset/f1"]))
    assert max(constant) == pytest.approx(23 / 128)  # the digit 6, 23 of the 128 canvases
    assert trained > max(constant) + 0.1, (trained, max(constant))
