"""The objectives on hand-worked episodes: multiset loss with roll-in, REINFORCE terms."""
import math

import torch

from glimpse.models.policy import Episode
from glimpse.objectives import GlimpseObjective

K = 2  # two classes; index 2 is STOP


def episode(label_logits, labels, values=None, meta_logp=None):
    b, t, _ = label_logits.shape
    z = torch.zeros(b, t)
    return Episode(
        saliency_map=torch.zeros(b, 3, 3), class_density=torch.zeros(b, K, 3, 3),
        meta_locations=torch.zeros(b, t, dtype=torch.long), meta_logp=z if meta_logp is None else meta_logp,
        meta_entropy=z, attention_masks=torch.zeros(b, t, 9), saliency_mass=z,
        glimpse_locations=torch.zeros(b, t, 0, dtype=torch.long), glimpse_logp=torch.zeros(b, t, 0),
        glimpse_entropy=torch.zeros(b, t, 0), label_logits=label_logits, labels=labels,
        values=z if values is None else values, grid=(3, 3),
    )


def test_multiset_loss_by_hand_with_roll_in_after_a_wrong_prediction():
    # target {0, 1}; greedy labels 0 (right), 0 (wrong: 0 is used up), STOP
    logits = torch.tensor([[[2.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 3.0]]])
    labels = torch.tensor([[0, 0, 2]])
    out = GlimpseObjective(count_weight=0.0)(episode(logits, labels), torch.tensor([[1, 1]]))
    ce0 = math.log(math.e**2 + 2) - 1.0  # oracle (1/2, 1/2, 0)
    ce1 = math.log(math.e + 2)  # after the right 0: oracle (0, 1, 0); the wrong 0 changes nothing
    ce2 = math.log(2 + math.e**3)  # still (0, 1, 0): the 1 was never named, so not STOP
    assert math.isclose(out["label_loss"].item(), (ce0 + ce1 + ce2) / 3, rel_tol=1e-5)


def test_multiset_loss_targets_stop_once_everything_is_named():
    logits = torch.zeros(1, 3, 3)
    logits[0, 2, 2] = 5.0  # confident STOP at the termination step
    out = GlimpseObjective(count_weight=0.0)(episode(logits, torch.tensor([[0, 0, 2]])), torch.tensor([[2, 0]]))
    ce_steps = math.log(3) + math.log(3) + (math.log(2 + math.e**5) - 5)
    assert math.isclose(out["label_loss"].item(), ce_steps / 3, rel_tol=1e-5)


def test_reinforce_label_loss_uses_discounted_advantage():
    # target {1}; sampled: 0 (wrong, -1), then 1 (right, +1), then STOP (right, +1)
    logits = torch.zeros(1, 3, 3, requires_grad=True)
    values = torch.tensor([[0.5, 0.0, 0.0]])
    obj = GlimpseObjective(label_loss="reinforce", location_reward="sampled", gamma=0.5, count_weight=0.0, entropy_weight=0.0)
    out = obj(episode(logits, torch.tensor([[0, 1, 2]]), values=values), torch.tensor([[0, 1]]))
    returns = [-1 + 0.5 * (1 + 0.5 * 1), 1 + 0.5 * 1, 1.0]
    adv = [returns[0] - 0.5, returns[1], returns[2]]
    expected = -sum(a * math.log(1 / 3) for a in adv) / 3
    assert math.isclose(out["label_loss"].item(), expected, rel_tol=1e-5)
    assert math.isclose(out["reward"].item(), 1.0, rel_tol=1e-6)  # -1 + 1 + 1


def test_location_term_is_advantage_times_log_prob_and_baseline_is_detached():
    logits = torch.zeros(1, 2, 3)
    logits[0, 0, 1] = 10.0  # nearly sure of label 1 at step 0: expected reward ~ +1
    meta_logp = torch.tensor([[-0.7, -0.2]], requires_grad=True)
    values = torch.tensor([[0.25, 0.0]], requires_grad=True)
    obj = GlimpseObjective(count_weight=0.0, entropy_weight=0.0)
    out = obj(episode(logits, torch.tensor([[1, 2]]), values=values, meta_logp=meta_logp), torch.tensor([[0, 1]]))
    # only step 0 has something left to find; its advantage is r - V
    r = (math.exp(10) - 2) / (math.exp(10) + 2)
    assert math.isclose(out["location_loss"].item(), -(r - 0.25) * -0.7, rel_tol=1e-4)
    (g_logp,) = torch.autograd.grad(out["location_loss"], meta_logp, retain_graph=True)
    assert math.isclose(g_logp[0, 0].item(), -(r - 0.25), rel_tol=1e-4) and g_logp[0, 1] == 0
    (g_value,) = torch.autograd.grad(out["location_loss"], values, allow_unused=True, materialize_grads=True)
    assert g_value.abs().sum() == 0  # the policy term never trains the baseline


def test_count_loss_teaches_the_saliency_map_counts():
    ep = episode(torch.zeros(1, 2, 3), torch.tensor([[0, 2]]))
    ep.class_density = torch.zeros(1, K, 3, 3)
    ep.class_density[0, 0, 1, 1] = 1.0
    out = GlimpseObjective()(ep, torch.tensor([[1, 0]]))
    assert out["count_loss"].item() == 0.0
    out = GlimpseObjective()(ep, torch.tensor([[3, 1]]))
    assert math.isclose(out["count_loss"].item(), (4 + 1) / 2)


def test_bad_objective_values_are_named():
    import pytest

    with pytest.raises(ValueError, match="objective.label_loss"):
        GlimpseObjective(label_loss="ctc")
    with pytest.raises(ValueError, match="objective.gamma"):
        GlimpseObjective(gamma=1.5)


def test_attended_oracle_teaches_the_label_under_the_attention_mask():
    # target {0, 1}; class 0's density sits in cell 0, class 1's in cell 8; step 0 attends cell 8
    ep = episode(torch.zeros(1, 3, 3), torch.tensor([[1, 0, 2]]))
    ep.class_density[0, 0, 0, 0] = 1.0
    ep.class_density[0, 1, 2, 2] = 1.0
    ep.attention_masks[0, 0, 8] = 1.0
    ep.attention_masks[0, 1, 0] = 1.0
    obj = GlimpseObjective(count_weight=0.0, peak_weight=0.0, oracle="attended")
    out = obj(ep, torch.tensor([[1, 1]]))
    # step 0 target (0, 1, 0), step 1 (1, 0, 0), step 2 STOP: each cross entropy is log 3
    assert math.isclose(out["label_loss"].item(), math.log(3), rel_tol=1e-6)
    uniform = GlimpseObjective(count_weight=0.0, peak_weight=0.0)(ep, torch.tensor([[1, 1]]))
    assert math.isclose(uniform["label_loss"].item(), math.log(3), rel_tol=1e-6)  # uniform logits: same loss
    logits = torch.zeros(1, 3, 3)
    logits[0, 0, 1] = 4.0  # confident in the attended class at step 0
    ep.label_logits = logits
    attended = obj(ep, torch.tensor([[1, 1]]))["label_loss"]
    uniform = GlimpseObjective(count_weight=0.0, peak_weight=0.0)(ep, torch.tensor([[1, 1]]))["label_loss"]
    assert attended < uniform


def test_attention_reward_pays_for_unnamed_density_under_the_mask():
    ep = episode(torch.zeros(1, 2, 3), torch.tensor([[0, 2]]))
    ep.class_density[0, 0, 0, 0] = 1.0
    ep.attention_masks[0, 0, 0] = 0.5  # half of the unnamed class-0 object under step 0's mask
    ep.attention_masks[0, 1, 0] = 1.0  # step 1 looks at it again, after it was named
    obj = GlimpseObjective(count_weight=0.0, peak_weight=0.0, entropy_weight=0.0, attention_reward=2.0, location_reward="sampled")
    out = obj(ep, torch.tensor([[1, 0]]))
    # rewards: step 0 label right (+1) + 2 * 0.5; step 1 is past the termination step (not scored)
    assert math.isclose(out["location_reward"].item(), 2.0, rel_tol=1e-6)
