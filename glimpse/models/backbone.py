"""Saliency model + activation model: one pass over the image gives ``A`` and ``S``.

The activation volume ``A`` (B, C, h, w) feeds the glimpses; the saliency model turns it
into per-class densities whose sum over classes is the saliency map ``S`` (B, h, w). The
densities also sum over space to a predicted count per class, which is how the saliency
map is learned from multiset labels alone (no boxes).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class ConvBackbone(nn.Module):
    """A small batch-norm CNN for MNIST canvases, trained from scratch.

    Each block is conv3x3 -> BatchNorm -> ReLU; strides and dilations set the map size
    (default 100 x 100 -> 13 x 13) and a receptive field (~60 px) that covers a 50-px digit.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (16, 32, 48, 64, 64),
        strides: Sequence[int] = (2, 2, 1, 2, 1),
        dilations: Sequence[int] = (1, 1, 1, 1, 2),
    ) -> None:
        super().__init__()
        if not (len(channels) == len(strides) == len(dilations)) or not channels:
            raise ValueError(
                f"model.backbone: channels, strides and dilations must be non-empty lists of equal "
                f"length, got {list(channels)}, {list(strides)}, {list(dilations)}"
            )
        layers: list[nn.Module] = []
        prev = in_channels
        for c, s, d in zip(channels, strides, dilations):
            layers += [nn.Conv2d(prev, c, 3, stride=s, padding=d, dilation=d, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            prev = c
        self.features = nn.Sequential(*layers)
        self.in_channels = in_channels
        self.out_channels = prev

    def forward(self, image: Tensor) -> Tensor:
        if image.ndim != 4 or image.shape[1] != self.in_channels:
            raise ValueError(
                f"backbone expects images of shape (B, {self.in_channels}, H, W), got {tuple(image.shape)}; "
                f"set model.backbone.in_channels to the data's channel count"
            )
        return self.features(image)  # (B, C, h, w)


class SaliencyModel(nn.Module):
    """Per-class densities (B, K, h, w) >= 0 from the activations; their sum is ``S``."""

    def __init__(self, in_channels: int, num_classes: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, num_classes, 1)
        )
        nn.init.constant_(self.net[-1].bias, -5.0)  # start near zero mass: ~1 object per class per map

    def forward(self, activations: Tensor) -> tuple[Tensor, Tensor]:
        class_density = nn.functional.softplus(self.net(activations))  # (B, K, h, w)
        saliency_map = class_density.sum(1)  # (B, h, w)
        return saliency_map, class_density
