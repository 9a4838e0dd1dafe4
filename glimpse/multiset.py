"""Multiset arithmetic shared by the objectives, the environment and the metrics, and every
reward: the multiset reward of a label, its expectation, and the location rewards' shaping
terms (:func:`location_reward`).

Classes are ``0 .. C-1`` and the STOP action is index ``C``. A multiset is a count vector
``(B, C)``. Everything here is batched and works on any device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class RewardSpec:
    """The multiset reward of one classification step (Welleck et al. 2017/2018).

    ``correct`` for a label still in the remaining multiset (which then loses one copy),
    ``wrong`` for any other label, ``stop_correct`` for STOP once nothing remains, and
    STOP with objects left costs ``early_stop_cost`` per object left unnamed (a plain -1
    lets the policy learn to stop at once; see docs/model.md).
    """

    correct: float = 1.0
    wrong: float = -1.0
    stop_correct: float = 1.0
    early_stop_cost: float = 1.0

    def with_scheme(self, scheme: str) -> "RewardSpec":
        """The reward under a named scheme: ``signed`` (this spec, +1 / -1) or ``binary``
        (1 for a right action, 0 for anything else, early STOP included)."""
        if scheme not in REWARD_SCHEMES:
            raise ValueError(f"objective.reward_scheme={scheme!r} is not known; choose one of {list(REWARD_SCHEMES)}")
        if scheme == "binary":
            return RewardSpec(correct=1.0, wrong=0.0, stop_correct=1.0, early_stop_cost=0.0)
        return self


REWARD_SCHEMES = ("signed", "binary")


def counts_from_labels(labels: Tensor, num_classes: int) -> Tensor:
    """Count vector ``(B, C)`` of padded label lists ``(B, N)``; entries < 0 are padding."""
    valid = labels >= 0
    counts = torch.zeros(labels.shape[0], num_classes + 1, dtype=torch.long, device=labels.device)
    counts.scatter_add_(1, torch.where(valid, labels, num_classes), valid.long())
    return counts[:, :num_classes]


def action_rewards(remaining: Tensor, spec: RewardSpec = RewardSpec()) -> Tensor:
    """Reward of every action ``(B, C + 1)`` (labels then STOP) given the remaining counts."""
    remaining = remaining.float()
    labels = torch.where(remaining > 0, spec.correct, spec.wrong)
    left = remaining.sum(-1, keepdim=True)
    stop = torch.where(left > 0, -spec.early_stop_cost * left, torch.full_like(left, spec.stop_correct))
    return torch.cat([labels, stop], dim=-1)


def step(remaining: Tensor, actions: Tensor, spec: RewardSpec = RewardSpec()) -> tuple[Tensor, Tensor, Tensor]:
    """Apply one classification step.

    remaining: ``(B, C)`` counts; actions: ``(B,)`` in ``0..C`` (C = STOP).
    Returns ``(reward (B,), remaining after the step (B, C), correct (B,) bool)``: a label is
    correct when it is still in the remaining multiset, STOP when nothing remains.
    """
    num_classes = remaining.shape[-1]
    reward = action_rewards(remaining, spec).gather(1, actions[:, None]).squeeze(1)
    is_label = actions < num_classes
    safe = actions.clamp(max=num_classes - 1)
    hit = is_label & (remaining.gather(1, safe[:, None]).squeeze(1) > 0)
    removed = torch.nn.functional.one_hot(safe, num_classes).to(remaining.dtype) * hit[:, None].to(remaining.dtype)
    correct = hit | (~is_label & (remaining.sum(-1) == 0))
    return reward, remaining - removed, correct


def expected_reward(remaining: Tensor, probs: Tensor, spec: RewardSpec = RewardSpec()) -> Tensor:
    """Expected step reward ``(B,)`` under a label distribution ``probs (B, C + 1)``."""
    return (action_rewards(remaining, spec) * probs).sum(-1)


def oracle_policy(remaining: Tensor, preference: Tensor | None = None) -> Tensor:
    """Oracle distribution ``(B, C + 1)`` of the multiset loss (Welleck et al. 2018).

    Every label still in the remaining multiset is an optimal action. Without ``preference``
    the oracle is the remaining counts normalised (the paper's); with a non-negative
    ``preference (B, C)`` the same optimal labels are weighted by it, ``remaining * preference``
    normalised (where the preference is zero on all remaining labels, the counts alone).
    Once nothing remains, all mass is on STOP.
    """
    remaining = remaining.float()
    if preference is not None:
        weighted = remaining * preference
        remaining = torch.where(weighted.sum(-1, keepdim=True) > 0, weighted, remaining)
    total = remaining.sum(-1, keepdim=True)
    stop = (total == 0).float()
    return torch.cat([remaining / total.clamp(min=1e-12), stop], dim=-1)


def rollout(
    targets: Tensor, actions: Tensor, spec: RewardSpec = RewardSpec(), stop_ends: bool = True
) -> dict[str, Tensor]:
    """Replay a sequence of actions ``(B, T)`` against target counts ``(B, C)``.

    Returns per-step tensors ``(B, T)``: ``reward``, ``correct``, ``alive`` (the step was
    taken: no STOP before it), and ``remaining_before`` ``(B, T, C)``; plus the emitted
    multiset ``predicted (B, C)`` (labels before the first STOP). With ``stop_ends=False``
    a STOP does not end the episode (roll-in of the multiset loss runs ``|Y| + 1`` steps).
    """
    batch, steps = actions.shape
    num_classes = targets.shape[-1]
    remaining = targets.clone()
    alive = torch.ones(batch, dtype=torch.bool, device=targets.device)
    predicted = torch.zeros_like(targets)
    out = {k: [] for k in ("reward", "correct", "alive", "remaining_before")}
    for t in range(steps):  # T is the episode length (a handful), never the batch
        out["remaining_before"].append(remaining)
        out["alive"].append(alive)
        reward, after, correct = step(remaining, actions[:, t], spec)
        out["reward"].append(reward * alive)
        out["correct"].append(correct & alive)
        is_label = actions[:, t] < num_classes
        emit = (alive & is_label).long()
        predicted = predicted + torch.nn.functional.one_hot(
            actions[:, t].clamp(max=num_classes - 1), num_classes
        ) * emit[:, None]
        remaining = torch.where(alive[:, None], after, remaining)
        if stop_ends:
            alive = alive & is_label
    result = {k: torch.stack(v, dim=1) for k, v in out.items()}
    result["predicted"] = predicted
    return result


def intersection_size(predicted: Tensor, targets: Tensor) -> Tensor:
    """Size of the multiset intersection ``(B,)``: the sum of the element-wise minimum."""
    return torch.minimum(predicted, targets).sum(-1)


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """Return-to-go ``G_t = r_t + gamma * G_{t+1}`` over ``(B, T)``, zero where ``mask`` is off."""
    rewards = rewards * mask
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
    return returns * mask


def attended_mass(attention_masks: Tensor, class_density: Tensor) -> Tensor:
    """Mass ``(B, ..., K)`` of each class's density ``(B, K, h, w)`` under attention masks
    ``(B, ..., h*w)``, detached: how much of each class a step looks at."""
    return torch.einsum("b...n,bkn->b...k", attention_masks.detach(), class_density.detach().flatten(2))


def unnamed_attended(attended: Tensor, remaining: Tensor) -> Tensor:
    """The attention reward's term ``(B, T)``: density of the classes still unnamed under the
    step's mask (``attended (B, T, K)``, :func:`attended_mass`), in objects, at most 1."""
    return (attended * (remaining > 0)).sum(-1).clamp(max=1.0)


def named_density(class_density: Tensor, labels: Tensor, cells: Tensor, remaining: Tensor) -> Tensor:
    """The glimpse reward's term ``(B, T)``: density of each step's emitted class (``labels
    (B, T)``) at its cell (``cells (B, T)``, the final glimpse's), where that label was still
    unnamed (``remaining (B, T, K)`` before the step); at most 1, zero for STOP, detached."""
    _, num_classes, height, width = class_density.shape
    label = labels.clamp(max=num_classes - 1)  # STOP reads class K-1, then is masked out
    cell = label * (height * width) + cells  # (B, T) into the flat (K * h * w) densities
    value = class_density.detach().flatten(1).gather(1, cell)
    unnamed = remaining.gather(-1, label[..., None]).squeeze(-1) > 0
    return (value * (unnamed & (labels < num_classes))).clamp(max=1.0)


def location_reward(label_reward: Tensor, shaping: dict[str, tuple[float, Tensor]]) -> Tensor:
    """The reward ``(B, T)`` of a meta step's location decisions: its label's reward (sampled
    or expected) plus each weighted shaping term ``name: (weight, term (B, T))`` with a weight."""
    reward = label_reward
    for weight, term in shaping.values():
        if weight:
            reward = reward + weight * term
    return reward
