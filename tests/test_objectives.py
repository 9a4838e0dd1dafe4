"""The objectives on hand-worked episodes: multiset loss with roll-in, REINFORCE terms."""
import dataclasses
import math

import pytest
import torch

from glimpse.models.policy import Episode
from glimpse.objectives import GlimpseObjective

K = 2  # two classes; index 2 is STOP


def episode(label_logits, labels, values=None, meta_logp=None, label_values=None, stop_logits=None):
    b, t, _ = label_logits.shape
    z = torch.zeros(b, t)
    return Episode(
        saliency_map=torch.zeros(b, 3, 3), class_density=torch.zeros(b, K, 3, 3),
        meta_locations=torch.zeros(b, t, dtype=torch.long), meta_logp=z if meta_logp is None else meta_logp,
        meta_entropy=z, attention_masks=torch.zeros(b, t, 9), saliency_mass=z,
        glimpse_locations=torch.zeros(b, t, 0, dtype=torch.long), glimpse_logp=torch.zeros(b, t, 0),
        glimpse_entropy=torch.zeros(b, t, 0), label_logits=label_logits, labels=labels,
        values=z if values is None else values, grid=(3, 3),
        label_values=z if label_values is None else label_values, stop_logits=stop_logits,
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
    out = obj(episode(logits, torch.tensor([[0, 1, 2]]), label_values=values), torch.tensor([[0, 1]]))
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


# -- objective variants -----------------------------------------------------------------------------

from glimpse import multiset  # noqa: E402
from glimpse.objectives import OracleRollIn  # noqa: E402

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_default_objective_loss_is_unchanged_on_a_fixed_batch():
    # numbers of main's GlimpseObjective (before the variants) on this seeded batch
    from omegaconf import OmegaConf

    from glimpse.models.backbone import ConvBackbone
    from glimpse.models.policy import GlimpsePolicy

    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "objective" / "multiset.yaml"))
    torch.manual_seed(0)
    policy = GlimpsePolicy(ConvBackbone(1, (8, 8, 8), (2, 2, 2), (1, 1, 2)), num_classes=10, hidden=32, key_dim=16, label_dim=8)
    images = torch.rand(4, 1, 48, 48, generator=torch.Generator().manual_seed(1))
    counts = torch.tensor([[1, 0, 0, 2, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1, 0, 0, 0, 0],
                           [0, 1, 0, 0, 1, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0, 0, 0, 0, 3]])
    obj = GlimpseObjective(**(cfg | {"glimpse_reward": 0.0}))  # the numbers predate the glimpse reward
    torch.manual_seed(2)
    ep = policy(images, obj.num_steps(counts, 5), location_mode="sample", label_mode=obj.label_mode)
    out = obj(ep, counts)
    main = {"label_loss": 2.3579726, "location_loss": -3.5185177, "value_loss": 0.3431781, "entropy": 6.4254813,
            "count_loss": 0.3980113, "peak_loss": 0.1718136, "loss": -0.4255567, "reward": -2.5, "location_reward": -0.6588345}
    for key, value in main.items():
        assert math.isclose(out[key].item(), value, rel_tol=1e-5, abs_tol=1e-6), key


def test_oracle_distribution_with_repeated_labels_by_hand():
    # target {0, 0, 1}; greedy roll-in 0, 0, 1, STOP: oracles (2/3, 1/3, 0), (1/2, 1/2, 0), (0, 1, 0), STOP
    logits = torch.zeros(1, 4, 3)
    logits[0, 0, 0] = 1.0
    labels = torch.tensor([[0, 0, 1, 2]])
    out = GlimpseObjective(count_weight=0.0)(episode(logits, labels), torch.tensor([[2, 1]]))
    ce = [math.log(math.e + 2) - 2 / 3, math.log(3), math.log(3), math.log(3)]
    assert math.isclose(out["label_loss"].item(), sum(ce) / 4, rel_tol=1e-6)
    oracle = multiset.oracle_policy(torch.tensor([[2, 1], [0, 0]]))
    assert torch.allclose(oracle, torch.tensor([[2 / 3, 1 / 3, 0.0], [0.0, 0.0, 1.0]]))


def test_oracle_roll_in_draws_only_remaining_labels_then_stop():
    torch.manual_seed(0)
    targets = torch.tensor([[2, 1], [0, 1]])
    roll_in = OracleRollIn(targets, attended=False)
    mask, density = torch.zeros(2, 9), torch.zeros(2, K, 3, 3)
    drawn = torch.stack([roll_in(mask, density) for _ in range(4)], 1)
    assert sorted(drawn[0, :3].tolist()) == [0, 0, 1] and drawn[0, 3] == 2
    assert drawn[1].tolist() == [1, 2, 2, 2]
    # attended: the object under the mask is drawn first
    roll_in = OracleRollIn(torch.tensor([[1, 1]]), attended=True)
    density = torch.zeros(1, K, 3, 3)
    density[0, 1, 2, 2] = 1.0
    mask = torch.zeros(1, 9)
    mask[0, 8] = 1.0
    assert roll_in(mask, density).item() == 1


def test_roll_in_after_a_wrong_prediction_greedy_versus_oracle():
    # target {1}; the greedy roll-in emitted a wrong 0 first: step 1 is still taught 1, not STOP.
    # The oracle roll-in emits 1 at step 0, so step 1 is taught STOP.
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    targets = torch.tensor([[0, 1]])
    greedy = GlimpseObjective(count_weight=0.0)(episode(logits, torch.tensor([[0, 1]])), targets)
    oracle = GlimpseObjective(count_weight=0.0, roll_in="oracle")(episode(logits, torch.tensor([[1, 2]])), targets)
    step0 = math.log(math.e**2 + 2)  # target 1 with logit 0
    assert math.isclose(greedy["label_loss"].item(), (step0 + math.log(math.e + 2) - 1) / 2, rel_tol=1e-6)
    assert math.isclose(oracle["label_loss"].item(), (step0 + math.log(math.e + 2)) / 2, rel_tol=1e-6)
    assert GlimpseObjective(roll_in="oracle").label_mode == "greedy"
    assert GlimpseObjective(roll_in="stochastic").label_mode == "sample"


def test_policy_follows_the_oracle_roll_in():
    from glimpse.models.backbone import ConvBackbone
    from glimpse.models.policy import GlimpsePolicy

    torch.manual_seed(0)
    policy = GlimpsePolicy(ConvBackbone(1, (8, 8), (2, 2), (1, 1)), num_classes=3, hidden=16, key_dim=8, label_dim=4)
    targets = torch.tensor([[0, 2, 0], [1, 0, 1]])
    obj = GlimpseObjective(roll_in="oracle")
    batch = {"counts": targets}
    ep = policy(torch.rand(2, 1, 24, 24), 3, label_mode=obj.label_mode, **obj.roll_in_args(batch, 3))
    assert ep.labels[0].tolist() == [1, 1, 3]
    assert sorted(ep.labels[1, :2].tolist()) == [0, 2] and ep.labels[1, 2] == 3


def test_returns_with_gamma_and_the_batch_mean_baseline():
    # two images, target {1}; image 0 samples 1, STOP (+1, +1); image 1 samples 0, 1, STOP (-1, +1, +1)
    logits = torch.zeros(2, 3, 3)
    labels = torch.tensor([[1, 2, 2], [0, 1, 2]])
    obj = GlimpseObjective(label_loss="reinforce", location_reward="sampled", gamma=0.5, baseline="batch_mean",
                           count_weight=0.0, peak_weight=0.0, entropy_weight=0.0)
    out = obj(episode(logits, labels), torch.tensor([[0, 1], [0, 1]]))
    g0 = [1 + 0.5 * 1, 1.0, 0.0]  # image 0: alive for steps 0, 1
    g1 = [-1 + 0.5 * (1 + 0.5), 1 + 0.5, 1.0]
    mean = [(g0[0] + g1[0]) / 2, (g0[1] + g1[1]) / 2, g1[2]]
    adv = [g0[0] - mean[0], g0[1] - mean[1], g1[0] - mean[0], g1[1] - mean[1], g1[2] - mean[2]]
    assert math.isclose(out["label_loss"].item(), -sum(adv) * math.log(1 / 3) / 5, abs_tol=1e-6)
    returns = obj.returns(episode(logits, labels), torch.tensor([[0, 1], [0, 1]]))["label_returns"]
    assert torch.allclose(returns, torch.tensor([g0, g1]))


def test_self_critical_advantage_is_the_episode_reward_minus_the_greedy_episode_reward():
    # target {1}, two steps, gamma 0.5 (the episode-level reward is the plain sum, whatever gamma).
    # sampled: 0 (wrong, -1), then 1 (right, +1): episode reward 0.
    # greedy: 1 (right, +1), then STOP (right, +1): episode reward 2.
    # every step of the sampled episode gets advantage 0 - 2 = -2 (not -1 - 1 and 1 - 1 by step index)
    targets = torch.tensor([[0, 1]])
    obj = GlimpseObjective(label_loss="reinforce", location_reward="sampled", baseline="self_critical", gamma=0.5,
                           count_weight=0.0, peak_weight=0.0, entropy_weight=0.0)
    greedy = obj.returns(episode(torch.zeros(1, 2, 3), torch.tensor([[1, 2]])), targets)
    assert greedy["episode_label_reward"].tolist() == [2.0] and greedy["episode_reward"].tolist() == [2.0]
    meta_logp = torch.tensor([[-1.0, -2.0]])
    out = obj(episode(torch.zeros(1, 2, 3), torch.tensor([[0, 1]]), meta_logp=meta_logp), targets, greedy=greedy)
    assert math.isclose(out["label_loss"].item(), -(-2 - 2) * math.log(1 / 3) / 2, rel_tol=1e-6)
    assert math.isclose(out["location_loss"].item(), -(-2 * -1.0 + -2 * -2.0) / 2, rel_tol=1e-6)
    with pytest.raises(ValueError, match="self_critical"):
        obj(episode(torch.zeros(1, 2, 3), torch.tensor([[0, 1]])), targets)


def test_label_and_location_returns_have_their_own_learned_baselines():
    # target {1}; sampled 1 then STOP: label rewards +1, +1 (gamma 0); the location reward adds the
    # glimpse reward's density, so the two returns differ and each is learned by its own value output
    logits = torch.zeros(1, 2, 3, requires_grad=True)
    ep = episode(logits, torch.tensor([[1, 2]]), values=torch.tensor([[3.0, 3.0]]), label_values=torch.tensor([[0.25, 0.5]]))
    ep.class_density[0, 1, 0, 0] = 0.5  # class 1 at the glimpse cell 0: glimpse reward 0.5 at step 0
    obj = GlimpseObjective(label_loss="reinforce", location_reward="sampled", glimpse_reward=1.0,
                           count_weight=0.0, peak_weight=0.0, entropy_weight=0.0)
    out = obj(ep, torch.tensor([[0, 1]]))
    label_adv = [1 - 0.25, 1 - 0.5]  # the label return against the label baseline, not against 3.0
    assert math.isclose(out["label_loss"].item(), -sum(label_adv) * math.log(1 / 3) / 2, rel_tol=1e-6)
    location_returns = [1.5, 1.0]
    value_loss = ((1.5 - 3) ** 2 + (1 - 3) ** 2) / 2 + ((1 - 0.25) ** 2 + (1 - 0.5) ** 2) / 2
    assert math.isclose(out["value_loss"].item(), value_loss, rel_tol=1e-6)
    assert math.isclose(out["advantage"].item(), sum(r - 3 for r in location_returns) / 2, rel_tol=1e-6)
    with pytest.raises(ValueError, match="value output"):
        obj(dataclasses.replace(ep, label_values=None), torch.tensor([[0, 1]]))


def test_stop_head_is_taught_to_stop_at_step_size_plus_one_even_after_a_mistake():
    # target {0, 1}; greedy roll-in 0 (right), 0 (wrong), then the |Y|+1-th step.
    # Termination by label: after the mistake the 1 is still left, so the third step is taught the label 1.
    # Termination by the stop head: the labels are taught on the first |Y| = 2 steps only, and the head
    # is taught "go on, go on, stop" on steps 0..2 (binary cross entropy), whatever was rolled in.
    logits = torch.tensor([[[2.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 3.0]]])
    labels, targets = torch.tensor([[0, 0, 1]]), torch.tensor([[1, 1]])
    by_label = GlimpseObjective(count_weight=0.0, peak_weight=0.0)(episode(logits, labels), targets)
    assert math.isclose(by_label["label_loss"].item(),
                        (math.log(math.e**2 + 2) - 1.0 + math.log(math.e + 2) + math.log(2 + math.e**3)) / 3, rel_tol=1e-5)
    stop = torch.tensor([[-1.0, 0.5, 2.0]])
    out = GlimpseObjective(count_weight=0.0, peak_weight=0.0, termination="head")(
        episode(logits, labels, stop_logits=stop), targets)
    # the labels' distribution is over the K classes: STOP is the head's (its logit 0 or 3 plays no part)
    assert math.isclose(out["label_loss"].item(), (math.log(math.e**2 + 1) - 1.0 + math.log(math.e + 1)) / 2, rel_tol=1e-5)
    bce = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(0.5)) + math.log1p(math.exp(-2.0))) / 3
    assert math.isclose(out["stop_loss"].item(), bce, rel_tol=1e-5)
    assert math.isclose(out["loss"].item(), out["label_loss"].item() + bce + out["location_loss"].item()
                        + 0.5 * out["value_loss"].item() - 0.01 * out["entropy"].item(), rel_tol=1e-5)
    with pytest.raises(ValueError, match="stop head"):
        GlimpseObjective(termination="head")(episode(logits, labels), targets)
    assert GlimpseObjective(termination="head", label_loss="reinforce").num_steps(targets, 9) == 3
    # the reported reward is the labels' on their |Y| steps: +1 (right 0), -1 (0 again), not the third step's
    assert out["reward"].item() == 0.0


def test_under_the_stop_head_label_reinforce_ignores_the_stop_logit():
    # Sampled labels are among the K classes; were STOP in the softmax, every negative advantage
    # would raise its logit (never sampled, never lowered) until the labels' log-probabilities sank
    # to hundreds of nats below zero. Target {0, 1}; sampled 0 (right), 0 (wrong).
    labels, targets = torch.tensor([[0, 0, 1]]), torch.tensor([[1, 1]])
    obj = GlimpseObjective(label_loss="reinforce", location_reward="sampled", termination="head", count_weight=0.0,
                           peak_weight=0.0, attention_reward=0.0, glimpse_reward=0.0, gamma=0.0, entropy_weight=0.01)
    seen = []
    for stop in (0.0, 50.0):
        logits = torch.tensor([[[1.0, 0.0, stop], [0.0, 0.0, stop], [0.0, 1.0, stop]]], requires_grad=True)
        out = obj(episode(logits, labels, stop_logits=torch.zeros(1, 3), label_values=torch.zeros(1, 3)), targets)
        # log p(0) over the two classes: 1 - log(e + 1) at step 0, log 1/2 at step 1; advantages +1, -1
        expected = -(1.0 * (1.0 - math.log(math.e + 1)) - 1.0 * math.log(0.5)) / 2
        assert math.isclose(out["label_loss"].item(), expected, rel_tol=1e-6)
        out["loss"].backward()
        assert torch.all(logits.grad[..., 2] == 0)  # STOP's logit learns nothing from the label loss
        assert logits.grad[..., :2].abs().sum() > 0
        seen.append(out["label_entropy"].item())
    assert seen[0] == seen[1] and seen[0] > 0.6  # two-class entropies (log 2 = 0.69), STOP's logit no part of them


def test_binary_versus_signed_rewards():
    remaining = torch.tensor([[1, 0]])
    signed = multiset.action_rewards(remaining, RewardSpecSigned := multiset.RewardSpec())
    binary = multiset.action_rewards(remaining, RewardSpecSigned.with_scheme("binary"))
    assert signed.tolist() == [[1.0, -1.0, -1.0]]  # right label, wrong label, STOP one object early
    assert binary.tolist() == [[1.0, 0.0, 0.0]]
    labels = torch.tensor([[0, 1, 2]])  # target {1}: wrong, right, right STOP
    for scheme, total in (("signed", 1.0), ("binary", 2.0)):
        obj = GlimpseObjective(label_loss="reinforce", reward_scheme=scheme, count_weight=0.0)
        assert obj(episode(torch.zeros(1, 3, 3), labels), torch.tensor([[0, 1]]))["reward"].item() == total


def batch_with_boxes():
    # image 0: a 1 at top-right (small), a 0 at bottom-left (large), a 1 at top-left (medium)
    labels = torch.tensor([[1, 0, 1], [0, -1, -1]])
    boxes = torch.tensor([[[20.0, 0.0, 30.0, 10.0], [0.0, 15.0, 20.0, 30.0], [0.0, 2.0, 12.0, 14.0]],
                          [[5.0, 5.0, 10.0, 10.0], [0.0] * 4, [0.0] * 4]])
    return {"image": torch.zeros(2, 1, 30, 30), "counts": torch.tensor([[1, 2], [1, 0]]), "labels": labels,
            "boxes": boxes, "index": torch.tensor([7, 8])}


def test_sequence_order_spatial_and_area_by_hand():
    batch = batch_with_boxes()
    # spatial: centres (25, 5), (10, 22.5), (6, 8): rows 5, 8, 22 -> labels 1, 1, 0
    spatial = GlimpseObjective(label_loss="sequence", sequence_order="spatial").labels.sequence(batch)
    assert spatial.tolist() == [[1, 1, 0, 2], [0, 2, 2, 2]]
    # area: 300, 144, 100 -> labels 0, 1 (medium), 1 (small)
    area = GlimpseObjective(label_loss="sequence", sequence_order="area").labels.sequence(batch)
    assert area.tolist() == [[0, 1, 1, 2], [0, 2, 2, 2]]
    # random: a permutation of the labels, the same every call, another one for some seed
    orders = {tuple(GlimpseObjective(label_loss="sequence", sequence_seed=s).labels.sequence(batch)[0].tolist())
              for s in range(8)}
    assert all(sorted(o[:3]) == [0, 1, 1] and o[3] == 2 for o in orders) and len(orders) > 1
    obj = GlimpseObjective(label_loss="sequence", sequence_seed=3)
    assert torch.equal(obj.labels.sequence(batch), obj.labels.sequence(batch))


def test_sequence_loss_is_cross_entropy_against_the_fixed_order():
    batch = batch_with_boxes()
    obj = GlimpseObjective(label_loss="sequence", sequence_order="area", count_weight=0.0)
    steps = obj.num_steps(batch["counts"], 9)
    assert steps == 4
    forced = obj.roll_in_args(batch, steps)["label_roll_in"].labels
    logits = torch.zeros(2, 4, 3)
    logits[0, 0, 0] = 2.0  # right at step 0 of image 0
    out = obj(episode(logits, forced), batch["counts"], batch)
    # image 0: 4 steps (0, 1, 1, STOP), image 1: 2 steps (0, STOP)
    ce = [math.log(math.e**2 + 2) - 2] + [math.log(3)] * 5
    assert math.isclose(out["label_loss"].item(), sum(ce) / 6, rel_tol=1e-6)
    with pytest.raises(ValueError, match="boxes"):
        obj.labels.sequence({"labels": batch["labels"], "counts": batch["counts"]})


def test_box_reward_pays_a_glimpse_in_an_unclaimed_box_of_the_emitted_label():
    batch = {"image": torch.zeros(1, 1, 30, 30), "counts": torch.tensor([[1, 0]]), "labels": torch.tensor([[0]]),
             "boxes": torch.tensor([[[0.0, 0.0, 10.0, 10.0]]])}
    obj = GlimpseObjective(count_weight=0.0, peak_weight=0.0, location_reward="sampled", box_reward=2.0)
    ep = episode(torch.zeros(1, 2, 3), torch.tensor([[0, 2]]))
    ep.meta_locations = torch.tensor([[0, 0]])  # cell 0, centre (5, 5): inside the box of class 0
    assert math.isclose(obj(ep, batch["counts"], batch)["location_reward"].item(), 1 + 2.0)
    ep.meta_locations = torch.tensor([[8, 0]])  # centre (25, 25): outside
    assert math.isclose(obj(ep, batch["counts"], batch)["location_reward"].item(), 1.0)
    with pytest.raises(ValueError, match="objective.box_reward"):
        obj(ep, batch["counts"])


def test_glimpse_reward_pays_the_emitted_class_density_at_the_final_glimpse_cell():
    # targets {0, 1}; steps emit 0, 0 (already named), 1, STOP; one glimpse per step
    ep = episode(torch.zeros(1, 4, 3), torch.tensor([[0, 0, 1, 2]]))
    ep.glimpse_locations = torch.tensor([[[4], [4], [2], [4]]])
    ep.meta_locations = torch.tensor([[0, 0, 0, 0]])  # the meta cell is not where the glimpse is
    ep.class_density[0, 0].view(-1)[4] = 0.75
    ep.class_density[0, 1].view(-1)[2] = 3.0  # more than one object's worth: capped at 1
    remaining = multiset.rollout(torch.tensor([[1, 1]]), ep.labels)["remaining_before"]
    assert multiset.named_density(ep.class_density, ep.labels, ep.step_locations()[..., -1], remaining).tolist() == [[0.75, 0.0, 1.0, 0.0]]
    # without glimpses (k = 0) the meta cell is the step's location
    ep.glimpse_locations = torch.zeros(1, 4, 0, dtype=torch.long)
    ep.meta_locations = torch.tensor([[4, 4, 2, 4]])
    assert multiset.named_density(ep.class_density, ep.labels, ep.step_locations()[..., -1], remaining).tolist() == [[0.75, 0.0, 1.0, 0.0]]
    obj = GlimpseObjective(count_weight=0.0, peak_weight=0.0, location_reward="sampled", glimpse_reward=2.0)
    out = obj(ep, torch.tensor([[1, 1]]))
    # scored steps 0..2 (|Y| = 2, then the termination step): rewards 1 + 1.5, -1 + 0, 1 + 2
    assert math.isclose(out["location_reward"].item(), (2.5 - 1 + 3) / 3, rel_tol=1e-6)


class _Subsample(torch.nn.Module):
    """A 'backbone' whose cell j is pixel stride * j + offset: exact for offset 0."""

    def __init__(self, stride: int, offset: int = 0) -> None:
        super().__init__()
        self.stride, self.offset = stride, offset

    def forward(self, image):
        return image[..., self.offset::self.stride, self.offset::self.stride]


def _first_channel(activations):
    return activations[:, 0], activations


@pytest.mark.parametrize("size", [9, 10, 12, 13])
def test_centring_loss_turns_cell_centres_onto_cell_centres(size):
    from glimpse.objectives import centring_loss

    image = torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(size))
    exact = _Subsample(4)
    saliency_map, _ = _first_channel(exact(image))
    # a map read at the cell centres is consistent with the turned image whatever the image holds
    assert centring_loss(exact, _first_channel, image, saliency_map).item() < 1e-12
    shifted = _Subsample(4, offset=1)  # claims cell j is at pixel 4j but reads pixel 4j + 1
    saliency_map, _ = _first_channel(shifted(image))
    assert centring_loss(shifted, _first_channel, image, saliency_map).item() > 0.1


def test_centring_loss_is_zero_for_a_centred_object_and_not_for_a_top_heavy_map():
    from glimpse.objectives import centring_loss

    backbone = _Subsample(4)
    image = torch.zeros(1, 1, 21, 21)
    image[..., 6:15, 6:15] = 1.0  # a square object centred on pixel 10 (not a cell centre: cells at 0, 4, ..., 20)
    centred = torch.zeros(1, 6, 6)
    centred[0, 2:4, 2:4] = 0.25  # its mass split over the four cells around its centre
    top = torch.zeros(1, 6, 6)
    top[0, 1, 2:4] = 0.5  # the same mass one row up, on the object's top edge

    def saliency(activations):  # the turned image's map: the object's mass around its centre
        return centred, None

    assert centring_loss(backbone, saliency, image, centred).item() < 1e-12
    assert math.isclose(centring_loss(backbone, saliency, image, top).item(), 4 * 0.25**2 + 2 * 0.5**2, rel_tol=1e-6)


def test_centring_needs_a_backbone_with_a_stride():
    from glimpse.objectives import centring_loss

    with pytest.raises(ValueError, match="objective.centring_weight needs a backbone with a 'stride'"):
        centring_loss(torch.nn.Identity(), _first_channel, torch.zeros(1, 1, 8, 8), torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="objective.centring_images=0 must be >= 1"):
        GlimpseObjective(centring_images=0)


@pytest.mark.parametrize("key, value", [("baseline", "greedy"), ("roll_in", "sample"), ("sequence_order", "depth"),
                                        ("reward_scheme", "ternary")])
def test_bad_variant_values_are_named(key, value):
    with pytest.raises(ValueError, match=f"objective.{key}='{value}' is not known; choose one of"):
        GlimpseObjective(**{key: value})
    with pytest.raises(ValueError, match="objective.roll_in='oracle' needs objective.label_loss=multiset"):
        GlimpseObjective(label_loss="reinforce", roll_in="oracle")


OBJECTIVES = sorted(p.stem for p in (ROOT / "configs" / "objective").glob("*.yaml"))


@pytest.mark.parametrize("name", OBJECTIVES)
def test_each_objective_config_composes_and_trains_one_step(name):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[f"objective={name}", "logger=none", "data.train_size=4", "data.val_size=4",
                                          "data.test_size=4", "data.batch_size=4", "data.num_workers=0",
                                          "model.policy.hidden=16", "model.policy.saliency_hidden=8"])
    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.model, _recursive_=False, num_classes=datamodule.num_classes,
                         class_names=datamodule.class_names, max_steps=datamodule.max_objects + 1)
    assert module.objective.label_loss in name or name.startswith("multiset")
    torch.manual_seed(0)
    loss = module.training_step(next(iter(datamodule.train_dataloader())), 0)
    assert torch.isfinite(loss)
    loss.backward()
    assert module.policy.meta.query.weight.grad.abs().sum() > 0  # the location policy learns in every variant
    # one training step moves BatchNorm's statistics once, self-critical's greedy baseline rollout included
    assert module.training
    assert all(int(m.num_batches_tracked) == 1 for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d))
