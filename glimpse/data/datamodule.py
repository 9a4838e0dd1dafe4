"""Lightning DataModule over MultisetMNIST: three deterministic splits and their loaders."""

from __future__ import annotations

import os
import signal
import threading

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, Sampler

from glimpse.data.multiset_mnist import MultisetMNIST


class SeededOrder(Sampler[int]):
    """The training order as a function of ``(seed, epoch)``, resumable within an epoch.

    Epoch ``e`` yields exactly what ``DataLoader(shuffle=True, generator=Generator().manual_seed(seed))``
    yields in its ``e``-th epoch under Lightning's fit loop (so runs keep the order they had
    before this sampler). That loader's generator draws one int64 (its workers' base seed) each
    time a new iterator starts, then a ``randperm`` for the epoch; with persistent workers the
    iterator starts once, and the workers' prefetch runs RandomSampler to its end, where it
    draws one more (empty) ``randperm``; without workers Lightning stops at the known length
    and that last draw never happens. The order is replayed from the seed, so it needs no
    saved generator state; ``start`` skips the indices already trained on when a run resumes
    mid-epoch.
    """

    def __init__(self, size: int, seed: int, persistent_workers: bool = False) -> None:
        self.size, self.seed, self.persistent_workers = size, seed, persistent_workers
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch; a new epoch starts from its beginning."""
        if epoch != self.epoch:
            self.epoch, self.start = epoch, 0

    def order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        for e in range(epoch + 1):
            if e == 0 or not self.persistent_workers:
                torch.empty((), dtype=torch.int64).random_(generator=generator)  # the base seed
            perm = torch.randperm(self.size, generator=generator)
            if self.persistent_workers:
                torch.randperm(self.size, generator=generator)  # RandomSampler's empty remainder
        return perm

    def __iter__(self):
        yield from self.order(self.epoch)[self.start:].tolist()

    def __len__(self) -> int:  # the whole epoch: Lightning counts the batches already done itself
        return self.size


def worker_init(worker_id: int) -> None:
    """A DataLoader worker outlives a SIGTERM that is not from its main process.

    ``timeout``, ``kill -- -PGID`` and SLURM's scancel signal every process of a job; a worker
    that died at once would end the run with "DataLoader worker killed" before
    :class:`glimpse.reliability.LastCheckpoint` in the main process saves and exits 143. So the
    worker blocks SIGTERM and a thread takes each one: from the main process (the DataLoader or
    ``multiprocessing`` shutting its workers down) it ends the worker as usual; from anyone else
    it is left to the main process, which shuts the worker down when it exits. (Ignoring SIGTERM
    outright would hang an exit on an error: ``multiprocessing`` terminates, then joins, its
    workers.) Where ``signal.sigwaitinfo`` does not exist (macOS, Windows) the worker keeps the
    default. Then Lightning's worker seeding, which ``seed_everything(workers=True)`` adds to a
    loader without a ``worker_init_fn``."""
    if hasattr(signal, "sigwaitinfo"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started from here on inherit it
        threading.Thread(target=_end_on_sigterm_from, args=(os.getppid(),), daemon=True,
                         name="sigterm-from-main-process").start()
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        pl_worker_init_function(worker_id)


def _end_on_sigterm_from(main_pid: int) -> None:
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != main_pid:
        pass  # a signal to the whole job: the main process decides
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # the disposition is still the default
    os.kill(os.getpid(), signal.SIGTERM)  # delivered to this thread, the only one not blocking it: the default end


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


class MultisetMNISTDataModule(ResumableOrder, pl.LightningDataModule):
    """Train / val / test MultisetMNIST canvases; the canvas arguments pass through unchanged.

    Canvases depend only on (seed, split, index), and the train order on a generator seeded
    from `seed`, so two runs with the same arguments see the same batches.
    """

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        train_size: int = 10000,
        val_size: int = 1000,
        test_size: int = 1000,
        seed: int = 0,
        **canvas_kwargs,
    ) -> None:
        """``canvas_kwargs`` are MultisetMNIST's canvas arguments (canvas_size, max_digits, ...)."""
        super().__init__()
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.seed = seed
        self.split_sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.canvas_kwargs = {"seed": seed, **canvas_kwargs}
        self.datasets: dict[str, MultisetMNIST] = {}
        self.setup()  # validate the canvas arguments now, before a run starts writing anything
        reference = self.datasets["train"]
        self.num_classes = reference.num_classes
        self.class_names = reference.class_names
        self.max_objects = reference.max_digits

    def setup(self, stage: str | None = None) -> None:
        """Build all three splits (cheap: the digit pools are cached, canvases drawn lazily)."""
        if not self.datasets:
            self.datasets = {
                split: MultisetMNIST(split=split, size=size, **self.canvas_kwargs)
                for split, size in self.split_sizes.items()
            }

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            self.setup()
        return seeded_loader(self.datasets[split], self.batch_size, shuffle, self.seed, self.num_workers, self.pin_memory)
