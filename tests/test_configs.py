"""Every option of every config group composes (and builds what it describes), and every
data x model pair that runs on a CPU trains, validates and tests one batch under
``experiment=smoke``."""
from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import ROOT
from glimpse.run import instantiate_logger
from test_real_data import _coco_folder, _script, voc_root  # noqa: F401  (voc_root is a fixture)

CONFIGS = ROOT / "configs"
GROUPS = ("data", "model", "objective", "trainer", "logger", "callbacks", "experiment")
NOT_AN_OPTION = {"data/photo_common"}  # the keys data=coco and data=voc share, not a dataset by itself


def options(group: str) -> list[str]:
    names = sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))
    return [name for name in names if f"{group}/{name}" not in NOT_AN_OPTION]


def compose_config(overrides: list[str], config: str = "train"):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config, overrides=overrides)


def test_the_groups_have_the_options_the_docs_name():
    assert options("data") == ["coco", "mnist_multi_10", "mnist_multi_1_4", "mnist_multi_1_4_set", "mnist_multi_4",
                               "mnist_multi_4_set", "multiset_fashion", "multiset_fashion_10", "multiset_fashion_4",
                               "multiset_mnist", "voc"]
    assert options("model") == ["baseline", "baseline_resnet18", "explainer", "glimpse", "resnet18", "resnet34"]
    assert options("trainer") == ["ddp", "default", "gpu"] and options("experiment") == ["explainer", "smoke"]
    assert len(options("objective")) == 13 and options("logger") == ["csv", "none", "wandb"]


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_resolves(group, option, tmp_path):
    cfg = compose_config([f"{group}={option}", f"paths.output_dir={tmp_path}"])
    OmegaConf.resolve(cfg)  # every interpolation has a value
    assert cfg.paths.output_dir == str(tmp_path)
    if group == "trainer":
        assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
        if option == "default":
            assert isinstance(instantiate(cfg.trainer, logger=False), pl.Trainer)
        return  # gpu and ddp: composed only (no GPU, and DDP has its own slow test)
    if group == "logger":
        if option == "wandb":
            cfg.logger.mode = "disabled"
        logger = instantiate_logger(cfg.logger)
        assert logger is False if option == "none" else isinstance(logger, pl.loggers.Logger)
    if group == "callbacks":
        built = [instantiate(c) for c in cfg.callbacks.values() if c and "_target_" in c]
        assert built and all(hasattr(c, "on_train_start") for c in built)
    if group == "objective":  # the model builds with it
        model = instantiate(cfg.model, _recursive_=False, num_classes=10, class_names=[str(d) for d in range(10)],
                            max_steps=5)
        assert model.hparams["objective"]["label_loss"] == cfg.objective.label_loss
    if group == "experiment" and option == "explainer":
        assert cfg.model._target_.endswith("ExplainerModule") and "ckpt_path" in cfg and cfg.explain.glimpse_ckpt is None


@pytest.mark.parametrize("data", options("data"))
def test_evaluate_and_the_explainer_experiment_compose_with_every_data_config(data, tmp_path):
    cfg = compose_config([f"data={data}", "ckpt_path=x.ckpt", f"paths.output_dir={tmp_path}"], config="evaluate")
    assert cfg.data._target_.startswith("glimpse.data.")
    cfg = compose_config([f"data={data}", "experiment=explainer", "explain.glimpse_ckpt=x.ckpt",
                          f"paths.output_dir={tmp_path}"])
    OmegaConf.resolve(cfg)
    assert cfg.model.glimpse_ckpt == "x.ckpt"


# one batch of training, validation and test, on 2 CPU threads shared with others: tiny sizes
ONE_BATCH = ["experiment=smoke", "logger=none", "data.train_size=2", "data.val_size=2", "data.test_size=2",
             "data.batch_size=2", "model.policy.hidden=16", "model.policy.key_dim=16", "model.policy.label_dim=8",
             "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1",
             "trainer.max_epochs=1", "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false",
             "+trainer.enable_model_summary=false", "callbacks.heatmaps=null", "callbacks.heatmap_metrics=null",
             "callbacks.model_checkpoint=null", "callbacks.last_checkpoint=null", "+trainer.enable_checkpointing=false"]
CPU_MODELS = ("glimpse", "resnet18", "resnet34", "baseline", "baseline_resnet18")  # the explainer needs a glimpse
# checkpoint: tests/test_explain.py


@pytest.fixture()
def data_folders(tmp_path, voc_root):  # noqa: F811
    coco_ann = _coco_folder(tmp_path / "coco")
    return {
        "coco": [f"data.root={tmp_path / 'coco' / 'images'}", f"data.ann_file={coco_ann}", f"data.val_ann_file={coco_ann}",
                 "data.image_size=64"],
        "voc": [f"data.root={voc_root}", "data.image_size=64"],
    }


@pytest.mark.parametrize("model", CPU_MODELS)
@pytest.mark.parametrize("data", options("data"))
def test_every_data_and_model_pair_trains_one_batch_under_the_smoke_experiment(data, model, data_folders, tmp_path):
    one_batch = [o for o in ONE_BATCH if not (model.startswith("baseline") and o.startswith("model.policy.key_dim"))]
    overrides = [f"data={data}", f"model={model}", *one_batch, *data_folders.get(data, []),
                 f"paths.output_dir={tmp_path / 'run'}"]
    if model not in ("glimpse", "baseline"):
        overrides.append("model.policy.backbone.stages=2")  # stride 8: a grid on 64 px photos and 100 px canvases
    cfg = compose_config(overrides)
    metrics = _script("train").train(cfg)
    glimpses = not model.startswith("baseline")  # the baseline has no glimpses to localise
    assert {"val/multiset/f1", "test/multiset/f1"} <= set(metrics)
    assert ("test/localisation/glimpse_hit_rate" in metrics) == glimpses
    multiset = {k: v for k, v in metrics.items() if "/multiset/" in k}
    assert len(multiset) == 8 and all(0 <= v <= 1 for v in multiset.values()), multiset
    assert Path(tmp_path / "run" / "metrics.json").is_file()


def test_models_receive_only_the_arguments_they_declare():
    from glimpse.run import declared_arguments

    offered = dict(num_classes=10, class_names=list("0123456789"), max_steps=5, data={}, not_a_parameter=1)
    assert set(declared_arguments("glimpse.module.GlimpseModule", offered)) == {"num_classes", "class_names",
                                                                             "max_steps", "data"}
    assert declared_arguments("glimpse.data.loaders.seeded_loader", offered) == {}


def test_data_takes_channels_and_size_from_the_checkpoint_unless_given():
    from glimpse.errors import ConfigError
    from glimpse.run import data_from_checkpoint

    mnist_ckpt = {"data": {"canvas_size": 100}, "policy": {"backbone": {"in_channels": 1}}}
    photo = OmegaConf.create({"channels": 3, "image_size": 224})
    assert dict(data_from_checkpoint(photo.copy(), mnist_ckpt, set())) == {"channels": 1, "image_size": 100}
    kept = data_from_checkpoint(OmegaConf.create({"channels": 3, "image_size": 64}), mnist_ckpt, {"data.image_size"})
    assert dict(kept) == {"channels": 1, "image_size": 64}  # a size given on the command line is kept
    with pytest.raises(ConfigError, match=r"^data.channels=3: the checkpoint reads 1-channel images"):
        data_from_checkpoint(photo.copy(), mnist_ckpt, {"data.channels"})
    rgb_ckpt = {"data": {"image_size": [96, 96]}, "policy": {"backbone": {"in_channels": 3}}}
    assert dict(data_from_checkpoint(OmegaConf.create({"canvas_size": 100}), {**rgb_ckpt, "policy": {
        "backbone": {"in_channels": 1}}}, set())) == {"canvas_size": 96}
    with pytest.raises(ConfigError, match=r"^data.channels: the checkpoint reads 3-channel images"):
        data_from_checkpoint(OmegaConf.create({"canvas_size": 100}), rgb_ckpt, set())
