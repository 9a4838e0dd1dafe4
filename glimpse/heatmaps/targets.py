"""What a heatmap explains: targets ``(image, step, class)`` of a recorded episode.

A target is one label decision of the glimpse model: the class it emitted at meta step
``step`` of image ``image``. :func:`right_label_targets` keeps the labels that were right
(what the heatmaps are scored on), :func:`emitted_targets` every label emitted before the
first STOP (what the Explainer learns to explain), :func:`emitted_label_targets` the same as
a ``(B, T)`` grid with :data:`NO_TARGET` where nothing was emitted (what the training-time
pictures show). :data:`Method` is the signature every heatmap method has.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from glimpse import multiset
from glimpse.models.policy import Episode

NO_TARGET = -1  # a target entry that asks for no map (padding, STOP): its map is zeros
Method = Callable[..., Tensor]  # (model, images, episode, targets) -> maps (N, H, W)


def emitted_label_targets(episode: Episode, num_classes: int | None = None) -> Tensor:
    """``(B, T)`` the label emitted at each meta step; STOP and every step after it are
    :data:`NO_TARGET`."""
    k = episode.label_logits.shape[-1] - 1 if num_classes is None else num_classes
    empty = torch.zeros(episode.labels.shape[0], k, dtype=torch.long, device=episode.labels.device)
    alive = multiset.rollout(empty, episode.labels, stop_ends=True)["alive"] & (episode.labels < k)
    return torch.where(alive, episode.labels, torch.full_like(episode.labels, NO_TARGET))


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
