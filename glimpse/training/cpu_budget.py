"""Stop fitting after a budget of CPU time, the same work whatever the machine's load."""
from __future__ import annotations

import logging
import time
from typing import Any

import lightning.pytorch as pl

log = logging.getLogger("glimpse")


class CpuBudget(pl.Callback):
    """Stop fitting once this process has used ``minutes`` of CPU time (all its threads, from
    ``time.process_time``), checked after every training batch, as Lightning's ``Timer`` does
    for wall-clock time.

    On a shared machine a wall-clock budget buys a run whatever the other jobs leave it; CPU
    time is the same work whatever the load, so runs given the same budget (one torch thread
    and ``data.num_workers=0``, so that all the work is in this process) compare fairly. The
    CPU used so far is saved in checkpoints, so a resumed run continues the same budget.
    """

    def __init__(self, minutes: float) -> None:
        if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not minutes > 0:
            raise ValueError(f"CpuBudget minutes={minutes!r} must be a number of CPU minutes > 0")
        self.seconds = float(minutes) * 60
        self._used_before = 0.0  # CPU seconds of earlier processes of a resumed run
        self._start: float | None = None

    def used(self) -> float:
        """CPU seconds of fitting so far."""
        return self._used_before + (time.process_time() - self._start if self._start is not None else 0.0)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.process_time()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        over = trainer.strategy.reduce_boolean_decision(self.used() >= self.seconds, all=False)
        if over and not trainer.should_stop:
            trainer.should_stop = True
            log.info("CPU budget of %.3g min used at global step %d: stopping", self.seconds / 60, trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"used_seconds": self.used()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._used_before = float(state_dict.get("used_seconds", 0.0))
