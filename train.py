"""Train the glimpse model: python train.py [experiment=smoke] [key=value ...]"""
from __future__ import annotations

import logging
import os

os.environ.setdefault("PROJECT_ROOT", os.path.dirname(os.path.abspath(__file__)))

import hydra
import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from hydra.utils import instantiate
from omegaconf import DictConfig

from glimpse.reliability import AtomicCheckpointIO
from glimpse.run import instantiate_logger, resume_checkpoint, user_errors, write_metrics

log = logging.getLogger("glimpse")


def train(cfg: DictConfig) -> dict[str, float]:
    """Seed, build data, model, callbacks, logger and trainer from the config; fit; test."""
    pl.seed_everything(cfg.seed, workers=True)
    ckpt_path = resume_checkpoint(cfg)  # experiment=explainer: ckpt_path is the model to explain

    datamodule = instantiate(cfg.data)
    model = instantiate(
        cfg.model, _recursive_=False, num_classes=datamodule.num_classes, class_names=datamodule.class_names,
        max_steps=cfg.model.max_steps or datamodule.max_objects + 1, data=cfg.data,
    )
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    logger = instantiate_logger(cfg.get("logger"))
    if logger:
        logger.log_hyperparams(dict(cfg=dict(model.hparams)))
    # checkpoints are written atomically: a kill or a full disk mid-write keeps the previous one
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger, plugins=[AtomicCheckpointIO()])

    # our own checkpoints hold numpy RNG states, which torch's weights-only loader refuses
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if cfg.get("test"):
        best = next((c.best_model_path for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)), "")
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
    if trainer.is_global_zero:
        path = write_metrics(metrics, cfg.paths.output_dir)
        log.info("metrics written to %s: %s", path, {k: round(v, 4) for k, v in metrics.items()})
    return metrics


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
@user_errors
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
