"""The loaders of the datamodules: seeded (:func:`seeded_loader`), and a datamodule mixin
whose training order a resumed run continues (:class:`ResumableOrder`)."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from glimpse.data.sampler import SeededOrder
from glimpse.data.workers import worker_init


def seeded_loader(dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int, pin_memory: bool) -> DataLoader:
    """A DataLoader; shuffled, its order is :class:`SeededOrder` of ``seed`` (the global RNG is not used)."""
    for key, value, least in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"data.{key}={value!r} must be an integer >= {least}")
    if len(dataset) == 0:
        raise ValueError(f"{getattr(dataset, 'name', 'a data split')} is empty: it has no images to load")
    persistent = num_workers > 0
    sampler = SeededOrder(len(dataset), seed, persistent) if shuffle else None
    generator = torch.Generator().manual_seed(seed) if shuffle else None  # the workers' base seed only
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, generator=generator, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=persistent,
                      worker_init_fn=worker_init if num_workers > 0 else None)


class ResumableOrder:
    """Datamodule mixin: the checkpoint records where the training order stands (epoch and
    samples done, from Lightning's own batch count) and a resumed run continues from there.
    Single process only; under DDP Lightning's distributed sampler shards the order and a
    resumed run restarts the interrupted epoch."""

    _order_state: dict | None = None
    _train_order: SeededOrder | None = None

    def state_dict(self) -> dict:
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.world_size > 1 or trainer.state.fn != "fit" or self._train_order is None:
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.ready * self.batch_size
        return {"train_order": {"epoch": trainer.current_epoch, "start": min(done, self._train_order.size)}}

    def load_state_dict(self, state_dict: dict) -> None:
        self._order_state = state_dict.get("train_order")
        self._apply_order_state()

    def _apply_order_state(self) -> None:
        if self._order_state and self._train_order is not None:
            self._train_order.epoch = int(self._order_state["epoch"])
            self._train_order.start = int(self._order_state["start"])

    def train_dataloader(self) -> DataLoader:
        loader = self._loader("train", shuffle=True)
        self._train_order = loader.sampler
        self._apply_order_state()
        return loader

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
