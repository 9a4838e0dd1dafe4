"""Stop at the first non-finite loss or gradient, saving nothing."""
from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from glimpse.errors import RunFault


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
