"""Attribution and pictures of what the model looked at.

``attribute`` works on any model; ``attribute_episode`` on the glimpse model, its episode replayed.
"""
from glimpse.attribution.episode import attribute_episode, default_layer, emitted_label_targets
from glimpse.attribution.methods import METHODS, NO_TARGET, attribute

__all__ = ["METHODS", "NO_TARGET", "attribute", "attribute_episode", "default_layer", "emitted_label_targets"]
