"""The label losses, one class each, chosen once from ``objective.label_loss``:

- :class:`MultisetLoss` (Welleck et al. 2018): cross entropy against the oracle policy of the
  remaining multiset, with a roll-in (greedy, stochastic or oracle);
- :class:`SequenceLoss`: cross entropy against the labels in a fixed order, teacher forced
  (the 2018 paper's baseline);
- :class:`ReinforceLoss` (Welleck et al. 2017): labels sampled, rewarded by the multiset reward.

Each says how the training rollout picks its labels (:attr:`LabelLoss.label_mode`,
:meth:`LabelLoss.roll_in_args`), which steps it scores, and its loss.
"""
from __future__ import annotations

import abc
from collections.abc import Callable

import torch
from torch import Tensor

from glimpse import multiset
from glimpse.models.policy import Episode, ForcedLabels

_PRIME = 2_147_483_647  # 2^31 - 1: the modulus of the per-image hash of the random order
SEQUENCE_ORDERS = ("random", "spatial", "area")


class OracleRollIn:
    """Oracle roll-in of the multiset loss: each step's label is drawn from the oracle
    distribution of the remaining multiset (:func:`multiset.oracle_policy`), which then loses it.

    Passed to :meth:`GlimpsePolicy.rollout` as ``label_roll_in``; ``attended`` weights the
    remaining labels by their density under the step's attention mask, as the loss does.
    """

    def __init__(self, targets: Tensor, attended: bool) -> None:
        self.remaining = targets.clone()
        self.attended = attended

    def __call__(self, attention_mask: Tensor, class_density: Tensor) -> Tensor:
        preference = multiset.attended_mass(attention_mask, class_density) if self.attended else None
        probs = multiset.oracle_policy(self.remaining, preference)
        label = torch.multinomial(probs, 1).squeeze(1)
        _, self.remaining, _ = multiset.step(self.remaining, label)
        return label


def order_keys(order: str, labels: Tensor, boxes: Tensor | None, index: Tensor | None, seed: int) -> Tensor:
    """Sort keys ``(B, N)`` of the ground-truth objects (smaller first) for a fixed label order.

    ``spatial``: raster order of the box centres (by pixel row, then column); ``area``: the
    largest box first; ``random``: a permutation fixed per image, hashed from ``(seed, index)``.
    """
    if order == "random":
        position = torch.arange(labels.shape[1], device=labels.device)
        x = (index.long()[:, None] * 1_000_003 + position + seed * 7_919) % _PRIME
        h = (x * 48_271 + 11) % _PRIME
        return ((h * h) % _PRIME + x).float()  # squaring mod p: no linear pattern over positions
    centres = (boxes[..., :2] + boxes[..., 2:]) / 2
    if order == "spatial":
        return centres[..., 1].floor() * (boxes[..., 2].max() + 1) + centres[..., 0]
    return -((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]))


def _mean(values: Tensor, mask: Tensor) -> Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def termination_step_mask(targets: Tensor, num_steps: int) -> Tensor:
    """``(B, T)``: the steps taught with termination by label, ``0..|Y|`` (|Y| labels, then the
    step whose target is STOP)."""
    t = torch.arange(num_steps, device=targets.device)
    return (t[None, :] <= targets.sum(-1, keepdim=True)).float()


def multiset_cross_entropy(log_probs: Tensor, remaining: Tensor, step_mask: Tensor,
                           preference: Tensor | None = None) -> Tensor:
    """The multiset loss (Welleck et al. 2018): the cross entropy of the model's ``log_probs (B, T,
    K + 1)`` against the oracle policy of the ``remaining (B, T, K)`` multiset before each step,
    averaged over the ``step_mask`` steps."""
    oracle = multiset.oracle_policy(remaining.flatten(0, 1), preference).view_as(log_probs)
    return _mean(-(oracle * log_probs).sum(-1), step_mask)


class LabelLoss(abc.ABC):
    """How the labels are trained. ``played`` is :meth:`GlimpseObjective.play`'s record of the
    episode (log-probabilities, remaining multisets, masks, returns)."""

    label_mode = "greedy"  # how the training rollout picks labels the roll-in does not force
    stop_ends = False  # with termination by label, a STOP label ends the training episode
    samples_labels = False  # the labels are decisions of the policy (their entropy is part of the bonus)

    def num_steps(self, targets: Tensor, max_steps: int) -> int:
        """Meta steps of the training rollout: |Y| + 1 (the labels, then the termination step)."""
        return int(targets.sum(-1).max().item()) + 1

    def roll_in_args(self, batch: dict, num_steps: int) -> dict:
        """Keyword arguments of the training rollout that pick its labels."""
        return {}

    def masks(self, targets: Tensor, remaining: Tensor, alive: Tensor) -> tuple[Tensor, Tensor]:
        """``(step_mask, location_mask)`` ``(B, T)`` with termination by label: steps 0..|Y| (|Y|
        labels, then the termination step whose target is STOP); the location decisions only
        matter while something is left to find."""
        step_mask = termination_step_mask(targets, remaining.shape[1])
        return step_mask, step_mask * (remaining.sum(-1) > 0).float()

    @abc.abstractmethod
    def __call__(self, episode: Episode, played: dict, batch: dict | None, advantage: Callable[[str], Tensor]) -> Tensor:
        """The label loss of a batch (each subclass is one of the label losses)."""


class MultisetLoss(LabelLoss):
    """Cross entropy against the oracle policy (:func:`multiset.oracle_policy`) of the remaining
    multiset after the rolled-in labels: ``greedy`` (the model's argmax, the paper's),
    ``stochastic`` (sampled from the model) or ``oracle`` (:class:`OracleRollIn`). With
    ``attended``, the optimal labels are weighted by their density under the step's mask."""

    def __init__(self, roll_in: str, attended: bool) -> None:
        self.roll_in, self.attended = roll_in, attended
        self.label_mode = "sample" if roll_in == "stochastic" else "greedy"

    def roll_in_args(self, batch: dict, num_steps: int) -> dict:
        return {"label_roll_in": OracleRollIn(batch["counts"], self.attended)} if self.roll_in == "oracle" else {}

    def __call__(self, episode: Episode, played: dict, batch: dict | None, advantage: Callable[[str], Tensor]) -> Tensor:
        preference = played["attended"].flatten(0, 1) if self.attended else None
        return multiset_cross_entropy(played["log_probs"], played["remaining"], played["step_mask"], preference)


class SequenceLoss(LabelLoss):
    """Cross entropy against the ground-truth labels in a fixed order (:func:`order_keys`:
    ``random``, ``spatial``, ``area``; the last two use the boxes), then STOP; teacher forced."""

    def __init__(self, order: str, seed: int) -> None:
        self.order, self.seed = order, seed

    def sequence(self, batch: dict) -> Tensor:
        """The ground-truth labels ``(B, N + 1)`` in the order, then STOP (padding too)."""
        labels, stop = batch["labels"], batch["counts"].shape[-1]
        needs = {"labels"} | ({"index"} if self.order == "random" else {"boxes"})
        missing = sorted(needs - set(batch))
        if missing:
            raise ValueError(f"objective.sequence_order={self.order!r} needs {missing} in the batch; this data has none")
        keys = order_keys(self.order, labels, batch.get("boxes"), batch.get("index"), self.seed)
        ordered = labels.gather(1, keys.masked_fill(labels < 0, float("inf")).argsort(dim=-1, stable=True))
        ordered = torch.cat([ordered, ordered.new_full((labels.shape[0], 1), -1)], 1)
        return torch.where(ordered < 0, stop, ordered)

    def roll_in_args(self, batch: dict, num_steps: int) -> dict:
        return {"label_roll_in": ForcedLabels(self.sequence(batch)[:, :num_steps])}

    def __call__(self, episode: Episode, played: dict, batch: dict | None, advantage: Callable[[str], Tensor]) -> Tensor:
        log_probs = played["log_probs"]
        sequence = self.sequence(batch)[:, : log_probs.shape[1]]
        return _mean(-log_probs.gather(-1, sequence[..., None]).squeeze(-1), played["step_mask"])


class ReinforceLoss(LabelLoss):
    """REINFORCE: the sampled labels' log-probabilities times their advantage (the label return
    against its own baseline). With termination by label the episode runs to the step budget
    and ends at the first STOP."""

    label_mode = "sample"
    stop_ends = True
    samples_labels = True

    def num_steps(self, targets: Tensor, max_steps: int) -> int:
        return max_steps

    def masks(self, targets: Tensor, remaining: Tensor, alive: Tensor) -> tuple[Tensor, Tensor]:
        return alive.float(), alive.float()

    def __call__(self, episode: Episode, played: dict, batch: dict | None, advantage: Callable[[str], Tensor]) -> Tensor:
        label_logp = played["log_probs"].gather(-1, episode.labels[..., None]).squeeze(-1)
        return _mean(-advantage("label_returns") * label_logp, played["loc_mask"])


def make_label_loss(name: str, roll_in: str, oracle: str, sequence_order: str, sequence_seed: int) -> LabelLoss:
    """The label loss ``objective.label_loss`` names, built once."""
    if name == "multiset":
        return MultisetLoss(roll_in, oracle == "attended")
    if name == "sequence":
        return SequenceLoss(sequence_order, sequence_seed)
    return ReinforceLoss()
