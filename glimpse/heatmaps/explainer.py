"""The Explainer (Stalder et al., "What You See is What You Classify", NeurIPS 2022).

A second, small network that maps an image to one mask per class in a single forward pass,
trained with the glimpse model frozen (``eval()``, ``requires_grad_(False)``).

What is explained: the glimpse model's **decision**, not the ground truth. The target of an
image is the multiset the model emitted (its greedy rollout, labels before the first STOP),
one row (image, step, class) per emitted label. The class score of a masked image is the
glimpse model's label logits at that step with the recorded glimpse actions replayed on the
masked image (greedy rollout on the original image, replay on the masked one; see
:func:`glimpse.heatmaps.replay.step_logits`), so the mask explains the label the
model gave at the place it looked. Losses per emitted label, with the class's mask ``m``:

- classification: cross entropy of the emitted label on ``image * m``;
- entropy: minus the entropy of the label distribution on ``image * (1 - m)``;
- area: the mean of ``m`` (keep little), and the masks of classes not emitted pushed to 0;
- smoothness: total variation of ``m``.

Each weight is a config value (configs/model/explainer.yaml).
"""
from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glimpse.heatmaps import masks as losses
from glimpse.heatmaps.replay import step_logits
from glimpse.heatmaps.targets import emitted_targets, label_probability
from glimpse.module import load_checkpoint

LOSS_KEYS = ("classification", "entropy", "area", "absent", "tv")


class ExplainerNet(nn.Module):
    """Strided convolutions, then one logit map per class upsampled to the image: masks
    ``(B, K, H, W)`` in (0, 1)."""

    def __init__(self, in_channels: int, num_classes: int, channels: tuple[int, ...] = (16, 32, 64),
                 strides: tuple[int, ...] = (2, 2, 1)) -> None:
        super().__init__()
        if len(channels) != len(strides) or not channels:
            raise ValueError(f"model.net.channels {list(channels)} and model.net.strides {list(strides)} "
                             "must be non-empty lists of the same length")
        layers: list[nn.Module] = []
        for c_in, c_out, stride in zip((in_channels, *channels[:-1]), channels, strides):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        self.encoder = nn.Sequential(*layers)
        self.head = nn.Conv2d(channels[-1], num_classes, 1)

    def forward(self, images: Tensor) -> Tensor:
        logits = self.head(self.encoder(images))  # (B, K, h, w)
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return torch.sigmoid(logits)


class ExplainerModule(pl.LightningModule):
    """Trains :class:`ExplainerNet` to explain the frozen glimpse model at ``glimpse_ckpt``.

    ``class_names`` are the data's (train.py passes them): they must be the glimpse model's.
    """

    def __init__(
        self,
        glimpse_ckpt: str | None,
        net: dict | None = None,
        weights: dict | None = None,
        lr: float = 1e-3,
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        if not glimpse_ckpt:
            raise ValueError("explain.glimpse_ckpt is not set: give the glimpse checkpoint to explain as "
                             "`python train.py experiment=explainer explain.glimpse_ckpt=GLIMPSE_CKPT`")
        if not Path(glimpse_ckpt).is_file():
            raise FileNotFoundError(f"explain.glimpse_ckpt={glimpse_ckpt}: no glimpse checkpoint there "
                                    "(give RUN_DIR/checkpoints/last.ckpt of a glimpse training run)")
        weights = {k: 1.0 for k in LOSS_KEYS} | dict(weights or {})
        unknown = sorted(set(weights) - set(LOSS_KEYS))
        if unknown:
            raise ValueError(f"model.weights has unknown losses {unknown}; choose from {list(LOSS_KEYS)}")
        net = dict(net or {})
        glimpse = load_checkpoint(glimpse_ckpt)
        if class_names is not None:
            glimpse.check_classes(class_names)
        self.save_hyperparameters({"glimpse_ckpt": str(glimpse_ckpt), "net": net, "weights": weights, "lr": lr,
                                   "class_names": glimpse.class_names})
        self.glimpse = glimpse.eval().requires_grad_(False)
        self.class_names = glimpse.class_names
        self.net = ExplainerNet(getattr(glimpse.policy.backbone, "in_channels", 1), len(self.class_names), **net)

    def train(self, mode: bool = True) -> "ExplainerModule":
        """The glimpse model stays in eval mode (its decision is what is explained)."""
        super().train(mode)
        self.glimpse.eval()
        return self

    def forward(self, images: Tensor) -> Tensor:
        """Masks ``(B, K, H, W)``, one per class."""
        return self.net(images)

    def losses(self, images: Tensor) -> dict[str, Tensor]:
        """The weighted loss and its parts on a batch, against the glimpse model's emitted labels."""
        with torch.no_grad():
            episode = self.glimpse.predict_episode(images)
        targets = emitted_targets(episode, len(self.class_names))
        masks = self.net(images)  # (B, K, H, W)
        emitted = torch.zeros(masks.shape[:2], dtype=torch.bool, device=images.device)
        emitted[targets[:, 0], targets[:, 2]] = True
        absent = masks[~emitted]
        parts = {"absent": losses.area_loss(absent) if len(absent) else masks.new_zeros(())}
        if len(targets):
            m = masks[targets[:, 0], targets[:, 2]]  # (N, H, W)
            x = images[targets[:, 0]]
            actions = episode.actions()
            kept = step_logits(self.glimpse, actions, targets, x * m[:, None])
            removed = step_logits(self.glimpse, actions, targets, x * (1 - m[:, None]))
            parts |= {"classification": losses.classification_loss(kept, targets[:, 2]),
                      "entropy": losses.entropy_loss(removed), "area": losses.area_loss(m),
                      "tv": losses.total_variation(m)}
            with torch.no_grad():
                parts["kept_probability"] = label_probability(kept, targets).mean()
        else:
            parts |= {k: masks.new_zeros(()) for k in ("classification", "entropy", "area", "tv")}
        parts["loss"] = sum(self.hparams.weights[k] * parts[k] for k in LOSS_KEYS)
        return parts

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        parts = self.losses(batch["image"])
        self.log_dict({f"train/explainer/{k}": v.detach() for k, v in parts.items()}, on_step=True, on_epoch=False)
        self.log("train/loss_epoch", parts["loss"].detach(), on_step=False, on_epoch=True, prog_bar=True)
        return parts["loss"]

    def _evaluate(self, batch: dict, split: str) -> None:
        parts = self.losses(batch["image"])
        self.log_dict({f"{split}/explainer/{k}": v.detach() for k, v in parts.items()}, on_step=False, on_epoch=True,
                      batch_size=batch["image"].shape[0])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.net.parameters(), lr=self.hparams.lr)


def load_explainer(path: str, map_location: str | torch.device = "cpu") -> tuple[ExplainerNet, list[str]]:
    """The trained net (eval mode) and class names of a checkpoint written by ``train.py
    experiment=explainer``; a clear error for anything else. The glimpse model is not rebuilt."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"heatmaps.explainer.ckpt_path={path}: no Explainer checkpoint there "
                                "(train one with `python train.py experiment=explainer explain.glimpse_ckpt=GLIMPSE_CKPT`)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise ValueError(f"{path} is not a readable checkpoint ({type(err).__name__}: {err})") from err
    hparams = checkpoint.get("hyper_parameters", {}) if isinstance(checkpoint, dict) else {}
    if "glimpse_ckpt" not in hparams:
        raise ValueError(f"{path} is not an Explainer checkpoint (no glimpse_ckpt in its hyper_parameters); "
                         "give the .ckpt of a `train.py experiment=explainer` run")
    state = {k[len("net."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    net = ExplainerNet(state["encoder.0.weight"].shape[1], len(hparams["class_names"]), **hparams["net"])
    net.load_state_dict(state)
    return net.eval(), list(hparams["class_names"])
