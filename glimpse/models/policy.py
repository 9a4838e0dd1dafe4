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
    label_logits: Tensor  # (B, T, K + 1); index K is STOP
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


class GlimpsePolicy(nn.Module):
    """The whole model: backbone, saliency model, meta-controller, interface, controller."""

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
        detach_saliency: bool = True,
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
            feature_dim, label_dim, hidden, key_dim, tuple(attention_sigmas), saliency_temperature, detach_saliency,
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

    def forward(
        self,
        image: Tensor,
        num_steps: int,
        location_mode: str = "sample",
        label_mode: str = "greedy",
        actions: dict[str, Tensor] | None = None,
        record: bool = False,
        label_roll_in: Callable[[Tensor, Tensor], Tensor] | None = None,
        labels_only: bool = False,
        head_stops: bool = True,
    ) -> Episode:
        """Roll out ``num_steps`` meta steps on a batch; ``actions`` replays recorded decisions.

        ``label_roll_in(attention_mask (B, h*w), class_density (B, K, h, w)) -> labels (B,)``,
        when given, picks each step's label instead of the model (oracle roll-in).
        ``labels_only``: with every location forced by ``actions``, compute only what the label
        logits depend on (the meta-controller's state, the value and the location policies'
        log-probabilities do not feed them; those fields are zeros). For replays that score labels.
        With a stop head, the labels are chosen among the classes, and where the head's logit
        is > 0 the step emits STOP instead (``head_stops``; training turns it off: its episodes
        run |Y| + 1 steps and the head is taught by its own loss).
        """
        for name, mode in (("location_mode", location_mode), ("label_mode", label_mode)):
            if mode not in ("sample", "greedy"):
                raise ValueError(f"{name} must be 'sample' or 'greedy', got {mode!r}")
        actions = actions or {}
        if labels_only and not {"meta_locations", "glimpse_locations"} <= set(actions):
            raise ValueError("labels_only needs the locations forced: actions with meta_locations and glimpse_locations")
        activations = self.backbone(image)  # (B, C, h, w)
        saliency_map, class_density = self.saliency(activations)
        batch, _, height, width = activations.shape
        if self.read_density:
            # detached, neither the location nor the label decisions train the saliency model through what they read
            density = class_density.detach() if self.meta.detach_saliency else class_density
            activations = torch.cat([activations, density], 1)  # (B, C + K, h, w)
        features = activations.flatten(2).transpose(1, 2)  # (B, h*w, C)
        keys = None if labels_only else self.keys(features)  # (B, h*w, D)
        hidden = self.meta.cell.hidden_size
        h_meta = c_meta = image.new_zeros(batch, hidden)
        h_ctrl = c_ctrl = image.new_zeros(batch, self.controller.cell.hidden_size)
        summary = image.new_zeros(batch, features.shape[-1])
        prev_label = torch.full((batch,), self.num_classes + 1, dtype=torch.long, device=image.device)
        saliency = saliency_map.flatten(1)  # (B, h*w), inhibited step by step
        rec: dict[str, list[Tensor]] = {}

        def keep(**items: Tensor) -> None:
            for key, value in items.items():
                rec.setdefault(key, []).append(value)

        for t in range(num_steps):
            # what the meta-controller sees of the map; detached, the map learns from its own losses only
            seen = saliency.detach() if self.meta.detach_saliency else saliency
            mass = seen.sum(-1, keepdim=True)
            log_mass = torch.log1p(mass)
            forced = actions.get("meta_locations")
            if labels_only:
                loc = forced[:, t]
                loc_logp = loc_ent = mass.new_zeros(batch)
                value = mass.new_zeros(batch, self.value[-1].out_features)
            else:
                h_meta, c_meta = self.meta.cell(torch.cat([summary, self.label_embedding(prev_label), log_mass], -1),
                                                (h_meta, c_meta))
                value = self.value(torch.cat([h_meta, h_ctrl, log_mass], -1).detach())  # (B, num_values)
                loc_logits = self.meta.location_logits(h_meta, keys, seen)
                loc, loc_logp, loc_ent = _choose(loc_logits, location_mode, None if forced is None else forced[:, t])
            mask = self.meta.attention(loc, height, width)  # (B, h*w)
            g0 = self.interface.initial_glimpse(mask, features)  # (B, C)

            g_locs, g_logps, g_ents, prios = [], [], [], []
            for j in range(self.num_glimpses):
                forced = actions.get("glimpse_locations")
                if labels_only:
                    g_loc, g_logp, g_ent, prio = forced[:, t, j], loc_logp, loc_ent, mask.new_zeros(mask.shape)
                else:
                    prio = self.interface.priority_map(mask, keys, h_ctrl)
                    g_loc, g_logp, g_ent = _choose(prio, location_mode, None if forced is None else forced[:, t, j])
                glimpse = self.controller.read(features, g_loc, height, width)
                h_ctrl, c_ctrl = self.controller.cell(torch.cat([glimpse, g0, log_mass], -1), (h_ctrl, c_ctrl))
                g_locs.append(g_loc), g_logps.append(g_logp), g_ents.append(g_ent), prios.append(prio)
            # classification step: the (k+1)-th controller step, reading the attended region as a whole
            h_ctrl, c_ctrl = self.controller.cell(torch.cat([g0, g0, log_mass], -1), (h_ctrl, c_ctrl))
            label_logits = self.controller.classifier(torch.cat([h_ctrl, g0], -1))
            forced = actions.get("labels")
            forced = forced[:, t] if forced is not None else None if label_roll_in is None else label_roll_in(mask, class_density)
            stop_logit = None
            if self.stop is not None:
                stop_logit = self.stop(torch.cat([h_ctrl, g0], -1)).squeeze(-1)
                if forced is None:  # labels among the classes; the head decides STOP
                    label, _, _ = _choose(label_logits[:, : self.num_classes], label_mode, None)
                    if head_stops:
                        label = torch.where(stop_logit > 0, self.num_classes, label)
                else:
                    label = forced
            else:
                label, _, _ = _choose(label_logits, label_mode, forced)

            empty = image.new_zeros(batch, 0)
            keep(
                meta_locations=loc, meta_logp=loc_logp, meta_entropy=loc_ent, attention_masks=mask, saliency_mass=mass.squeeze(-1),
                glimpse_locations=torch.stack(g_locs, -1) if g_locs else empty.long(),
                glimpse_logp=torch.stack(g_logps, -1) if g_logps else empty,
                glimpse_entropy=torch.stack(g_ents, -1) if g_ents else empty,
                label_logits=label_logits, labels=label, values=value[:, 0],
            )
            if value.shape[-1] > 1:
                keep(label_values=value[:, 1])
            if stop_logit is not None:
                keep(stop_logits=stop_logit)
            if record:
                keep(priority_maps=torch.stack(prios, 1) if prios else image.new_zeros(batch, 0, height * width))
            saliency = saliency * (1 - mask)  # inhibition of return
            summary, prev_label = g0, label

        stacked = {key: torch.stack(values, 1) for key, values in rec.items()}
        return Episode(saliency_map=saliency_map, class_density=class_density, grid=(height, width),
                       cell_stride=getattr(self.backbone, "stride", None), **stacked)
