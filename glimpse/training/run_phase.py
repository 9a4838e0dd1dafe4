"""Tell an error of the user's input from a fault during training: an exception raised once
training has started is marked with where it happened, so the entry point reports it as a
fault of the run (exit code 1, the checkpoints kept), not as bad input."""
from __future__ import annotations

import lightning.pytorch as pl


class RunPhase(pl.Callback):
    """Marks an exception raised after ``on_train_start`` with ``during_run`` (the step and
    epoch); anything raised before (building the data, the model, the sanity check) is not."""

    def __init__(self) -> None:
        self.started = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started = True

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.started:
            try:
                exception.during_run = f"at global step {trainer.global_step}, epoch {trainer.current_epoch}"
            except AttributeError:  # an exception type without a __dict__
                pass
