"""Score a checkpoint: python evaluate.py ckpt_path=CKPT [data=...] [paths.output_dir=DIR]"""
from __future__ import annotations

import logging
import os

os.environ.setdefault("PROJECT_ROOT", os.path.dirname(os.path.abspath(__file__)))

import hydra
import lightning.pytorch as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from glimpse.evaluation.report import intervals, plot_steps, render_examples, render_worst, score_split, write_report
from glimpse.evaluation.stability import collect_maps, stability
from glimpse.baseline_module import load_model
from glimpse.evaluation.wandb_table import log_evaluation
from glimpse.heatmaps.registry import resolve_methods
from glimpse.heatmaps.sag import SAGSettings
from glimpse.heatmaps.sag_render import check_num_images, split_sags
from glimpse.loggers import evaluation_logger
from glimpse.run import (ConfigError, command, command_line_keys, data_from_checkpoint, instantiate_logger, record_run,
                         resolve_checkpoint, user_errors, write_metrics)

log = logging.getLogger("glimpse")


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Load the checkpoint, run the chosen split, write metrics.json and report.md."""
    if cfg.split not in ("test", "val"):
        raise ConfigError(f"split={cfg.split!r} is not known; choose test or val")
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.heatmaps.perturbation_steps < 1:
        raise ConfigError(f"heatmaps.perturbation_steps={cfg.heatmaps.perturbation_steps} must be >= 1")
    # a list of checkpoints (same config, other seeds): the first is scored, all are compared
    given = list(cfg.ckpt_path) if OmegaConf.is_list(cfg.ckpt_path) else [cfg.ckpt_path]
    if not given:
        raise ConfigError("ckpt_path=[] names no checkpoint; give one path, or a list [A,B,...] to compare seeds")
    ckpt_paths = [resolve_checkpoint(path, cfg.paths.output_dir) for path in given]
    methods_of = [methods_for(cfg, i, len(ckpt_paths)) for i in range(len(ckpt_paths))]
    methods, ckpt_path = methods_of[0], ckpt_paths[0]
    sag_settings = SAGSettings.from_config(OmegaConf.to_container(cfg.sag, resolve=True))  # bad values fail before the run
    check_num_images(cfg.sag.num_images)
    model = load_model(ckpt_path)
    localises = getattr(model, "localises", True)
    if not localises:
        methods = {}
        log.info("%s is a model without glimpses (model=baseline): localisation and heatmap metrics, trajectories and "
                 "per-step plots are skipped (structured attention graphs too), as they read the glimpse model's "
                 "attention and saliency map", ckpt_path)
    # the channels and image size the model reads come from the checkpoint, unless given
    datamodule = instantiate(data_from_checkpoint(cfg.data, model.hparams, command_line_keys()))
    if hasattr(datamodule, "use_classes"):  # photographs: classes matched by name to the checkpoint's
        datamodule.use_classes(model.class_names)
    model.check_classes(datamodule.class_names)
    record_run(cfg)  # the input is checked: from here on the output dir holds the evaluation
    logger = instantiate_logger(evaluation_logger(cfg, ckpt_path, given[0]))  # W&B: joins the training run's group
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=logger, callbacks=[])
    run = trainer.test if cfg.split == "test" else trainer.validate
    run(model, datamodule=datamodule)
    prefix = f"{cfg.split}/"
    metrics = {k[len(prefix):]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}
    if trainer.is_global_zero:
        out = cfg.paths.output_dir
        scored = score_split(model, datamodule, cfg.split, methods, cfg.heatmaps.max_images, cfg.heatmaps.perturbation_steps)
        metrics.update(scored["metrics"])
        if len(ckpt_paths) > 1 and localises:
            metrics.update(compare_models(cfg, ckpt_paths, methods_of, datamodule))
        sag = split_sags(model, datamodule, cfg.split, sag_settings, cfg.sag.num_images, out, trainer.loggers) \
            if cfg.sag.num_images and localises else {"metrics": {}, "markdown": None}
        metrics.update(sag["metrics"])
        write_metrics(metrics, out)
        if trainer.logger is not None:
            trainer.logger.log_metrics({f"{prefix}{k}": v for k, v in {**scored["metrics"], **sag["metrics"]}.items()})
        report = write_report(
            metrics, out, ckpt_path=ckpt_path, split=cfg.split,
            pictures=[render_examples(model, datamodule, cfg.split, out)] if localises else [],
            class_names=model.class_names, per_class=scored["per_class"], heatmaps_per_class=scored["heatmaps_per_class"],
            steps_plot=plot_steps(metrics, out),
            worst=render_worst(model, datamodule, cfg.split, scored["image_f1"], out) if localises else None,
            cis=intervals(scored["per_image"]), sag=sag["markdown"],
        )
        log_evaluation(trainer.logger, model, datamodule, cfg.split, metrics, report, cfg.wandb.max_rows)
        log.info("metrics: %s; report: %s", {k: round(v, 4) for k, v in metrics.items()}, report)
    return metrics


def methods_for(cfg: DictConfig, index: int, count: int) -> dict:
    """The heatmap methods of the ``index``-th of ``count`` checkpoints: an Explainer is tied to
    one glimpse model, so with several checkpoints ``heatmaps.explainer.ckpt_path`` is a list."""
    settings = OmegaConf.to_container(cfg.heatmaps, resolve=True)
    explainer = settings.get("explainer") or {}
    path = explainer.get("ckpt_path")
    if "explainer" in cfg.heatmaps.methods and count > 1 and not (isinstance(path, list) and len(path) == count):
        raise ConfigError(f"heatmaps.explainer.ckpt_path={path} must be a list of {count} Explainer checkpoints, "
                          "one per glimpse checkpoint in ckpt_path, in the same order")
    if isinstance(path, list):
        explainer["ckpt_path"] = path[index] if index < len(path) else None
    return resolve_methods(cfg.heatmaps.methods, settings=settings)


def compare_models(cfg: DictConfig, ckpt_paths: list[str], methods_of: list[dict], datamodule) -> dict[str, float]:
    """``stability/<method>/...`` of the maps of several checkpoints on the same images."""
    count = cfg.stability.max_images
    if int(count) != count or count < 1:
        raise ConfigError(f"stability.max_images={count} must be an integer >= 1")
    per_model = []
    for path, methods in zip(ckpt_paths, methods_of):
        model = load_model(path)
        model.check_classes(datamodule.class_names)
        per_model.append(collect_maps(model, datamodule, cfg.split, methods, int(count)))
    out = {}
    for name in methods_of[0]:
        scores = stability([maps[name] for maps in per_model], cfg.stability.topk_fraction)
        out |= {f"stability/{name}/{key}": value for key, value in scores.items()}
    log.info("stability across %d checkpoints: %s", len(ckpt_paths), out)
    return out


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
@user_errors
def main(cfg: DictConfig) -> dict[str, float]:
    return evaluate(cfg)


if __name__ == "__main__":
    command(main)
