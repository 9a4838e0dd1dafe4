"""Faults injected into a real ``train.py`` run (a test puts this folder on PYTHONPATH and adds
``+callbacks.fault._target_=faults.<Name>``): what a crash, a numerical blow-up or a full disk
would do, at a chosen step, so that the test does not race the run."""
from __future__ import annotations

import os
import signal

import lightning.pytorch as pl
import torch


class KillAtEpochStart(pl.Callback):
    """SIGKILL (nothing can be saved) at the first batch of epoch ``epoch``: the last save
    before it is the end of the previous epoch."""

    def __init__(self, epoch: int = 1) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


class NanWeightsAtStep(pl.Callback):
    """Every weight NaN before global step ``step``: the loss of that step is not finite."""

    def __init__(self, step: int = 2) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                for parameter in pl_module.parameters():
                    parameter.fill_(float("nan"))
