"""Saliency model + activation model: one pass over the image gives ``A`` and ``S``.

The activation volume ``A`` (B, C, h, w) feeds the glimpses; the saliency model turns it
into per-class densities whose sum over classes is the saliency map ``S`` (B, h, w). The
densities also sum over space to a predicted count per class, which is how the saliency
map is learned from multiset labels alone (no boxes).
"""
from __future__ import annotations

import math

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
        # padding = dilation keeps every 3x3 conv centred: cell j of the output looks at pixel stride * j
        self.stride = math.prod(strides)

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


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_KEYS = ("weights", "weights_path", "download")  # how pretrained weights are found, not the architecture


def pretrained_state(arch: str, weights: str | None, weights_path: str | None, download: bool) -> dict | None:
    """A torchvision state dict: from ``weights_path``, else torchvision's cache for ``weights``
    (e.g. IMAGENET1K_V1 or DEFAULT), else a download only when ``download`` is asked for."""
    import os

    import torchvision

    if weights_path:
        path = os.path.abspath(os.path.expanduser(str(weights_path)))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model.policy.backbone.weights_path={path} does not exist; give a torchvision {arch} .pth file")
    elif weights:
        enum = torchvision.models.get_model_weights(arch)
        if weights not in enum.__members__:
            raise ValueError(f"model.policy.backbone.weights={weights!r}: {arch} has {', '.join(enum.__members__)}")
        url = enum[weights].url
        folder = os.path.join(torch.hub.get_dir(), "checkpoints")
        path = os.path.join(folder, os.path.basename(url))
        if not os.path.isfile(path):
            if not download:
                raise FileNotFoundError(
                    f"pretrained {arch} weights {weights} are not on this machine: put {os.path.basename(url)} "
                    f"(from {url}) in {folder}/ (torchvision's cache; TORCH_HOME moves it), or give "
                    f"model.policy.backbone.weights_path=FILE, or model.policy.backbone.weights=null to train from "
                    f"scratch; nothing is downloaded unless model.policy.backbone.download=true"
                )
            return enum[weights].get_state_dict(progress=True, check_hash=True)
    else:
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} is not a readable torch state dict ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict of a torchvision {arch}")
    return state


class ResNetBackbone(nn.Module):
    """A torchvision ResNet cut after ``stages`` residual stages: a conv feature grid as ``A``.

    stages=3 keeps conv1..layer3 (stride 16: 224 px -> 14 x 14 cells, 256 channels for
    resnet18/34). Images in [0, 1] are normalised with the ImageNet statistics inside, so the
    data and the pictures stay in [0, 1]; a 1-channel image is repeated to RGB. No weights
    by default; ``freeze`` stops gradients and keeps batch-norm statistics fixed.
    """

    def __init__(
        self,
        arch: str = "resnet18",
        stages: int = 3,
        weights: str | None = None,
        weights_path: str | None = None,
        download: bool = False,
        freeze: bool = False,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        import torchvision

        if not any(arch.startswith(p) for p in ("resnet", "resnext", "wide_resnet")) or arch not in torchvision.models.list_models():
            raise ValueError(f"model.policy.backbone.arch={arch!r} is not a torchvision ResNet (resnet18, resnet34, resnet50, ...)")
        if stages not in (1, 2, 3, 4):
            raise ValueError(f"model.policy.backbone.stages={stages}: keep 1 to 4 residual stages")
        if in_channels not in (1, 3):
            raise ValueError(f"model.policy.backbone.in_channels={in_channels}: a ResNet reads 3 (RGB) or 1 (repeated) channels")
        net = torchvision.models.get_model(arch, weights=None)
        state = pretrained_state(arch, weights, weights_path, download)
        if state is not None:
            try:
                net.load_state_dict(state)
            except RuntimeError as err:
                raise ValueError(f"the weights ({weights_path or weights}) do not fit a torchvision {arch}: {err}") from err
        stage_modules = [getattr(net, f"layer{i}") for i in range(1, stages + 1)]
        self.features = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, *stage_modules)
        self.out_channels = [m for m in stage_modules[-1].modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features
        self.stride = 4 * 2 ** (stages - 1)  # conv1 and maxpool halve, then each stage after layer1
        self.in_channels = in_channels
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.frozen = freeze
        if freeze:
            self.features.requires_grad_(False)
            self.features.eval()

    def train(self, mode: bool = True) -> ResNetBackbone:
        super().train(mode)
        if self.frozen:  # frozen means frozen batch-norm statistics too
            self.features.eval()
        return self

    def forward(self, image: Tensor) -> Tensor:
        if image.ndim != 4 or image.shape[1] != self.in_channels:
            raise ValueError(
                f"backbone expects images of shape (B, {self.in_channels}, H, W), got {tuple(image.shape)}; "
                f"set model.policy.backbone.in_channels to the data's channel count"
            )
        image = image.expand(-1, 3, -1, -1)  # grayscale -> RGB (a no-op for RGB)
        return self.features((image - self.mean) / self.std)  # (B, C, h, w)
