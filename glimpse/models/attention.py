"""Covert attention on the feature grid: Gaussian-mixture masks and Gaussian glimpse reads.

A location is a cell index of the ``h x w`` grid. Spreading a one-hot location with a
mixture-of-Gaussians filter (a 2-D discrete convolution) equals evaluating the Gaussians
on the grid around it, which is what is done here, batched.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


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


_TABLES: dict[tuple[int, int, str], Tensor] = {}


def distance_table(height: int, width: int, device: torch.device) -> Tensor:
    """Squared grid distances ``(h*w, h*w)`` between all cells, built once per grid and device."""
    key = (height, width, str(device))
    if key not in _TABLES:
        cells = cell_coordinates(torch.arange(height * width, device=device), width)  # (h*w, 2)
        _TABLES[key] = ((cells[:, None, :] - cells[None, :, :]) ** 2).sum(-1)
    return _TABLES[key]


def squared_distances(locations: Tensor, height: int, width: int) -> Tensor:
    """Squared grid distance ``(B, h*w)`` from each location ``(B,)`` to every cell."""
    return distance_table(height, width, locations.device)[locations]


class GaussianMixtureAttention(nn.Module):
    """Attention mask (B, h*w) in [0, 1]: a mixture of isotropic Gaussians at a location.

    Mixture weights sum to one and every component peaks at 1, so the mask is 1 at the
    chosen cell. Widths (in cells) and weights are fixed by default: learned freely, the
    widest component grows to cover the whole map (measured: sigma 3 -> 11 cells in 6
    minutes), turning covert attention into a global average and inhibition of return
    into erasing everything. ``learn=True`` learns them, each width capped at ``max_sigma``.
    """

    def __init__(self, sigmas: tuple[float, ...] = (1.0, 2.0), learn: bool = False, max_sigma: float = 4.0) -> None:
        super().__init__()
        if not sigmas or min(sigmas) <= 0 or max(sigmas) >= max_sigma:
            raise ValueError(f"model.policy.attention_sigmas must be widths in cells in (0, {max_sigma}), got {list(sigmas)}")
        # sigma = max_sigma * sigmoid(raw): bounded when learned
        raw = torch.logit(torch.tensor(sigmas, dtype=torch.float32) / max_sigma)
        mix = torch.zeros(len(sigmas))
        if learn:
            self.raw_sigma, self.mix_logits = nn.Parameter(raw), nn.Parameter(mix)
        else:
            self.register_buffer("raw_sigma", raw)
            self.register_buffer("mix_logits", mix)
        self.max_sigma = max_sigma

    @property
    def sigmas(self) -> Tensor:
        return self.max_sigma * torch.sigmoid(self.raw_sigma)

    def forward(self, locations: Tensor, height: int, width: int) -> Tensor:
        d2 = squared_distances(locations, height, width)  # (B, h*w)
        var = self.sigmas**2  # (M,)
        weights = torch.softmax(self.mix_logits, 0)
        return (weights * torch.exp(-d2[..., None] / (2 * var))).sum(-1)  # (B, h*w)


class GaussianRead(nn.Module):
    """A glimpse: the Gaussian-weighted average of the activations around a location."""

    def __init__(self, sigma: float = 1.0) -> None:
        super().__init__()
        if sigma <= 0:
            raise ValueError(f"model.glimpse_sigma must be > 0 (cells), got {sigma}")
        self.log_sigma = nn.Parameter(torch.tensor(math.log(sigma)))

    def forward(self, activations: Tensor, locations: Tensor, height: int, width: int) -> Tensor:
        """activations ``(B, h*w, C)``, locations ``(B,)`` -> glimpse vector ``(B, C)``."""
        d2 = squared_distances(locations, height, width)
        weights = torch.softmax(-d2 / (2 * torch.exp(2 * self.log_sigma)), dim=-1)  # (B, h*w)
        return torch.bmm(weights[:, None, :], activations).squeeze(1)
