"""During training: heatmaps of where the model looked and why, as PNGs and in W&B."""
from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl
import torch

from glimpse.heatmaps.gradients import check_methods
from glimpse.heatmaps.metrics_callback import fixed_validation_batch, on_device
from glimpse.heatmaps.render import render_attribution_grid
from glimpse.heatmaps.replay import attribute_episode

log = logging.getLogger("glimpse")


class HeatmapCallback(pl.Callback):
    """Every ``every_n_epochs`` validation epochs and at the end of fit, on rank 0, for the
    first ``num_images`` validation images (the same every time): one grid PNG per image in
    ``<output_dir>/<output_subdir>/epoch_XXX/`` (see
    :func:`~glimpse.heatmaps.render.render_attribution_grid`), logged to W&B as
    ``heatmaps/image_i`` when a W&B logger is present.

    The greedy episode is recorded, then replayed for the attribution of each emitted label
    (:func:`~glimpse.heatmaps.replay.attribute_episode`): gradients re-enabled inside
    validation's inference mode, the model's train/eval state and the RNG state restored,
    no parameter's ``.grad`` touched, so training goes on exactly as without the callback.
    """

    def __init__(self, every_n_epochs: int = 1, num_images: int = 8, methods=("gradient", "gradcam", "integrated_gradients"),
                 output_subdir: str = "heatmaps", output_dir: str | None = None, ig_steps: int = 16,
                 sag: dict | None = None) -> None:
        for key, value in (("every_n_epochs", every_n_epochs), ("num_images", num_images), ("ig_steps", ig_steps)):
            if int(value) != value or value < 1:
                raise ValueError(f"callbacks.heatmaps.{key}={value} must be an integer >= 1")
        self.methods = check_methods(methods, key="callbacks.heatmaps.methods")
        self.every, self.num_images, self.ig_steps = int(every_n_epochs), int(num_images), int(ig_steps)
        self.output_subdir, self.output_dir = output_subdir, output_dir
        self.sag = None  # structured attention graphs too (glimpse/heatmaps/sag.py settings), off by default
        if sag is not None:
            from glimpse.heatmaps.sag import SAGSettings

            self.sag = SAGSettings.from_config(sag)
        self._rendered_step: int | None = None
        self._batch: dict | None = None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and (trainer.current_epoch + 1) % self.every == 0:
            self.render(trainer, pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.render(trainer, pl_module)

    def render(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[Path]:
        """Draw (and log) the heatmaps of the fixed images, once per training step reached (fit's
        end after a last validation draws nothing new)."""
        if not trainer.is_global_zero or self._rendered_step == trainer.global_step:
            return []
        self._rendered_step = trainer.global_step
        epoch = trainer.current_epoch
        with torch.inference_mode(False), torch.random.fork_rng(devices=[]):
            self._batch = self._batch or fixed_validation_batch(trainer, self.num_images)
            if self._batch is None:
                return []
            batch = on_device(self._batch, pl_module.device)
            images = batch["image"]
            was_training = pl_module.training
            pl_module.eval()
            try:
                with torch.no_grad():
                    episode = pl_module.predict_episode(images)
                    predicted = pl_module.predicted_counts(episode)
                maps = attribute_episode(pl_module, images, self.methods, episode=episode, ig_steps=self.ig_steps)
            finally:
                pl_module.train(was_training)
        out = Path(self.output_dir or trainer.default_root_dir) / self.output_subdir / f"epoch_{epoch:03d}"
        boxes = batch.get("boxes", torch.zeros(images.shape[0], 0, 4))
        box_labels = batch.get("labels", torch.zeros(images.shape[0], 0, dtype=torch.long))
        paths = [
            render_attribution_grid(images[i], episode, i, {m: v[i] for m, v in maps.items()}, boxes[i], box_labels[i],
                                    batch["counts"][i], predicted[i], pl_module.class_names, out / f"image_{i}.png",
                                    title=f"epoch {epoch}, validation image {i}")
            for i in range(images.shape[0])
        ]
        self._log_wandb(trainer, paths, epoch)
        if self.sag is not None:  # one picture per emitted label, logged as `sag`
            from glimpse.heatmaps.sag_render import draw_sags

            with torch.inference_mode(False), torch.random.fork_rng(devices=[]):
                sags = draw_sags(pl_module, images, self.sag, out / "sag", title=f"epoch {epoch}, validation image {{i}}")[2]
            self._log_wandb(trainer, sags, epoch, key="sag")
            paths += sags
        return paths

    @staticmethod
    def _log_wandb(trainer: pl.Trainer, paths: list[Path], epoch: int, key: str = "heatmaps") -> None:
        from lightning.pytorch.loggers import WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                captions = [f"epoch {epoch}, image {i}" for i in range(len(paths))] if key == "heatmaps" else \
                    [f"epoch {epoch}, {p.stem}" for p in paths]
                logger.log_image(key=key, images=[str(p) for p in paths], caption=captions, step=trainer.global_step)
