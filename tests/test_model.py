"""The glimpse policy: shapes, gradients reaching every parameter, detached paths, replay."""
import pytest
import torch

from glimpse.geometry import cell_centres
from glimpse.models.attention import GaussianMixtureAttention
from glimpse.models.backbone import ConvBackbone, ResNetBackbone
from glimpse.models.policy import STOP_MASKED, GlimpsePolicy
from glimpse.objectives import GlimpseObjective


def small_policy(k=2, **kwargs):
    torch.manual_seed(0)
    backbone = ConvBackbone(1, (8, 8, 8), (2, 2, 2), (1, 1, 2))
    return GlimpsePolicy(backbone, num_classes=10, hidden=32, key_dim=16, label_dim=8, num_glimpses=k, **kwargs)


def batch(b=6):
    g = torch.Generator().manual_seed(1)
    counts = torch.zeros(b, 10, dtype=torch.long)
    counts[torch.arange(b), torch.randint(0, 10, (b,), generator=g)] += 1
    counts[::2, 3] += 1
    return torch.rand(b, 1, 48, 48, generator=g), counts


def test_episode_shapes():
    policy = small_policy(k=3)
    images, _ = batch()
    ep = policy(images, num_steps=4, record=True)
    h, w = ep.grid
    assert ep.saliency_map.shape == (6, h, w) and (ep.saliency_map >= 0).all()
    assert ep.label_logits.shape == (6, 4, 11) and ep.labels.shape == (6, 4)
    assert ep.glimpse_locations.shape == (6, 4, 3) and ep.attention_masks.shape == (6, 4, h * w)
    assert ep.priority_maps.shape == (6, 4, 3, h * w)
    assert (ep.meta_locations < h * w).all() and (ep.glimpse_locations < h * w).all()


@pytest.mark.parametrize("label_loss", ["multiset", "reinforce"])
@pytest.mark.parametrize("learn_attention", [False, True])
def test_every_parameter_gets_a_finite_gradient(label_loss, learn_attention):
    obj = GlimpseObjective(label_loss=label_loss)
    policy = small_policy(learn_attention=learn_attention, num_values=obj.num_values)
    images, counts = batch()
    ep = policy(images, obj.num_steps(counts, 4), label_mode=obj.label_mode)
    obj(ep, counts)["loss"].backward()
    for name, p in policy.named_parameters():
        assert p.grad is not None, f"{name} received no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


@pytest.mark.parametrize("detach_saliency", [True, False])
def test_location_policies_learn_from_the_reinforce_term_alone(detach_saliency):
    # read_density off: then the log-saliency term is the only path from the policy to the saliency model
    policy = small_policy(detach_saliency=detach_saliency, read_density=False)
    images, counts = batch()
    obj = GlimpseObjective()
    ep = policy(images, obj.num_steps(counts, 4))
    out = obj(ep, counts)
    loc = out["location_loss"]
    grads = dict(zip([n for n, _ in policy.named_parameters()],
                     torch.autograd.grad(loc, list(policy.parameters()), allow_unused=True)))
    for name in ("meta.query.weight", "interface.query.weight", "keys.weight"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    # the saliency model learns from the policy gradient only when not detached (default: detached)
    g = grads["saliency.net.2.weight"]
    assert (g is not None and g.abs().sum() > 0) == (not detach_saliency)
    for name in ("value.0.weight", "controller.classifier.2.weight"):
        assert grads[name] is None or grads[name].abs().sum() == 0, f"{name} must not get policy gradient"


@pytest.mark.parametrize("label_loss", ["multiset", "reinforce"])
def test_detached_saliency_gets_no_policy_gradient_with_read_density_on(label_loss):
    # the glimpses read the per-class densities: detached, no REINFORCE or entropy gradient may reach the
    # saliency head through them (nor through the location keys computed from them)
    grads = {}
    for detach in (True, False):
        obj = GlimpseObjective(label_loss=label_loss)
        policy = small_policy(detach_saliency=detach, read_density=True, num_values=obj.num_values)
        images, counts = batch()
        ep = policy(images, obj.num_steps(counts, 4), label_mode=obj.label_mode)
        out = obj(ep, counts)
        policy_loss = out["location_loss"] - obj.entropy_weight * out["entropy"]
        if label_loss == "reinforce":
            policy_loss = policy_loss + out["label_loss"]
        names = [n for n, _ in policy.named_parameters()]
        grads[detach] = dict(zip(names, torch.autograd.grad(policy_loss, list(policy.parameters()), allow_unused=True)))
    for name in ("saliency.net.0.weight", "saliency.net.2.weight"):
        g = grads[True][name]
        assert g is None or g.abs().sum() == 0, f"{name} gets policy gradient with detach_saliency on"
        assert grads[False][name] is not None and grads[False][name].abs().sum() > 0, name
    assert grads[True]["backbone.features.0.weight"].abs().sum() > 0  # the policy still trains the backbone it reads
    # "map" (the default) detaches the log-map term only: the densities the glimpses read pass the gradient
    assert small_policy(detach_saliency="map").detach_density is False and small_policy(detach_saliency="map").meta.detach_saliency
    assert small_policy(detach_saliency="all").detach_density and not small_policy(detach_saliency="none").meta.detach_saliency
    with pytest.raises(ValueError, match="detach_saliency"):
        small_policy(detach_saliency="some")


def test_zero_glimpses_train_a_finite_loss():
    # k = 0: the meta step alone; no glimpse entropies to average (an empty mean was NaN)
    policy = small_policy(k=0)
    images, counts = batch()
    obj = GlimpseObjective()
    ep = policy(images, obj.num_steps(counts, 4))
    assert ep.glimpse_entropy.shape[-1] == 0 and torch.equal(ep.location_entropy(), ep.meta_entropy)
    out = obj(ep, counts)
    assert all(torch.isfinite(v) for v in out.values()), {k: float(v) for k, v in out.items()}
    out["loss"].backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in policy.parameters())
    # with k glimpses the entropy is the meta entropy plus every glimpse's, as the log-probabilities are summed
    ep = small_policy(k=3)(images, 2)
    assert torch.allclose(ep.location_entropy(), ep.meta_entropy + ep.glimpse_entropy.sum(-1))


def test_stop_head_decides_termination_and_training_rollouts_run_on():
    policy = small_policy(stop_head=True).eval()
    images, _ = batch()
    with torch.no_grad():
        policy.stop.bias.fill_(-100.0)  # never stop
        ep = policy(images, 3, location_mode="greedy", label_mode="greedy")
        assert ep.stop_logits.shape == (6, 3) and (ep.labels < 10).all()  # labels among the classes only
        assert (ep.label_logits[..., 10] == STOP_MASKED).all()  # their distribution: the K classes
        assert (ep.label_logits.softmax(-1)[..., 10] == 0).all()
        policy.stop.bias.fill_(100.0)  # stop at once
        ep = policy(images, 3, location_mode="greedy", label_mode="greedy")
        assert (ep.labels == 10).all()
        ep = policy(images, 3, location_mode="greedy", label_mode="greedy", head_stops=False)
        assert (ep.labels < 10).all()  # training rollouts: the head is taught by its loss, it never ends them
    assert small_policy().stop is None and small_policy().eval()(images, 2).stop_logits is None


def test_replay_reproduces_a_sampled_episode():
    policy = small_policy().eval()
    images, _ = batch()
    ep = policy(images, 3, location_mode="sample", label_mode="sample")
    again = policy(images, 3, actions=ep.actions())
    assert torch.equal(again.labels, ep.labels) and torch.equal(again.glimpse_locations, ep.glimpse_locations)
    assert torch.allclose(again.label_logits, ep.label_logits, atol=1e-6)
    assert torch.allclose(again.meta_logp, ep.meta_logp, atol=1e-6)


def test_inhibition_of_return_suppresses_the_attended_cell():
    policy = small_policy().eval()
    images, _ = batch()
    ep = policy(images, 3, location_mode="greedy")
    first = ep.meta_locations[:, 0]
    # the mask is 1 at its centre, so the map there is zero after step 1: never chosen again
    assert torch.allclose(ep.attention_masks[:, 0].gather(1, first[:, None]), torch.ones(6, 1))
    assert (ep.meta_locations[:, 1] != first).all()
    assert (ep.saliency_mass[:, 1] < ep.saliency_mass[:, 0]).all()


def test_gaussian_mixture_mask_matches_a_convolution_of_the_one_hot_location():
    att = GaussianMixtureAttention((1.0, 2.5))
    h = w = 9
    loc = torch.tensor([4 * w + 3])
    mask = att(loc, h, w).view(h, w)
    weights = torch.softmax(att.mix_logits, 0)
    r = torch.arange(-h + 1, h, dtype=torch.float32)
    d2 = r[:, None] ** 2 + r[None, :] ** 2
    kernel = sum(wt * torch.exp(-d2 / (2 * s**2)) for wt, s in zip(weights, att.sigmas))
    one_hot = torch.zeros(1, 1, h, w)
    one_hot[0, 0, 4, 3] = 1
    conv = torch.nn.functional.conv2d(one_hot, kernel.flip(0, 1)[None, None], padding=h - 1)
    assert torch.allclose(mask, conv[0, 0], atol=1e-6)
    assert mask.max() == pytest.approx(1.0) and mask[4, 3] == mask.max()


def test_bad_images_and_modes_raise_clear_errors():
    policy = small_policy()
    with pytest.raises(ValueError, match="in_channels"):
        policy(torch.rand(2, 3, 48, 48), 2)
    with pytest.raises(ValueError, match="attention_sigmas"):
        GaussianMixtureAttention((1.0, 9.0))
    with pytest.raises(ValueError, match="location_mode"):
        policy(torch.rand(2, 1, 48, 48), 2, location_mode="beam")


@pytest.mark.parametrize("make", [
    lambda: ConvBackbone(),
    lambda: ResNetBackbone("resnet18", stages=3, in_channels=1),
])
def test_cell_centres_are_the_receptive_field_centres(make):
    # the input pixels a cell's features depend on are centred where cell_centres puts the cell
    torch.manual_seed(0)
    backbone = make().eval()
    size = 200 if isinstance(backbone, ConvBackbone) else 320  # cells far from the borders, which skew the centroid
    image = torch.rand(1, backbone.in_channels, size, size, requires_grad=True)
    features = backbone(image)
    h, w = features.shape[-2:]
    row, col = h // 2, w // 2 - 3
    (grad,) = torch.autograd.grad(features[0, :, row, col].pow(2).sum(), image)
    weight = grad.abs().sum((0, 1))
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    centroid = torch.stack([(weight * xs).sum(), (weight * ys).sum()]) / weight.sum()
    centre = cell_centres(torch.tensor(row * w + col), (h, w), (size, size), backbone.stride)
    assert torch.allclose(centroid, centre, atol=1.0), (centroid, centre)
    even = cell_centres(torch.tensor(row * w + col), (h, w), (size, size))  # the even split is off
    assert (even - centroid).abs().max() > 1.5


def _randomise_batch_norms(module):
    g = torch.Generator().manual_seed(3)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize("make, folded", [
    (lambda: ConvBackbone(1, (8, 8, 8), (2, 2, 2), (1, 1, 2)), 3),
    (lambda: ResNetBackbone("resnet18", stages=3, in_channels=1), 15),  # stem + 2 x 2 + 2 x (2 x 2 + downsample)
])
def test_inference_copy_folds_batch_norms_and_replays_the_same_episode(make, folded):
    from glimpse.models.inference import fold_batch_norms, inference_copy

    torch.manual_seed(0)
    policy = GlimpsePolicy(make(), num_classes=10, hidden=32, key_dim=16, label_dim=8)
    _randomise_batch_norms(policy)
    policy.train()
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    images = torch.rand(4, 1, 64, 64)
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norms(policy)
    fast = inference_copy(policy)
    assert policy.training and all(torch.equal(v, policy.state_dict()[k]) for k, v in before.items())  # untouched
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules()) == 0
    assert fold_batch_norms(inference_copy(policy)) == 0 and fold_batch_norms(policy.eval()) == folded
    policy = GlimpsePolicy(make(), num_classes=10, hidden=32, key_dim=16, label_dim=8)  # unfolded again
    policy.load_state_dict(before)
    policy.eval()
    fast = inference_copy(policy)
    # the same names: the CAM layer of the copy is the original's
    assert [n for n, _ in fast.named_modules()] == [n for n, _ in policy.named_modules()]
    with torch.no_grad():
        episode = policy(images, 3, location_mode="greedy", label_mode="greedy")
        replayed = fast(images, 3, location_mode="greedy", label_mode="greedy", actions=episode.actions())
    assert torch.allclose(replayed.label_logits, episode.label_logits, atol=1e-4)
    assert torch.allclose(replayed.class_density, episode.class_density, rtol=1e-4, atol=1e-6)
    x = images.clone().requires_grad_(True)
    (g_fast,) = torch.autograd.grad(fast(x, 2, location_mode="greedy", label_mode="greedy",
                                         actions=episode.actions()).label_logits[:, 1, 0].sum(), x)
    x = images.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(policy(x, 2, location_mode="greedy", label_mode="greedy",
                                      actions=episode.actions()).label_logits[:, 1, 0].sum(), x)
    assert torch.allclose(g_fast, g, atol=1e-5 * g.abs().max())


@pytest.mark.parametrize("k", [0, 2])
def test_labels_only_replay_gives_the_same_label_logits_and_gradients(k):
    policy = small_policy(k=k).eval()
    images, _ = batch()
    with torch.no_grad():
        episode = policy(images, 3, location_mode="sample", label_mode="sample")
    logits = {}
    for only in (False, True):
        x = images.clone().requires_grad_(True)
        replay = policy(x, 3, location_mode="greedy", label_mode="greedy", actions=episode.actions(), labels_only=only)
        (grad,) = torch.autograd.grad(replay.label_logits[:, :, 1].sum(), x)
        logits[only] = (replay.label_logits.detach(), grad)
    assert torch.allclose(logits[True][0], episode.label_logits, atol=1e-5)
    assert torch.allclose(logits[True][0], logits[False][0]) and torch.allclose(logits[True][1], logits[False][1])
    with pytest.raises(ValueError, match="labels_only needs the locations forced"):
        policy(images, 3, labels_only=True, actions={"labels": episode.labels})


def test_module_convolutions_are_channels_last_by_default_and_train_the_same_function(tmp_path):
    from glimpse.module import GlimpseModule

    policy = {"_target_": "glimpse.models.policy.GlimpsePolicy", "hidden": 16, "key_dim": 8, "label_dim": 4,
              "backbone": {"_target_": "glimpse.models.backbone.ConvBackbone", "channels": [8, 8], "strides": [2, 2],
                           "dilations": [1, 1]}}
    modules = {}
    for layout in (True, False):
        torch.manual_seed(0)
        modules[layout] = GlimpseModule(policy, {}, num_classes=10, class_names=[str(c) for c in range(10)], max_steps=3,
                                        channels_last=layout)
    weight = {k: m.policy.backbone.features[3].weight for k, m in modules.items()}  # 8 input channels
    assert weight[True].is_contiguous(memory_format=torch.channels_last) and not weight[True].is_contiguous()
    assert weight[False].is_contiguous() and torch.equal(weight[True], weight[False])
    images = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        episodes = {k: m.eval().predict_episode(images) for k, m in modules.items()}
    assert torch.allclose(episodes[True].label_logits, episodes[False].label_logits, atol=1e-5)
    # a checkpoint of either layout loads into the other
    modules[False].load_state_dict(modules[True].state_dict())
    assert modules[False].policy.backbone.features[3].weight.is_contiguous()


def test_rollout_and_replay_are_separate_modes():
    policy = small_policy().eval()
    images, counts = batch()
    with torch.no_grad():
        torch.manual_seed(0)
        ep = policy.rollout(images, 3, location_mode="sample", label_mode="sample")
        again = policy.replay(images, 3, ep.actions())
        assert torch.equal(again.labels, ep.labels) and torch.equal(again.meta_locations, ep.meta_locations)
        assert torch.allclose(again.label_logits, ep.label_logits) and torch.allclose(again.meta_logp, ep.meta_logp)
        with pytest.raises(ValueError, match="every decision"):
            policy.replay(images, 3, {"meta_locations": ep.meta_locations})
        # a label roll-in (teacher forcing) is part of a rollout: the locations are still the model's
        forced = torch.full_like(ep.labels, 3)
        taught = policy(images, 3, location_mode="greedy", actions={"labels": forced})
        assert torch.equal(taught.labels, forced)
        # the first step sees no earlier label, so its location is the greedy rollout's
        assert torch.equal(taught.meta_locations[:, 0], policy.rollout(images, 1, location_mode="greedy").meta_locations[:, 0])
