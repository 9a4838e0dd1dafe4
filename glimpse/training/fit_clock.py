"""Wall-clock time of a fit, logged beside the validation metrics: accuracy against time."""
from __future__ import annotations

import time

import lightning.pytorch as pl


class FitClock(pl.Callback):
    """Logs ``time/fit_seconds``, the wall-clock seconds since the fit started (this process:
    a resumed run counts from its resume), at the end of every validation epoch, so each logger
    holds validation F1 and exact match against time (``benchmarks/time_to_accuracy.py``)."""

    def __init__(self) -> None:
        self._start: float | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self._start is None:
            return
        pl_module.log("time/fit_seconds", time.perf_counter() - self._start, on_step=False, on_epoch=True)
