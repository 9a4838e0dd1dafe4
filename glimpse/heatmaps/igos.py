"""iGOS++ (Khorram et al., "iGOS++: Integrated Gradient Optimized Saliency by Bilateral
Perturbations", 2021): a deletion and an insertion mask per (image, target), optimised jointly.

Masks live on a low-resolution grid (``mask_size``), are upsampled bilinearly to the image and
mix the image with a blurred baseline ``B`` (torchvision ``gaussian_blur``): ``B + m (I - B)``.

- deletion mask ``m_d`` (starts at 1, keep everything): the target's score on
  ``B + m_d (I - B)`` is pushed down, with L1 on ``1 - m_d`` (delete little);
- insertion mask ``m_i`` (starts at 0, show nothing): the score on ``B + m_i (I - B)`` is
  pushed up, with L1 on ``m_i`` (insert little);
- both masks pay a bilateral total variation (glimpse/heatmaps/masks.py).

The descent direction of the score terms is the integrated gradient: the score is averaged
over ``ig_steps`` masks on the straight path from "nothing changed" to the current mask
(``1 - a (1 - m_d)`` and ``a m_i``, ``a = 1/S .. 1``), so the gradient is summed along the
path instead of read at one point where the score may be saturated. Each of ``iterations``
steps moves the masks by ``lr`` times the direction normalised by its largest entry (a fixed
iteration count, no line search: a simplification of the paper's backtracking), then clips
them to [0, 1]. The heatmap is ``((1 - m_d) + m_i) / 2``: high where deleting the pixels
destroys the score and inserting them restores it.

Everything is batched over images and targets; targets go through in chunks of ``chunk``.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.functional import gaussian_blur

from glimpse.heatmaps import masks as losses

Score = Callable[[Tensor, Tensor], Tensor]  # (images (n, C, H, W), rows (n,)) -> target probability (n,)


def blurred_baseline(images: Tensor, sigma: float) -> Tensor:
    """Gaussian blur of ``images (N, C, H, W)``, kernel of about 4 sigma each side, kept inside the image."""
    size = min(2 * int(4 * sigma) + 1, 2 * ((min(images.shape[-2:]) - 1) // 2) + 1)
    return gaussian_blur(images, [size, size], [sigma, sigma])


def _optimise(score: Score, images: Tensor, rows: Tensor, baseline: Tensor, mask_size: tuple[int, int], iterations: int,
              ig_steps: int, lr: float, l1_weight: float, tv_weight: float, tv_sigma: float) -> Tensor:
    n = images.shape[0]
    hw = tuple(images.shape[-2:])
    deletion = images.new_ones(n, 1, *mask_size, requires_grad=True)
    insertion = images.new_zeros(n, 1, *mask_size, requires_grad=True)
    alphas = torch.arange(1, ig_steps + 1, device=images.device, dtype=images.dtype).div(ig_steps).view(-1, 1, 1, 1, 1)
    path_rows = rows.repeat(ig_steps)
    diff = images - baseline
    for _ in range(iterations):
        up_d = F.interpolate(deletion, size=hw, mode="bilinear", align_corners=False)  # (n, 1, H, W)
        up_i = F.interpolate(insertion, size=hw, mode="bilinear", align_corners=False)
        path_d = baseline + (1 - alphas * (1 - up_d)) * diff  # (S, n, C, H, W)
        path_i = baseline + alphas * up_i * diff
        score_d = score(path_d.flatten(0, 1), path_rows).view(ig_steps, n).mean(0)
        score_i = score(path_i.flatten(0, 1), path_rows).view(ig_steps, n).mean(0)
        penalty = (l1_weight * (losses.l1(1 - up_d) + losses.l1(up_i))
                   + tv_weight * (losses.bilateral_tv(up_d[:, 0], images, tv_sigma) + losses.bilateral_tv(up_i[:, 0], images, tv_sigma)))
        objective = (score_d - score_i).sum() + n * penalty  # the penalties are batch means: per-target gradients
        grad_d, grad_i = torch.autograd.grad(objective, [deletion, insertion])
        with torch.no_grad():
            for mask, grad in ((deletion, grad_d), (insertion, grad_i)):
                scale = grad.abs().flatten(1).amax(-1).clamp(min=1e-12).view(-1, 1, 1, 1)
                mask.sub_(lr * grad / scale).clamp_(0, 1)
    with torch.no_grad():
        heat = ((1 - deletion) + insertion) / 2
        return F.interpolate(heat, size=hw, mode="bilinear", align_corners=False)[:, 0]


def check_settings(iterations: int, ig_steps: int, mask_size: int | tuple[int, int], chunk: int) -> tuple[int, int]:
    """The mask grid ``(h, w)``; a ValueError naming the ``heatmaps.igos`` key of a bad value."""
    for key, value, least in (("iterations", iterations, 1), ("ig_steps", ig_steps, 1), ("chunk", chunk, 1)):
        if int(value) != value or value < least:
            raise ValueError(f"heatmaps.igos.{key}={value} must be an integer >= {least}")
    mask_hw = (mask_size, mask_size) if isinstance(mask_size, int) else tuple(mask_size)
    if len(mask_hw) != 2 or min(mask_hw) < 1:
        raise ValueError(f"heatmaps.igos.mask_size={mask_size} must be an integer >= 1 or [h, w]")
    return mask_hw


def igos_maps(score: Score, images: Tensor, iterations: int = 15, ig_steps: int = 5, mask_size: int | tuple[int, int] = 14,
              lr: float = 0.2, l1_weight: float = 0.05, tv_weight: float = 0.5, tv_sigma: float = 0.1,
              blur_sigma: float = 5.0, chunk: int = 32) -> Tensor:
    """iGOS++ heatmaps ``(N, H, W)`` of ``images (N, C, H, W)``, one per target.

    ``score(images, rows)`` is the differentiable target probability of perturbed copies of
    the targets ``rows`` (indices into ``images``).
    """
    mask_hw = check_settings(iterations, ig_steps, mask_size, chunk)
    if not len(images):
        return images.new_zeros(0, *images.shape[-2:])
    baseline = blurred_baseline(images, blur_sigma)
    rows = torch.arange(images.shape[0], device=images.device)
    with torch.enable_grad():
        return torch.cat([
            _optimise(score, images[i : i + chunk], rows[i : i + chunk], baseline[i : i + chunk], mask_hw, iterations, ig_steps,
                      lr, l1_weight, tv_weight, tv_sigma)
            for i in range(0, images.shape[0], chunk)
        ])
