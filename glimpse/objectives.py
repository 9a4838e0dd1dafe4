"""Training objectives: REINFORCE for the location decisions, and for the labels either
REINFORCE (Welleck et al. 2017) or the multiset loss (Welleck et al. 2018).

Every reward and remaining multiset comes from :mod:`glimpse.multiset`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from glimpse import multiset
from glimpse.models.policy import Episode

LABEL_LOSSES = ("multiset", "reinforce")
LOCATION_REWARDS = ("expected", "sampled")
ORACLES = ("uniform", "attended")


def attended_density(episode: Episode) -> Tensor:
    """Mass ``(B, T, K)`` of each class's density under each step's attention mask, detached."""
    density = episode.class_density.detach().flatten(2)  # (B, K, h*w)
    return torch.einsum("btn,bkn->btk", episode.attention_masks.detach(), density)


@dataclass
class GlimpseObjective:
    """Loss of one batch of episodes.

    label_loss: ``multiset`` (cross entropy against the oracle policy, greedy roll-in) or
        ``reinforce`` (labels sampled, rewarded by the multiset reward).
    location_reward: reward of a meta step's location decisions: ``expected`` = the
        multiset reward in expectation over the label distribution at that step (lower
        variance), ``sampled`` = the reward of the label actually emitted.
    gamma: discount of the return-to-go (0 = immediate reward of the step).
    count_weight: weight of the count loss that teaches the saliency map from multiset
        labels alone (the per-class densities must sum to the true counts).
    peak_weight: weight of the peak loss: the densest cell of each class holds one whole
        object when the class is present and none when absent. Counting alone lets the
        density spread over the canvas; this concentrates it on the objects, so the
        saliency map says where they are.
    oracle: ``uniform`` = the 2018 paper's oracle, every remaining label equally;
        ``attended`` = the same optimal labels weighted by how much of each class's density
        lies under the step's attention mask (:func:`attended_density`), so the label a
        step is taught is the object it looks at. Both are optimal policies of the
        multiset loss; with ``uniform`` nothing ties a label to its step's glimpse.
    attention_reward: weight of a location reward for attending to objects not yet named:
        the density of the remaining classes under the step's attention mask, in objects,
        at most 1. It uses the saliency model's own densities (learned from multiset labels
        alone), never the boxes.
    """

    label_loss: str = "multiset"
    roll_in: str = "greedy"
    location_reward: str = "expected"
    gamma: float = 0.0
    entropy_weight: float = 0.01
    value_weight: float = 0.5
    count_weight: float = 1.0
    peak_weight: float = 1.0
    oracle: str = "uniform"
    attention_reward: float = 0.0
    reward: multiset.RewardSpec = field(default_factory=multiset.RewardSpec)

    def __post_init__(self) -> None:
        if isinstance(self.reward, dict):
            self.reward = multiset.RewardSpec(**self.reward)
        checks = [
            ("objective.label_loss", self.label_loss, LABEL_LOSSES),
            ("objective.location_reward", self.location_reward, LOCATION_REWARDS),
            ("objective.roll_in", self.roll_in, ("greedy", "sample")),
            ("objective.oracle", self.oracle, ORACLES),
        ]
        for key, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"{key}={value!r} is not known; choose one of {list(allowed)}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"objective.gamma={self.gamma} must be in [0, 1]")
        for key in ("entropy_weight", "value_weight", "count_weight", "peak_weight", "attention_reward"):
            if getattr(self, key) < 0:
                raise ValueError(f"objective.{key}={getattr(self, key)} must be >= 0")

    @property
    def label_mode(self) -> str:
        """How the policy picks labels while training."""
        return "sample" if self.label_loss == "reinforce" else self.roll_in

    def num_steps(self, targets: Tensor, max_steps: int) -> int:
        """Meta steps to unroll in training: |Y| + 1 for the multiset loss, else the budget."""
        if self.label_loss == "multiset":
            return int(targets.sum(-1).max().item()) + 1
        return max_steps

    def __call__(self, episode: Episode, targets: Tensor) -> dict[str, Tensor]:
        logits = episode.label_logits  # (B, T, K+1)
        steps = logits.shape[1]
        log_probs = F.log_softmax(logits, -1)
        roll = multiset.rollout(targets, episode.labels, self.reward, stop_ends=self.label_loss == "reinforce")
        remaining = roll["remaining_before"]  # (B, T, K)
        out: dict[str, Tensor] = {}
        attended = attended_density(episode) if self.oracle == "attended" or self.attention_reward else None

        if self.label_loss == "multiset":
            # steps 0..|Y|: |Y| labels, then the termination step whose oracle target is STOP
            t = torch.arange(steps, device=logits.device)
            step_mask = (t[None, :] <= targets.sum(-1, keepdim=True)).float()
            preference = attended.flatten(0, 1) if self.oracle == "attended" else None
            oracle = multiset.oracle_policy(remaining.flatten(0, 1), preference).view_as(logits)
            ce = -(oracle * log_probs).sum(-1)
            out["label_loss"] = (ce * step_mask).sum() / step_mask.sum()
            # the location decisions only matter while something is left to find
            loc_mask = step_mask * (remaining.sum(-1) > 0).float()
        else:
            loc_mask = roll["alive"].float()
            label_returns = multiset.discounted_returns(roll["reward"], loc_mask, self.gamma)
            label_logp = log_probs.gather(-1, episode.labels[..., None]).squeeze(-1)
            advantage = (label_returns - episode.values).detach()
            out["label_loss"] = -(advantage * label_logp * loc_mask).sum() / loc_mask.sum()

        if self.location_reward == "expected":
            probs = log_probs.exp().detach().flatten(0, 1)
            step_reward = multiset.expected_reward(remaining.flatten(0, 1), probs, self.reward).view(logits.shape[:2])
        else:
            step_reward = roll["reward"]
        if self.attention_reward:
            unnamed = (attended * (remaining > 0)).sum(-1).clamp(max=1.0)  # (B, T) objects' worth
            step_reward = step_reward + self.attention_reward * unnamed
        returns = multiset.discounted_returns(step_reward, loc_mask, self.gamma)

        n = loc_mask.sum().clamp(min=1)
        advantage = (returns - episode.values).detach()  # the baseline never receives policy gradient
        out["location_loss"] = -(advantage * episode.location_logp() * loc_mask).sum() / n
        out["value_loss"] = (((episode.values - returns) ** 2) * loc_mask).sum() / n
        entropy = episode.location_entropy()
        if self.label_loss == "reinforce":
            entropy = entropy + -(log_probs.exp() * log_probs).sum(-1)
        out["entropy"] = (entropy * loc_mask).sum() / n
        predicted_counts = episode.class_density.sum((-2, -1))  # (B, K)
        out["count_loss"] = F.mse_loss(predicted_counts, targets.float())
        peaks = episode.class_density.flatten(2).amax(-1)  # (B, K)
        out["peak_loss"] = F.mse_loss(peaks, (targets > 0).float())
        out["loss"] = (
            out["label_loss"]
            + out["location_loss"]
            + self.value_weight * out["value_loss"]
            - self.entropy_weight * out["entropy"]
            + self.count_weight * out["count_loss"]
            + self.peak_weight * out["peak_loss"]
        )
        out["reward"] = (roll["reward"] * roll["alive"]).sum(-1).mean()
        out["location_reward"] = (step_reward * loc_mask).sum() / n
        return out
