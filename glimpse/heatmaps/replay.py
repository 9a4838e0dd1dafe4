"""Attribution of the glimpse model's decisions: the recorded episode replayed.

The label emitted at meta step ``t`` depends on where the model looked, and those locations
are discrete samples. To explain the decision actually taken, the policy is run again with
the recorded location actions (and emitted labels) forced, so the only thing that changes
under a perturbation is the image; the target of step ``t`` is the logit of the label it
emitted (before the softmax, STOP excluded from the classes).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from glimpse.heatmaps.gradients import attribute
from glimpse.heatmaps.targets import NO_TARGET, emitted_label_targets, label_probability
from glimpse.geometry import upsample_cells
from glimpse.models.policy import Episode, GlimpsePolicy


def policy_of(model: nn.Module) -> tuple[GlimpsePolicy, str]:
    """The :class:`GlimpsePolicy` of a GlimpseModule (or the policy itself) and its module-name prefix."""
    if isinstance(model, GlimpsePolicy):
        return model, ""
    policy = getattr(model, "policy", None)
    if not isinstance(policy, GlimpsePolicy):
        raise ValueError(f"expected a GlimpsePolicy or a module with .policy, got {type(model).__name__}")
    return policy, "policy."


def default_layer(model: nn.Module) -> str:
    """Name (in ``model.named_modules()``) of the last feature layer of the policy's backbone:
    the last module of ``backbone.features`` (``policy.backbone.features.14`` for the default
    conv backbone, ``...features.6`` = layer3 for a ResNet cut after 3 stages)."""
    policy, prefix = policy_of(model)
    features = getattr(policy.backbone, "features", None)
    if isinstance(features, nn.Sequential) and len(features):
        return f"{prefix}backbone.features.{len(features) - 1}"
    return f"{prefix}backbone"


def replay(policy: GlimpsePolicy, actions: dict[str, Tensor], images: Tensor, image: Tensor, steps: int) -> Tensor:
    """Label logits ``(n, steps, K + 1)`` of ``images (n, C, H, W)`` with the recorded
    ``actions`` of source images ``image (n,)`` replayed for ``steps`` meta steps; ``images``
    may also hold ``r`` copies stacked (``r * n`` rows, as Integrated Gradients' path points
    come), the actions then tiled. The one place a recorded episode is replayed on new
    (perturbed, interpolated, masked) images; differentiable in ``images``."""
    copies = images.shape[0] // image.shape[0]
    played = {k: v[image, :steps] for k, v in actions.items()}
    if copies > 1:
        played = {k: v.repeat(copies, *([1] * (v.dim() - 1))) for k, v in played.items()}
    return policy(images, steps, location_mode="greedy", label_mode="greedy", actions=played, labels_only=True).label_logits


def replay_logits(policy: GlimpsePolicy, episode: Episode, steps: int | None = None):
    """``forward(images (r * B, ...)) -> label logits (r * B, T, K)``: the episode's actions
    replayed (tiled over ``r`` stacked copies of the batch), STOP's logit left out."""
    actions = episode.actions()
    steps = episode.labels.shape[1] if steps is None else steps
    every = torch.arange(episode.labels.shape[0], device=episode.labels.device)
    return lambda images: replay(policy, actions, images, every, steps)[..., : policy.num_classes]


def step_logits(model: nn.Module, actions: dict[str, Tensor], targets: Tensor, images: Tensor) -> Tensor:
    """Label logits ``(n, K + 1)`` of each target ``(n, 3)`` rows (image, step, class) at its
    step, on ``images (n, C, H, W)`` (one per target) with the actions of the target's source
    image replayed; the rollout stops at the last step the targets need. Differentiable."""
    policy, _ = policy_of(model)
    image, step, _ = targets.unbind(1)
    logits = replay(policy, actions, images, image, int(step.max()) + 1)
    return logits[torch.arange(len(targets), device=images.device), step]


def target_probability(model, actions: dict[str, Tensor], targets: Tensor, images: Tensor) -> Tensor:
    """Probability ``(n,)`` of each target's label at its step (:func:`step_logits`); differentiable."""
    return label_probability(step_logits(model, actions, targets, images), targets)


def replay_score(model, episode: Episode, targets: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """``score(images, rows)``: probability of each target's label at its step, actions replayed.

    The rollout stops at the last step the rows need (later steps cannot change an earlier
    label), so rows sorted by step cost fewer recurrent steps.
    """
    actions = episode.actions()

    @torch.no_grad()
    def score(images: Tensor, rows: Tensor) -> Tensor:
        return target_probability(model, actions, targets[rows], images)

    return score


def attribute_targets(model: nn.Module, images: Tensor, methods: Sequence[str], episode: Episode, targets: Tensor,
                      layer: str | None = None, **kwargs) -> dict[str, Tensor]:
    """Raw maps ``{method: (N, h, w)}`` of targets ``(N, 3)`` rows (image, step, class): one
    map per target, CAMs at the layer's resolution, the episode's actions replayed.

    Unlike :func:`attribute_episode`'s ``(B, T)`` grid, each target is its own row, so a step
    without a target costs no backward pass (in a grid every column of every image is one).
    Targets of the same step share one :func:`~glimpse.heatmaps.gradients.attribute` call
    whose replay stops at that step. Other keyword arguments go to ``attribute``.
    """
    policy, _ = policy_of(model)
    actions = episode.actions()
    layer = layer or default_layer(model)
    out: dict[str, Tensor] = {}
    for step in targets[:, 1].unique().tolist():
        rows = (targets[:, 1] == step).nonzero()[:, 0]
        image = targets[rows, 0]

        def forward(x: Tensor, image: Tensor = image, step: int = step) -> Tensor:
            return replay(policy, actions, x, image, step + 1)[:, step, : policy.num_classes]

        maps = attribute(model, images[image], targets[rows, 2:3], methods, layer=layer, upsample=False,
                         forward=forward, **kwargs)
        for name, value in maps.items():
            out.setdefault(name, value.new_zeros(len(targets), *value.shape[-2:]))[rows] = value[:, 0]
    return out


def attribute_episode(
    model: nn.Module,
    images: Tensor,
    methods: Sequence[str],
    episode: Episode | None = None,
    targets: Tensor | None = None,
    layer: str | None = None,
    upsample: bool = True,
    max_steps: int | None = None,
    **kwargs,
) -> dict[str, Tensor]:
    """Maps ``{method: (B, T, H, W)}`` of each meta step's emitted label, the episode replayed.

    model: a GlimpseModule or a GlimpsePolicy. episode: the recorded episode (default: a
    greedy rollout of ``max_steps`` meta steps, the module's by default). targets: ``(B, T)``
    classes per step (default :func:`emitted_label_targets`; NO_TARGET steps give zeros).
    layer: for the CAMs (default :func:`default_layer`). upsample: CAMs from cells to pixels
    with the backbone's cell geometry (:func:`~glimpse.geometry.upsample_cells`).
    Other keyword arguments go to :func:`~glimpse.heatmaps.gradients.attribute`.
    """
    policy, _ = policy_of(model)
    if episode is None:
        steps = max_steps or getattr(model, "max_steps", None)
        if steps is None:
            raise ValueError("give an episode, or max_steps for a greedy rollout of the policy")
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                episode = policy(images, steps, location_mode="greedy", label_mode="greedy")
        finally:
            model.train(was_training)
    if targets is None:
        targets = emitted_label_targets(episode, policy.num_classes)
    if targets.shape != episode.labels.shape:
        raise ValueError(f"targets {tuple(targets.shape)} must be (B, T) = {tuple(episode.labels.shape)}, one per meta step")
    live = (targets != NO_TARGET).any(0).nonzero()
    steps = int(live.max()) + 1 if len(live) else 1  # later steps cannot change an earlier label: stop the replay there
    hw = tuple(images.shape[-2:])
    up = (lambda maps: upsample_cells(maps, hw, episode.cell_stride)) if upsample else False
    maps = attribute(model, images, targets[:, :steps], methods, layer=layer or default_layer(model), upsample=up,
                     forward=replay_logits(policy, episode, steps), **kwargs)
    pad = targets.shape[1] - steps
    return {k: torch.nn.functional.pad(v, (0, 0, 0, 0, 0, pad)) if pad else v for k, v in maps.items()}
