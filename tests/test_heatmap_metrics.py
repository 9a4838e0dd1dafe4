"""Heatmap metrics on hand-made maps and boxes with known answers."""
import math

import torch

from glimpse.heatmaps.scores import (
    blur, energy_pointing_game, per_class_mean, perturbation_auc, pointing_game, pointing_tolerance,
)

BOX = torch.tensor([[[20.0, 20.0, 40.0, 40.0]]])
VALID = torch.ones(1, 1, dtype=torch.bool)


def peak(x, y, size=64):
    m = torch.zeros(1, size, size)
    m[0, y, x] = 1.0
    return m


def test_pointing_game_inside_outside_and_tolerance():
    assert pointing_game(peak(30, 30), BOX, VALID, 0.0).item()
    assert not pointing_game(peak(5, 5), BOX, VALID, 0.0).item()
    # 5.5 px left of the box: a hit only with a tolerance of at least 5.5 px
    assert not pointing_game(peak(14, 30), BOX, VALID, 5.0).item()
    assert pointing_game(peak(14, 30), BOX, VALID, 6.0).item()
    assert not pointing_game(peak(30, 30), BOX, torch.zeros(1, 1, dtype=torch.bool), 100.0).item()  # no valid box
    assert math.isclose(pointing_tolerance((224, 300)), 15.0) and math.isclose(pointing_tolerance((100, 100)), 15 * 100 / 224)


def test_energy_pointing_game_share_inside_and_flat_maps_give_zero():
    m = torch.zeros(1, 64, 64)
    m[0, 30, 30] = 3.0  # inside
    m[0, 5, 5] = 1.0  # outside
    m[0, 50, 50] = -10.0  # negative mass does not count
    assert math.isclose(energy_pointing_game(m, BOX, VALID).item(), 0.75, rel_tol=1e-6)
    flat = energy_pointing_game(torch.zeros(1, 64, 64), BOX, VALID)
    assert flat.item() == 0.0 and not torch.isnan(flat).any()


def test_per_class_mean_averages_classes_not_targets():
    per_class, overall = per_class_mean(torch.tensor([1.0, 1.0, 1.0, 0.0]), torch.tensor([0, 0, 0, 2]), 3)
    assert per_class[0].item() == 1.0 and math.isnan(per_class[1].item()) and per_class[2].item() == 0.0
    assert overall.item() == 0.5  # (1 + 0) / 2, not 3 / 4


def test_deletion_of_the_right_pixels_beats_deletion_of_an_inverted_map():
    images = torch.zeros(1, 1, 16, 16)
    images[0, 0, 4:8, 4:8] = 1.0  # the evidence

    def score(x, rows):  # probability = share of the evidence still visible
        return x[:, 0, 4:8, 4:8].mean((-2, -1))

    perfect = images[:, 0].clone()
    inverted = 1 - perfect
    good = perturbation_auc(score, images, perfect, steps=16)
    bad = perturbation_auc(score, images, inverted, steps=16)
    assert good["deletion"].item() < bad["deletion"].item()
    assert good["insertion"].item() > bad["insertion"].item()
    # the perfect map removes all 16 evidence pixels in the first 1/16 of the 256 pixels
    assert math.isclose(good["deletion"].item(), 0.5 / 16, rel_tol=1e-5)


def test_deletion_and_insertion_score_each_distinct_image_once_and_equal_scoring_all():
    g = torch.Generator().manual_seed(0)
    images = torch.zeros(3, 1, 16, 16)
    images[:, :, 4:8, 4:8] = torch.rand(3, 1, 4, 4, generator=g) + 0.5  # objects on a black background
    weights = torch.rand(1, 1, 16, 16, generator=g)
    scored_rows = []

    def score(x, rows):  # any deterministic function of the image
        scored_rows.append(len(rows))
        return torch.sigmoid((x * weights).sum((1, 2, 3)) - 2.0)

    perfect = torch.zeros(3, 16, 16)
    perfect[:, 4:8, 4:8] = 1.0
    maps = torch.cat([perfect[:1], torch.rand(2, 16, 16, generator=g)])  # one perfect map, two random
    steps = 8
    auc = perturbation_auc(score, images, maps, steps=steps)
    # the reference: every point of every curve scored
    rank = torch.empty(3, 256, dtype=torch.long).scatter_(
        1, maps.flatten(1).sort(dim=-1, descending=True, stable=True).indices, torch.arange(256).expand(3, -1)).view(3, 1, 16, 16)
    blurred = blur(images)
    for name, start, end in (("deletion", images, torch.zeros_like(images)), ("insertion", blurred, images)):
        curve = torch.stack([score(torch.where(rank < round(f * 256), end, start), torch.arange(3)) for f in torch.linspace(0, 1, steps + 1).tolist()], 1)
        assert torch.allclose(auc[name], torch.trapezoid(curve, dx=1 / steps, dim=1), atol=1e-6), name
    scored_rows.clear()
    perturbation_auc(score, images[:1], maps[:1], steps=steps)
    # the perfect map deletes all 16 object pixels by 1/8 of the 256: deletion's later points are
    # the all-zero image, scored once as the endpoint
    assert sum(scored_rows) < 3 + 2 * (steps - 1)


def test_replay_score_stops_early_and_equals_the_full_replay():
    from types import SimpleNamespace

    from glimpse.heatmaps.replay import replay_score
    from glimpse.heatmaps.targets import right_label_targets
    from glimpse.models.backbone import ConvBackbone
    from glimpse.models.policy import GlimpsePolicy

    torch.manual_seed(0)
    policy = GlimpsePolicy(ConvBackbone(1, (8, 8, 8), (2, 2, 2), (1, 1, 2)), num_classes=3, hidden=16, key_dim=8,
                           label_dim=4).eval()
    images = torch.rand(6, 1, 32, 32)
    with torch.no_grad():
        episode = policy(images, 4, location_mode="greedy", label_mode="greedy")
    counts = torch.nn.functional.one_hot(episode.labels.clamp(max=2), 4)[..., :3].sum(1)  # every emitted label right
    targets = right_label_targets(episode, counts)
    assert len(targets) and torch.equal(targets[:, 1], targets[:, 1].sort().values)  # ordered by step
    rows = torch.arange(len(targets))
    scored = replay_score(SimpleNamespace(policy=policy), episode, targets)(images[targets[:, 0]], rows)
    with torch.no_grad():
        full = policy(images[targets[:, 0]], 4, location_mode="greedy", label_mode="greedy",
                      actions={k: v[targets[:, 0]] for k, v in episode.actions().items()})
    expected = full.label_logits[rows, targets[:, 1]].softmax(-1)[rows, targets[:, 2]]
    assert torch.allclose(scored, expected, atol=1e-6)
    # what HeatmapEvaluation takes as deletion's first point: the recorded episode's own probability
    recorded = episode.label_logits[targets[:, 0], targets[:, 1]].softmax(-1).gather(1, targets[:, 2:3])[:, 0]
    assert torch.allclose(recorded, expected, atol=1e-6)
    first = (targets[:, 1] == 0).nonzero()[:, 0]  # rows of step 0 need one step only
    if len(first):
        assert torch.allclose(replay_score(SimpleNamespace(policy=policy), episode, targets)(images[targets[first, 0]], first),
                              expected[first], atol=1e-6)
