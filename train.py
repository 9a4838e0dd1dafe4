"""Train the glimpse model: python train.py [experiment=smoke] [key=value ...]"""
from __future__ import annotations

import logging
import os

os.environ.setdefault("PROJECT_ROOT", os.path.dirname(os.path.abspath(__file__)))

import hydra
from omegaconf import DictConfig

from glimpse.run import (command, declared_arguments, instantiate_logger, read_metrics, record_run, resume_checkpoint,
                         user_errors, write_metrics)

log = logging.getLogger("glimpse")


def train(cfg: DictConfig) -> dict[str, float]:
    """Seed, build data, model, callbacks, trainer and logger from the config; fit; test."""
    # imported here, so that a mistyped option or key stops in a second, before torch loads
    import lightning.pytorch as pl
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ModelCheckpoint

    from glimpse.loggers import resumed_logger
    from glimpse.training.checkpoint_io import AtomicCheckpointIO
    from glimpse.training.last_checkpoint import LastCheckpoint
    from glimpse.training.run_phase import RunPhase

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    ckpt_path = resume_checkpoint(cfg)

    datamodule = instantiate(cfg.data)
    offered = dict(num_classes=datamodule.num_classes, class_names=datamodule.class_names,
                   max_steps=cfg.model.get("max_steps") or datamodule.max_objects + 1, data=cfg.data)
    model = instantiate(cfg.model, _recursive_=False, **declared_arguments(cfg.model._target_, offered))
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    callbacks.sort(key=lambda c: isinstance(c, LastCheckpoint))  # after ModelCheckpoint: its best is current
    callbacks.append(RunPhase())  # an error once training runs is a fault of the run, not bad input
    # checkpoints are written atomically: a kill or a full disk mid-write keeps the previous one
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False, plugins=[AtomicCheckpointIO()])
    record_run(cfg)  # the input is checked: from here on the run dir holds the run
    logger = instantiate_logger(resumed_logger(cfg.get("logger"), ckpt_path))  # W&B: the resumed run goes on
    if logger:
        trainer.loggers = [logger]
        logger.log_hyperparams(dict(cfg=dict(model.hparams)))

    # the project's checkpoints hold numpy RNG states, which torch's weights-only loader refuses
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if ckpt_path and not metrics:  # resumed a run that had finished fitting: keep its validation numbers
        log.info("%s had finished fitting (epoch %d): nothing to train", ckpt_path, trainer.current_epoch)
        metrics = {k: v for k, v in read_metrics(cfg.paths.output_dir).items() if k.startswith("val/")}
    if cfg.get("test"):
        best = next((c.best_model_path for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)), "")
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
    if trainer.is_global_zero:
        path = write_metrics(metrics, cfg.paths.output_dir)
        log.info("metrics written to %s: %s", path, {k: round(v, 4) for k, v in metrics.items()})
    if logger and hasattr(logger, "experiment") and hasattr(logger.experiment, "finish"):
        logger.experiment.finish()  # the next job of a multirun starts its own W&B run
    return metrics


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
@user_errors
def main(cfg: DictConfig) -> dict[str, float]:
    return train(cfg)


if __name__ == "__main__":
    command(main)
