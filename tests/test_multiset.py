"""Hand-worked examples of the multiset arithmetic that the loss, env and metrics share."""
import math

import torch

from glimpse import multiset
from glimpse.metrics import MultisetMetrics

K = 10
STOP = K


def counts(*labels: int) -> torch.Tensor:
    return multiset.counts_from_labels(torch.tensor([list(labels) + [-1] * (6 - len(labels))]), K)


def test_counts_from_labels_with_repeats_and_padding():
    c = counts(3, 3, 5)
    assert c.tolist() == [[0, 0, 0, 2, 0, 1, 0, 0, 0, 0]]
    assert counts().sum() == 0


def test_step_rewards_repeated_wrong_and_stop():
    remaining = counts(3, 3, 5)
    r, after, ok = multiset.step(remaining, torch.tensor([3]))
    assert (r.item(), ok.item()) == (1.0, True) and after[0, 3] == 1  # one copy of 3 removed
    r, after2, ok = multiset.step(after, torch.tensor([7]))
    assert (r.item(), ok.item()) == (-1.0, False) and torch.equal(after2, after)  # wrong: nothing removed
    r, _, ok = multiset.step(after, torch.tensor([STOP]))
    assert (r.item(), ok.item()) == (-2.0, False)  # stopping early costs the two objects left unnamed
    r, _, ok = multiset.step(counts(), torch.tensor([STOP]))
    assert (r.item(), ok.item()) == (1.0, True)  # STOP is right exactly when nothing remains
    r, _, ok = multiset.step(counts(), torch.tensor([3]))
    assert (r.item(), ok.item()) == (-1.0, False)  # a label after everything was named


def test_rollout_episode_with_repeat_wrong_label_and_stop():
    targets = counts(3, 3, 5)
    actions = torch.tensor([[3, 3, 7, 5, STOP, 3]])
    roll = multiset.rollout(targets, actions)
    assert roll["reward"].tolist() == [[1.0, 1.0, -1.0, 1.0, 1.0, 0.0]]  # nothing after STOP counts
    assert roll["alive"].tolist() == [[True] * 5 + [False]]
    assert roll["correct"].tolist() == [[True, True, False, True, True, False]]
    assert roll["predicted"][0, 3] == 2 and roll["predicted"][0, 7] == 1 and roll["predicted"][0, 5] == 1
    assert roll["predicted"].sum() == 4
    # reward sum = correct steps - wrong steps (+1 for the right STOP counted as correct)
    assert roll["reward"].sum() == roll["correct"].sum() - (roll["alive"] & ~roll["correct"]).sum()


def test_rollout_without_stop_ending_keeps_the_remaining_multiset():
    roll = multiset.rollout(counts(2), torch.tensor([[STOP, 2, STOP]]), stop_ends=False)
    assert roll["remaining_before"][0, :, 2].tolist() == [1, 1, 0]
    assert roll["alive"].all()


def test_oracle_policy_normalises_remaining_counts_then_stop():
    pi = multiset.oracle_policy(counts(3, 3, 5))
    assert torch.allclose(pi[0, 3], torch.tensor(2 / 3)) and torch.allclose(pi[0, 5], torch.tensor(1 / 3))
    assert pi[0, STOP] == 0 and torch.allclose(pi.sum(), torch.tensor(1.0))
    assert multiset.oracle_policy(counts())[0].tolist() == [0.0] * K + [1.0]


def test_expected_reward_is_the_reward_averaged_over_the_label_policy():
    probs = torch.zeros(1, K + 1)
    probs[0, 3], probs[0, 4], probs[0, STOP] = 0.5, 0.3, 0.2
    # label 3 right (+1), label 4 wrong (-1), STOP with one object left (-1)
    assert math.isclose(multiset.expected_reward(counts(3), probs).item(), 0.5 - 0.3 - 0.2, abs_tol=1e-6)


def test_discounted_returns_by_hand():
    rewards = torch.tensor([[1.0, -1.0, 1.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    g = multiset.discounted_returns(rewards, mask, gamma=0.5)
    assert torch.allclose(g, torch.tensor([[0.75, -0.5, 1.0, 0.0]]))
    assert torch.allclose(multiset.discounted_returns(rewards, mask, 0.0), rewards * mask)


def test_metrics_micro_precision_recall_f1_and_exact_match():
    m = MultisetMetrics()
    pred = torch.cat([counts(3, 3, 7), counts(1, 2)])
    true = torch.cat([counts(3, 5), counts(2, 1)])
    m.update(pred, true)
    out = m.compute()
    # image 1: |pred ∩ true| = 1 of 3 predicted, 2 true; image 2: exact, 2 of 2
    p, r = 3 / 5, 3 / 4
    assert math.isclose(out["multiset/precision"].item(), p, rel_tol=1e-6)
    assert math.isclose(out["multiset/recall"].item(), r, rel_tol=1e-6)
    assert math.isclose(out["multiset/f1"].item(), 2 * p * r / (p + r), rel_tol=1e-6)
    assert out["multiset/exact_match"].item() == 0.5


def test_metrics_nothing_predicted_scores_zero_not_nan():
    m = MultisetMetrics()
    m.update(counts(), counts(4))
    out = m.compute()
    assert out["multiset/precision"] == 0 and out["multiset/recall"] == 0 and out["multiset/f1"] == 0
    m = MultisetMetrics()
    m.update(counts(), counts())  # an image without objects, rightly left empty
    assert all(v == 1 for v in m.compute().values())


def test_oracle_with_preference_weights_only_the_remaining_labels():
    remaining = counts(3, 3, 5)
    preference = torch.zeros(1, K)
    preference[0, 5], preference[0, 7] = 3.0, 100.0  # 7 is not in the multiset: never a target
    pi = multiset.oracle_policy(remaining, preference)[0]
    assert pi[5].item() == 1.0 and pi[7].item() == 0.0 and pi[STOP].item() == 0.0
    preference[0, 3] = 1.0  # 2 copies of 3 x 1.0 against 1 copy of 5 x 3.0
    pi = multiset.oracle_policy(remaining, preference)[0]
    assert torch.allclose(pi[[3, 5]], torch.tensor([0.4, 0.6]))
    # no preference for any remaining label: the paper's oracle
    pi = multiset.oracle_policy(remaining, torch.zeros(1, K))[0]
    assert torch.allclose(pi[[3, 5]], torch.tensor([2 / 3, 1 / 3]))
    assert multiset.oracle_policy(counts(), preference)[0, STOP] == 1.0
