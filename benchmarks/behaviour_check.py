"""The first training losses of the default config, printed one per line, to show that a
refactoring leaves training unchanged bit for bit.

Run it before and after a change and compare the two outputs (they must be identical):

    python benchmarks/behaviour_check.py > before.txt   # then, after the change:
    python benchmarks/behaviour_check.py > after.txt && diff before.txt after.txt

Run both with the same ``OMP_NUM_THREADS``: another thread count sums in another order, and the
losses then differ in the last digits from the first step on.

It builds data and model as ``train.py`` does (seed 0, logger none), trains
``--batches`` optimiser steps (default 50) without validation, and prints each step's
``train/loss`` with all its digits. Extra Hydra overrides may follow, e.g. ``objective=reinforce``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parents[1]


class LossRecorder(pl.Callback):
    """Keeps the loss of every training step."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss.detach()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=50, help="training steps to record")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides")
    args = parser.parse_args()

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["logger=none", "seed=0", *args.overrides])
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    model = instantiate(
        cfg.model, _recursive_=False, num_classes=datamodule.num_classes, class_names=datamodule.class_names,
        max_steps=cfg.model.max_steps or datamodule.max_objects + 1, data=cfg.data,
    )
    recorder = LossRecorder()
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=[recorder], logger=False, max_epochs=1, limit_train_batches=args.batches,
        limit_val_batches=0, num_sanity_val_steps=0, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=None,
    )
    trainer.fit(model, datamodule=datamodule)
    print(f"torch {torch.__version__}, {len(recorder.losses)} training losses of the default config (seed 0):")
    for step, loss in enumerate(recorder.losses):
        print(f"{step:3d} {loss!r}")


if __name__ == "__main__":
    main()
