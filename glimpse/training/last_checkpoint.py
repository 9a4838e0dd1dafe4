"""``last.ckpt`` for resuming: by steps, seconds, epoch and SIGTERM, with the RNG states."""
from __future__ import annotations

import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint

log = logging.getLogger("glimpse")

SIGTERM_EXIT_CODE = 128 + signal.SIGTERM  # 143, what shells and SLURM report for a SIGTERM


def _positive_or_none(key: str, value: Any, kind: type) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or (kind is int and int(value) != value):
        what = "a positive integer" if kind is int else "a positive number of seconds"
        raise ValueError(f"callbacks.last_checkpoint.{key}={value!r} must be {what}, or null to turn it off")
    return kind(value)


class LastCheckpoint(Checkpoint):
    """Keep ``dirpath/last.ckpt`` current: at the end of each training epoch, after each
    mid-epoch validation, every ``every_n_steps`` optimiser steps, every ``every_seconds``
    seconds, and when SIGTERM arrives (it saves at the end of the current batch, then exits
    with code 143).

    The checkpoint also holds the torch, numpy and python RNG states, restored on resume, so a
    resumed run draws the same sampled glimpses as an uninterrupted one. It must come after
    every ``ModelCheckpoint`` in the trainer's callbacks (checked in ``setup``), and it saves an
    epoch's end in ``on_train_epoch_end``, where ``ModelCheckpoint`` has already saved that
    epoch's best: so the best-model record in ``last.ckpt`` is never stale (a stale one made a
    resumed run test a deleted checkpoint). Never saves after an exception (a non-finite loss
    leaves the last good checkpoint).
    """

    def __init__(self, dirpath: str, every_n_steps: int | None = None, every_seconds: float | None = 600,
                 filename: str = "last.ckpt") -> None:
        self.dirpath = Path(dirpath)
        self.every_n_steps = _positive_or_none("every_n_steps", every_n_steps, int)
        self.every_seconds = _positive_or_none("every_seconds", every_seconds, float)
        if not filename or "/" in filename:
            raise ValueError(f"callbacks.last_checkpoint.filename={filename!r} must be a file name (no '/')")
        self.path = self.dirpath / filename
        self._last_save = time.monotonic()
        self._sigterm = False
        self._previous_handler: Any = None

    @property
    def state_key(self) -> str:
        return "LastCheckpoint"

    # -- when to save ---------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # one path for all processes (a timestamped output dir may differ between DDP ranks)
        self.path = Path(trainer.strategy.broadcast(str(self.path)))
        later = [c for c in trainer.callbacks[trainer.callbacks.index(self) + 1:] if isinstance(c, ModelCheckpoint)]
        if later:
            raise ValueError("LastCheckpoint must come after every ModelCheckpoint in the trainer's callbacks, "
                             "or last.ckpt records a stale best checkpoint")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_save = time.monotonic()
        self._sigterm = False
        try:  # after Lightning's own handler; this one saves first, the previous one comes back at the end
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        except ValueError:  # not the main thread
            self._previous_handler = None

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        log.warning("SIGTERM received: saving %s at the end of this batch, then exiting", self.path)
        self._sigterm = True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        due = self._sigterm or (self.every_n_steps is not None and step > 0 and step % self.every_n_steps == 0)
        due = due or (self.every_seconds is not None and time.monotonic() - self._last_save >= self.every_seconds)
        if trainer.world_size > 1:  # every process saves together (the save has a barrier)
            due = trainer.strategy.reduce_boolean_decision(due, all=False)
            self._sigterm = trainer.strategy.reduce_boolean_decision(self._sigterm, all=False)
        if due:
            self._save(trainer)
        self._exit_if_terminated(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A validation in the middle of an epoch (``val_check_interval`` < 1); the one at an
        epoch's end is saved by :meth:`on_train_epoch_end`."""
        mid_epoch = not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if not trainer.sanity_checking and trainer.state.fn == "fit" and mid_epoch:
            self._save(trainer)
            self._exit_if_terminated(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning calls the checkpoint callbacks' on_train_epoch_end last, in their order:
        # every ModelCheckpoint has saved and updated its best by now
        self._save(trainer)
        self._exit_if_terminated(trainer)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._previous_handler is not None:
            try:
                signal.signal(signal.SIGTERM, self._previous_handler)
            except ValueError:
                pass
            self._previous_handler = None

    def _save(self, trainer: pl.Trainer) -> None:
        trainer.save_checkpoint(self.path)
        self._last_save = time.monotonic()

    def _exit_if_terminated(self, trainer: pl.Trainer) -> None:
        if self._sigterm:
            if trainer.is_global_zero:
                print(f"SIGTERM: saved {self.path} at global step {trainer.global_step}; resume with "
                      f"ckpt_path=last (or ckpt_path={self.path})", file=sys.stderr, flush=True)
            sys.exit(SIGTERM_EXIT_CODE)

    # -- what goes into the checkpoint ----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"rng_states": _collect_rng_states(include_cuda=torch.cuda.is_available())}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = state_dict.get("rng_states")
        if states:
            if not torch.cuda.is_available():
                states = {k: v for k, v in states.items() if k != "torch.cuda"}
            _set_rng_states(states)
