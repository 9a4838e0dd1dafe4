"""Explanations beyond gradients: mask losses, iGOS++, the Explainer, stability across seeds."""
import json
import math

import pytest
import torch
from conftest import run

from glimpse.heatmaps import masks as losses
from glimpse.heatmaps.igos import igos_maps


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


# -- stability across seeds ---------------------------------------------------------------------------
def test_stability_on_hand_made_maps():
    from scipy.stats import spearmanr

    from glimpse.evaluation.stability import rank_correlation, stability, topk_overlap

    maps = torch.arange(2 * 5 * 5, dtype=torch.float32).view(2, 5, 5)
    assert torch.allclose(rank_correlation(maps, maps), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(rank_correlation(maps, -maps), -torch.ones(2, dtype=torch.float64))
    assert torch.equal(topk_overlap(maps, maps, 0.2), torch.ones(2, dtype=torch.float64))
    assert torch.equal(topk_overlap(maps, -maps, 0.2), torch.zeros(2, dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, 4, (3, 6, 6), generator=g).float(), torch.randint(0, 4, (3, 6, 6), generator=g).float()
    expected = [spearmanr(x.flatten(), y.flatten()).statistic for x, y in zip(a, b)]  # ties: average ranks
    assert torch.allclose(rank_correlation(a, b), torch.tensor(expected, dtype=torch.float64))
    assert rank_correlation(torch.ones(1, 4, 4), a[:1, :4, :4]).isnan().all()  # a flat map has no ranking
    # three models; maps compared only on the (image, class) keys two models share, first occurrence
    keys = torch.tensor([3, 7, 7])
    model = (keys, torch.stack([maps[0], maps[1], -maps[1]]))
    other = (torch.tensor([7, 9]), torch.stack([maps[1], maps[0]]))
    scores = stability([model, model, other], fraction=0.2)
    assert scores["rank_correlation"] == 1.0 and scores["topk_overlap"] == 1.0
    assert scores["shared_targets"] == (2 + 1 + 1) / 3
    reversed_ = stability([model, (torch.tensor([3, 7]), -maps)])
    assert reversed_["rank_correlation"] == -1.0 and reversed_["topk_overlap"] == 0.0


# -- the Explainer, end to end ------------------------------------------------------------------------
TINY_GLIMPSE = ["data.train_size=16", "data.val_size=16", "data.test_size=16", "data.batch_size=16", "data.num_workers=0",
                "trainer.max_epochs=1", "model.policy.hidden=16", "callbacks.heatmap_metrics=null", "callbacks.heatmaps=null", "logger=none",
                "test=false"]


@pytest.fixture(scope="module")
def glimpse_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("glimpse")
    run("train.py", *TINY_GLIMPSE, f"paths.output_dir={out}")
    return out / "checkpoints" / "last.ckpt"


def test_explainer_training_leaves_the_glimpse_model_bit_identical(glimpse_ckpt):
    from glimpse.heatmaps.explainer import ExplainerModule
    from glimpse.module import load_checkpoint

    before = {k: v.clone() for k, v in load_checkpoint(str(glimpse_ckpt)).state_dict().items()}
    module = ExplainerModule(str(glimpse_ckpt), weights={"area": 1.0})
    module.train()
    assert not module.glimpse.training and not any(p.requires_grad for p in module.glimpse.parameters())
    optimizer = module.configure_optimizers()
    images = torch.rand(4, 1, 100, 100, generator=torch.Generator().manual_seed(0))
    net_before = [p.clone() for p in module.net.parameters()]
    for _ in range(2):
        optimizer.zero_grad()
        parts = module.losses(images)
        parts["loss"].backward()
        optimizer.step()
    assert set(parts) >= {"loss", "classification", "entropy", "area", "absent", "tv"}
    assert all(p.grad is None for p in module.glimpse.parameters())
    after = module.glimpse.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the explained model's weights (and BN buffers) moved"
    assert any(not torch.equal(a, b) for a, b in zip(net_before, module.net.parameters())), "the Explainer did not train"
    masks = module(images)
    assert masks.shape == (4, len(module.class_names), 100, 100) and 0 <= masks.min() and masks.max() <= 1


@pytest.mark.slow  # about 2.5 minutes on 2 busy cores
def test_explainer_experiment_trains_and_evaluate_scores_it_and_compares_checkpoints(glimpse_ckpt, tmp_path):
    out = tmp_path / "explainer"
    tiny = [o for o in TINY_GLIMPSE if not o.startswith(("model.", "callbacks."))]
    run("train.py", "experiment=explainer", f"explain.glimpse_ckpt={glimpse_ckpt}", *tiny, f"paths.output_dir={out}")
    explainer = out / "checkpoints" / "last.ckpt"
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"val/explainer/loss", "val/explainer/classification", "val/explainer/kept_probability"} <= set(metrics)
    # the glimpse checkpoint was read, not resumed: still the same file, and the Explainer holds an unchanged copy
    original = torch.load(glimpse_ckpt, weights_only=False)["state_dict"]
    copy = torch.load(explainer, weights_only=False)["state_dict"]
    assert all(torch.equal(v, copy[f"glimpse.{k}"]) for k, v in original.items())

    # evaluate.py: both methods beside the saliency map, and a list of checkpoints compared map by map
    report = tmp_path / "eval"
    run("evaluate.py", f"ckpt_path=[{glimpse_ckpt},{glimpse_ckpt}]", "data.test_size=16", "data.num_workers=0",
        "heatmaps.methods=[saliency_map,explainer,igos]", f"heatmaps.explainer.ckpt_path=[{explainer},{explainer}]",
        "heatmaps.igos.iterations=2", "heatmaps.igos.ig_steps=2", "heatmaps.perturbation_steps=2", "stability.max_images=16",
        f"paths.output_dir={report}")
    scores = json.loads((report / "metrics.json").read_text())
    for method in ("saliency_map", "explainer", "igos"):
        for key in ("pointing_game", "energy_pointing_game", "deletion_auc", "insertion_auc"):
            assert 0.0 <= scores[f"attribution/{method}/{key}"] <= 1.0
        # the same model twice: the same right labels, the same maps
        assert scores[f"stability/{method}/shared_targets"] > 0
        assert scores[f"stability/{method}/rank_correlation"] == pytest.approx(1.0)
        assert scores[f"stability/{method}/topk_overlap"] == pytest.approx(1.0)
    assert "stability/igos/rank_correlation" in (report / "report.md").read_text()


def test_explainer_bad_input_is_a_clear_error(glimpse_ckpt, tmp_path):
    from glimpse.heatmaps.registry import resolve_methods

    proc = run("train.py", "experiment=explainer", "logger=none", f"paths.output_dir={tmp_path / 'a'}", check=False)
    assert proc.returncode == 2 and "explain.glimpse_ckpt=GLIMPSE_CKPT" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.rglob("metrics.json")) and not list(tmp_path.rglob("*.ckpt"))
    with pytest.raises(ValueError, match="not an Explainer checkpoint"):
        resolve_methods(["explainer"], settings={"explainer": {"ckpt_path": str(glimpse_ckpt)}})
    with pytest.raises(ValueError, match="heatmaps.explainer.ckpt_path is not set"):
        resolve_methods(["explainer"], settings={})
    with pytest.raises(ValueError, match="heatmaps.igos.iterations=0"):
        resolve_methods(["igos"], settings={"igos": {"iterations": 0}})
    with pytest.raises(ValueError, match="heatmaps.igos has settings"):
        resolve_methods(["igos"], settings={"igos": {"iteratoins": 3}})
