"""The non-attentive baseline (model=baseline): its loss by hand, gradients, decoding, the real
commands end to end, and glimpse.compare across models with budget checkpoints."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from glimpse.baseline_module import BaselineModule, multiset_loss
from glimpse.models.backbone import ConvBackbone, ResNetBackbone
from glimpse.models.baseline import MultisetPredictor

from conftest import run

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["model=baseline", "experiment=smoke", "logger=none"]


def small_predictor(num_classes: int = 10) -> MultisetPredictor:
    return MultisetPredictor(ConvBackbone(1, channels=(8, 16), strides=(2, 2), dilations=(1, 1)), num_classes, hidden=8,
                             label_dim=4, head_hidden=16)


def test_multiset_loss_by_hand():
    # two classes (STOP = 2), target {0, 1}; the model rolls in 0 (right), then 0 again (wrong: nothing removed)
    logits = torch.tensor([[[math.log(2.0), 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[0, 0, 1]])
    targets = torch.tensor([[1, 1]])
    # step 0: oracle (1/2, 1/2, 0) against (1/2, 1/4, 1/4) -> 1.5 ln 2; steps 1 and 2: oracle (0, 1, 0) against uniform -> ln 3
    expected = (1.5 * math.log(2) + 2 * math.log(3)) / 3
    assert float(multiset_loss(logits, labels, targets)) == pytest.approx(expected)
    # an image with one object scores steps 0 and 1 only: its third step is past STOP's target
    short = multiset_loss(logits, torch.tensor([[1, 2, 2]]), torch.tensor([[0, 1]]))
    assert float(short) == pytest.approx((-math.log(0.25) + math.log(3)) / 2)


@pytest.mark.parametrize("backbone", ["conv", "resnet18"])
def test_every_parameter_gets_a_finite_gradient(backbone):
    torch.manual_seed(0)
    if backbone == "conv":
        model, images = small_predictor(), torch.rand(4, 1, 40, 40)
    else:  # photographs: the ResNet grid of model=baseline_resnet18 (no weights: nothing to download)
        model = MultisetPredictor(ResNetBackbone("resnet18", stages=3, in_channels=3), 10, hidden=8, label_dim=4,
                                  head_hidden=16)
        images = torch.rand(4, 3, 64, 64)
    counts = torch.tensor([[1] + [0] * 9, [0, 2] + [0] * 8, [0] * 9 + [3], [1, 1, 1] + [0] * 7])
    episode = model(images, int(counts.sum(-1).max()) + 1, label_mode="greedy")
    multiset_loss(episode.label_logits, episode.labels, counts).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, f"{name} got a zero gradient"


def test_decoding_modes_and_teacher_forcing():
    torch.manual_seed(0)
    model = small_predictor(3).eval()
    images = torch.rand(2, 1, 40, 40)
    greedy = model(images, 4)
    assert greedy.label_logits.shape == (2, 4, 4) and greedy.labels.shape == (2, 4)
    assert torch.equal(greedy.labels, greedy.label_logits.argmax(-1))
    # the previous label feeds the next step: forcing other labels changes the later logits, never the first
    forced = torch.tensor([[3, 3, 3, 3], [0, 1, 2, 0]])
    replay = model(images, 4, labels=forced)
    assert torch.equal(replay.labels, forced) and torch.allclose(replay.label_logits[:, 0], greedy.label_logits[:, 0])
    assert not torch.allclose(replay.label_logits[:, 1:], greedy.label_logits[:, 1:])
    with pytest.raises(ValueError, match="label_mode"):
        model(images, 2, label_mode="beam")


def test_module_emits_the_labels_before_the_first_stop():
    module = BaselineModule({"_target_": "glimpse.models.baseline.MultisetPredictor", "hidden": 8,
                             "backbone": {"_target_": "glimpse.models.backbone.ConvBackbone", "channels": [8], "strides": [4],
                                          "dilations": [1]}}, num_classes=3, class_names=["a", "b", "c"], max_steps=4)
    episode = type("E", (), {"labels": torch.tensor([[0, 0, 3, 1], [3, 2, 2, 2]])})()
    assert module.predicted_counts(episode).tolist() == [[2, 0, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="class names"):
        BaselineModule(module.hparams["policy"], num_classes=2, class_names=["a"], max_steps=3)


def test_baseline_trains_and_evaluates_end_to_end_in_the_smoke_experiment(tmp_path):
    out = tmp_path / "train"
    proc = run("train.py", *SMOKE, f"paths.output_dir={out}")
    assert "model=baseline: skipping HeatmapMetrics, HeatmapCallback" in proc.stdout + proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["test/multiset/f1"] <= 1.0 and 0.0 <= metrics["val/multiset/exact_match"] <= 1.0
    assert not any(k.startswith(("val/localisation", "val/attribution")) for k in metrics)
    scored = tmp_path / "eval"
    proc = run("evaluate.py", f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}", "data.test_size=64", "data.num_workers=0",
               f"paths.output_dir={scored}")
    log = proc.stdout + proc.stderr
    assert log.count("localisation and heatmap metrics, trajectories and per-step plots are skipped") == 1
    metrics = json.loads((scored / "metrics.json").read_text())
    for key in ("multiset/f1", "multiset/exact_match", "multilabel/mAP", "multilabel/CF1", "multilabel/OF1", "count/accuracy"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert "multilabel/mAP_expected_count" not in metrics  # no densities without a saliency model
    assert not any(k.startswith(("localisation/", "attribution/")) for k in metrics)
    report = (scored / "report.md").read_text()
    assert "## Per class" in report and "| 7 |" in report and "trajectories" not in report


@pytest.mark.slow  # two models trained and evaluated at two budget points
def test_compare_models_at_budget_checkpoints(tmp_path):
    tiny = ("[data.train_size=64,data.val_size=16,data.test_size=16,data.batch_size=16,model.policy.hidden=8,"
            "~callbacks.heatmap_metrics,~callbacks.heatmaps]")
    out = tmp_path / "table.md"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.run([sys.executable, "-m", "glimpse.compare", "models=[glimpse,baseline]", "objectives=[multiset]",
                           "seeds=[0]", "budget_minutes=0.04", "checkpoints_at=[0.02,0.04]", "data=multiset_mnist",
                           f"overrides={tiny}", f"output={out}", f"runs_dir={tmp_path / 'runs'}", "jobs=2"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for run_dir in (tmp_path / "runs" / "multiset" / "seed_0", tmp_path / "runs" / "baseline" / "multiset" / "seed_0"):
        for minutes in ("0.02", "0.04"):
            assert (run_dir / "checkpoints" / f"budget_{minutes}min.ckpt").is_file()
            metrics = json.loads((run_dir / f"eval_{minutes}min" / "metrics.json").read_text())
            assert 0.0 <= metrics["multilabel/mAP"] <= 1.0
    text = out.read_text()
    assert "models ['glimpse', 'baseline'], 0.02, 0.04 CPU min of one run each" in text
    assert "| run | exact match | precision | recall | F1 | glimpse hit rate | mAP | count accuracy | steps |" in text
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert [r.split("`")[1] for r in rows] == ["glimpse @ 0.02 CPU min", "baseline @ 0.02 CPU min",
                                                "glimpse @ 0.04 CPU min", "baseline @ 0.04 CPU min"]
    assert all(r.endswith("| 1/1 |") for r in rows)
    # the same command again reads everything back
    again = subprocess.run([sys.executable, "-m", "glimpse.compare", "models=[glimpse,baseline]", "objectives=[multiset]",
                            "seeds=[0]", "budget_minutes=0.04", "checkpoints_at=[0.02,0.04]", "data=multiset_mnist",
                            f"overrides={tiny}", f"output={out}", f"runs_dir={tmp_path / 'runs'}"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("read back from an earlier run") == 2
    assert [line for line in out.read_text().splitlines() if line.startswith("| `")] == rows


def test_bad_checkpoints_at_is_a_clear_error(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "-m", "glimpse.compare", "models=[baseline]", "budget_minutes=10",
                           "checkpoints_at=[5,20]", f"output={tmp_path / 't.md'}"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.startswith("error: checkpoints_at=[5, 20]") and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "glimpse.compare", "models=[nope]", f"output={tmp_path / 't.md'}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "models=nope is not a config in configs/model" in proc.stderr
