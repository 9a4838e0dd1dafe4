"""Surviving faults: atomic checkpoint writes, a resumable ``last.ckpt`` (by steps, seconds,
epoch and SIGTERM, with the RNG states) and a stop on the first non-finite loss or gradient.

All three plug into Lightning's own machinery (a ``CheckpointIO`` plugin and callbacks), so
``trainer.fit(ckpt_path=...)`` restores everything else (weights, optimiser, scheduler, loop
progress, the data order through the datamodule's state).
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

log = logging.getLogger("glimpse")

SIGTERM_EXIT_CODE = 128 + signal.SIGTERM  # 143, what shells and SLURM report for a SIGTERM


class RunFault(RuntimeError):
    """A fault during a run (disk full, non-finite numbers): one clear line, no traceback."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write a checkpoint to a temporary file in the same directory, fsync it, then
    ``os.replace`` it over the target: a kill or a full disk mid-write leaves the previous
    checkpoint in place, never a truncated one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            kept = "the previous checkpoint there is kept" if path.exists() else "no checkpoint was there before"
            raise RunFault(f"could not write checkpoint {path} ({err.strerror or err}); {kept}") from err


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _positive_or_none(key: str, value: Any, kind: type) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or (kind is int and int(value) != value):
        what = "a positive integer" if kind is int else "a positive number of seconds"
        raise ValueError(f"callbacks.last_checkpoint.{key}={value!r} must be {what}, or null to turn it off")
    return kind(value)


class LastCheckpoint(Checkpoint):
    """Keep ``dirpath/last.ckpt`` current: after each epoch's validation, every
    ``every_n_steps`` optimiser steps, every ``every_seconds`` seconds, and when SIGTERM
    arrives (it saves at the end of the current batch, then exits with code 143).

    The checkpoint also holds the torch, numpy and python RNG states, restored on resume, so a
    resumed run draws the same sampled glimpses as an uninterrupted one. A ``Checkpoint``
    subclass, so Lightning runs it after the ``ModelCheckpoint`` (whose best-model record is
    then up to date in ``last.ckpt``). Never saves after an exception (a non-finite loss
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

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_save = time.monotonic()
        self._sigterm = False
        try:  # after Lightning's own handler; ours saves first, the previous one comes back at the end
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
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._save(trainer)
            self._exit_if_terminated(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.fit_loop.epoch_loop._should_check_val_epoch():  # no validation this epoch: save here
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


class FiniteGradients(pl.Callback):
    """Stop at the first non-finite loss (before backward) or gradient (before the optimiser
    step and before clipping), with the global step, epoch and batch index; nothing is saved,
    so the last checkpoint on disk is the last good one."""

    def __init__(self) -> None:
        self._batch_idx = -1

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._batch_idx = batch_idx

    def _where(self, trainer: pl.Trainer) -> str:
        return f"at global step {trainer.global_step}, epoch {trainer.current_epoch}, batch {self._batch_idx}"

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if not bool(torch.isfinite(loss.detach()).all()):
            raise RunFault(f"non-finite training loss ({loss.item():.4g}) {self._where(trainer)}; stopped without "
                           "saving, the last checkpoint on disk is the last good one (trainer.detect_anomaly=true "
                           "finds the operation)")

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        named = [(n, p.grad) for n, p in pl_module.named_parameters() if p.grad is not None]
        if not named:
            return
        norms = torch.stack(torch._foreach_norm([g.detach() for _, g in named]))
        finite = torch.isfinite(norms)
        if not bool(finite.all()):
            bad = [n for (n, _), ok in zip(named, finite.tolist()) if not ok]
            raise RunFault(f"non-finite gradient {self._where(trainer)} in {len(bad)} parameter(s), first "
                           f"{bad[:3]}; stopped without saving, the last checkpoint on disk is the last good one")


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
