"""Multiset metrics as torchmetrics ``Metric``s, so they reduce across DDP processes.

precision = |pred ∩ true| / |pred| and recall = |pred ∩ true| / |true|, with multiset
intersection, summed over the dataset (micro); exact match is per image.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from glimpse import multiset


def multiset_fractions(predicted: Tensor, target: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """Per image, the numerator and denominator ``(B,)`` of each multiset metric, from count
    vectors ``(B, K)``: ``exact_match`` (1 / 1 when equal), ``precision`` (overlap / predicted
    size), ``recall`` (overlap / true size) and ``f1`` (2 overlap / both sizes). Summed over
    images they give the micro-averaged metrics; kept per image, bootstrap intervals."""
    if predicted.shape != target.shape:
        raise ValueError(f"predicted counts {tuple(predicted.shape)} and targets {tuple(target.shape)} differ in shape")
    overlap = multiset.intersection_size(predicted, target)
    size_predicted, size_target = predicted.sum(-1), target.sum(-1)
    return {
        "exact_match": ((predicted == target).all(-1), torch.ones_like(overlap)),
        "precision": (overlap, size_predicted),
        "recall": (overlap, size_target),
        "f1": (2 * overlap, size_predicted + size_target),
    }


class MultisetMetrics(Metric):
    """Accumulates predicted and true count vectors ``(B, K)``; ``compute`` gives the ``multiset/*`` keys of metrics.json."""

    full_state_update = False

    def __init__(self, prefix: str = "multiset/") -> None:
        super().__init__()
        self.prefix = prefix
        for name in ("intersection", "predicted", "target", "exact", "images"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predicted: Tensor, target: Tensor) -> None:  # type: ignore[override]
        fractions = multiset_fractions(predicted, target)
        overlap, size_predicted = fractions["precision"]
        self.intersection += overlap.sum()
        self.predicted += size_predicted.sum()
        self.target += fractions["recall"][1].sum()
        self.exact += fractions["exact_match"][0].sum()
        self.images += predicted.shape[0]

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        inter = self.intersection.double()
        precision = inter / self.predicted.clamp(min=1)
        recall = inter / self.target.clamp(min=1)
        if self.target == 0:  # no objects at all: perfect exactly when nothing was predicted
            precision = recall = (self.predicted == 0).double()
        f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), 0.0)
        p = self.prefix
        return {
            f"{p}exact_match": (self.exact.double() / self.images.clamp(min=1)).float(),
            f"{p}precision": precision.float(),
            f"{p}recall": recall.float(),
            f"{p}f1": f1.float(),
        }


def bootstrap_interval(numerator: Tensor, denominator: Tensor, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of ``sum(numerator) / sum(denominator)`` over images.

    One entry per image, resampled in pairs (``scipy.stats.bootstrap``, paired, vectorised), so
    a micro-averaged metric (a ratio of sums) keeps its own definition inside every resample.
    Images with a zero denominator are left out (they add nothing to either sum); returns
    ``(nan, nan)`` when fewer than two images are left.
    """
    import numpy as np
    from scipy.stats import bootstrap

    num = numerator.detach().double().cpu().numpy()
    den = denominator.detach().double().cpu().numpy()
    if num.shape != den.shape or num.ndim != 1:
        raise ValueError(f"numerator {num.shape} and denominator {den.shape} must be equal 1-d shapes (one per image)")
    keep = den > 0  # an image with nothing to score adds nothing to either sum
    if keep.sum() < 2:
        return float("nan"), float("nan")
    num, den = num[keep], den[keep]

    def ratio(n, d, axis=-1):
        return n.sum(axis) / d.sum(axis)

    result = bootstrap((num, den), ratio, paired=True, vectorized=True, n_resamples=resamples, method="percentile",
                       confidence_level=0.95, rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return float(low), float(high)
