"""The training objective of the glimpse model: REINFORCE for the location decisions, one of
the label losses of :mod:`glimpse.objectives.labels` for the labels, the stop head's loss when
termination is by a separate head, and the saliency model's own losses.

Every reward and remaining multiset comes from :mod:`glimpse.multiset`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from glimpse import multiset
from glimpse.geometry import glimpse_hits
from glimpse.models.policy import Episode, classes_only
from glimpse.objectives.labels import SEQUENCE_ORDERS, LabelLoss, make_label_loss
from glimpse.objectives.saliency import count_loss, peak_loss

LABEL_LOSSES = ("multiset", "reinforce", "sequence")
LOCATION_REWARDS = ("expected", "sampled")
ORACLES = ("uniform", "attended")
ROLL_INS = ("greedy", "stochastic", "oracle")
BASELINES = ("learned", "batch_mean", "self_critical")
TERMINATIONS = ("label", "head")


@dataclass
class GlimpseObjective:
    """Loss of one batch of episodes.

    label_loss: ``multiset`` (cross entropy against the oracle policy, with roll-in),
        ``reinforce`` (labels sampled, rewarded by the multiset reward), or ``sequence``
        (cross entropy against the ground-truth labels in a fixed order, teacher forced,
        then STOP: the 2018 paper's baseline).
    roll_in: which labels the multiset loss rolls in: ``greedy`` (the model's argmax, the
        paper's), ``stochastic`` (sampled from the model), ``oracle`` (drawn from the oracle
        distribution, :class:`OracleRollIn`).
    sequence_order: the fixed order of the sequence loss (:func:`order_keys`): ``random``,
        ``spatial`` or ``area``; the last two use the boxes (a weak-supervision exception).
    location_reward: reward of a meta step's location decisions: ``expected`` = the
        multiset reward in expectation over the label distribution at that step (lower
        variance), ``sampled`` = the reward of the label actually emitted.
    reward_scheme: ``signed`` (the ``reward`` spec: +1 / -1, early STOP costs what it leaves)
        or ``binary`` (1 for a right action, 0 otherwise) — :meth:`multiset.RewardSpec.with_scheme`.
    gamma: discount of the return-to-go (0 = immediate reward of the step).
    baseline: what the REINFORCE advantages subtract from the returns: ``learned`` (the
        value head, trained on detached state), ``batch_mean`` (the batch's mean return at
        each step), ``self_critical`` (as self-critical sequence training: every step of the
        sampled episode gets the episode's total reward minus the total reward of the greedy
        rollout of the same images, passed to :meth:`__call__` as ``greedy``; the module
        computes it under no_grad). Each return (locations, labels) has its own baseline.
    count_weight: weight of the count loss that teaches the saliency map from multiset
        labels alone (the per-class densities must sum to the true counts).
    peak_weight: weight of the peak loss: the densest cell of each class holds one whole
        object when the class is present and none when absent. Counting alone lets the
        density spread over the canvas; this concentrates it on the objects, so the
        saliency map says where they are.
    oracle: ``uniform`` = the 2018 paper's oracle, every remaining label equally;
        ``attended`` = the same optimal labels weighted by how much of each class's density
        lies under the step's attention mask (:func:`multiset.attended_mass`), so the label a
        step is taught is the object it looks at. Both are optimal policies of the
        multiset loss; with ``uniform`` nothing ties a label to its step's glimpse.
    attention_reward: weight of a location reward for attending to objects not yet named:
        the density of the remaining classes under the step's attention mask, in objects,
        at most 1. It uses the saliency model's own densities (learned from multiset labels
        alone), never the boxes.
    glimpse_reward: weight of a location reward for looking at what the step names: the
        density of the emitted label's class at the step's final glimpse cell, when that
        label is still unnamed (at most 1). The attention reward is spread over the mask;
        this one is sharp at one cell, so it pulls the glimpse onto the object itself. From
        the model's own densities, never the boxes.
    centring_weight: weight of the centring loss (:func:`centring_loss`): the saliency map
        of the image turned by 180 degrees must be the turned saliency map. Counting and the
        peak loss leave free which cell of an object holds its mass (a model may settle on
        the top of each digit); a turned object's top is its bottom, so only the centre is
        consistent. Needs a backbone with a ``stride``; one more backbone pass over the
        first ``centring_images`` images of each batch (``None``: all of them).
    box_reward: weight of a location reward for a step whose final glimpse lands in a not
        yet claimed ground-truth box of the right label it emits. It uses the boxes: an
        explicitly named weak-supervision exception, off (0) by default.
    termination: how the model learns to stop. ``label``: STOP is one more label, the target
        (or the rewarded action) once nothing remains. ``head``: a separate stop head (the
        2018 authors' code), trained by binary cross entropy on steps ``0..|Y|``, positive at
        step ``|Y|`` (the ``|Y| + 1``-th), whatever the earlier labels were; the labels are
        then trained on the first ``|Y|`` steps only, and training never stops early.
    stop_weight: weight of the stop head's loss (``termination=head``).
    """

    label_loss: str = "multiset"
    roll_in: str = "greedy"
    sequence_order: str = "random"
    sequence_seed: int = 0
    location_reward: str = "expected"
    reward_scheme: str = "signed"
    gamma: float = 0.0
    baseline: str = "learned"
    entropy_weight: float = 0.01
    value_weight: float = 0.5
    count_weight: float = 1.0
    peak_weight: float = 1.0
    oracle: str = "uniform"
    attention_reward: float = 0.0
    glimpse_reward: float = 0.0
    centring_weight: float = 0.0
    centring_images: int | None = 16
    box_reward: float = 0.0
    termination: str = "label"
    stop_weight: float = 1.0
    reward: multiset.RewardSpec = field(default_factory=multiset.RewardSpec)

    def __post_init__(self) -> None:
        if isinstance(self.reward, dict):
            self.reward = multiset.RewardSpec(**self.reward)
        checks = [
            ("objective.label_loss", self.label_loss, LABEL_LOSSES),
            ("objective.location_reward", self.location_reward, LOCATION_REWARDS),
            ("objective.roll_in", self.roll_in, ROLL_INS),
            ("objective.oracle", self.oracle, ORACLES),
            ("objective.baseline", self.baseline, BASELINES),
            ("objective.sequence_order", self.sequence_order, SEQUENCE_ORDERS),
            ("objective.reward_scheme", self.reward_scheme, multiset.REWARD_SCHEMES),
            ("objective.termination", self.termination, TERMINATIONS),
        ]
        if self.centring_images is not None and self.centring_images < 1:
            raise ValueError(f"objective.centring_images={self.centring_images} must be >= 1, or null for the whole batch")
        for key, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"{key}={value!r} is not known; choose one of {list(allowed)}")
        if self.roll_in != "greedy" and self.label_loss != "multiset":
            raise ValueError(f"objective.roll_in={self.roll_in!r} needs objective.label_loss=multiset "
                             f"(reinforce samples its labels, sequence is teacher forced); use roll_in=greedy")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"objective.gamma={self.gamma} must be in [0, 1]")
        for key in ("entropy_weight", "value_weight", "count_weight", "peak_weight", "attention_reward", "glimpse_reward",
                    "centring_weight", "box_reward", "stop_weight"):
            if getattr(self, key) < 0:
                raise ValueError(f"objective.{key}={getattr(self, key)} must be >= 0")
        self.reward = self.reward.with_scheme(self.reward_scheme)
        self.labels: LabelLoss = make_label_loss(self.label_loss, self.roll_in, self.oracle, self.sequence_order,
                                                 self.sequence_seed)

    @property
    def label_mode(self) -> str:
        """How the policy picks labels while training (oracle and sequence roll-ins force them)."""
        return self.labels.label_mode

    @property
    def num_values(self) -> int:
        """Value outputs the policy needs: a second baseline for the label returns of label REINFORCE."""
        return 2 if self.labels.samples_labels and self.baseline == "learned" else 1

    def num_steps(self, targets: Tensor, max_steps: int) -> int:
        """Meta steps to unroll in training: |Y| + 1 for the multiset and sequence losses and
        under a stop head, else the budget."""
        if self.termination == "head":
            return LabelLoss.num_steps(self.labels, targets, max_steps)
        return self.labels.num_steps(targets, max_steps)

    def roll_in_args(self, batch: dict, num_steps: int) -> dict:
        """Keyword arguments of the training rollout that pick its labels: the sequence loss's
        teacher forcing, the oracle roll-in; none for the others."""
        return self.labels.roll_in_args(batch, num_steps)

    def play(self, episode: Episode, targets: Tensor, batch: dict | None) -> dict[str, Tensor]:
        """Replay the episode: remaining multisets, masks, rewards and returns of each step."""
        by_label = self.termination == "label"
        # under the stop head the labels are a distribution over the K classes (STOP is the head's)
        logits = episode.label_logits if by_label else classes_only(episode.label_logits)  # (B, T, K+1)
        log_probs = F.log_softmax(logits, -1)
        roll = multiset.rollout(targets, episode.labels, self.reward, stop_ends=by_label and self.labels.stop_ends)
        remaining = roll["remaining_before"]  # (B, T, K)
        attended = None
        if self.oracle == "attended" or self.attention_reward:
            attended = multiset.attended_mass(episode.attention_masks, episode.class_density)  # (B, T, K)
        stop_mask = None
        if by_label:
            step_mask, loc_mask = self.labels.masks(targets, remaining, roll["alive"])
        else:
            # the labels on steps 0..|Y|-1, the stop head on steps 0..|Y| (positive at |Y|)
            t = torch.arange(logits.shape[1], device=logits.device)
            size = targets.sum(-1, keepdim=True)
            step_mask = loc_mask = (t[None, :] < size).float()
            stop_mask = (t[None, :] <= size).float()

        if self.location_reward == "expected":
            probs = log_probs.exp().detach().flatten(0, 1)
            label_reward = multiset.expected_reward(remaining.flatten(0, 1), probs, self.reward).view(logits.shape[:2])
        else:
            label_reward = roll["reward"]
        shaping = {}
        if self.attention_reward:
            shaping["attention"] = (self.attention_reward, multiset.unnamed_attended(attended, remaining))
        if self.glimpse_reward:
            cells = episode.step_locations()[..., -1]
            shaping["glimpse"] = (self.glimpse_reward, multiset.named_density(episode.class_density, episode.labels, cells,
                                                                              remaining))
        if self.box_reward:
            if batch is None or "boxes" not in batch:
                raise ValueError(f"objective.box_reward={self.box_reward} needs boxes in the batch; this data has none "
                                 f"(set objective.box_reward=0)")
            hits, _ = glimpse_hits(episode, targets, batch["boxes"], batch["labels"], tuple(batch["image"].shape[-2:]))
            shaping["box"] = (self.box_reward, hits.float())
        step_reward = multiset.location_reward(label_reward, shaping)
        return {
            "log_probs": log_probs, "roll": roll, "remaining": remaining, "attended": attended,
            "step_mask": step_mask, "loc_mask": loc_mask, "stop_mask": stop_mask, "step_reward": step_reward,
            "returns": multiset.discounted_returns(step_reward, loc_mask, self.gamma),
            "label_returns": multiset.discounted_returns(roll["reward"], loc_mask, self.gamma),
            # episode-level rewards (undiscounted sums), the self-critical baseline's currency
            "episode_reward": (step_reward * loc_mask).sum(-1),
            "episode_label_reward": (roll["reward"] * loc_mask).sum(-1),
        }

    def returns(self, episode: Episode, targets: Tensor, batch: dict | None = None) -> dict[str, Tensor]:
        """Per-step returns ``(B, T)`` of the location and label decisions, and the episode's
        total rewards ``(B,)`` (``episode_reward``, ``episode_label_reward``): what a greedy
        rollout gives the ``self_critical`` baseline."""
        played = self.play(episode, targets, batch)
        return {key: played[key] for key in ("returns", "label_returns", "episode_reward", "episode_label_reward")}

    def advantage(self, played: dict, kind: str, values: Tensor | None, greedy: dict | None) -> Tensor:
        """Detached advantage ``(B, T)`` of the ``kind`` return (``returns`` of the locations or
        ``label_returns``), each against its own baseline (see the class docstring)."""
        returns, mask = played[kind], played["loc_mask"]
        if self.baseline == "learned":
            if values is None:
                raise ValueError(f"the learned baseline of {kind} needs the policy's value output for it "
                                 f"(GlimpsePolicy(num_values=objective.num_values))")
            return (returns - values).detach()
        if self.baseline == "batch_mean":
            return (returns - ((returns * mask).sum(0) / mask.sum(0).clamp(min=1))).detach()
        if greedy is None:
            raise ValueError("objective.baseline='self_critical' needs the greedy rollout's returns (greedy=...)")
        total = "episode_reward" if kind == "returns" else "episode_label_reward"
        return (played[total] - greedy[total])[:, None].expand_as(returns).detach()

    def stop_loss(self, episode: Episode, targets: Tensor, stop_mask: Tensor) -> Tensor:
        """Binary cross entropy of the stop head on steps 0..|Y|, positive at step |Y|, averaged
        per image over its steps, then over the batch."""
        if episode.stop_logits is None:
            raise ValueError("objective.termination=head needs a policy with a stop head (GlimpsePolicy(stop_head=True))")
        t = torch.arange(episode.stop_logits.shape[1], device=targets.device)
        at_end = (t[None, :] == targets.sum(-1, keepdim=True)).float()
        bce = F.binary_cross_entropy_with_logits(episode.stop_logits, at_end, reduction="none")
        return ((bce * stop_mask).sum(-1) / stop_mask.sum(-1).clamp(min=1)).mean()

    def __call__(
        self, episode: Episode, targets: Tensor, batch: dict | None = None, greedy: dict[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """Losses of a batch; ``batch`` supplies boxes / labels / index when an option needs them,
        ``greedy`` the greedy rollout's :meth:`returns` for the self-critical baseline."""
        played = self.play(episode, targets, batch)
        log_probs, step_mask, loc_mask = played["log_probs"], played["step_mask"], played["loc_mask"]
        out: dict[str, Tensor] = {}
        out["label_loss"] = self.labels(episode, played, batch,
                                        lambda kind: self.advantage(played, kind, episode.label_values, greedy))

        returns = played["returns"]
        n = loc_mask.sum().clamp(min=1)
        advantage = self.advantage(played, "returns", episode.values, greedy)  # the baseline never receives policy gradient
        out["location_loss"] = -(advantage * episode.location_logp() * loc_mask).sum() / n
        out["value_loss"] = (((episode.values - returns) ** 2) * loc_mask).sum() / n
        if self.num_values == 2:  # the label return's own baseline
            out["value_loss"] = out["value_loss"] + (((episode.label_values - played["label_returns"]) ** 2) * loc_mask).sum() / n
        if self.termination == "head":
            out["stop_loss"] = self.stop_loss(episode, targets, played["stop_mask"])
        entropy = episode.location_entropy()
        if self.labels.samples_labels:
            entropy = entropy + -(log_probs.exp() * log_probs).sum(-1)
        out["entropy"] = (entropy * loc_mask).sum() / n
        out["count_loss"] = count_loss(episode.class_density, targets)
        out["peak_loss"] = peak_loss(episode.class_density, targets)
        value_weight = self.value_weight if self.baseline == "learned" else 0.0  # the value head is unused otherwise
        out["loss"] = (
            out["label_loss"]
            + out["location_loss"]
            + value_weight * out["value_loss"]
            - self.entropy_weight * out["entropy"]
            + self.count_weight * out["count_loss"]
            + self.peak_weight * out["peak_loss"]
        )
        if "stop_loss" in out:
            out["loss"] = out["loss"] + self.stop_weight * out["stop_loss"]
        roll = played["roll"]
        # the labels' total reward per episode: its steps until STOP, or with the stop head its first |Y| steps
        scored = roll["alive"] if self.termination == "label" else loc_mask
        out["reward"] = (roll["reward"] * scored).sum(-1).mean()
        out["location_reward"] = (played["step_reward"] * loc_mask).sum() / n
        out["advantage"] = (advantage * loc_mask).sum() / n
        # diagnostics, not in the loss: the label policy's entropy on the label steps, and the share of
        # episodes that would stop at the first step (by the stop head, or by a first label STOP)
        with torch.no_grad():
            label_entropy = -(log_probs.exp() * log_probs).sum(-1)
            out["label_entropy"] = (label_entropy * step_mask).sum() / step_mask.sum().clamp(min=1)
            logits = episode.label_logits
            first = episode.stop_logits[:, 0] > 0 if episode.stop_logits is not None else episode.labels[:, 0] == logits.shape[-1] - 1
            out["stop_at_once"] = first.float().mean()
        return out
