"""Localisation metrics on hand-made episodes and boxes with known answers."""
import math

import torch

from glimpse.geometry import claim_hits
from glimpse.localisation import LocalisationMetrics, baseline_episode, class_cover, localisation_scores
from glimpse.metrics import bootstrap_interval
from glimpse.models.attention import GaussianMixtureAttention
from glimpse.models.policy import Episode

K, STOP = 10, 10
# a 2 x 2 grid on a 100 x 100 image: cell centres (25, 25), (75, 25), (25, 75), (75, 75)
BOXES = torch.tensor([[[0.0, 0.0, 50.0, 50.0], [50.0, 0.0, 100.0, 50.0], [0.0, 50.0, 50.0, 100.0], [0, 0, 0, 0]]])
BOX_LABELS = torch.tensor([[3, 3, 5, -1]])
COUNTS = torch.zeros(1, K, dtype=torch.long)
COUNTS[0, 3], COUNTS[0, 5] = 2, 1


def episode(labels, glimpses, masks):
    t = len(labels)
    z = torch.zeros(1, t)
    return Episode(
        saliency_map=torch.zeros(1, 2, 2), class_density=torch.zeros(1, K, 2, 2),
        meta_locations=torch.tensor([glimpses]), meta_logp=z, meta_entropy=z,
        attention_masks=torch.tensor([masks], dtype=torch.float32), saliency_mass=z,
        glimpse_locations=torch.tensor([glimpses])[..., None], glimpse_logp=z[..., None], glimpse_entropy=z[..., None],
        label_logits=torch.zeros(1, t, K + 1), labels=torch.tensor([labels]), values=z, grid=(2, 2),
    )


def one_hot(cell, weight=1.0):
    mask = [0.0] * 4
    mask[cell] = weight
    return mask


def test_hits_coverage_and_energy_by_hand():
    # 3, 3, 5 are all right; the second 3 looks at the box the first one claimed: a miss
    ep = episode([3, 3, 5, STOP], [0, 0, 2, 3], [one_hot(0), [0.5, 0.0, 0.0, 0.5], one_hot(2), one_hot(3)])
    metric = LocalisationMetrics(max_steps=4)
    metric.update(ep, COUNTS, BOXES, BOX_LABELS, (100, 100))
    out = metric.compute()
    assert math.isclose(out["localisation/glimpse_hit_rate"].item(), 2 / 3, rel_tol=1e-6)
    assert out["localisation/glimpse_hit_rate/step_1"].item() == 0.0
    assert math.isclose(out["localisation/object_coverage"].item(), 2 / 3, rel_tol=1e-6)  # box 1 never visited
    assert math.isclose(out["localisation/attention_energy_in_box"].item(), (1 + 0.5 + 1) / 3, rel_tol=1e-6)
    assert math.isnan(out["localisation/attention_energy_in_box/step_3"].item())  # STOP emits no label


def test_wrong_labels_and_labels_of_another_class_never_hit():
    # 5 looks at a box of class 3; 7 is not in the multiset, so it is not scored
    ep = episode([5, 7, STOP], [0, 2, 3], [one_hot(0), one_hot(2), one_hot(3)])
    metric = LocalisationMetrics(max_steps=3)
    metric.update(ep, COUNTS, BOXES, BOX_LABELS, (100, 100))
    out = metric.compute()
    assert out["localisation/glimpse_hit_rate"].item() == 0.0  # 1 scored step (the 5), no hit
    assert out["localisation/attention_energy_in_box"].item() == 0.0


def test_two_steps_never_claim_the_same_box():
    boxes = torch.tensor([[[0.0, 0.0, 100.0, 100.0], [40.0, 40.0, 60.0, 60.0]]])
    labels = torch.tensor([[3, 3]])
    centres = torch.tensor([[[50.0, 50.0], [50.0, 50.0], [50.0, 50.0]]])  # inside both boxes, three times
    hits = claim_hits(centres, torch.tensor([[3, 3, 3]]), torch.ones(1, 3, dtype=torch.bool), boxes, labels)
    assert hits.tolist() == [[True, True, False]]


def test_class_cover_counts_overlapping_boxes_once():
    boxes = torch.tensor([[[0.0, 0.0, 50.0, 50.0], [25.0, 0.0, 50.0, 50.0], [0.0, 0.0, 25.0, 100.0]]])
    cover = class_cover(boxes, torch.tensor([[1, 1, 2]]), torch.tensor([[1, 2]]), (2, 2), (100, 100))
    assert torch.allclose(cover[0, 0], torch.tensor([1.0, 0.0, 0.0, 0.0]))
    assert torch.allclose(cover[0, 1], torch.tensor([0.5, 0.0, 0.5, 0.0]))


def test_saliency_baseline_follows_the_map_with_inhibition_of_return():
    ep = episode([3, 3, 5], [0, 0, 0], [one_hot(0)] * 3)
    ep.saliency_map = torch.tensor([[[0.1, 0.9], [0.5, 0.0]]])
    attention = GaussianMixtureAttention((0.1,))
    base = baseline_episode(ep, "saliency", attention)
    assert base.meta_locations.tolist() == [[1, 2, 0]]
    assert torch.equal(base.glimpse_locations[..., 0], base.meta_locations)
    assert torch.equal(base.labels, ep.labels)
    rand = baseline_episode(ep, "random", attention, torch.Generator().manual_seed(0))
    assert rand.glimpse_locations.shape == ep.glimpse_locations.shape and int(rand.meta_locations.max()) < 4


def test_an_image_without_objects_is_scored_not_skipped():
    from glimpse.metrics import MultisetMetrics

    ep = episode([STOP, STOP], [0, 1], [one_hot(0), one_hot(1)])
    empty_counts, no_boxes, no_labels = torch.zeros(1, K, dtype=torch.long), torch.zeros(1, 2, 4), torch.full((1, 2), -1)
    metric = LocalisationMetrics(max_steps=2)
    metric.update(ep, empty_counts, no_boxes, no_labels, (100, 100))
    out = metric.compute()
    assert math.isnan(out["localisation/object_coverage"].item())  # nothing to cover: no value, not a fake 1 or 0
    multiset_metric = MultisetMetrics()
    multiset_metric.update(torch.zeros(1, K, dtype=torch.long), empty_counts)
    assert multiset_metric.compute()["multiset/exact_match"].item() == 1.0  # right to stop at once: counted


def test_per_image_scores_sum_to_the_metric():
    ep = episode([3, 3, 5, STOP], [0, 0, 2, 3], [one_hot(0), [0.5, 0.0, 0.0, 0.5], one_hot(2), one_hot(3)])
    scores = localisation_scores(ep, COUNTS, BOXES, BOX_LABELS, (100, 100))
    assert scores["hits"].tolist() == [[True, False, True, False]]  # the second 3 finds its box claimed
    assert scores["scored"].tolist() == [[True, True, True, False]]
    assert scores["covered"].tolist() == [2] and scores["objects"].tolist() == [3]
    assert torch.allclose(scores["energy"], torch.tensor([[1.0, 0.5, 1.0, 0.0]]))


def test_bootstrap_interval_of_a_ratio_of_sums():
    # a constant per-image ratio has no spread, whatever the resample
    low, high = bootstrap_interval(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([2.0, 4.0, 6.0, 8.0]))
    assert math.isclose(low, 0.5) and math.isclose(high, 0.5)
    # 60 hits in 100 images: the interval holds 0.6, is about +-0.1 wide, and is repeatable
    hits = torch.tensor([1.0] * 60 + [0.0] * 40)
    low, high = bootstrap_interval(hits, torch.ones(100))
    assert 0.48 < low < 0.6 < high < 0.72
    assert (low, high) == bootstrap_interval(hits, torch.ones(100))
    # images with nothing to score weigh nothing: the micro average, not the mean of per-image rates
    low, high = bootstrap_interval(torch.tensor([3.0, 0.0, 1.0]), torch.tensor([3.0, 0.0, 1.0]))
    assert low == high == 1.0
    assert all(math.isnan(v) for v in bootstrap_interval(torch.tensor([1.0]), torch.tensor([1.0])))
