"""Scoring heatmaps of the glimpse model against the boxes, accumulated over batches.

One target per right label (:func:`~glimpse.heatmaps.targets.right_label_targets`): a
classification step whose emitted label was right. Each method (:mod:`glimpse.heatmaps.registry`)
maps targets to heatmaps ``(N, H, W)`` at image resolution; the pointing games compare them
with the target class's boxes, and deletion and insertion (:mod:`glimpse.heatmaps.scores`)
score the probability of the target label at the target's step with the episode's recorded
actions replayed on the perturbed image, so they measure the decision that was actually taken.
"""
from __future__ import annotations

import torch
from torch import Tensor

from glimpse.heatmaps import scores
from glimpse.heatmaps.replay import replay_score
from glimpse.heatmaps.targets import Method, label_probability, right_label_targets
from glimpse.models.inference import inference_copy
from glimpse.models.policy import Episode

KEYS = ("pointing_game", "energy_pointing_game", "deletion_auc", "insertion_auc")


class HeatmapEvaluation:
    """Accumulates the four heatmap metrics of each method over batches.

    ``update(model, batch, episode, methods)`` scores the batch's right labels with an
    :func:`~glimpse.models.inference.inference_copy` of the model (the model is not touched);
    ``compute()`` gives
    ``attribution/<method>/<metric>`` (pointing game and its energy version: the mean over
    classes of the per-class mean; deletion/insertion AUC: the mean over targets) and the
    per-class values for the report.
    """

    def __init__(self, num_classes: int, steps: int = 10, perturbation: bool = True) -> None:
        self.num_classes, self.steps, self.perturbation = num_classes, steps, perturbation
        self.scores: dict[str, dict[str, list[Tensor]]] = {}
        self.classes: list[Tensor] = []

    def update(self, model, batch: dict, episode: Episode, methods: dict[str, Method]) -> None:
        images = batch["image"]
        targets = right_label_targets(episode, batch["counts"])
        if not len(targets):
            return
        model = inference_copy(model)  # batch norm folded, channels-last: the same function, faster replays
        boxes = batch["boxes"][targets[:, 0]]
        valid = batch["labels"][targets[:, 0]] == targets[:, 2:3]
        hw = tuple(images.shape[-2:])
        tolerance = scores.pointing_tolerance(hw)
        target_images = images[targets[:, 0]]
        score = replay_score(model, episode, targets)
        ends = None
        if self.perturbation:  # the unperturbed images' scores are the recorded episode's
            original = label_probability(episode.label_logits[targets[:, 0], targets[:, 1]], targets)
            ends = scores.perturbation_endpoints(score, target_images, original=original)
        self.classes.append(targets[:, 2].cpu())
        for name, method in methods.items():
            maps = method(model, images, episode, targets).detach()
            out = self.scores.setdefault(name, {k: [] for k in KEYS})
            out["pointing_game"].append(scores.pointing_game(maps, boxes, valid, tolerance).float().cpu())
            out["energy_pointing_game"].append(scores.energy_pointing_game(maps, boxes, valid).cpu())
            if self.perturbation:
                auc = scores.perturbation_auc(score, target_images, maps, self.steps, endpoints=ends)
                out["deletion_auc"].append(auc["deletion"].cpu())
                out["insertion_auc"].append(auc["insertion"].cpu())

    def compute(self) -> tuple[dict[str, float], dict[str, dict[str, list[float]]]]:
        """``(metrics, per_class)``: flat metric keys, and per method the per-class pointing games."""
        metrics: dict[str, float] = {}
        per_class: dict[str, dict[str, list[float]]] = {}
        if not self.classes:
            return metrics, per_class
        classes = torch.cat(self.classes)
        for name, values in self.scores.items():
            per_class[name] = {}
            for key in ("pointing_game", "energy_pointing_game"):
                each, overall = scores.per_class_mean(torch.cat(values[key]), classes, self.num_classes)
                metrics[f"attribution/{name}/{key}"] = float(overall)
                per_class[name][key] = each.tolist()
            for key in ("deletion_auc", "insertion_auc"):
                if values[key]:
                    metrics[f"attribution/{name}/{key}"] = float(torch.cat(values[key]).mean())
        return metrics, per_class
