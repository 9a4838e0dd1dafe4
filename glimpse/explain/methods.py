"""The Explainer and iGOS++ as heatmap methods (glimpse/evaluation/heatmap_eval.py):
``factory(**settings)`` gives ``method(model, images, episode, targets (N, 3)) -> maps (N, H, W)``."""
from __future__ import annotations

import torch
from torch import Tensor

from glimpse.evaluation.heatmap_eval import Method, target_probability
from glimpse.explain.explainer import load_explainer
from glimpse.explain.igos import check_settings, igos_maps


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
