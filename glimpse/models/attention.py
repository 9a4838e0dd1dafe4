"""Covert attention on the feature grid: Gaussian-mixture masks and Gaussian glimpse reads.

A location is a cell index of the ``h x w`` grid. Spreading a one-hot location with a
mixture-of-Gaussians filter (a 2-D discrete convolution) equals evaluating the Gaussians
on the grid around it, which is what is done here, batched.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from glimpse.geometry import cell_coordinates


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
