"""Heatmap metrics during training: pointing games each validation epoch, deletion and
insertion every few epochs, on a fixed subset of the validation split.

The glimpse localisation metrics (hit rate, coverage, attention energy) are cheap and run on
the whole validation split inside ``validation_step`` (:class:`~glimpse.module.GlimpseModule`);
this callback adds the heatmap metrics of ``evaluate.py`` (``attribution/<method>/...``) so a
run's W&B page shows them per epoch too.
"""
from __future__ import annotations

import lightning.pytorch as pl
import torch

from glimpse.heatmaps.evaluation import HeatmapEvaluation
from glimpse.heatmaps.registry import resolve_methods


def fixed_validation_batch(trainer: pl.Trainer, num_images: int) -> dict | None:
    """The first ``num_images`` items of the validation split as one batch (the same every
    epoch: the datasets compose items deterministically), or None without boxes."""
    dataset = trainer.datamodule.datasets.get("val") if trainer.datamodule is not None else None
    if dataset is None or len(dataset) == 0:
        return None
    batch = torch.utils.data.default_collate([dataset[i] for i in range(min(num_images, len(dataset)))])
    if "boxes" not in batch:
        return None
    return batch


def on_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


class HeatmapMetrics(pl.Callback):
    """Logs ``val/attribution/<method>/<metric>`` at the end of validation epochs.

    methods: heatmap methods by name (``heatmaps.methods`` of evaluate.py).
    num_images: the first N validation images, the same every epoch.
    settings: per method, the settings of methods that take them (``{"igos": {"iterations": 5}}``).
    perturbation_every_n_epochs: deletion/insertion AUC (many forward passes) every N
        epochs and at the last epoch; pointing games every epoch. 0 turns them off.
    The model is scored in eval mode with greedy decoding, which draws no random numbers;
    the RNG state is forked anyway, so training with and without this callback is the same.
    """

    def __init__(self, methods=("saliency_map",), num_images: int = 128, perturbation_every_n_epochs: int = 2,
                 perturbation_steps: int = 10, settings: dict | None = None) -> None:
        self.methods = resolve_methods(methods, key="callbacks.heatmap_metrics.methods", settings=settings)
        checks = [("num_images", num_images, 1), ("perturbation_every_n_epochs", perturbation_every_n_epochs, 0),
                  ("perturbation_steps", perturbation_steps, 1)]
        for key, value, least in checks:
            if int(value) != value or value < least:
                raise ValueError(f"callbacks.heatmap_metrics.{key}={value} must be an integer >= {least}")
        self.num_images, self.every, self.steps = int(num_images), int(perturbation_every_n_epochs), int(perturbation_steps)
        self._batch: dict | None = None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        perturb = self.every > 0 and ((epoch + 1) % self.every == 0 or last)
        with torch.inference_mode(False), torch.random.fork_rng(devices=[]):
            self._batch = self._batch or fixed_validation_batch(trainer, self.num_images)
            if self._batch is None:
                return
            batch = on_device(self._batch, pl_module.device)
            was_training = pl_module.training
            pl_module.eval()
            try:
                evaluation = HeatmapEvaluation(pl_module.policy.num_classes, steps=self.steps, perturbation=perturb)
                with torch.no_grad():
                    episode = pl_module.predict_episode(batch["image"])
                evaluation.update(pl_module, batch, episode, self.methods)
                metrics, _ = evaluation.compute()
            finally:
                pl_module.train(was_training)
        pl_module.log_dict({f"val/{k}": v for k, v in metrics.items()})
