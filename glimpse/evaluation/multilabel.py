"""Multi-label metrics as the VOC 2007 / COCO 2014 papers print them, and count metrics.

From a per-class score (for ranking) and the emitted multiset of each image:

- ``multilabel/mAP``: the mean over classes of the average precision of the class score
  (torchmetrics' ``MultilabelAveragePrecision``, exact, no thresholds), over the classes with at
  least one positive image (torchmetrics' macro average counts a class without positives as 0).
- ``multilabel/{CP,CR,CF1}``: per-class precision and recall of the emitted label *set* (a class is
  predicted when the multiset names it at least once), averaged over classes (0 where a class is
  never predicted; classes neither present nor predicted are left out), and ``CF1 = 2 CP CR / (CP + CR)``.
- ``multilabel/{OP,OR,OF1}``: the same counted over all image-class pairs (overall).
- ``count/accuracy``: the share of images whose every class count is right; ``count/mae``: the
  mean absolute error of the per-class counts over images and classes, and ``count/mae/<class>``.
- ``multiset/f1_present``: the F1 of the 2018 authors' code (``util.py``), for comparing with
  their numbers: per class, the precision ``min(p, t) / max(p, 1)`` and recall
  ``min(p, t) / max(t, 1)`` of the counts averaged over the images that *contain* the class (a
  false positive on an absent class costs nothing), an F1 per class, and the mean over the classes
  present. Over the whole split (their code averages it over batches). The micro
  ``multiset/f1`` is stricter: it counts every false positive.

All are torchmetrics ``Metric``s, so they reduce across DDP processes.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MultilabelAveragePrecision

# the glimpse model's per-class scores (see class_scores); the first is the default
SCORE_KINDS = ("max_probability", "expected_count")


def episode_steps(labels: Tensor, num_classes: int) -> Tensor:
    """Which decoding steps ``(B, T)`` belong to the episode: up to and including the first STOP."""
    stop = (labels == num_classes).long()
    return (stop.cumsum(1) - stop) == 0


def class_scores(episode, kind: str = SCORE_KINDS[0]) -> Tensor:
    """A per-class confidence ``(B, K)`` from a greedy episode, for ranking images per class.

    ``max_probability``: the highest probability each class gets at any step of the episode
    (its steps up to the first STOP), from the label logits; works for every model that emits
    labels step by step. ``expected_count``: the glimpse model's predicted count, the sum of the
    saliency model's density of the class over the map (needs ``episode.class_density``).
    """
    if kind == "max_probability":
        num_classes = episode.label_logits.shape[-1] - 1
        probs = F.softmax(episode.label_logits.float(), -1)[..., :num_classes]  # (B, T, K)
        alive = episode_steps(episode.labels, num_classes)[..., None]
        return torch.where(alive, probs, torch.zeros_like(probs)).amax(1)
    if kind == "expected_count":
        density = getattr(episode, "class_density", None)
        if density is None:
            raise ValueError("class score 'expected_count' needs the glimpse model's class densities; this model has none "
                             "(use 'max_probability')")
        return density.float().sum((-2, -1))
    raise ValueError(f"class score {kind!r} is not known; choose one of {list(SCORE_KINDS)}")


class MultilabelMetrics(Metric):
    """Accumulates class scores and predicted / true count vectors ``(B, K)``.

    ``score_kinds`` names the class scores given to :meth:`update` (a dict by name, or one
    tensor when there is one kind); ``multilabel/mAP`` is the first's, and with more than one
    each also gets ``multilabel/mAP_<kind>``.
    """

    full_state_update = False

    def __init__(self, num_classes: int, score_kinds: tuple[str, ...] = SCORE_KINDS[:1]) -> None:
        super().__init__()
        if num_classes < 1 or not score_kinds:
            raise ValueError(f"MultilabelMetrics needs num_classes >= 1 and a score kind, got {num_classes}, {score_kinds}")
        self.num_classes = num_classes
        self.score_kinds = tuple(score_kinds)
        for name in ("true_positives", "false_positives", "false_negatives", "positives"):
            self.add_state(name, default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("absolute_error", default=torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("present_precision", "present_recall"):  # the 2018 authors' F1: sums over images with the class
            self.add_state(name, default=torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("exact", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("images", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        # each reduces its own states across processes when computed
        self.average_precision = nn.ModuleDict({
            kind: MultilabelAveragePrecision(num_labels=num_classes, average=None, thresholds=None)
            for kind in self.score_kinds})

    def update(self, scores: Tensor | dict[str, Tensor], predicted: Tensor, target: Tensor) -> None:  # type: ignore[override]
        if predicted.shape != target.shape or predicted.shape[-1] != self.num_classes:
            raise ValueError(f"predicted counts {tuple(predicted.shape)} and targets {tuple(target.shape)} must both be "
                             f"(B, {self.num_classes})")
        if torch.is_tensor(scores):
            if len(self.score_kinds) != 1:
                raise ValueError(f"give the class scores by kind, one of each of {list(self.score_kinds)}")
            scores = {self.score_kinds[0]: scores}
        present, named = target > 0, predicted > 0
        self.true_positives += (present & named).sum(0)
        self.false_positives += (~present & named).sum(0)
        self.false_negatives += (present & ~named).sum(0)
        self.positives += present.sum(0)
        self.absolute_error += (predicted - target).abs().sum(0).double()
        overlap = torch.minimum(predicted, target).double()
        self.present_precision += torch.where(present, overlap / predicted.clamp(min=1), 0.0).sum(0)
        self.present_recall += torch.where(present, overlap / target.clamp(min=1), 0.0).sum(0)
        self.exact += (predicted == target).all(-1).sum()
        self.images += target.shape[0]
        for kind in self.score_kinds:
            self.average_precision[kind].update(scores[kind].float(), present.long())

    def per_class(self) -> dict[str, Tensor]:
        """Per class: ``AP_<kind>``, ``precision``, ``recall``, ``count_mae``, ``positives`` (images with the class)."""
        tp, fp, fn = (x.double() for x in (self.true_positives, self.false_positives, self.false_negatives))
        out = {
            "precision": tp / (tp + fp).clamp(min=1),
            "recall": tp / (tp + fn).clamp(min=1),
            "count_mae": self.absolute_error / self.images.clamp(min=1),
            "positives": self.positives.clone(),
        }
        for kind in self.score_kinds:
            out[f"AP_{kind}"] = self._average_precision(kind)
        return out

    def present_f1(self) -> Tensor:
        """``multiset/f1_present``, the 2018 authors' per-class F1 (module docstring); 0 without objects."""
        has = self.positives > 0
        if not has.any():
            return self.present_precision.new_tensor(0.0)
        n = self.positives[has].double()
        return f1(self.present_precision[has] / n, self.present_recall[has] / n).mean()

    def _average_precision(self, kind: str) -> Tensor:
        metric = self.average_precision[kind]
        if not metric.update_count:
            return torch.full((self.num_classes,), float("nan"), dtype=torch.float64)
        with warnings.catch_warnings():  # a class without positives: its AP is undefined, left out below
            warnings.filterwarnings("ignore", message="No positive samples found")
            ap = metric.compute().double()
        return torch.where(self.positives > 0, ap, torch.full_like(ap, float("nan")))  # undefined without positives

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        each = self.per_class()
        tp, fp, fn = (x.double() for x in (self.true_positives, self.false_positives, self.false_negatives))
        scored = (tp + fp + fn) > 0  # a class neither present nor predicted has nothing to score
        cp = each["precision"][scored].mean() if scored.any() else tp.new_tensor(0.0)
        cr = each["recall"][scored].mean() if scored.any() else tp.new_tensor(0.0)
        op, o_r = tp.sum() / (tp + fp).sum().clamp(min=1), tp.sum() / (tp + fn).sum().clamp(min=1)
        out = {
            "multilabel/CP": cp, "multilabel/CR": cr, "multilabel/CF1": f1(cp, cr),
            "multilabel/OP": op, "multilabel/OR": o_r, "multilabel/OF1": f1(op, o_r),
            "count/accuracy": self.exact.double() / self.images.clamp(min=1),
            "count/mae": each["count_mae"].mean(),
            "multiset/f1_present": self.present_f1(),
        }
        for i, kind in enumerate(self.score_kinds):
            ap = each[f"AP_{kind}"]
            value = ap[~ap.isnan()].mean() if (~ap.isnan()).any() else ap.new_tensor(float("nan"))
            if i == 0:
                out["multilabel/mAP"] = value
            if len(self.score_kinds) > 1:
                out[f"multilabel/mAP_{kind}"] = value
        return {k: v.float() for k, v in out.items()}


def f1(precision: Tensor, recall: Tensor) -> Tensor:
    """Harmonic mean, 0 when both are 0."""
    total = precision + recall
    return torch.where(total > 0, 2 * precision * recall / total.clamp(min=1e-12), torch.zeros_like(total))


def class_key(name: str) -> str:
    """A class name as a metric key part (``traffic light`` -> ``traffic_light``)."""
    return "_".join(str(name).split()).replace("/", "_")
