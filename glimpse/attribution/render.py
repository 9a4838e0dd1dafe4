"""Pictures of episodes: the image, its boxes, the saliency map and the glimpse trajectory.

Display only: maps are normalised here for the colour scale, never where metrics read them.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from glimpse.models.attention import cell_centres, upsample_cells
from glimpse.models.policy import Episode


def _multiset_text(counts: torch.Tensor, class_names: Sequence[str]) -> str:
    items = [class_names[c] for c in range(len(counts)) for _ in range(int(counts[c]))]
    return "{" + ", ".join(items) + "}"


def render_episodes(
    images: torch.Tensor,
    episode: Episode,
    boxes: torch.Tensor,
    box_labels: torch.Tensor,
    target_counts: torch.Tensor,
    predicted_counts: torch.Tensor,
    class_names: Sequence[str],
    path: str | Path,
    stop_index: int | None = None,
    max_images: int = 8,
):
    """Save a grid: per image, the trajectory (top) and the saliency map (bottom).

    Top: ground-truth boxes (green, with their labels), each meta step's attended cell as a
    numbered circle with the label it emitted, its glimpses as dots; the title gives the true
    and the predicted multiset. Bottom: the model's saliency map over the image.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n = min(max_images, images.shape[0])
    stop_index = len(class_names) if stop_index is None else stop_index
    hw = tuple(images.shape[-2:])
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 5.6), squeeze=False)
    meta_xy = cell_centres(episode.meta_locations, episode.grid, hw, episode.cell_stride).cpu().numpy()  # (B, T, 2)
    glimpse_xy = cell_centres(episode.glimpse_locations, episode.grid, hw, episode.cell_stride).cpu().numpy()  # (B, T, k, 2)
    colours = plt.get_cmap("tab10")
    for i in range(n):
        img = images[i].detach().float().cpu()
        img = img.mean(0) if img.shape[0] != 3 else img.permute(1, 2, 0)
        top, bottom = axes[0, i], axes[1, i]
        for ax in (top, bottom):
            ax.imshow(img.numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
        for box, lab in zip(boxes[i].tolist(), box_labels[i].tolist()):
            if lab < 0:
                continue
            x1, y1, x2, y2 = box
            top.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="lime", lw=1))
            top.text(x1, y1 - 1, class_names[lab], color="lime", fontsize=7, va="bottom")
        for t, label in enumerate(episode.labels[i].tolist()):
            c = colours(t % 10)
            if label == stop_index:
                top.text(0.98, 0.02, f"STOP@{t + 1}", color="white", fontsize=7, ha="right", va="bottom",
                         transform=top.transAxes, bbox=dict(fc="black", alpha=0.6, lw=0))
                break
            for gx, gy in glimpse_xy[i, t]:
                top.plot(gx, gy, ".", color=c, ms=5)
            x, y = meta_xy[i, t]
            top.plot(x, y, "o", mfc="none", mec=c, ms=14, mew=1.5)
            top.text(x, y, f"{t + 1}:{class_names[label]}", color="white", fontsize=7, ha="center", va="center",
                     bbox=dict(fc=c, alpha=0.8, lw=0, pad=0.5))
        ok = torch.equal(target_counts[i], predicted_counts[i])
        top.set_title(f"true {_multiset_text(target_counts[i], class_names)}\n"
                      f"pred {_multiset_text(predicted_counts[i], class_names)}",
                      fontsize=7, color="black" if ok else "red")
        sal = upsample_cells(episode.saliency_map[i : i + 1].detach().float().cpu(), hw, episode.cell_stride)[0]
        peak = float(sal.max())
        im = bottom.imshow((sal / peak if peak > 0 else sal).numpy(), cmap="inferno", alpha=0.6, vmin=0, vmax=1)
        bottom.set_title("saliency map", fontsize=7)
    fig.colorbar(im, ax=axes[1, :].tolist(), shrink=0.8, label="saliency (normalised for display)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
