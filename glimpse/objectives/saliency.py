"""The saliency model's own losses: counting, peaks, centring (none of them sees the boxes)."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor


def count_loss(class_density: Tensor, targets: Tensor) -> Tensor:
    """The per-class densities ``(B, K, h, w)`` must sum to the true counts ``(B, K)``."""
    return F.mse_loss(class_density.sum((-2, -1)), targets.float())


def peak_loss(class_density: Tensor, targets: Tensor) -> Tensor:
    """The densest cell of each class holds one whole object when the class is present, none when absent."""
    return F.mse_loss(class_density.flatten(2).amax(-1), (targets > 0).float())


@contextlib.contextmanager
def running_statistics_kept(module: torch.nn.Module):
    """Normalisation layers normalise by the batch as in training, but their running
    statistics (and batch count) come out as they went in: they update stand-in copies,
    and the originals (which an earlier pass may have saved for its backward) stay untouched."""
    layers = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase) and m.track_running_stats]
    kept = [dict(m._buffers) for m in layers]
    for m, buffers in zip(layers, kept):
        for name, value in buffers.items():
            if value is not None:
                m._buffers[name] = value.clone()
    try:
        yield
    finally:
        for m, buffers in zip(layers, kept):
            m._buffers.update(buffers)


def centring_loss(backbone, saliency, image: Tensor, saliency_map: Tensor) -> Tensor:
    """Rotation consistency of the saliency map ``(B, h, w)`` of ``image`` (see
    ``GlimpseObjective.centring_weight``): squared difference per image, summed over cells.

    The image is padded at the bottom and right to ``stride * n + 1`` pixels, so that turning
    it by 180 degrees maps cell centres (pixel ``stride * j``) onto cell centres; the
    saliency map of the turned image is compared with the turned, zero-padded saliency map.
    """
    stride = getattr(backbone, "stride", None)
    if not stride:
        raise ValueError("objective.centring_weight needs a backbone with a 'stride' (the conv and ResNet backbones have one); "
                         "set objective.centring_weight=0")
    height, width = image.shape[-2:]
    pad_h, pad_w = (-(size - 1) % stride for size in (height, width))
    turned = F.pad(image, (0, pad_w, 0, pad_h)).flip(-2, -1)
    with running_statistics_kept(backbone):  # BatchNorm's statistics move once per step, in the episode's pass
        turned_map, _ = saliency(backbone(turned))
    h, w = turned_map.shape[-2:]
    expected = F.pad(saliency_map, (0, w - saliency_map.shape[-1], 0, h - saliency_map.shape[-2])).flip(-2, -1)
    return (turned_map - expected).pow(2).sum((-2, -1)).mean()
