"""Geometry of cells, centres and boxes, shared by the model, the objectives, the environment
and the evaluation.

A location is a flat cell index of an ``h x w`` grid. The model's feature cells sit where the
backbone's receptive fields are (:func:`cell_geometry`, :func:`cell_centres`,
:func:`upsample_cells`); the environment's location actions split the image evenly
(:func:`even_cell_centres`). Boxes are ``(..., 4)`` pixel rectangles (x0, y0, x1, y1); a point
is inside when ``x0 <= x < x1`` and ``y0 <= y < y1``. A glimpse hits an object when the centre
of its final glimpse lies in a not-yet-claimed box of the class it named (:func:`glimpse_hits`).
"""
from __future__ import annotations

import torch
from torch import Tensor

from glimpse import multiset


def cell_coordinates(locations: Tensor, width: int) -> Tensor:
    """(row, col) float coordinates ``(..., 2)`` of flat cell indices ``(...)``."""
    return torch.stack([torch.div(locations, width, rounding_mode="floor"), locations % width], -1).float()


def cell_geometry(grid: tuple[int, int], image_hw: tuple[int, int], stride: int | None = None) -> tuple[Tensor, Tensor]:
    """Pixel ``(x, y)`` centre of cell (0, 0) and cell spacing ``(x, y)``.

    With the backbone's ``stride``, cell ``j`` is centred where its receptive field is: pixel
    ``stride * j`` (continuous coordinate ``stride * j + 0.5``) for convolutions padded to keep
    the centre, as the conv and ResNet backbones are. Without it, the grid splits the image
    evenly (cell ``j`` centred at ``(j + 0.5) * W / w``), which is off by up to half a cell for
    a strided backbone (3.4 px on the default 100-px canvas, 7.5 px for a ResNet at 224 px).
    """
    h, w = grid
    if stride is None:
        spacing = torch.tensor([image_hw[1] / w, image_hw[0] / h])
        return spacing / 2, spacing
    return torch.tensor([0.5, 0.5]), torch.tensor([float(stride), float(stride)])


def cell_centres(locations: Tensor, grid: tuple[int, int], image_hw: tuple[int, int], stride: int | None = None) -> Tensor:
    """Pixel (x, y) centres ``(..., 2)`` of flat cell indices (see :func:`cell_geometry`)."""
    origin, spacing = (v.to(locations.device) for v in cell_geometry(grid, image_hw, stride))
    rows, cols = cell_coordinates(locations, grid[1]).unbind(-1)
    return origin + torch.stack([cols, rows], -1) * spacing


def upsample_cells(maps: Tensor, image_hw: tuple[int, int], stride: int | None = None) -> Tensor:
    """Bilinear resampling of cell maps ``(N, h, w)`` to pixels ``(N, H, W)``, cells placed as
    :func:`cell_geometry` says (with ``stride``: cell ``j``'s value at pixel ``stride * j``)."""
    if stride is None:
        return torch.nn.functional.interpolate(maps[:, None], size=image_hw, mode="bilinear", align_corners=False)[:, 0]
    h, w = maps.shape[-2:]
    ys = torch.arange(image_hw[0], device=maps.device, dtype=maps.dtype) / stride  # pixel -> cell coordinate
    xs = torch.arange(image_hw[1], device=maps.device, dtype=maps.dtype) / stride
    gy = 2 * ys / max(h - 1, 1) - 1  # align_corners=True: -1 and 1 are the first and last cell centres
    gx = 2 * xs / max(w - 1, 1) - 1
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), -1).expand(maps.shape[0], -1, -1, -1)
    return torch.nn.functional.grid_sample(maps[:, None], grid, mode="bilinear", padding_mode="border", align_corners=True)[:, 0]


def even_cell_centres(locations: Tensor, grid: tuple[int, int], image_hw: tuple[int, int]) -> Tensor:
    """Pixel centres ``(..., 2)`` as (x, y) of flat cell indices of a ``grid`` that splits the
    image evenly: the environment's location actions, ``(col + 0.5) * W / w``. (The model's
    feature cells sit where the backbone's receptive fields are: :func:`cell_centres`.)"""
    rows, cols = grid
    row, col = cell_coordinates(locations, cols).unbind(-1)
    return torch.stack([(col + 0.5) * image_hw[1] / cols, (row + 0.5) * image_hw[0] / rows], -1)


def box_masks(boxes: Tensor, valid: Tensor, image_hw: tuple[int, int]) -> Tensor:
    """Union of the valid boxes as a pixel mask ``(N, H, W)`` (pixel centres inside a box)."""
    h, w = image_hw
    ys = torch.arange(h, device=boxes.device, dtype=boxes.dtype) + 0.5
    xs = torch.arange(w, device=boxes.device, dtype=boxes.dtype) + 0.5
    in_y = (ys >= boxes[..., 1, None]) & (ys < boxes[..., 3, None])  # (N, M, H)
    in_x = (xs >= boxes[..., 0, None]) & (xs < boxes[..., 2, None])  # (N, M, W)
    inside = in_y[..., :, None] & in_x[..., None, :] & valid[..., None, None]
    return inside.any(1)


def points_in_boxes(points: Tensor, boxes: Tensor, valid: Tensor) -> Tensor:
    """``(B, P, N)``: point ``(B, P, 2)`` (x, y) lies in box ``(B, N, 4)`` (x0, y0, x1, y1); ``valid (B, N)``."""
    x, y = points[..., 0, None], points[..., 1, None]
    x0, y0, x1, y1 = (boxes[:, None, :, i] for i in range(4))
    return (x >= x0) & (x < x1) & (y >= y0) & (y < y1) & valid[:, None, :]


def claim_hits(centres: Tensor, labels: Tensor, eligible: Tensor, boxes: Tensor, box_labels: Tensor) -> Tensor:
    """Greedy claim of boxes in step order; returns ``hit (B, T)``.

    centres ``(B, T, 2)`` pixel points, labels ``(B, T)``, eligible ``(B, T)`` steps that may
    score, boxes ``(B, N, 4)``, box_labels ``(B, N)`` with ``-1`` for padding.
    """
    inside = points_in_boxes(centres, boxes, box_labels >= 0)  # (B, T, N)
    same = box_labels[:, None, :] == labels[:, :, None]
    box_centres = (boxes[..., :2] + boxes[..., 2:]) / 2  # (B, N, 2)
    distance = (centres[:, :, None, :] - box_centres[:, None, :, :]).pow(2).sum(-1)  # (B, T, N)
    claimed = torch.zeros_like(box_labels, dtype=torch.bool)
    hits = []
    for t in range(centres.shape[1]):
        candidate = inside[:, t] & same[:, t] & ~claimed & eligible[:, t, None]
        hit = candidate.any(-1)
        choice = distance[:, t].masked_fill(~candidate, float("inf")).argmin(-1)
        claimed = claimed | (torch.nn.functional.one_hot(choice, claimed.shape[1]).bool() & hit[:, None])
        hits.append(hit)
    return torch.stack(hits, 1)


def step_centres(episode, image_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Pixel centres of the final glimpse of each step ``(B, T, 2)`` and of every glimpse ``(B, T, k', 2)``."""
    every = cell_centres(episode.step_locations(), episode.grid, image_hw, episode.cell_stride)
    return every[:, :, -1], every


def glimpse_hits(episode, counts: Tensor, boxes: Tensor, box_labels: Tensor, image_hw: tuple[int, int]) -> tuple[Tensor, dict]:
    """``hits (B, T)``: steps that emitted a right label (before the first STOP) and whose final
    glimpse centre claimed a not-yet-claimed box of that class; and the replayed episode
    (:func:`multiset.rollout`)."""
    labels = episode.labels
    played = multiset.rollout(counts, labels)
    correct = played["correct"] & played["alive"] & (labels < counts.shape[1])
    final, _ = step_centres(episode, image_hw)
    return claim_hits(final, labels, correct, boxes, box_labels), played
