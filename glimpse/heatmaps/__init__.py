"""Heatmaps of the glimpse model: what it looked at and why, and how good the maps are.

Modules, each using only the ones before it: ``targets`` (which decisions are explained),
``gradients`` (attribution of any model), ``replay`` (the glimpse model's recorded episode
replayed, and attribution through it), the mask methods ``masks``, ``explainer`` and ``igos``,
the scoring ``scores`` (pointing games, deletion and insertion) and ``evaluation`` (their
accumulator), the method ``registry``, then ``render`` and the training callbacks
``callback`` and ``metrics_callback``.

``attribute`` works on any model; ``attribute_episode`` on the glimpse model, its episode replayed.
"""
from glimpse.heatmaps.gradients import METHODS, attribute
from glimpse.heatmaps.replay import attribute_episode, default_layer
from glimpse.heatmaps.targets import NO_TARGET, emitted_label_targets

__all__ = ["METHODS", "NO_TARGET", "attribute", "attribute_episode", "default_layer", "emitted_label_targets"]
