"""How stable heatmaps are across models of the same config trained from different seeds
("Great Minds Think Alike", docs/references.md): a map that is a property of the task should
not change with the seed; one that is a property of the run does.

Maps are compared on the targets two models share: the same image and the same (right)
label, at the first step each model emitted it. Per pair of models and per target:

- rank correlation: Spearman's rho of the two maps' pixel values (Pearson correlation of
  their ranks, ties given their average rank); a constant map has none and is left out;
- top-k overlap: the share of the top ``topk_fraction`` of pixels of one map that is also in
  the other's top.

Each is the mean over the shared targets of a pair, then the mean over pairs.
"""
from __future__ import annotations

import itertools

import torch
from torch import Tensor

from glimpse.heatmaps.targets import right_label_targets


def average_ranks(values: Tensor) -> Tensor:
    """Ranks ``(N, P)`` of each row's values from 0, ties sharing their average rank."""
    ordered = values.sort(-1).values
    low = torch.searchsorted(ordered, values.contiguous(), right=False)
    high = torch.searchsorted(ordered, values.contiguous(), right=True)
    return (low + high - 1).to(torch.float64) / 2


def rank_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Spearman's rho ``(N,)`` between the rows of ``a`` and ``b`` ``(N, ...)``; NaN where a map is constant."""
    ra, rb = average_ranks(a.flatten(1)), average_ranks(b.flatten(1))
    ra, rb = ra - ra.mean(-1, keepdim=True), rb - rb.mean(-1, keepdim=True)
    norm = ra.norm(dim=-1) * rb.norm(dim=-1)
    return torch.where(norm > 0, (ra * rb).sum(-1) / norm.clamp(min=1e-300), torch.full_like(norm, float("nan")))


def topk_overlap(a: Tensor, b: Tensor, fraction: float = 0.05) -> Tensor:
    """Share ``(N,)`` of the top ``fraction`` of pixels of ``a`` that are in the top of ``b``."""
    if not 0 < fraction <= 1:
        raise ValueError(f"stability.topk_fraction={fraction} must be in (0, 1]")
    a, b = a.flatten(1), b.flatten(1)
    k = max(1, round(fraction * a.shape[1]))
    top_a = torch.zeros_like(a, dtype=torch.bool).scatter_(1, a.topk(k, -1).indices, True)
    top_b = torch.zeros_like(b, dtype=torch.bool).scatter_(1, b.topk(k, -1).indices, True)
    return (top_a & top_b).sum(-1).double() / k


def _first_per_key(keys: Tensor) -> tuple[Tensor, Tensor]:
    """Unique keys and the position of each one's first occurrence."""
    unique, inverse = torch.unique(keys, return_inverse=True)
    positions = torch.arange(len(keys), device=keys.device)
    first = torch.full((len(unique),), len(keys), device=keys.device).scatter_reduce(0, inverse, positions, "amin")
    return unique, first


def pair_scores(keys_a: Tensor, maps_a: Tensor, keys_b: Tensor, maps_b: Tensor, fraction: float) -> dict[str, float]:
    """Mean rank correlation and top-k overlap of two models' maps on the keys both have."""
    ua, fa = _first_per_key(keys_a)
    ub, fb = _first_per_key(keys_b)
    shared = ua[torch.isin(ua, ub)]
    if not len(shared):
        return {"rank_correlation": float("nan"), "topk_overlap": float("nan"), "targets": 0}
    a = maps_a[fa[torch.searchsorted(ua, shared)]]
    b = maps_b[fb[torch.searchsorted(ub, shared)]]
    return {"rank_correlation": float(rank_correlation(a, b).nanmean()),
            "topk_overlap": float(topk_overlap(a, b, fraction).mean()), "targets": len(shared)}


def stability(per_model: list[tuple[Tensor, Tensor]], fraction: float = 0.05) -> dict[str, float]:
    """Mean over all pairs of models of :func:`pair_scores`; ``per_model`` holds ``(keys (N_m,),
    maps (N_m, H, W))`` of each model, a key naming an (image, class)."""
    if len(per_model) < 2:
        raise ValueError(f"stability needs maps of at least 2 models, got {len(per_model)}")
    pairs = [pair_scores(*a, *b, fraction) for a, b in itertools.combinations(per_model, 2)]
    mean = lambda key: float(torch.tensor([p[key] for p in pairs], dtype=torch.float64).nanmean())  # noqa: E731
    return {"rank_correlation": mean("rank_correlation"), "topk_overlap": mean("topk_overlap"),
            "shared_targets": float(sum(p["targets"] for p in pairs) / len(pairs))}


def collect_maps(model, datamodule, split: str, methods: dict, max_images: int) -> dict[str, tuple[Tensor, Tensor]]:
    """Per method, ``(keys, maps)`` of the model's right-label targets on the first ``max_images``
    images of the split; key = image index * K + class."""
    loader = datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()
    k = model.policy.num_classes
    out: dict[str, tuple[list[Tensor], list[Tensor]]] = {name: ([], []) for name in methods}
    was_training = model.training
    model.eval()
    seen = 0
    try:
        for batch in loader:
            if seen >= max_images:
                break
            images = batch["image"][: max_images - seen].to(model.device)
            counts = batch["counts"][: max_images - seen].to(model.device)
            with torch.no_grad():
                episode = model.predict_episode(images)
            targets = right_label_targets(episode, counts)
            keys = ((targets[:, 0] + seen) * k + targets[:, 2]).cpu()
            seen += images.shape[0]
            if not len(targets):
                continue
            for name, method in methods.items():
                out[name][0].append(keys)
                with torch.enable_grad():  # gradient-based methods
                    out[name][1].append(method(model, images, episode, targets).detach().float().cpu())
    finally:
        model.train(was_training)
    hw = tuple(datamodule.datasets[split][0]["image"].shape[-2:]) if seen else (0, 0)
    return {name: (torch.cat(keys) if keys else torch.zeros(0, dtype=torch.long),
                   torch.cat(maps) if maps else torch.zeros(0, *hw)) for name, (keys, maps) in out.items()}
