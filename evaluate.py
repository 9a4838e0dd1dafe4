"""Score a checkpoint: python evaluate.py ckpt_path=CKPT [data=...] [paths.output_dir=DIR]"""
from __future__ import annotations

import logging
import os

os.environ.setdefault("PROJECT_ROOT", os.path.dirname(os.path.abspath(__file__)))

import hydra
import lightning.pytorch as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

from glimpse.evaluation.heatmap_eval import resolve_methods
from glimpse.evaluation.report import intervals, plot_steps, render_examples, render_worst, score_split, write_report
from glimpse.module import load_checkpoint
from glimpse.run import ConfigError, instantiate_logger, resolve_checkpoint, user_errors, write_metrics

log = logging.getLogger("glimpse")


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Load the checkpoint, run the chosen split, write metrics.json and report.md."""
    if cfg.split not in ("test", "val"):
        raise ConfigError(f"split={cfg.split!r} is not known; choose test or val")
    pl.seed_everything(cfg.seed, workers=True)
    methods = resolve_methods(cfg.heatmaps.methods)
    if cfg.heatmaps.perturbation_steps < 1:
        raise ConfigError(f"heatmaps.perturbation_steps={cfg.heatmaps.perturbation_steps} must be >= 1")
    ckpt_path = resolve_checkpoint(cfg.ckpt_path, cfg.paths.output_dir)
    model = load_checkpoint(ckpt_path)
    datamodule = instantiate(cfg.data)
    if hasattr(datamodule, "use_classes"):  # photographs: classes matched by name to the checkpoint's
        datamodule.use_classes(model.class_names)
    model.check_classes(datamodule.class_names)
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=instantiate_logger(cfg.get("logger")), callbacks=[])
    run = trainer.test if cfg.split == "test" else trainer.validate
    run(model, datamodule=datamodule)
    prefix = f"{cfg.split}/"
    metrics = {k[len(prefix):]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}
    if trainer.is_global_zero:
        out = cfg.paths.output_dir
        scored = score_split(model, datamodule, cfg.split, methods, cfg.heatmaps.max_images, cfg.heatmaps.perturbation_steps)
        metrics.update(scored["metrics"])
        write_metrics(metrics, out)
        if trainer.logger is not None:
            trainer.logger.log_metrics({f"{prefix}{k}": v for k, v in scored["metrics"].items()})
        report = write_report(
            metrics, out, ckpt_path=ckpt_path, split=cfg.split, pictures=[render_examples(model, datamodule, cfg.split, out)],
            class_names=model.class_names, per_class=scored["per_class"], heatmaps_per_class=scored["heatmaps_per_class"],
            steps_plot=plot_steps(metrics, out), worst=render_worst(model, datamodule, cfg.split, scored["image_f1"], out),
            cis=intervals(scored["per_image"]),
        )
        log.info("metrics: %s; report: %s", {k: round(v, 4) for k, v in metrics.items()}, report)
    return metrics


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
@user_errors
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
