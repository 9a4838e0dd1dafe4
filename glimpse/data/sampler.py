"""The training order: a sampler that is a function of (seed, epoch) and resumes mid-epoch."""
from __future__ import annotations

import torch
from torch.utils.data import Sampler


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
