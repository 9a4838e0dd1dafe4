"""Multi-label and count metrics: hand-worked examples, torchmetrics and scipy cross-checks,
the class scores of an episode, and evaluate.py's keys and per-class table on a real checkpoint."""
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.stats import rankdata
from torchmetrics.classification import MultilabelAveragePrecision, MultilabelPrecision, MultilabelRecall

from glimpse.evaluation.multilabel import MultilabelMetrics, class_key, class_scores, episode_steps

from conftest import run

# three images, three classes; counts (a multiset per image) and class scores
TARGET = torch.tensor([[2, 0, 1], [0, 1, 0], [1, 0, 0]])
PREDICTED = torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 1]])
SCORES = torch.tensor([[0.9, 0.1, 0.6], [0.2, 0.8, 0.3], [0.4, 0.3, 0.7]])


def test_hand_worked_example():
    metric = MultilabelMetrics(3)
    metric.update(SCORES, PREDICTED, TARGET)
    out = {k: float(v) for k, v in metric.compute().items()}
    # label sets: class 0 tp 1 (image 0), fn 1 (image 2); class 1 tp 1; class 2 tp 1 (image 0), fp 1 (image 2)
    cp, cr = (1 + 1 + 0.5) / 3, (0.5 + 1 + 1) / 3
    assert out["multilabel/CP"] == pytest.approx(cp) and out["multilabel/CR"] == pytest.approx(cr)
    assert out["multilabel/CF1"] == pytest.approx(2 * cp * cr / (cp + cr))
    assert out["multilabel/OP"] == pytest.approx(3 / 4) and out["multilabel/OR"] == pytest.approx(3 / 4)
    assert out["multilabel/OF1"] == pytest.approx(3 / 4)
    # AP: class 0 ranks both positives first (1), class 1 too (1), class 2's positive is second behind a negative (1/2)
    assert out["multilabel/mAP"] == pytest.approx((1 + 1 + 0.5) / 3)
    # counts: only image 1 is right everywhere; absolute errors per class 2, 0, 1 over 3 images
    assert out["count/accuracy"] == pytest.approx(1 / 3)
    assert out["count/mae"] == pytest.approx((2 / 3 + 0 + 1 / 3) / 3)
    each = metric.per_class()
    assert each["count_mae"].tolist() == pytest.approx([2 / 3, 0, 1 / 3])
    assert each["AP_max_probability"].tolist() == pytest.approx([1, 1, 0.5])
    # the 2018 authors' F1, over the images that contain each class: class 0 (images 0, 2) precision
    # (1/1 + 0/1) / 2, recall (1/2 + 0/1) / 2, F1 1/3; classes 1 and 2: 1 and 1 (image 2's false 2 costs
    # nothing, as class 2 is absent there). The micro F1 counts it: 2 * 3 / (4 + 5) = 2/3
    assert out["multiset/f1_present"] == pytest.approx((1 / 3 + 1 + 1) / 3)


def test_batches_accumulate_and_classes_without_positives_are_left_out_of_the_means():
    metric = MultilabelMetrics(4)
    pad = lambda x: torch.cat([x, torch.zeros_like(x[:, :1])], 1)  # noqa: E731  a 4th class nobody has or names
    for i in range(3):
        metric.update(pad(SCORES[i:i + 1]), pad(PREDICTED[i:i + 1]), pad(TARGET[i:i + 1]))
    out = {k: float(v) for k, v in metric.compute().items()}
    assert out["multilabel/mAP"] == pytest.approx(2.5 / 3) and out["multilabel/CP"] == pytest.approx(2.5 / 3)
    assert math.isnan(metric.per_class()["AP_max_probability"][3])
    assert out["count/mae"] == pytest.approx(1 / 4)  # the 4th class's counts are right: (2 + 0 + 1 + 0) / (3 images * 4)
    assert out["multiset/f1_present"] == pytest.approx(7 / 9)  # the 4th class, in no image, is not one of the means


def test_several_score_kinds_each_get_their_map():
    metric = MultilabelMetrics(3, ("max_probability", "expected_count"))
    metric.update({"max_probability": SCORES, "expected_count": 1 - SCORES}, PREDICTED, TARGET)
    out = metric.compute()
    assert float(out["multilabel/mAP"]) == float(out["multilabel/mAP_max_probability"]) == pytest.approx(2.5 / 3)
    assert float(out["multilabel/mAP_expected_count"]) < 0.7  # the reversed ranking
    with pytest.raises(ValueError, match="by kind"):
        metric.update(SCORES, PREDICTED, TARGET)


def scipy_average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """AP as the mean over positives of the precision at their score (ties counted together)."""
    rank = rankdata(-scores, method="max")  # images scoring at least as high
    hits = rankdata(-scores[positive], method="max")  # positives scoring at least as high
    return float(np.mean(hits / rank[positive]))


@pytest.mark.parametrize("seed", [0, 1])
def test_agrees_with_torchmetrics_and_scipy(seed):
    generator = torch.Generator().manual_seed(seed)
    images, classes = 60, 5
    target = torch.randint(0, 3, (images, classes), generator=generator) * (torch.rand(images, classes, generator=generator) < 0.5)
    predicted = torch.where(torch.rand(images, classes, generator=generator) < 0.7, target,
                            torch.randint(0, 3, (images, classes), generator=generator))
    scores = (torch.rand(images, classes, generator=generator) * 10).round() / 10 + target  # ties included
    assert (target > 0).any(0).all() and (predicted > 0).any(0).all()  # every class present and named: same definitions
    metric = MultilabelMetrics(classes)
    for chunk in range(0, images, 16):
        metric.update(scores[chunk:chunk + 16], predicted[chunk:chunk + 16], target[chunk:chunk + 16])
    out = {k: float(v) for k, v in metric.compute().items()}
    present, named = (target > 0).long(), (predicted > 0).long()
    assert out["multilabel/CP"] == pytest.approx(float(MultilabelPrecision(classes, average="macro")(named, present)))
    assert out["multilabel/CR"] == pytest.approx(float(MultilabelRecall(classes, average="macro")(named, present)))
    assert out["multilabel/OP"] == pytest.approx(float(MultilabelPrecision(classes, average="micro")(named, present)))
    assert out["multilabel/OR"] == pytest.approx(float(MultilabelRecall(classes, average="micro")(named, present)))
    reference = MultilabelAveragePrecision(classes, average="macro", thresholds=None)(scores, present)
    assert out["multilabel/mAP"] == pytest.approx(float(reference), abs=1e-6)
    by_scipy = np.mean([scipy_average_precision(scores[:, c].numpy(), present[:, c].bool().numpy()) for c in range(classes)])
    assert out["multilabel/mAP"] == pytest.approx(by_scipy, abs=1e-6)
    assert out["count/accuracy"] == pytest.approx(float((predicted == target).all(-1).float().mean()))
    assert out["count/mae"] == pytest.approx(float((predicted - target).abs().float().mean()))


def test_class_scores_read_the_episode_up_to_its_first_stop():
    # K = 2 classes, STOP = 2; image 0 stops at step 1, so step 2's certainty about class 1 is not its own
    logits = torch.log(torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.0, 0.99, 0.01]],
                                     [[0.3, 0.6, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8]]]) + 1e-12)
    labels = torch.tensor([[0, 2, 1], [1, 0, 2]])
    assert episode_steps(labels, 2).tolist() == [[True, True, False], [True, True, True]]
    episode = SimpleNamespace(label_logits=logits, labels=labels, class_density=torch.ones(2, 2, 3, 3) / 9)
    assert class_scores(episode).flatten().tolist() == pytest.approx([0.7, 0.2, 0.5, 0.6], abs=1e-5)
    assert class_scores(episode, "expected_count").flatten().tolist() == pytest.approx([1.0] * 4)
    with pytest.raises(ValueError, match="class densities"):
        class_scores(SimpleNamespace(label_logits=logits, labels=labels), "expected_count")
    with pytest.raises(ValueError, match="not known"):
        class_scores(episode, "entropy")


def test_class_keys():
    assert class_key("traffic light") == "traffic_light" and class_key("7") == "7"


def test_evaluate_writes_multilabel_and_count_metrics_and_the_class_table(smoke_run, tmp_path):
    out, _ = smoke_run
    run("evaluate.py", f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}", "data.test_size=32", "data.num_workers=0",
        f"paths.output_dir={tmp_path}", "heatmaps.methods=[saliency_map]")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("mAP", "mAP_max_probability", "mAP_expected_count", "CP", "CR", "CF1", "OP", "OR", "OF1"):
        assert 0.0 <= metrics[f"multilabel/{key}"] <= 1.0, key
    assert 0.0 <= metrics["count/accuracy"] <= 1.0 and metrics["count/mae"] >= 0.0
    assert 0.0 <= metrics["multiset/f1_present"] <= 1.0
    # a multiset right in every count is an exact match: the two are the same number
    assert metrics["count/accuracy"] == pytest.approx(metrics["multiset/exact_match"])
    per_class = [metrics[f"count/mae/{c}"] for c in range(10)]
    assert sum(per_class) / 10 == pytest.approx(metrics["count/mae"], abs=1e-6)
    report = (tmp_path / "report.md").read_text()
    table = report.split("## Per class")[1]
    assert "| class | objects | images | precision | recall | AP |" in table
    assert len([line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]) == 10
    assert "count/mae/3" not in report.split("## Per class")[0]  # per class only in the class table
