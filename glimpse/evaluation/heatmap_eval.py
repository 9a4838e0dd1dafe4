"""Scoring heatmaps of the glimpse model against the boxes: one target per right label.

A target is ``(image, step, class)``: a classification step whose emitted label was right.
Each method maps targets to heatmaps ``(N, H, W)`` at image resolution; the built-in
``saliency_map`` is the model's own density of that class (its saliency map split by
class), upsampled bilinearly; the attribution methods of :mod:`glimpse.attribution`
(``gradcam``, ``integrated_gradients``, ...) explain the label logit of the target's step
with the episode replayed (:class:`AttributionMethods`).
Deletion and insertion score the probability of the target label at the target's step,
with the episode's recorded actions replayed on the perturbed image, so they measure the
decision that was actually taken.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from glimpse import multiset
from glimpse.attribution.episode import attribute_targets, emitted_label_targets, step_logits
from glimpse.attribution.methods import METHODS as ATTRIBUTION_METHODS
from glimpse.attribution.methods import NO_TARGET
from glimpse.evaluation import heatmaps
from glimpse.models.attention import upsample_cells
from glimpse.models.inference import inference_copy
from glimpse.models.policy import Episode

Method = Callable[..., Tensor]  # (model, images, episode, targets) -> maps (N, H, W)
KEYS = ("pointing_game", "energy_pointing_game", "deletion_auc", "insertion_auc")


def saliency_map_method(model, images: Tensor, episode: Episode, targets: Tensor) -> Tensor:
    """The model's density of the target class, upsampled to the image."""
    density = episode.class_density[targets[:, 0], targets[:, 2]]  # (N, h, w)
    return upsample_cells(density, tuple(images.shape[-2:]), episode.cell_stride)


BUILTIN: dict[str, Method] = {"saliency_map": saliency_map_method}
ALL = [*BUILTIN, *ATTRIBUTION_METHODS]  # `heatmaps.methods=all`: the ones that need no settings or checkpoint


class AttributionMethods:
    """The attribution methods of :mod:`glimpse.attribution` as heatmap methods.

    All requested methods come from one :func:`~glimpse.attribution.episode.attribute_targets`
    call per batch (one forward pass per meta step, batched gradients, one backward pass per
    target and no more), the maps computed at the layer's resolution and cell-sized ones
    upsampled with the backbone's cell geometry
    (:func:`~glimpse.models.attention.upsample_cells`). The first method asked for a batch
    computes them all; the others read the cache.
    """

    def __init__(self, names) -> None:
        self.names = list(names)
        self._for: tuple | None = None
        self._maps: dict[str, Tensor] = {}

    def method(self, name: str) -> Method:
        return lambda model, images, episode, targets: self.maps(name, model, images, episode, targets)

    def maps(self, name: str, model, images: Tensor, episode: Episode, targets: Tensor) -> Tensor:
        if self._for is None or any(a is not b for a, b in zip(self._for, (model, images, episode, targets))):
            self._maps = attribute_targets(model, images, self.names, episode, targets)
            self._for = (model, images, episode, targets)
        maps = self._maps[name]  # (N, h, w) or (N, H, W)
        hw = tuple(images.shape[-2:])
        return maps if tuple(maps.shape[-2:]) == hw else upsample_cells(maps, hw, episode.cell_stride)


def resolve_methods(names, key: str = "heatmaps.methods", settings=None) -> dict[str, Method]:
    """The methods named in a config (or ``all``: :data:`ALL`), or a ValueError naming the config
    key and the known names.

    Attribution methods (:mod:`glimpse.attribution`) share one batched call per batch; methods
    built from settings (``explainer``, ``igos``: glimpse/explain/methods.py) take theirs from
    ``settings[name]`` (``heatmaps.<name>.*`` in evaluate.py).
    """
    from glimpse.explain.methods import CONFIGURED

    names = ALL if names == "all" or list(names) == ["all"] else list(names)
    known = list(BUILTIN) + list(ATTRIBUTION_METHODS) + list(CONFIGURED)
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"{key} has unknown methods {unknown}; choose from {known}")
    settings = settings or {}
    section = key.rsplit(".", 1)[0]
    attribution = AttributionMethods([n for n in names if n in ATTRIBUTION_METHODS])
    methods = {}
    for name in names:
        if name in BUILTIN:
            methods[name] = BUILTIN[name]
        elif name in ATTRIBUTION_METHODS:
            methods[name] = attribution.method(name)
        else:
            given = dict(settings.get(name) or {})
            try:
                methods[name] = CONFIGURED[name](**given)
            except TypeError as err:
                raise ValueError(f"{section}.{name} has settings {sorted(given)} that do not fit: {err}") from err
    return methods


def right_label_targets(episode: Episode, counts: Tensor) -> Tensor:
    """``(N, 3)`` rows of (image, step, class) for every emitted label that was right, by step."""
    played = multiset.rollout(counts, episode.labels)
    emitted = played["alive"] & (episode.labels < counts.shape[1]) & played["correct"]
    step, image = emitted.T.nonzero(as_tuple=True)  # ordered by step, then image: replays stop early
    return torch.stack([image, step, episode.labels[image, step]], 1)


def emitted_targets(episode: Episode, num_classes: int) -> Tensor:
    """``(N, 3)`` rows of (image, step, class) for every label the model emitted (before its
    first STOP), right or wrong, by step: what the Explainer is trained to explain."""
    grid = emitted_label_targets(episode, num_classes)  # (B, T), NO_TARGET where nothing was emitted
    step, image = (grid != NO_TARGET).T.nonzero(as_tuple=True)
    return torch.stack([image, step, grid[image, step]], 1)


def label_probability(logits: Tensor, targets: Tensor) -> Tensor:
    """Probability ``(n,)`` of each target's class under its step's label logits ``(n, K + 1)``."""
    return logits.softmax(-1).gather(1, targets[:, 2:3]).squeeze(1)


def target_probability(model, actions: dict[str, Tensor], targets: Tensor, images: Tensor) -> Tensor:
    """Probability ``(n,)`` of each target's label at its step
    (:func:`~glimpse.attribution.episode.step_logits`); differentiable."""
    return label_probability(step_logits(model, actions, targets, images), targets)


def replay_score(model, episode: Episode, targets: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """``score(images, rows)``: probability of each target's label at its step, actions replayed.

    The rollout stops at the last step the rows need (later steps cannot change an earlier
    label), so rows sorted by step cost fewer recurrent steps.
    """
    actions = episode.actions()

    @torch.no_grad()
    def score(images: Tensor, rows: Tensor) -> Tensor:
        return target_probability(model, actions, targets[rows], images)

    return score


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
        tolerance = heatmaps.pointing_tolerance(hw)
        target_images = images[targets[:, 0]]
        score = replay_score(model, episode, targets)
        ends = None
        if self.perturbation:  # the unperturbed images' scores are the recorded episode's
            original = label_probability(episode.label_logits[targets[:, 0], targets[:, 1]], targets)
            ends = heatmaps.perturbation_endpoints(score, target_images, original=original)
        self.classes.append(targets[:, 2].cpu())
        for name, method in methods.items():
            maps = method(model, images, episode, targets).detach()
            out = self.scores.setdefault(name, {k: [] for k in KEYS})
            out["pointing_game"].append(heatmaps.pointing_game(maps, boxes, valid, tolerance).float().cpu())
            out["energy_pointing_game"].append(heatmaps.energy_pointing_game(maps, boxes, valid).cpu())
            if self.perturbation:
                auc = heatmaps.perturbation_auc(score, target_images, maps, self.steps, endpoints=ends)
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
                each, overall = heatmaps.per_class_mean(torch.cat(values[key]), classes, self.num_classes)
                metrics[f"attribution/{name}/{key}"] = float(overall)
                per_class[name][key] = each.tolist()
            for key in ("deletion_auc", "insertion_auc"):
                if values[key]:
                    metrics[f"attribution/{name}/{key}"] = float(torch.cat(values[key]).mean())
        return metrics, per_class
