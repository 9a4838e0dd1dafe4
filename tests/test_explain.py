"""Explanations beyond gradients: mask losses, iGOS++, the Explainer, stability across seeds."""
import math

import torch

from glimpse.explain import masks as losses
from glimpse.explain.igos import igos_maps


# -- mask losses on hand-worked cases ---------------------------------------------------------------
def test_classification_and_entropy_losses_by_hand():
    uniform = torch.zeros(2, 4)
    assert torch.isclose(losses.classification_loss(uniform, torch.tensor([0, 3])), torch.tensor(math.log(4)))
    assert torch.isclose(losses.entropy_loss(uniform), torch.tensor(-math.log(4)))  # the best it gets
    certain = torch.tensor([[100.0, 0, 0, 0]])
    assert losses.classification_loss(certain, torch.tensor([0])) < 1e-6
    assert abs(losses.entropy_loss(certain)) < 1e-6  # no entropy left: the worst masked-out image


def test_area_tv_bilateral_tv_and_l1_by_hand():
    mask = torch.zeros(1, 4, 4)
    mask[:, :, :2] = 1  # left half kept: one vertical edge, 4 pairs across it
    assert losses.area_loss(mask) == 0.5 and losses.l1(1 - mask) == 0.5
    assert torch.isclose(losses.total_variation(mask), torch.tensor(4 / 16))
    assert losses.total_variation(torch.ones(2, 4, 4)) == 0
    assert losses.area_bounds_loss(mask, 0.25, 0.75) == 0
    assert torch.isclose(losses.area_bounds_loss(mask, 0.0, 0.25), torch.tensor(0.25**2))
    same_edge = mask[:, None].clone()  # the image has its edge where the mask has it
    other_edge = mask.transpose(1, 2)[:, None].clone()  # the image's edge is horizontal
    assert losses.bilateral_tv(mask, same_edge, sigma=0.1) < 1e-6
    assert torch.isclose(losses.bilateral_tv(mask, other_edge, sigma=0.1), torch.tensor(4 / 16))
    assert torch.isclose(losses.bilateral_tv(mask, torch.zeros(1, 1, 4, 4)), losses.total_variation(mask))


# -- iGOS++ -------------------------------------------------------------------------------------------
PATCH = (slice(8, 16), slice(20, 28))  # rows, cols of the one patch the toy model reads


def patch_score(images: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """A toy model whose answer depends on one known patch only: sigmoid of its brightness."""
    return torch.sigmoid(12 * (images[:, 0, PATCH[0], PATCH[1]].mean((-1, -2)) - 0.5))


def test_igos_finds_the_patch_the_model_reads():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 1, 32, 32, generator=g) * 0.3
    images[:, :, PATCH[0], PATCH[1]] = 1.0
    images[1, :, 2:10, 2:10] = 1.0  # a decoy just as bright, which the model ignores
    maps = igos_maps(patch_score, images, iterations=20, ig_steps=4, mask_size=8, blur_sigma=3.0, chunk=2)
    assert maps.shape == (3, 32, 32)
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[PATCH] = True
    peak = maps.flatten(1).argmax(-1)
    assert inside.flatten()[peak].all(), "every map peaks on the patch"
    share = (maps * inside).flatten(1).sum(-1) / maps.flatten(1).sum(-1)
    assert (share > 0.4).all(), share  # the patch is 6% of the image
    assert maps[1, 2:10, 2:10].mean() < 0.5 * maps[1][inside].mean()
