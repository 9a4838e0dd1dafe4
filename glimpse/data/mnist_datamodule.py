"""Lightning DataModule over MultisetMNIST: three deterministic splits and their loaders."""

from __future__ import annotations

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from glimpse.data.loaders import ResumableOrder, seeded_loader
from glimpse.data.multiset_mnist import MultisetMNIST


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
