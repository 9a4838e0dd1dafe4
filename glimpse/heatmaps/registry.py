"""The heatmap methods by name, as the configs give them: the registry behind
``heatmaps.methods`` of evaluate.py and ``callbacks.heatmap_metrics.methods``.

Every method is ``method(model, images, episode, targets (N, 3)) -> maps (N, H, W)``
(:data:`~glimpse.heatmaps.targets.Method`): the built-in ``saliency_map`` (the model's own
density of the target class, upsampled), the gradient methods of
:mod:`glimpse.heatmaps.gradients` with the episode replayed (:class:`AttributionMethods`), and
the methods built from settings (:data:`CONFIGURED`: the trained Explainer, iGOS++).
"""
from __future__ import annotations

import torch
from torch import Tensor

from glimpse.heatmaps.explainer import load_explainer
from glimpse.heatmaps.gradients import METHODS as ATTRIBUTION_METHODS
from glimpse.heatmaps.igos import check_settings, igos_maps
from glimpse.heatmaps.replay import attribute_targets, target_probability
from glimpse.heatmaps.targets import Method
from glimpse.geometry import upsample_cells
from glimpse.models.policy import Episode


def saliency_map_method(model, images: Tensor, episode: Episode, targets: Tensor) -> Tensor:
    """The model's density of the target class, upsampled to the image."""
    density = episode.class_density[targets[:, 0], targets[:, 2]]  # (N, h, w)
    return upsample_cells(density, tuple(images.shape[-2:]), episode.cell_stride)


BUILTIN: dict[str, Method] = {"saliency_map": saliency_map_method}
ALL = [*BUILTIN, *ATTRIBUTION_METHODS]  # `heatmaps.methods=all`: the ones that need no settings or checkpoint


class AttributionMethods:
    """The attribution methods of :mod:`glimpse.heatmaps.gradients` as heatmap methods.

    All requested methods come from one :func:`~glimpse.heatmaps.replay.attribute_targets`
    call per batch (one forward pass per meta step, batched gradients, one backward pass per
    target and no more), the maps computed at the layer's resolution and cell-sized ones
    upsampled with the backbone's cell geometry
    (:func:`~glimpse.geometry.upsample_cells`). The first method asked for a batch
    computes them all; the others read the cache.
    """

    def __init__(self, names) -> None:
        self.names = list(names)
        self._for: tuple | None = None
        self._maps: dict[str, Tensor] = {}

    def method(self, name: str) -> Method:
        return lambda model, images, episode, targets: self.maps(name, model, images, episode, targets)

    def maps(self, name: str, model, images: Tensor, episode: Episode, targets: Tensor) -> Tensor:
        if self._for is None or any(a is not b for a, b in zip(self._for, (model, images, episode, targets))):
            self._maps = attribute_targets(model, images, self.names, episode, targets)
            self._for = (model, images, episode, targets)
        maps = self._maps[name]  # (N, h, w) or (N, H, W)
        hw = tuple(images.shape[-2:])
        return maps if tuple(maps.shape[-2:]) == hw else upsample_cells(maps, hw, episode.cell_stride)


def explainer_method(ckpt_path: str | None = None) -> Method:
    """The trained Explainer's mask of each target's class (one forward pass per batch)."""
    if not ckpt_path:
        raise ValueError("heatmaps.explainer.ckpt_path is not set: give the checkpoint of "
                         "`python train.py experiment=explainer ckpt_path=GLIMPSE_CKPT`")
    net, class_names = load_explainer(str(ckpt_path))

    @torch.no_grad()
    def method(model, images: Tensor, episode, targets: Tensor) -> Tensor:
        if list(class_names) != list(model.class_names):
            raise ValueError(f"heatmaps.explainer.ckpt_path={ckpt_path} explains classes {class_names}, "
                             f"the checkpoint evaluated has {model.class_names}")
        masks = net.to(images.device)(images)  # (B, K, H, W)
        return masks[targets[:, 0], targets[:, 2]]

    return method


def igos_method(iterations: int = 15, ig_steps: int = 5, mask_size: int | list[int] = 14, lr: float = 0.2,
                l1_weight: float = 0.05, tv_weight: float = 0.5, tv_sigma: float = 0.1, blur_sigma: float = 5.0,
                chunk: int = 32) -> Method:
    """iGOS++ masks of each target, its score the target label's probability at its step with the
    episode's actions replayed on the perturbed image."""
    mask_size = mask_size if isinstance(mask_size, int) else tuple(mask_size)
    check_settings(iterations, ig_steps, mask_size, chunk)
    settings = dict(iterations=iterations, ig_steps=ig_steps, mask_size=mask_size, lr=lr, l1_weight=l1_weight,
                    tv_weight=tv_weight, tv_sigma=tv_sigma, blur_sigma=blur_sigma, chunk=chunk)

    def method(model, images: Tensor, episode, targets: Tensor) -> Tensor:
        actions = episode.actions()

        def score(perturbed: Tensor, rows: Tensor) -> Tensor:
            return target_probability(model, actions, targets[rows], perturbed)

        return igos_maps(score, images[targets[:, 0]], **settings)

    return method


CONFIGURED = {"explainer": explainer_method, "igos": igos_method}


def resolve_methods(names, key: str = "heatmaps.methods", settings=None) -> dict[str, Method]:
    """The methods named in a config (or ``all``: :data:`ALL`), or a ValueError naming the config
    key and the known names.

    Attribution methods (:mod:`glimpse.heatmaps.gradients`) share one batched call per batch;
    methods built from settings (``explainer``, ``igos``: :data:`CONFIGURED`) take theirs from
    ``settings[name]`` (``heatmaps.<name>.*`` in evaluate.py).
    """
    names = ALL if names == "all" or list(names) == ["all"] else list(names)
    known = list(BUILTIN) + list(ATTRIBUTION_METHODS) + list(CONFIGURED)
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"{key} has unknown methods {unknown}; choose from {known}")
    settings = settings or {}
    section = key.rsplit(".", 1)[0]
    attribution = AttributionMethods([n for n in names if n in ATTRIBUTION_METHODS])
    methods = {}
    for name in names:
        if name in BUILTIN:
            methods[name] = BUILTIN[name]
        elif name in ATTRIBUTION_METHODS:
            methods[name] = attribution.method(name)
        else:
            given = dict(settings.get(name) or {})
            try:
                methods[name] = CONFIGURED[name](**given)
            except TypeError as err:
                raise ValueError(f"{section}.{name} has settings {sorted(given)} that do not fit: {err}") from err
    return methods
