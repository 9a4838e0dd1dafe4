"""Where the glimpses land: hit rate, object coverage and attention energy (the ``localisation/*`` keys of metrics.json).

All three are computed batched over images; the only Python loop is over the handful of
meta steps, because a box claimed at step ``t`` cannot be claimed again at a later step.

- ``glimpse_hit_rate``: of the classification steps whose label was right (still in the
  remaining multiset), the share whose final glimpse centre lies inside a not-yet-claimed
  ground-truth box of that class. A hit claims the box (the nearest one by centre if the
  glimpse lies in several), so two steps never claim the same box.
- ``object_coverage``: the share of ground-truth objects inside which some glimpse of the
  episode (any step before STOP, any of its ``k`` glimpses) landed.
- ``attention_energy_in_box``: for each classification step that emitted a label, the share
  of its covert attention mask's mass that lies inside the boxes of the emitted class. A
  cell's mass is spread uniformly over its pixels, so a cell half covered by a box puts
  half its mass inside.

Baselines on the same images and the same emitted labels: ``random`` replaces every
location by a uniformly random cell, ``saliency`` by the argmax of the model's initial
saliency map with inhibition of return (the meta-controller's prior alone).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor
from torchmetrics import Metric

from glimpse.geometry import box_masks, cell_geometry, glimpse_hits, points_in_boxes, step_centres

KEYS = ("glimpse_hit_rate", "object_coverage", "attention_energy_in_box")
_SUBSAMPLES = 8  # points per cell side used to measure how much of a cell a box covers


def class_cover(boxes: Tensor, box_labels: Tensor, labels: Tensor, grid: tuple[int, int], image_hw: tuple[int, int],
                stride: int | None = None) -> Tensor:
    """Share ``(B, T, h*w)`` of each cell inside the union of the boxes of class ``labels (B, T)``.

    A cell is the square of one cell spacing around its centre (:func:`~glimpse.geometry.cell_geometry`). The
    boxes are rasterised at ``_SUBSAMPLES`` points per cell side (by :func:`~glimpse.geometry.box_masks`
    on the boxes moved to that raster), then averaged per cell.
    """
    h, w = grid
    s = _SUBSAMPLES
    origin, spacing = (v.to(boxes) for v in cell_geometry(grid, image_hw, stride))
    corner = origin - spacing / 2  # top-left pixel corner of cell (0, 0)
    steps = labels.shape[1]
    same = (box_labels[:, None, :] == labels[:, :, None]) & (box_labels[:, None, :] >= 0)  # (B, T, N)
    moved = (boxes - corner.repeat(2)) * (s / spacing).repeat(2)
    scaled = moved[:, None].expand(-1, steps, -1, -1).flatten(0, 1)  # (B*T, N, 4)
    union = box_masks(scaled, same.flatten(0, 1), (h * s, w * s)).float()  # (B*T, h*s, w*s)
    return union.unflatten(-1, (w, s)).unflatten(-3, (h, s)).mean((-3, -1)).flatten(-2).view(*labels.shape, h * w)


def baseline_episode(episode, kind: str, attention, generator: torch.Generator | None = None):
    """The episode with every location replaced by a baseline's, labels kept.

    ``random``: each meta location and glimpse uniformly over the cells. ``saliency``: the
    argmax of the initial saliency map, inhibited by each step's attention mask (the
    meta-controller's prior with inhibition of return); its glimpses stay at that cell.
    ``attention`` is the model's :class:`GaussianMixtureAttention`.
    """
    h, w = episode.grid
    batch, steps = episode.labels.shape
    k = episode.glimpse_locations.shape[-1]
    device = episode.labels.device
    if kind == "random":
        draw = lambda *shape: torch.randint(h * w, shape, generator=generator).to(device)  # noqa: E731
        meta, glimpses = draw(batch, steps), draw(batch, steps, k)
        masks = torch.stack([attention(meta[:, t], h, w) for t in range(steps)], 1)
    elif kind == "saliency":
        saliency = episode.saliency_map.flatten(1)
        chosen, mask_list = [], []
        for _ in range(steps):
            loc = saliency.argmax(-1)
            mask = attention(loc, h, w)
            saliency = saliency * (1 - mask)
            chosen.append(loc), mask_list.append(mask)
        meta, masks = torch.stack(chosen, 1), torch.stack(mask_list, 1)
        glimpses = meta[..., None].expand(batch, steps, k)
    else:
        raise ValueError(f"baseline must be 'random' or 'saliency', got {kind!r}")
    return dataclasses.replace(episode, meta_locations=meta, glimpse_locations=glimpses, attention_masks=masks.detach())


def localisation_scores(episode, counts: Tensor, boxes: Tensor, box_labels: Tensor, image_hw: tuple[int, int]) -> dict[str, Tensor]:
    """Per image and step, the numerators and denominators of the three localisation metrics.

    ``hits``/``scored`` ``(B, T)``: right-label steps whose final glimpse claimed a box of
    their class / right-label steps; ``energy``/``emitted`` ``(B, T)``: attention mass in the
    emitted class's boxes (0 where no label was emitted) / label steps; ``covered``/``objects``
    ``(B,)``: objects some glimpse landed in / objects. Summed over images they are the metrics;
    kept per image they give bootstrap intervals.
    """
    labels = episode.labels
    hits, played = glimpse_hits(episode, counts, boxes, box_labels, image_hw)
    emitted = played["alive"] & (labels < counts.shape[1])  # (B, T) steps that emitted a label
    correct = played["correct"] & emitted
    _, every = step_centres(episode, image_hw)

    valid = box_labels >= 0
    landed = points_in_boxes(every.flatten(1, 2), boxes, valid)  # (B, T*k', N)
    alive_points = played["alive"][:, :, None].expand(every.shape[:3]).flatten(1)  # (B, T*k')
    covered = (landed & alive_points[:, :, None]).any(1) & valid

    cover = class_cover(boxes, box_labels, labels.clamp(max=counts.shape[1] - 1), episode.grid, image_hw, episode.cell_stride)
    masks = episode.attention_masks
    energy = (masks * cover).sum(-1) / masks.sum(-1).clamp(min=1e-12)  # (B, T)
    return {"hits": hits, "scored": correct, "energy": energy * emitted, "emitted": emitted,
            "covered": covered.sum(-1), "objects": valid.sum(-1)}


class LocalisationMetrics(Metric):
    """Accumulates the three localisation metrics, per meta step and overall.

    ``update(episode, counts, boxes, box_labels, image_hw)`` takes a recorded episode;
    the baselines are separate instances fed with baseline episodes
    (:func:`baseline_episode`). ``compute`` returns ``{key: value}`` and
    ``{key/step_t: value}``; a step with nothing to score gives NaN, never a fake 0.
    """

    full_state_update = False

    def __init__(self, max_steps: int, prefix: str = "localisation/") -> None:
        super().__init__()
        self.prefix, self.max_steps = prefix, max_steps
        for name in ("hits", "scored", "energy", "emitted"):
            self.add_state(name, default=torch.zeros(max_steps, dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("covered", "objects"):
            self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, episode, counts: Tensor, boxes: Tensor, box_labels: Tensor, image_hw: tuple[int, int]) -> None:  # type: ignore[override]
        steps = episode.labels.shape[1]
        if steps > self.max_steps:
            raise ValueError(f"episode has {steps} steps but the metric was built for max_steps={self.max_steps}")
        scores = localisation_scores(episode, counts, boxes, box_labels, image_hw)
        self.hits[:steps] += scores["hits"].double().sum(0)
        self.scored[:steps] += scores["scored"].double().sum(0)
        self.energy[:steps] += scores["energy"].double().sum(0)
        self.emitted[:steps] += scores["emitted"].double().sum(0)
        self.covered += scores["covered"].double().sum()
        self.objects += scores["objects"].double().sum()

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=self.hits.device)
        ratio = lambda a, b: torch.where(b > 0, a / b.clamp(min=1), nan)  # noqa: E731
        p = self.prefix
        out = {
            f"{p}glimpse_hit_rate": ratio(self.hits.sum(), self.scored.sum()),
            f"{p}object_coverage": ratio(self.covered, self.objects),
            f"{p}attention_energy_in_box": ratio(self.energy.sum(), self.emitted.sum()),
        }
        for t in range(self.max_steps):
            out[f"{p}glimpse_hit_rate/step_{t}"] = ratio(self.hits[t], self.scored[t])
            out[f"{p}attention_energy_in_box/step_{t}"] = ratio(self.energy[t], self.emitted[t])
        return {k: v.float() for k, v in out.items()}


class LocalisationSuite(torch.nn.Module):
    """The model's localisation metrics beside its two baselines, fed from one batch.

    Keys: ``localisation/<metric>`` for the model, ``localisation/random/<metric>`` and
    ``localisation/saliency/<metric>`` for the baselines, plus ``.../step_t`` variants.
    The random baseline draws from its own generator, seeded by the batch index, so it is
    reproducible and never touches the global RNG stream that training uses.
    """

    BASELINES = ("random", "saliency")

    def __init__(self, max_steps: int, seed: int = 0) -> None:
        super().__init__()
        self.seed = seed
        self.metrics = torch.nn.ModuleDict(
            {"model": LocalisationMetrics(max_steps)}
            | {name: LocalisationMetrics(max_steps, prefix=f"localisation/{name}/") for name in self.BASELINES}
        )

    def update(self, episode, batch: dict, attention, batch_idx: int) -> None:
        if "boxes" not in batch:
            return  # a dataset without boxes has no localisation to score
        args = (batch["counts"], batch["boxes"], batch["labels"], tuple(batch["image"].shape[-2:]))
        self.metrics["model"].update(episode, *args)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + batch_idx)
        for name in self.BASELINES:
            self.metrics[name].update(baseline_episode(episode, name, attention, generator), *args)

    def compute(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for metric in self.metrics.values():
            if metric.update_count:
                # a step no episode reached has no value: leave it out rather than log NaN
                out.update({k: v for k, v in metric.compute().items() if "/step_" not in k or not torch.isnan(v)})
        return out

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()
