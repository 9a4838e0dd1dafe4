"""Attribution maps against captum and pytorch-grad-cam, IG completeness, the episode replay,
and bad input."""
import numpy as np
import pytest
import torch
from torch import nn

from conftest import require
from glimpse.heatmaps.gradients import METHODS, attribute
from glimpse.heatmaps.replay import attribute_episode, default_layer, replay_logits
from glimpse.heatmaps.targets import NO_TARGET, emitted_label_targets
from glimpse.models.backbone import ConvBackbone
from glimpse.models.policy import GlimpsePolicy



def captum_attr():  # imported only by the tests that compare with it (slow to import)
    return require("captum.attr")


def small_cnn(classes=5):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, classes),
    ).eval()


@pytest.fixture(scope="module")
def case():
    model = small_cnn()
    with torch.no_grad():  # non-trivial batch-norm statistics
        model[3].running_mean.uniform_(-0.5, 0.5), model[3].running_var.uniform_(0.5, 2.0)
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([[0, 3], [4, 1], [2, 2]])
    maps = attribute(model, images, targets, METHODS, layer="4", upsample=False, ig_steps=20)
    return model, images, targets, maps


def _grad_cam_raw(cls, model, layer, images, target):
    """pytorch-grad-cam's map before its min-max scaling and resize."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam = cls(model=model, target_layers=[layer])
    try:
        outputs = cam.activations_and_grads(images)
        model.zero_grad()
        sum(ClassifierOutputTarget(int(c))(o) for c, o in zip(target, outputs)).backward()
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy()
        return torch.from_numpy(np.maximum(cam.get_cam_image(images, layer, None, acts, grads, False), 0))
    finally:
        cam.activations_and_grads.release()


@pytest.mark.parametrize("name, cls", [("gradcam", "GradCAM"), ("gradcam_plus_plus", "GradCAMPlusPlus"),
                                       ("global_guidance_map", "GradCAMElementWise")])
def test_cams_equal_pytorch_grad_cam(case, name, cls):
    grad_cam = require("pytorch_grad_cam")
    model, images, targets, maps = case
    for m in range(targets.shape[1]):
        ref = _grad_cam_raw(getattr(grad_cam, cls), model, model[4], images, targets[:, m])
        assert torch.allclose(maps[name][:, m], ref.float(), atol=1e-5), (name, m, (maps[name][:, m] - ref).abs().max())


def test_gradcam_equals_captum_layer_gradcam(case):
    model, images, targets, maps = case
    for m in range(targets.shape[1]):
        ref = captum_attr().LayerGradCam(model, model[4]).attribute(images, target=targets[:, m], relu_attributions=True)[:, 0]
        assert torch.allclose(maps["gradcam"][:, m], ref, atol=1e-5)


def test_gradient_and_ig_equal_captum(case):
    model, images, targets, maps = case
    for m in range(targets.shape[1]):
        ref = captum_attr().Saliency(model).attribute(images.clone().requires_grad_(), target=targets[:, m]).amax(1)
        assert torch.allclose(maps["gradient"][:, m], ref, atol=1e-5)
        ref = captum_attr().IntegratedGradients(model).attribute(images, target=targets[:, m], n_steps=20, method="gausslegendre")
        assert torch.allclose(maps["integrated_gradients"][:, m], ref.sum(1), atol=1e-5)
    for rule in ("riemann_trapezoid", "riemann_middle", "riemann_left"):
        ours = attribute(model, images, targets[:, :1], ["integrated_gradients"], ig_steps=7, ig_rule=rule)["integrated_gradients"]
        ref = captum_attr().IntegratedGradients(model).attribute(images, target=targets[:, 0], n_steps=7, method=rule).sum(1)
        if rule == "riemann_trapezoid":  # captum's trapezoid weights are 1/n (sum (n-1)/n); glimpse's 1/(n-1) (sum 1)
            ref = ref * 7 / 6
        assert torch.allclose(ours[:, 0], ref, atol=1e-5), rule


def test_integrated_gradients_completeness(case):
    model, images, targets, maps = case
    with torch.no_grad():
        gap = model(images).gather(1, targets) - model(torch.zeros_like(images)).gather(1, targets)
    # ReLU kinks: Gauss-Legendre oscillates (1.7% off at 64 steps here), the trapezoid converges
    maps = attribute(model, images, targets, ["integrated_gradients"], ig_steps=128, ig_rule="riemann_trapezoid")
    total = maps["integrated_gradients"].sum((-2, -1))
    assert torch.all((total - gap).abs() <= 0.01 * gap.abs()), (total, gap)


def test_sign_aware_maps_by_hand():
    """A linear model: the gradient of class c is its weight row, known exactly."""
    weight = torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.5, 1.0, 1.0, -1.0], [0.0, 0.0, 2.0, 3.0]])  # (K=3, pixels=4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3, bias=False)).eval()
    model[1].weight.data.copy_(weight)
    images = torch.rand(2, 1, 2, 2)
    maps = attribute(model, images, torch.tensor([[0, 1], [2, 0]]), ["gradient", "saliency_positive", "saliency_negative",
                                                                       "saliency_active"])
    g0 = weight[0].view(2, 2)
    assert torch.equal(maps["gradient"][0, 0], g0.abs())
    assert torch.equal(maps["saliency_positive"][0, 0], g0.clamp(min=0))
    assert torch.equal(maps["saliency_negative"][0, 0], (-g0).clamp(min=0))
    # class 0 beats classes 1 and 2 only at pixel 0 (1 > 0.5, 0) -> active there with |g| = 1
    assert torch.equal(maps["saliency_active"][0, 0], torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    # class 2 beats the others at pixels 2 and 3
    assert torch.equal(maps["saliency_active"][1, 0], torch.tensor([[0.0, 0.0], [2.0, 3.0]]))


def test_no_grad_state_touched_and_modes_restored(case):
    _, images, targets, _ = case
    model = small_cnn().train()  # fresh: the library comparisons above filled .grad
    before = [p.detach().clone() for p in model.parameters()]
    stats = model[3].running_mean.clone()
    rng = torch.get_rng_state()
    with torch.inference_mode():  # as inside Lightning validation
        frozen = images.clone()
        maps = attribute(model, frozen, targets, ["gradcam", "gradient"], layer="4")
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())) and torch.equal(stats, model[3].running_mean)
    assert torch.equal(rng, torch.get_rng_state()) and not model[4]._forward_hooks
    assert maps["gradcam"].shape == (3, 2, 16, 16) and maps["gradient"].abs().sum() > 0


def test_flat_maps_are_zeros_and_no_target_entries_are_zeros():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3)).eval()
    for p in model.parameters():
        p.data.zero_()
    maps = attribute(model, torch.rand(2, 1, 8, 8), torch.tensor([[0, NO_TARGET], [1, 2]]), METHODS, layer="1", ig_steps=4)
    for name, m in maps.items():
        assert torch.isfinite(m).all() and m.abs().sum() == 0, name


@pytest.mark.parametrize("kwargs, message", [
    (dict(layer="features.14"), "is not a module"),
    (dict(targets=torch.tensor([[5]])), "out of range"),
    (dict(methods=["gradcam", "smoothgrad"]), "smoothgrad"),
    (dict(methods=["gradcam"], layer=None), "layer"),
])
def test_bad_input_is_a_clear_error(kwargs, message):
    model = small_cnn()
    args = dict(targets=torch.tensor([[1]]), methods=["gradcam"], layer="4") | kwargs
    with pytest.raises(ValueError, match=message):
        attribute(model, torch.rand(1, 3, 8, 8), **args)
    assert not model[4]._forward_hooks


@pytest.fixture(scope="module")
def glimpse_case():
    torch.manual_seed(0)
    policy = GlimpsePolicy(ConvBackbone(channels=(8, 8, 8, 8, 8)), 4, hidden=16, key_dim=8, label_dim=4).eval()
    with torch.no_grad():
        policy.controller.classifier[-1].bias[-1] = -5.0  # emit labels before STOP
    images = torch.rand(2, 1, 48, 48)
    with torch.no_grad():
        episode = policy(images, 3, location_mode="sample")  # sampled: replay must force these locations
    return policy, images, episode


def test_episode_targets_default_layer_and_replay(glimpse_case):
    policy, images, episode = glimpse_case
    assert default_layer(policy) == "backbone.features.14"
    labels = torch.tensor([[1, 4, 2], [3, 0, 4]])  # 4 = STOP
    fake = type(episode)(**{**episode.__dict__, "labels": labels})
    assert emitted_label_targets(fake, 4).tolist() == [[1, NO_TARGET, NO_TARGET], [3, 0, NO_TARGET]]
    # the replay gives the recorded episode's label logits
    logits = replay_logits(policy, episode)(images)
    assert torch.allclose(logits, episode.label_logits[..., :4], atol=1e-5)


def test_episode_maps_equal_one_target_at_a_time(glimpse_case):
    """Batched over steps and images = each (image, step) target alone."""
    policy, images, episode = glimpse_case
    targets = torch.tensor([[0, 2, 1], [3, NO_TARGET, 1]])
    maps = attribute_episode(policy, images, ["gradient", "gradcam", "integrated_gradients"], episode=episode,
                             targets=targets, ig_steps=4)
    assert maps["gradcam"].shape == (2, 3, 48, 48)
    forward = replay_logits(policy, episode)
    for b, t in [(0, 0), (0, 2), (1, 0), (1, 2)]:
        x = images.clone().requires_grad_(True)
        logit = forward(x)[b, t, targets[b, t]]
        g = torch.autograd.grad(logit, x)[0][b]
        assert torch.allclose(maps["gradient"][b, t], g.abs().amax(0), atol=1e-6)
    assert maps["gradient"][1, 1].abs().sum() == 0


def test_heatmap_registry_scores_attribution_methods(glimpse_case):
    """The evaluation registry's maps (one row per target, each step's targets in one call) are
    attribute_episode's (B, T) grid rows, CAMs upsampled with the cell geometry."""
    from glimpse.heatmaps.registry import resolve_methods
    from glimpse.geometry import upsample_cells

    policy, images, episode = glimpse_case
    names = ["gradcam", "gradient", "saliency_active", "integrated_gradients"]
    methods = resolve_methods(["saliency_map", *names])
    rows = torch.tensor([[0, 0, 2], [1, 2, 1], [1, 0, 3]])  # (image, step, class)
    grid = torch.full_like(episode.labels, NO_TARGET)
    grid[rows[:, 0], rows[:, 1]] = rows[:, 2]
    ref = attribute_episode(policy, images, names, episode=episode, targets=grid, upsample=False)
    cam = methods["gradcam"](policy, images, episode, rows)
    assert cam.shape == (3, 48, 48)
    expected = upsample_cells(ref["gradcam"][rows[:, 0], rows[:, 1]], (48, 48), episode.cell_stride)
    assert torch.allclose(cam, expected, atol=1e-6)
    for name in names[1:]:
        mine, theirs = methods[name](policy, images, episode, rows), ref[name][rows[:, 0], rows[:, 1]]
        assert mine.abs().sum() > 0 and torch.allclose(mine, theirs, atol=1e-6), name
    with pytest.raises(ValueError, match="gradcam_typo"):
        resolve_methods(["gradcam_typo"])
    everything = resolve_methods("all")
    assert list(everything) == ["saliency_map", *METHODS] and list(resolve_methods(["all"])) == list(everything)


def test_smoke_run_leaves_heatmap_pngs_and_wandb_images(smoke_run):
    """experiment=smoke logger=wandb: grids in heatmaps/epoch_XXX/ and as images in the offline W&B run."""
    out, _ = smoke_run
    epochs = sorted(p.name for p in (out / "heatmaps").iterdir())
    assert epochs == ["epoch_000", "epoch_001"]  # every validation epoch (the last one also covers fit's end)
    for epoch in epochs:
        pngs = sorted((out / "heatmaps" / epoch).glob("image_*.png"))
        assert [p.name for p in pngs] == ["image_0.png", "image_1.png"] and all(p.stat().st_size > 10_000 for p in pngs)
    media = list((out / "wandb").glob("offline-run-*/files/media/images/heatmaps_*.png"))
    assert len(media) >= 4, "the heatmap grids are in the offline W&B run"


@pytest.mark.slow
def test_training_with_and_without_the_callback_gives_identical_weights(tmp_path):
    """The callback draws no random numbers from training's stream and leaves weights and grads alone."""
    from conftest import TINY, run

    replaced = ("callbacks.heatmaps", "trainer.max_epochs", "data.train_size")
    base = [o for o in TINY if not o.startswith(replaced)] + ["logger=none", "test=false", "trainer.max_epochs=2",
                                                             "data.train_size=64", "callbacks.heatmap_metrics=null"]
    run("train.py", *base, "callbacks.heatmaps=null", f"paths.output_dir={tmp_path / 'without'}")
    run("train.py", *base, "callbacks.heatmaps.num_images=2", "callbacks.heatmaps.ig_steps=2",
        "callbacks.heatmaps.every_n_epochs=1",
        f"paths.output_dir={tmp_path / 'with'}")
    assert len(list((tmp_path / "with" / "heatmaps").rglob("*.png"))) == 4
    without = torch.load(tmp_path / "without" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    with_ = torch.load(tmp_path / "with" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert without.keys() == with_.keys()
    assert all(torch.equal(without[k], with_[k]) for k in without)
