"""How well a heatmap points at the objects: pointing game, energy, deletion and insertion.

Definitions (docs/references.md):

- Pointing game (Zhang et al. 2018): the map's maximum is a hit when a disc of
  ``tolerance`` pixels around it touches a ground-truth box of the target class (the
  distance from the point to the nearest box is at most the tolerance). Accuracy per class,
  then the mean over classes. The paper's 15 px are for images of about 224 px; on other
  sizes the tolerance scales with the shorter side: ``15 * min(H, W) / 224`` (6.7 px on a
  100 x 100 canvas), see :func:`pointing_tolerance`.
- Energy-based pointing game (Score-CAM): the share of the map's positive mass inside the
  union of the target class's boxes. A map without positive mass scores 0.
- Deletion / insertion (RISE, Petsiuk et al. 2018): pixels ranked by the map; deletion
  replaces the top fraction by a baseline (zeros), insertion reveals the top fraction over
  a blurred copy; the score is the target's probability, and the AUC the trapezoid mean
  over ``steps + 1`` evenly spaced fractions from 0 to 1. Lower deletion and higher
  insertion AUC are better.

Maps are ``(N, H, W)`` at image resolution, one per (image, target class); boxes are
``(N, M, 4)`` (x0, y0, x1, y1) with ``valid (N, M)`` marking the target class's boxes
(VOC ``difficult`` objects left out by the caller).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from glimpse.geometry import box_masks

PAPER_TOLERANCE, PAPER_SIDE = 15.0, 224.0


def pointing_tolerance(image_hw: tuple[int, int]) -> float:
    """The pointing game's 15 px for 224-px images, scaled to this image's shorter side."""
    return PAPER_TOLERANCE * min(image_hw) / PAPER_SIDE


def _check(maps: Tensor, boxes: Tensor, valid: Tensor) -> None:
    if maps.dim() != 3 or boxes.dim() != 3 or boxes.shape[-1] != 4 or valid.shape != boxes.shape[:2]:
        raise ValueError(
            f"expected maps (N, H, W), boxes (N, M, 4) and valid (N, M); got {tuple(maps.shape)}, "
            f"{tuple(boxes.shape)}, {tuple(valid.shape)}"
        )
    if maps.shape[0] != boxes.shape[0]:
        raise ValueError(f"{maps.shape[0]} maps but {boxes.shape[0]} rows of boxes")


def pointing_game(maps: Tensor, boxes: Tensor, valid: Tensor, tolerance: float) -> Tensor:
    """Hit ``(N,)``: the map's argmax lies within ``tolerance`` px of a valid box."""
    _check(maps, boxes, valid)
    n, h, w = maps.shape
    flat = maps.flatten(1).argmax(-1)
    # pixel centres of the argmax
    px = (flat % w).to(boxes.dtype) + 0.5
    py = torch.div(flat, w, rounding_mode="floor").to(boxes.dtype) + 0.5
    dx = torch.clamp(torch.maximum(boxes[..., 0] - px[:, None], px[:, None] - boxes[..., 2]), min=0)
    dy = torch.clamp(torch.maximum(boxes[..., 1] - py[:, None], py[:, None] - boxes[..., 3]), min=0)
    close = (dx.pow(2) + dy.pow(2)).sqrt() <= tolerance
    return (close & valid).any(-1)


def energy_pointing_game(maps: Tensor, boxes: Tensor, valid: Tensor) -> Tensor:
    """Share ``(N,)`` of the map's positive mass inside the union of the valid boxes."""
    _check(maps, boxes, valid)
    positive = maps.clamp(min=0)
    inside = (positive * box_masks(boxes, valid, tuple(maps.shape[-2:]))).flatten(1).sum(-1)
    total = positive.flatten(1).sum(-1)
    return torch.where(total > 0, inside / total.clamp(min=torch.finfo(maps.dtype).tiny), torch.zeros_like(total))


def per_class_mean(scores: Tensor, classes: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Mean score of each class ``(K,)`` (NaN where a class has no target) and their mean over classes."""
    total = torch.zeros(num_classes, dtype=torch.float64, device=scores.device).index_add_(0, classes, scores.double())
    count = torch.zeros(num_classes, dtype=torch.float64, device=scores.device).index_add_(
        0, classes, torch.ones_like(scores, dtype=torch.float64)
    )
    per_class = torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))
    present = count > 0
    overall = per_class[present].mean() if present.any() else torch.tensor(float("nan"), dtype=torch.float64)
    return per_class, overall


def blur(images: Tensor, sigma: float = 5.0) -> Tensor:
    """Gaussian blur ``(N, C, H, W)``, separable, reflect-padded: insertion's starting image."""
    radius = max(1, int(3 * sigma))
    x = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    pad = min(radius, images.shape[-1] - 1, images.shape[-2] - 1)
    out = F.pad(images, (pad, pad, pad, pad), mode="reflect") if pad > 0 else images
    if pad < radius:  # images smaller than the kernel: crop the kernel
        kernel = kernel[radius - pad : radius + pad + 1]
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _chunked(score: Callable[[Tensor, Tensor], Tensor], images: Tensor, rows: Tensor, chunk: int) -> Tensor:
    """``score`` over ``images`` and their target ``rows``, ``chunk`` images at a time."""
    return torch.cat([score(images[i : i + chunk], rows[i : i + chunk]) for i in range(0, len(rows), chunk)])


def perturbation_endpoints(score: Callable[[Tensor, Tensor], Tensor], images: Tensor, chunk: int = 256,
                           original: Tensor | None = None) -> dict[str, Tensor]:
    """Scores ``(N,)`` of the images every method's curves share: the original, the deleted
    (all zeros) and the blurred image, and the blurred images themselves (``blurred_images``,
    insertion's start). Compute once, pass to every :func:`perturbation_auc`. ``original``: the
    scores of the unperturbed images when the caller has them already (the recorded episode)."""
    rows = torch.arange(images.shape[0], device=images.device)
    blurred = blur(images)
    ends = {name: _chunked(score, x, rows, chunk) for name, x in (("zeros", torch.zeros_like(images)), ("blurred", blurred))}
    ends["original"] = _chunked(score, images, rows, chunk) if original is None else original
    return ends | {"blurred_images": blurred}


def _score_distinct(score: Callable[[Tensor, Tensor], Tensor], stacked: Tensor, start: Tensor, end: Tensor,
                    first: Tensor, last: Tensor, chunk: int) -> Tensor:
    """Scores ``(N, S)`` of the perturbed images ``stacked (N, S, C, H, W)`` of each target's
    curve, scoring only the distinct ones: an image equal to the curve's end has the end's
    score, and one equal to the point before it (or to the start) that point's score. Exact,
    since the replay is deterministic; on canvases with a black background most deletion
    points past the objects' pixels are the all-zero image."""
    n, s = stacked.shape[:2]
    same_end = (stacked == end[:, None]).flatten(2).all(-1)  # (N, S)
    before = torch.cat([start[:, None], stacked[:, :-1]], 1)
    same_before = (stacked == before).flatten(2).all(-1)
    todo = ~(same_end | same_before)
    target, point = todo.nonzero(as_tuple=True)  # target-major, as the rows of each chunk
    scored = _chunked(score, stacked[target, point], target, chunk) if len(target) else first.new_zeros(0)
    fresh = first.new_zeros(n, s)
    fresh[target, point] = scored
    probs = []
    for i in range(s):
        previous = first if i == 0 else probs[-1]
        probs.append(torch.where(same_end[:, i], last, torch.where(same_before[:, i], previous, fresh[:, i])))
    return torch.stack(probs, 1)


def perturbation_auc(
    score: Callable[[Tensor, Tensor], Tensor], images: Tensor, maps: Tensor, steps: int = 10, chunk: int = 256,
    endpoints: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Deletion and insertion AUC ``(N,)`` of ``maps (N, H, W)`` on ``images (N, C, H, W)``.

    ``score(images (n, C, H, W), rows (n,))`` returns the target probability of each
    perturbed image, ``rows`` telling which target (row of ``maps``) it belongs to, so the
    caller can replay per-target state (the glimpse model replays the recorded actions).
    The fractions strictly between 0 and 1 of all targets go through ``score`` in chunks of
    ``chunk`` images, each distinct image once (:func:`_score_distinct`); the two ends do not
    depend on the map and come from ``endpoints`` (:func:`perturbation_endpoints`, shared by
    all methods) or are computed here.
    """
    if steps < 1:
        raise ValueError(f"deletion/insertion steps must be >= 1, got {steps}")
    n, _, h, w = images.shape
    if maps.shape != (n, h, w):
        raise ValueError(f"maps {tuple(maps.shape)} must be (N, H, W) = {(n, h, w)} to rank the image's pixels")
    if endpoints is None:
        endpoints = perturbation_endpoints(score, images, chunk)
    # rank of every pixel, most important first (ties by pixel index: deterministic)
    order = torch.sort(maps.flatten(1), dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(h * w, device=maps.device).expand(n, -1))
    rank = rank.view(n, 1, h, w)
    blurred = endpoints["blurred_images"]  # insertion's start, blurred once for all methods
    inner = torch.linspace(0, 1, steps + 1, device=images.device)[1:-1]
    ends = {"deletion": ("original", "zeros"), "insertion": ("blurred", "original")}
    curves = {}
    for name, start, end in (("deletion", images, torch.zeros_like(images)), ("insertion", blurred, images)):
        first, last = (endpoints[k][:, None] for k in ends[name])
        if len(inner):
            stacked = torch.stack([torch.where(rank < torch.round(f * h * w), end, start) for f in inner], 1)
            probs = _score_distinct(score, stacked, start, end, first[:, 0], last[:, 0], chunk)
            curve = torch.cat([first, probs, last], 1)
        else:
            curve = torch.cat([first, last], 1)
        curves[name] = torch.trapezoid(curve, dx=1.0 / steps, dim=1)
    return curves
