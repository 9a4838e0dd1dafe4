"""The LightningModule of the non-attentive baseline (``model=baseline``): the 2018 paper's
multiset predictor (:class:`~glimpse.models.baseline.MultisetPredictor`) trained by the
multiset loss with greedy roll-in, with the same constructor arguments, metric keys and
checkpoints as :class:`~glimpse.module.GlimpseModule`, so ``train.py`` and ``evaluate.py``
run it unchanged.
"""
from __future__ import annotations

import logging

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import Tensor

from glimpse import multiset
from glimpse.metrics import MultisetMetrics
from glimpse.models.baseline import MultisetPredictor, PredictorEpisode
from glimpse.module import GlimpseModule, _plain, check_arguments, load_checkpoint
from glimpse.objectives.labels import multiset_cross_entropy, termination_step_mask

log = logging.getLogger("glimpse")

# callbacks that replay the glimpse model's episodes (attention, glimpses, saliency map): none exist here
GLIMPSE_CALLBACKS = ("HeatmapMetrics", "HeatmapCallback")


def multiset_loss(label_logits: Tensor, labels: Tensor, targets: Tensor) -> Tensor:
    """The multiset loss (:func:`~glimpse.objectives.labels.multiset_cross_entropy`, the glimpse
    model's too) of ``label_logits (B, T, K + 1)`` with the rolled-in ``labels (B, T)`` removing
    what they got right; steps ``0..|Y|`` (the last one's target is STOP)."""
    remaining = multiset.rollout(targets, labels, stop_ends=False)["remaining_before"]  # (B, T, K)
    step_mask = termination_step_mask(targets, label_logits.shape[1])
    return multiset_cross_entropy(F.log_softmax(label_logits, -1), remaining, step_mask)


class BaselineModule(pl.LightningModule):
    """Trains :class:`MultisetPredictor` with the multiset loss, greedy roll-in; greedy decoding to evaluate."""

    localises = False  # no glimpses, no saliency map: localisation and the glimpse heatmaps do not apply

    def __init__(
        self,
        policy: dict,
        num_classes: int,
        class_names: list[str],
        max_steps: int,
        lr: float = 2e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        scheduler: str = "cosine",
        data: dict | None = None,
        backbone_lr: float | None = None,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        policy = _plain(policy)
        self.save_hyperparameters({"policy": policy, "num_classes": num_classes, "class_names": list(class_names),
                                   "max_steps": max_steps, "lr": lr, "weight_decay": weight_decay,
                                   "warmup_steps": warmup_steps, "scheduler": scheduler, "data": _plain(data),
                                   "backbone_lr": backbone_lr, "channels_last": channels_last})
        check_arguments(num_classes, class_names, max_steps, backbone_lr, scheduler, steps_are="decoder steps")
        self.policy: MultisetPredictor = instantiate(policy, num_classes=num_classes)
        if channels_last:
            self.policy.to(memory_format=torch.channels_last)
        self.class_names = list(class_names)
        self.max_steps = max_steps
        self.val_metrics = MultisetMetrics()
        self.test_metrics = MultisetMetrics()

    # the same optimiser, schedule, parameter groups and class check as the glimpse model's
    check_classes = GlimpseModule.check_classes
    parameter_groups = GlimpseModule.parameter_groups
    configure_optimizers = GlimpseModule.configure_optimizers
    print_epoch_summary = GlimpseModule.print_epoch_summary

    def setup(self, stage: str) -> None:
        trainer = self._trainer
        if trainer is None:
            return
        skipped = [c for c in trainer.callbacks if type(c).__name__ in GLIMPSE_CALLBACKS]
        if skipped:
            trainer.callbacks = [c for c in trainer.callbacks if c not in skipped]
            log.info("model=baseline: skipping %s (they replay the glimpse model's attention and saliency map; "
                     "the baseline has neither)", ", ".join(type(c).__name__ for c in skipped))

    # -- decoding ---------------------------------------------------------------------------------
    def predict_episode(self, images: Tensor, record: bool = False) -> PredictorEpisode:
        """Greedy decoding of ``max_steps`` steps (the prediction ends at the first STOP)."""
        return self.policy(images, self.max_steps, label_mode="greedy")

    predicted_counts = GlimpseModule.predicted_counts  # the emitted multiset (B, K): labels before the first STOP

    # -- steps ------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        counts = batch["counts"]
        steps = int(counts.sum(-1).max().item()) + 1  # |Y| labels, then STOP
        episode = self.policy(batch["image"], steps, label_mode="greedy")  # greedy roll-in
        loss = multiset_loss(episode.label_logits, episode.labels, counts)
        self.log("train/label_loss", loss.detach(), on_step=True, on_epoch=False)
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=False)
        self.log("train/loss_epoch", loss.detach(), on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.val_metrics.update(self.predicted_counts(self.predict_episode(batch["image"])), batch["counts"])

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.test_metrics.update(self.predicted_counts(self.predict_episode(batch["image"])), batch["counts"])

    def on_validation_epoch_end(self) -> None:
        values = {f"val/{k}": v for k, v in self.val_metrics.compute().items()}
        self.val_metrics.reset()
        self.log_dict(values, prog_bar=True)
        self.print_epoch_summary(values)

    def on_test_epoch_end(self) -> None:
        self.log_dict({f"test/{k}": v for k, v in self.test_metrics.compute().items()})
        self.test_metrics.reset()


def is_baseline(hparams: dict) -> bool:
    """Whether a checkpoint's hyperparameters are the baseline's (its policy is a MultisetPredictor)."""
    target = str((hparams.get("policy") or {}).get("_target_", ""))
    return target.rsplit(".", 1)[-1] == MultisetPredictor.__name__


def load_model(path: str, map_location: str | torch.device = "cpu") -> pl.LightningModule:
    """Load a checkpoint of either model (:func:`glimpse.module.load_checkpoint`, with its clear
    errors): the baseline's as a :class:`BaselineModule`, any other as a ``GlimpseModule``."""
    return load_checkpoint(path, map_location,
                           module_for=lambda hparams: BaselineModule if is_baseline(hparams) else GlimpseModule)
