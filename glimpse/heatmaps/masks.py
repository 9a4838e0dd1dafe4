"""Mask losses shared by the Explainer and iGOS++, as plain functions on batched tensors.

Masks are ``(N, H, W)`` in [0, 1], 1 = keep the pixel. Each function returns the mean over
the batch unless it says otherwise, so loss weights mean the same at any batch size.

- :func:`classification_loss`: cross entropy of the target label on the masked image
  (the Explainer's "what you see is what you classify" term).
- :func:`entropy_loss`: minus the entropy of the prediction on the masked-out image; low
  when the model cannot tell anything from what the mask left out.
- :func:`area_loss`, :func:`area_bounds_loss`: how much of the image a mask keeps.
- :func:`total_variation`: squared differences of neighbouring mask values (smooth masks).
- :func:`bilateral_tv`: the same, each difference weighted by how alike the two image pixels
  are (iGOS++): mask edges on image edges cost little.
- :func:`l1`: mean absolute value (iGOS++'s sparsity term; pass ``1 - mask`` for a deletion mask).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def classification_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross entropy of ``labels (N,)`` under ``logits (N, L)`` of the masked images."""
    return F.cross_entropy(logits, labels)


def entropy_loss(logits: Tensor) -> Tensor:
    """Minus the mean entropy (nats) of ``softmax(logits (N, L))``; ``-log L`` at best."""
    log_p = logits.log_softmax(-1)
    return (log_p.exp() * log_p).sum(-1).mean()


def area_loss(masks: Tensor) -> Tensor:
    """Mean mask value: the share of the image the masks keep."""
    return masks.mean()


def area_bounds_loss(masks: Tensor, min_area: float, max_area: float) -> Tensor:
    """Squared distance of each mask's area to ``[min_area, max_area]``; 0 inside the bounds."""
    area = masks.flatten(1).mean(-1)
    return (F.relu(min_area - area) ** 2 + F.relu(area - max_area) ** 2).mean()


def _neighbour_differences(x: Tensor) -> tuple[Tensor, Tensor]:
    """Vertical ``(..., H-1, W)`` and horizontal ``(..., H, W-1)`` differences of ``x``."""
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


def total_variation(masks: Tensor) -> Tensor:
    """Mean over masks of the summed squared neighbour differences, divided by the pixel count."""
    dy, dx = _neighbour_differences(masks)
    pixels = masks.shape[-1] * masks.shape[-2]
    return (dy.pow(2).flatten(1).sum(-1) + dx.pow(2).flatten(1).sum(-1)).mean() / pixels


def bilateral_tv(masks: Tensor, images: Tensor, sigma: float = 0.1) -> Tensor:
    """Total variation of ``masks (N, H, W)`` with each neighbour pair weighted by
    ``exp(-|I_i - I_j|^2 / (2 sigma^2))`` of ``images (N, C, H, W)`` (squared distance summed
    over channels): a mask edge along an image edge costs almost nothing."""
    my, mx = _neighbour_differences(masks)
    iy, ix = _neighbour_differences(images)
    wy = torch.exp(-iy.pow(2).sum(1) / (2 * sigma**2))
    wx = torch.exp(-ix.pow(2).sum(1) / (2 * sigma**2))
    pixels = masks.shape[-1] * masks.shape[-2]
    return ((wy * my.pow(2)).flatten(1).sum(-1) + (wx * mx.pow(2)).flatten(1).sum(-1)).mean() / pixels


def l1(masks: Tensor) -> Tensor:
    """Mean absolute value."""
    return masks.abs().mean()
