"""The glimpse policy (Welleck et al., NeurIPS 2017): meta-controller, interface, controller.

Data flow for one image batch, ``T`` meta steps, ``k`` glimpses each:

    image -> backbone -> activations A (B, C, h, w) -> saliency model -> saliency_map S (B, h, w)
    for t in 1..T:                                       # one label (or STOP) per meta step
        meta-controller: location ~ softmax(log S_t + <key, query(h_meta)>)   (REINFORCE)
                         attention_mask M_t = Gaussian mixture at the location
                         S_{t+1} = S_t * (1 - M_t)                           (inhibition of return)
        interface:       initial glimpse vector g0 = sum(M_t A) / sum(M_t)
                         priority_map = log M_t + <key, query(h_ctrl)>
        controller:      k glimpses ~ softmax(priority_map) (REINFORCE), each a Gaussian read of A,
                         then one classification step: label logits over C classes + STOP

All of it is batched; the only Python loops are over the T meta steps and k glimpses.
:meth:`GlimpsePolicy.rollout` makes the decisions (sampled or greedy, labels optionally rolled
in from outside); :meth:`GlimpsePolicy.replay` replays recorded decisions, and
:meth:`GlimpsePolicy.replay_labels` only what the label logits depend on.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.distributions import Categorical

from glimpse.models.attention import GaussianMixtureAttention, GaussianRead
from glimpse.models.backbone import SaliencyModel

_EPS = 1e-6


@dataclass
class Episode:
    """Everything a batched rollout records; shapes use B batch, T meta steps, k glimpses."""

    saliency_map: Tensor  # (B, h, w) initial saliency map S
    class_density: Tensor  # (B, K, h, w); sums over space to predicted counts
    meta_locations: Tensor  # (B, T) flat cell index chosen by the meta-controller
    meta_logp: Tensor  # (B, T)
    meta_entropy: Tensor  # (B, T)
    attention_masks: Tensor  # (B, T, h*w) covert attention mask of each meta step
    saliency_mass: Tensor  # (B, T) saliency left before each step (inhibition of return)
    glimpse_locations: Tensor  # (B, T, k)
    glimpse_logp: Tensor  # (B, T, k)
    glimpse_entropy: Tensor  # (B, T, k)
    label_logits: Tensor  # (B, T, K + 1); index K is STOP (STOP_MASKED under a stop head)
    labels: Tensor  # (B, T) emitted label or STOP
    values: Tensor  # (B, T) learned baseline of the step's location return, from detached state
    grid: tuple[int, int]  # (h, w)
    priority_maps: Tensor | None = None  # (B, T, k, h*w) logits, only when record=True
    cell_stride: int | None = None  # pixels per cell of the backbone (cell j centred at pixel stride*j); None: even split
    label_values: Tensor | None = None  # (B, T) learned baseline of the label return (a second value output), or None
    stop_logits: Tensor | None = None  # (B, T) logit of the stop head (termination by a separate head), or None

    def actions(self) -> dict[str, Tensor]:
        """The discrete decisions, for replaying the same episode (attribution, env)."""
        return {"meta_locations": self.meta_locations, "glimpse_locations": self.glimpse_locations, "labels": self.labels}

    def step_locations(self) -> Tensor:
        """Cells ``(B, T, k')`` each meta step looked at: its ``k`` glimpses, or its meta cell when ``k = 0``."""
        return self.glimpse_locations if self.glimpse_locations.shape[-1] else self.meta_locations[..., None]

    def location_logp(self) -> Tensor:
        """Log-probability ``(B, T)`` of all location decisions of each meta step."""
        return self.meta_logp + self.glimpse_logp.sum(-1)

    def location_entropy(self) -> Tensor:
        """Entropy ``(B, T)`` of each meta step's location decisions: the meta-controller's plus
        each glimpse's, summed as their log-probabilities are (zero glimpses add nothing)."""
        return self.meta_entropy + self.glimpse_entropy.sum(-1)


# the STOP logit of a policy with a stop head: STOP is the head's decision, so the label
# distribution is over the K classes (as the 2018 authors' code) and this constant logit gives
# STOP probability 0 (exp underflows; finite, so p * log p stays 0) and no gradient
STOP_MASKED = -1e4


def classes_only(label_logits: Tensor) -> Tensor:
    """``label_logits (..., K + 1)`` with STOP's logit set to :data:`STOP_MASKED`: the label
    distribution of a policy whose stop head decides termination."""
    is_stop = torch.arange(label_logits.shape[-1], device=label_logits.device) == label_logits.shape[-1] - 1
    return label_logits.masked_fill(is_stop, STOP_MASKED)


MODES = ("sample", "greedy")
# what of the saliency model the policy's gradients may not reach: all (the map and the densities the
# glimpses read), map (the log-map term of the location logits only), none
DETACH_SALIENCY = ("all", "map", "none")
# a label roll-in: (attention_mask (B, h*w), class_density (B, K, h, w)) -> the step's labels (B,)
LabelRollIn = Callable[[Tensor, Tensor], Tensor]


def _choose(logits: Tensor, mode: str, forced: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Pick an action from ``logits (B, N)``: sample, greedy, or the ``forced`` replay."""
    dist = Categorical(logits=logits)
    if forced is not None:
        action = forced
    elif mode == "sample":
        action = dist.sample()
    else:
        action = logits.argmax(-1)
    return action.detach(), dist.log_prob(action), dist.entropy()


class ForcedLabels:
    """A label roll-in that emits given labels ``(B, T)`` step after step (teacher forcing)."""

    def __init__(self, labels: Tensor) -> None:
        self.labels, self.t = labels, 0

    def __call__(self, attention_mask: Tensor, class_density: Tensor) -> Tensor:
        label = self.labels[:, self.t]
        self.t += 1
        return label


@dataclass
class _Decisions:
    """How one rollout picks its actions: per step ``t`` (and glimpse ``j``), a forced action or None."""

    location_mode: str = "greedy"
    label_mode: str = "greedy"
    actions: dict[str, Tensor] | None = None
    label_roll_in: LabelRollIn | None = None
    head_stops: bool = True

    def forced(self, key: str, *index: int) -> Tensor | None:
        value = (self.actions or {}).get(key)
        return None if value is None else value[(slice(None), *index)]


@dataclass
class _Encoded:
    """What every step reads: the image's features, keys and saliency outputs."""

    saliency_map: Tensor  # (B, h, w)
    class_density: Tensor  # (B, K, h, w)
    features: Tensor  # (B, h*w, C) activations (and, with read_density, the densities)
    keys: Tensor | None  # (B, h*w, D) the location keys; None when no location is chosen
    grid: tuple[int, int]


class MetaController(nn.Module):
    """Recurrent: picks where to attend next from the current saliency map and its state."""

    def __init__(
        self, feature_dim: int, label_dim: int, hidden: int, key_dim: int, sigmas: tuple[float, ...], temperature: float,
        detach_saliency: bool, learn_attention: bool,
    ):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"model.policy.saliency_temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.detach_saliency = detach_saliency
        self.cell = nn.LSTMCell(feature_dim + label_dim + 1, hidden)
        self.query = nn.Linear(hidden, key_dim)
        self.attention = GaussianMixtureAttention(sigmas, learn=learn_attention)
        self.key_dim = key_dim

    def location_logits(self, h: Tensor, keys: Tensor, saliency: Tensor) -> Tensor:
        """Logits over cells ``(B, h*w)``: the log saliency map, modulated by the state."""
        bias = torch.bmm(keys, self.query(h)[:, :, None]).squeeze(-1) / math.sqrt(self.key_dim)
        return torch.log(saliency + _EPS) / self.temperature + bias

    def forward(
        self, summary: Tensor, previous_label: Tensor, log_mass: Tensor, state: tuple[Tensor, Tensor], keys: Tensor,
        saliency: Tensor,
    ) -> tuple[tuple[Tensor, Tensor], Tensor]:
        """One meta step: the new state and the location logits ``(B, h*w)``."""
        h, c = self.cell(torch.cat([summary, previous_label, log_mass], -1), state)
        return (h, c), self.location_logits(h, keys, saliency)


class Interface(nn.Module):
    """From the attention mask and the controller state: initial glimpse vector and priority map."""

    def __init__(self, hidden: int, key_dim: int, temperature: float = 1.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"model.policy.glimpse_temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.query = nn.Linear(hidden, key_dim)
        self.key_dim = key_dim

    @staticmethod
    def initial_glimpse(mask: Tensor, features: Tensor) -> Tensor:
        """Mask-weighted average of the activations ``(B, C)``."""
        weights = mask / mask.sum(-1, keepdim=True).clamp(min=_EPS)
        return torch.bmm(weights[:, None, :], features).squeeze(1)

    def priority_map(self, mask: Tensor, keys: Tensor, h_ctrl: Tensor) -> Tensor:
        """Glimpse logits ``(B, h*w)``: ``log mask / temperature`` keeps glimpses in the attended region."""
        bias = torch.bmm(keys, self.query(h_ctrl)[:, :, None]).squeeze(-1) / math.sqrt(self.key_dim)
        return torch.log(mask + _EPS) / self.temperature + bias

    forward = priority_map


class Controller(nn.Module):
    """Recurrent: takes k glimpses, then one classification step (a label or STOP)."""

    def __init__(self, feature_dim: int, hidden: int, num_classes: int, glimpse_sigma: float):
        super().__init__()
        self.cell = nn.LSTMCell(2 * feature_dim + 1, hidden)
        self.read = GaussianRead(glimpse_sigma)
        # the classification step sees the state and, as a skip, the initial glimpse vector
        self.classifier = nn.Sequential(
            nn.Linear(hidden + feature_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes + 1)
        )

    def glimpse(
        self, features: Tensor, location: Tensor, g0: Tensor, log_mass: Tensor, state: tuple[Tensor, Tensor],
        grid: tuple[int, int],
    ) -> tuple[Tensor, Tensor]:
        """One glimpse: a Gaussian read at ``location``, one controller step; the new state."""
        glimpse = self.read(features, location, *grid)
        return self.cell(torch.cat([glimpse, g0, log_mass], -1), state)

    def forward(self, g0: Tensor, log_mass: Tensor, state: tuple[Tensor, Tensor]) -> tuple[tuple[Tensor, Tensor], Tensor]:
        """The classification step (the (k+1)-th, reading the attended region as a whole): the new
        state and the label logits ``(B, K + 1)`` (index K is STOP)."""
        h, c = self.cell(torch.cat([g0, g0, log_mass], -1), state)
        return (h, c), self.classifier(torch.cat([h, g0], -1))


class GlimpsePolicy(nn.Module):
    """The whole model: backbone, saliency model, meta-controller, interface, controller.

    ``stop_head`` adds a termination head (a logit per step; see :meth:`rollout`);
    ``num_values`` is 2 when the label return needs its own learned baseline.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        hidden: int = 128,
        key_dim: int = 64,
        label_dim: int = 32,
        num_glimpses: int = 1,
        attention_sigmas: tuple[float, ...] = (1.0, 2.0),
        glimpse_sigma: float = 1.0,
        saliency_hidden: int = 64,
        read_density: bool = True,
        saliency_temperature: float = 0.5,
        detach_saliency: bool | str = "map",
        learn_attention: bool = False,
        glimpse_temperature: float = 1.0,
        stop_head: bool = False,
        num_values: int = 1,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if num_glimpses < 0:
            raise ValueError(f"model.num_glimpses must be >= 0, got {num_glimpses}")
        detach = ("all" if detach_saliency else "none") if isinstance(detach_saliency, bool) else detach_saliency
        if detach not in DETACH_SALIENCY:
            raise ValueError(f"model.policy.detach_saliency={detach_saliency!r} is not known; choose one of "
                             f"{list(DETACH_SALIENCY)} (true = all, false = none)")
        # all: the densities the glimpses and location keys read are detached too
        self.detach_density = detach == "all"
        # with read_density the glimpses also read the saliency model's per-class densities
        feature_dim = backbone.out_channels + (num_classes if read_density else 0)
        self.read_density = read_density
        self.num_classes = num_classes
        self.num_glimpses = num_glimpses
        self.backbone = backbone
        self.saliency = SaliencyModel(backbone.out_channels, num_classes, saliency_hidden)
        self.keys = nn.Linear(feature_dim, key_dim)
        self.label_embedding = nn.Embedding(num_classes + 2, label_dim)  # classes, STOP, start
        self.meta = MetaController(
            feature_dim, label_dim, hidden, key_dim, tuple(attention_sigmas), saliency_temperature, detach != "none",
            learn_attention,
        )
        self.interface = Interface(hidden, key_dim, glimpse_temperature)
        self.controller = Controller(feature_dim, hidden, num_classes, glimpse_sigma)
        if num_values not in (1, 2):
            raise ValueError(f"num_values must be 1 (location return) or 2 (location and label returns), got {num_values}")
        # value head on detached state: the baseline of the location return, and with num_values=2 of the label return
        self.value = nn.Sequential(nn.Linear(2 * hidden + 1, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_values))
        # termination by a separate head (the 2018 authors' code): a logit per step, STOP where it is > 0
        self.stop = nn.Linear(hidden + feature_dim, 1) if stop_head else None

    # -- the modes ------------------------------------------------------------------------------------
    def forward(
        self,
        image: Tensor,
        num_steps: int,
        location_mode: str = "sample",
        label_mode: str = "greedy",
        actions: dict[str, Tensor] | None = None,
        record: bool = False,
        label_roll_in: LabelRollIn | None = None,
        labels_only: bool = False,
        head_stops: bool = True,
    ) -> Episode:
        """:meth:`rollout`, or with ``actions`` (every decision recorded) :meth:`replay` /
        :meth:`replay_labels` (``labels_only``); ``actions`` with only ``labels`` rolls them in."""
        for name, mode in (("location_mode", location_mode), ("label_mode", label_mode)):
            if mode not in MODES:
                raise ValueError(f"{name} must be 'sample' or 'greedy', got {mode!r}")
        actions = actions or {}
        if labels_only:
            return self.replay_labels(image, num_steps, actions, record=record)
        if {"meta_locations", "glimpse_locations"} & set(actions):
            return self.replay(image, num_steps, actions, record=record)
        if "labels" in actions:
            label_roll_in = ForcedLabels(actions["labels"])
        return self.rollout(image, num_steps, location_mode, label_mode, label_roll_in, record, head_stops)

    def rollout(
        self, image: Tensor, num_steps: int, location_mode: str = "sample", label_mode: str = "greedy",
        label_roll_in: LabelRollIn | None = None, record: bool = False, head_stops: bool = True,
    ) -> Episode:
        """Roll out ``num_steps`` meta steps on a batch, every decision sampled or greedy.

        ``label_roll_in``, when given, picks each step's label instead of the model (oracle
        roll-in, teacher forcing). With a stop head, the labels are chosen among the classes, and
        where the head's logit is > 0 the step emits STOP instead (``head_stops``; training turns it
        off: its episodes run |Y| + 1 steps and the head is taught by its own loss).
        """
        return self._unroll(image, num_steps, _Decisions(location_mode, label_mode, None, label_roll_in, head_stops), record)

    def replay(self, image: Tensor, num_steps: int, actions: dict[str, Tensor], record: bool = False) -> Episode:
        """The episode of recorded decisions ``actions`` (:meth:`Episode.actions`): the same
        locations and labels, their log-probabilities and entropies under the model now."""
        missing = sorted({"meta_locations", "glimpse_locations", "labels"} - set(actions))
        if missing:
            raise ValueError(f"a replay needs every decision recorded; actions lack {missing}")
        return self._unroll(image, num_steps, _Decisions(actions=actions), record)

    def replay_labels(self, image: Tensor, num_steps: int, actions: dict[str, Tensor], record: bool = False) -> Episode:
        """A replay that computes only what the label logits depend on: with every location
        forced, the meta-controller's state, the value and the location policies' log-probabilities
        do not feed them; those fields are zeros. For replays that score labels."""
        if not {"meta_locations", "glimpse_locations"} <= set(actions):
            raise ValueError("labels_only needs the locations forced: actions with meta_locations and glimpse_locations")
        enc = self._encode(image, with_keys=False)
        batch = image.shape[0]
        ctrl = (image.new_zeros(batch, self.controller.cell.hidden_size),) * 2
        saliency = enc.saliency_map.flatten(1)
        rec: dict[str, list[Tensor]] = {}
        for t in range(num_steps):
            seen = saliency.detach() if self.meta.detach_saliency else saliency
            mass = seen.sum(-1, keepdim=True)
            log_mass = torch.log1p(mass)
            loc = actions["meta_locations"][:, t]
            zeros = mass.new_zeros(batch)
            mask = self.meta.attention(loc, *enc.grid)
            g0 = self.interface.initial_glimpse(mask, enc.features)
            g_locs = []
            for j in range(self.num_glimpses):
                g_loc = actions["glimpse_locations"][:, t, j]
                ctrl = self.controller.glimpse(enc.features, g_loc, g0, log_mass, ctrl, enc.grid)
                g_locs.append(g_loc)
            ctrl, label_logits = self._label_logits(g0, log_mass, ctrl)
            label = actions["labels"][:, t] if "labels" in actions else label_logits.argmax(-1)
            _keep(rec, meta_locations=loc, meta_logp=zeros, meta_entropy=zeros, attention_masks=mask,
                  saliency_mass=mass.squeeze(-1), label_logits=label_logits, labels=label, values=zeros,
                  **_glimpse_fields(g_locs, [zeros] * len(g_locs), [zeros] * len(g_locs), batch, image))
            if record:
                _keep(rec, priority_maps=image.new_zeros(batch, self.num_glimpses, mask.shape[-1]))
            saliency = saliency * (1 - mask)
        return self._episode(enc, rec)

    # -- the parts --------------------------------------------------------------------------------
    def _encode(self, image: Tensor, with_keys: bool = True) -> _Encoded:
        activations = self.backbone(image)  # (B, C, h, w)
        saliency_map, class_density = self.saliency(activations)
        height, width = activations.shape[-2:]
        if self.read_density:
            # detached (detach_saliency=all), neither the location nor the label decisions train the saliency
            # model through what they read
            density = class_density.detach() if self.detach_density else class_density
            activations = torch.cat([activations, density], 1)  # (B, C + K, h, w)
        features = activations.flatten(2).transpose(1, 2)  # (B, h*w, C)
        keys = self.keys(features) if with_keys else None  # (B, h*w, D)
        return _Encoded(saliency_map, class_density, features, keys, (height, width))

    def _label_logits(self, g0: Tensor, log_mass: Tensor, ctrl: tuple[Tensor, Tensor]) -> tuple[tuple[Tensor, Tensor], Tensor]:
        """The controller's classification step: its state and the label logits ``(B, K + 1)``,
        STOP masked (:func:`classes_only`) when the stop head decides termination."""
        ctrl, label_logits = self.controller(g0, log_mass, ctrl)
        return ctrl, label_logits if self.stop is None else classes_only(label_logits)

    def _label(self, label_logits: Tensor, stop_logit: Tensor | None, mask: Tensor, class_density: Tensor,
               decide: _Decisions, t: int) -> Tensor:
        """The step's label: forced (replay), rolled in, or chosen; with a stop head, among the classes."""
        forced = decide.forced("labels", t)
        if forced is None and decide.label_roll_in is not None:
            forced = decide.label_roll_in(mask, class_density)
        if forced is not None:
            return forced
        if stop_logit is None:
            return _choose(label_logits, decide.label_mode, None)[0]
        label = _choose(label_logits[:, : self.num_classes], decide.label_mode, None)[0]
        return torch.where(stop_logit > 0, self.num_classes, label) if decide.head_stops else label

    def _unroll(self, image: Tensor, num_steps: int, decide: _Decisions, record: bool) -> Episode:
        enc = self._encode(image)
        batch = image.shape[0]
        hidden = self.meta.cell.hidden_size
        meta_state = (image.new_zeros(batch, hidden),) * 2
        ctrl = (image.new_zeros(batch, self.controller.cell.hidden_size),) * 2
        summary = image.new_zeros(batch, enc.features.shape[-1])
        prev_label = torch.full((batch,), self.num_classes + 1, dtype=torch.long, device=image.device)
        saliency = enc.saliency_map.flatten(1)  # (B, h*w), inhibited step by step
        rec: dict[str, list[Tensor]] = {}
        for t in range(num_steps):
            # what the meta-controller sees of the map; detached, the map learns from its own losses only
            seen = saliency.detach() if self.meta.detach_saliency else saliency
            mass = seen.sum(-1, keepdim=True)
            log_mass = torch.log1p(mass)
            meta_state, loc_logits = self.meta(summary, self.label_embedding(prev_label), log_mass, meta_state, enc.keys, seen)
            value = self.value(torch.cat([meta_state[0], ctrl[0], log_mass], -1).detach())  # (B, num_values)
            loc, loc_logp, loc_ent = _choose(loc_logits, decide.location_mode, decide.forced("meta_locations", t))
            mask = self.meta.attention(loc, *enc.grid)  # (B, h*w)
            g0 = self.interface.initial_glimpse(mask, enc.features)  # (B, C)

            g_locs, g_logps, g_ents, prios = [], [], [], []
            for j in range(self.num_glimpses):
                prio = self.interface(mask, enc.keys, ctrl[0])
                g_loc, g_logp, g_ent = _choose(prio, decide.location_mode, decide.forced("glimpse_locations", t, j))
                ctrl = self.controller.glimpse(enc.features, g_loc, g0, log_mass, ctrl, enc.grid)
                g_locs.append(g_loc), g_logps.append(g_logp), g_ents.append(g_ent), prios.append(prio)
            ctrl, label_logits = self._label_logits(g0, log_mass, ctrl)
            stop_logit = None if self.stop is None else self.stop(torch.cat([ctrl[0], g0], -1)).squeeze(-1)
            label = self._label(label_logits, stop_logit, mask, enc.class_density, decide, t)

            _keep(rec, meta_locations=loc, meta_logp=loc_logp, meta_entropy=loc_ent, attention_masks=mask,
                  saliency_mass=mass.squeeze(-1), label_logits=label_logits, labels=label, values=value[:, 0],
                  **_glimpse_fields(g_locs, g_logps, g_ents, batch, image))
            if value.shape[-1] > 1:
                _keep(rec, label_values=value[:, 1])
            if stop_logit is not None:
                _keep(rec, stop_logits=stop_logit)
            if record:
                _keep(rec, priority_maps=torch.stack(prios, 1) if prios else image.new_zeros(batch, 0, mask.shape[-1]))
            saliency = saliency * (1 - mask)  # inhibition of return
            summary, prev_label = g0, label
        return self._episode(enc, rec)

    def _episode(self, enc: _Encoded, rec: dict[str, list[Tensor]]) -> Episode:
        stacked = {key: torch.stack(values, 1) for key, values in rec.items()}
        return Episode(saliency_map=enc.saliency_map, class_density=enc.class_density, grid=enc.grid,
                       cell_stride=getattr(self.backbone, "stride", None), **stacked)


def _keep(rec: dict[str, list[Tensor]], **items: Tensor) -> None:
    for key, value in items.items():
        rec.setdefault(key, []).append(value)


def _glimpse_fields(locations: list, logps: list, entropies: list, batch: int, like: Tensor) -> dict[str, Tensor]:
    """The step's glimpse records ``(B, k)``, empty ``(B, 0)`` when ``k = 0``."""
    empty = like.new_zeros(batch, 0)
    return {"glimpse_locations": torch.stack(locations, -1) if locations else empty.long(),
            "glimpse_logp": torch.stack(logps, -1) if logps else empty,
            "glimpse_entropy": torch.stack(entropies, -1) if entropies else empty}
