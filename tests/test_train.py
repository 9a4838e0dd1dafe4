"""End-to-end: the real commands on small real data, and bad input that loses nothing."""
import json

import pytest

from glimpse.heatmaps.gradients import METHODS

from conftest import TINY, run


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


def test_csv_logger_and_reinforce_objective_without_logger(tmp_path):
    run("train.py", *TINY, "logger=csv", f"paths.output_dir={tmp_path / 'csv'}", "test=false")
    assert list((tmp_path / "csv" / "csv").rglob("metrics.csv"))
    run("train.py", *TINY, "logger=none", "objective=reinforce", f"paths.output_dir={tmp_path / 'none'}", "test=false")
    metrics = json.loads((tmp_path / "none" / "metrics.json").read_text())
    assert 0.0 <= metrics["val/multiset/f1"] <= 1.0


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.max_digit_size=120"], "max_digit_size"),
        (["data.max_digits=9", "data.max_digit_size=50"], "max_digits"),
        (["objective.label_loss=ctc"], "objective.label_loss"),
        (["data=imagenet"], "data"),
        (["model.nonexistent_key=1"], "nonexistent_key"),
        (["ckpt_path=/nonexistent/last.ckpt"], "/nonexistent/last.ckpt"),
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, overrides, message):
    out = tmp_path / "run"
    proc = run("train.py", *TINY, "logger=none", f"paths.output_dir={out}", *overrides, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (out / "checkpoints").exists() and not (out / "metrics.json").exists()


def test_evaluate_missing_or_foreign_checkpoint(tmp_path):
    proc = run("evaluate.py", f"ckpt_path={tmp_path / 'missing.ckpt'}", f"paths.output_dir={tmp_path}", check=False)
    assert proc.returncode == 2 and "no checkpoint at" in proc.stderr
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    proc = run("evaluate.py", f"ckpt_path={junk}", f"paths.output_dir={tmp_path}", check=False)
    assert proc.returncode == 2 and "not a readable checkpoint" in proc.stderr
    proc = run("evaluate.py", f"ckpt_path={junk}", "heatmaps.methods=[saliency_map,gradcam_typo]",
               f"paths.output_dir={tmp_path}", check=False)
    assert proc.returncode == 2 and "gradcam_typo" in proc.stderr and "saliency_map" in proc.stderr
