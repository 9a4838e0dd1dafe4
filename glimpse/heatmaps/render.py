"""Pictures of episodes: the image, its boxes, the saliency map and the glimpse trajectory.

Display only: maps are normalised here for the colour scale, never where metrics read them.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from glimpse.geometry import cell_centres, upsample_cells
from glimpse.models.policy import Episode


def _multiset_text(counts: torch.Tensor, class_names: Sequence[str]) -> str:
    items = [class_names[c] for c in range(len(counts)) for _ in range(int(counts[c]))]
    return "{" + ", ".join(items) + "}"


def multiset_title(target_counts: torch.Tensor, predicted_counts: torch.Tensor, class_names: Sequence[str],
                   width: int = 34) -> str:
    """"true {...}" and "pred {...}" lines of a panel's title, each wrapped at ``width`` characters
    (long class names such as Fashion-MNIST's would run into the next panel's title)."""
    import textwrap

    lines = []
    for name, counts in (("true", target_counts), ("pred", predicted_counts)):
        lines += textwrap.wrap(f"{name} {_multiset_text(counts, class_names)}", width=width, subsequent_indent="  ",
                               break_long_words=False)
    return "\n".join(lines)


def draw_episode(top, bottom, image, episode: Episode, i: int, boxes, box_labels, target_counts, predicted_counts,
                 class_names: Sequence[str], stop_index: int | None = None):
    """Draw ``image`` (C, H, W), row ``i`` of ``episode``, with its ``boxes`` (M, 4), their
    labels and its true and predicted counts: trajectory, boxes and multisets on ``top``, the
    saliency map on ``bottom``; returns the saliency image (for a colour bar)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    stop_index = len(class_names) if stop_index is None else stop_index
    hw = tuple(image.shape[-2:])
    meta_xy = cell_centres(episode.meta_locations[i], episode.grid, hw, episode.cell_stride).cpu().numpy()  # (T, 2)
    glimpse_xy = cell_centres(episode.glimpse_locations[i], episode.grid, hw, episode.cell_stride).cpu().numpy()  # (T, k, 2)
    colours = plt.get_cmap("tab10")
    img = image.detach().float().cpu()
    img = img.mean(0) if img.shape[0] != 3 else img.permute(1, 2, 0)
    for ax in (top, bottom):
        ax.imshow(img.numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([]), ax.set_yticks([])
    for box, lab in zip(boxes.tolist(), box_labels.tolist()):
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
        for gx, gy in glimpse_xy[t]:
            top.plot(gx, gy, ".", color=c, ms=5)
        x, y = meta_xy[t]
        top.plot(x, y, "o", mfc="none", mec=c, ms=14, mew=1.5)
        top.text(x, y, f"{t + 1}:{class_names[label]}", color="white", fontsize=7, ha="center", va="center",
                 bbox=dict(fc=c, alpha=0.8, lw=0, pad=0.5))
    ok = torch.equal(target_counts, predicted_counts)
    top.set_title(multiset_title(target_counts, predicted_counts, class_names), fontsize=7, color="black" if ok else "red")
    sal = upsample_cells(episode.saliency_map[i : i + 1].detach().float().cpu(), hw, episode.cell_stride)[0]
    im = bottom.imshow(display_normalise(sal).numpy(), cmap="inferno", alpha=0.6, vmin=0, vmax=1)
    bottom.set_title("saliency map", fontsize=7)
    return im


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

    n = min(max_images, images.shape[0])
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 5.6), squeeze=False)
    for i in range(n):
        im = draw_episode(axes[0, i], axes[1, i], images[i], episode, i, boxes[i], box_labels[i], target_counts[i],
                          predicted_counts[i], class_names, stop_index)
    fig.colorbar(im, ax=axes[1, :].tolist(), shrink=0.8, label="saliency (normalised for display)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def display_normalise(maps: torch.Tensor, signed: bool = False) -> torch.Tensor:
    """Maps ``(..., H, W)`` scaled for display: by the largest absolute value of each map, into
    [0, 1] (or [-1, 1] when ``signed``). A flat map gives zeros, never NaN."""
    peak = maps.abs().flatten(-2).amax(-1)[..., None, None]
    scaled = torch.where(peak > 0, maps / peak.clamp(min=torch.finfo(maps.dtype).tiny), torch.zeros_like(maps))
    return scaled if signed else scaled.clamp(min=0)


SIGNED_METHODS = ("integrated_gradients",)  # signed maps: diverging colour map around 0


def render_attribution_grid(image: torch.Tensor, episode: Episode, index: int, maps: dict[str, torch.Tensor], boxes: torch.Tensor,
                            box_labels: torch.Tensor, target_counts: torch.Tensor, predicted_counts: torch.Tensor,
                            class_names: Sequence[str], path: str | Path, title: str = ""):
    """One grid PNG for ``image`` (C, H, W), row ``index`` of ``episode``, with its boxes (M, 4),
    box labels (M,), true and predicted counts (K,).

    Top row: the image with its ground-truth boxes, the true and predicted multisets, and the
    numbered trajectory; the model's saliency map. One row per emitted label (meta step): the
    covert attention mask over the image with that step's glimpses (numbered) and label, then
    one attribution map per method (``maps[method]`` is ``(T, H, W)``, raw), each over the image
    with its colour map and colour bar (normalised here, for display only).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(class_names)
    labels = episode.labels[index].tolist()
    steps = next((t for t, lab in enumerate(labels) if lab >= k), len(labels))  # emitted labels before STOP
    methods = list(maps)
    cols = max(2, 1 + len(methods))
    rows = 1 + steps
    hw = tuple(image.shape[-2:])
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.3 * rows), squeeze=False)
    img = image.detach().float().cpu()
    img = (img.mean(0) if img.shape[0] != 3 else img.permute(1, 2, 0)).numpy()
    for ax in axes.flat:
        ax.axis("off")
    im = draw_episode(axes[0, 0], axes[0, 1], image, episode, index, boxes, box_labels, target_counts, predicted_counts,
                      class_names)
    fig.colorbar(im, ax=axes[0, 1], fraction=0.046, pad=0.02).ax.tick_params(labelsize=5)
    glimpse_xy = cell_centres(episode.glimpse_locations[index], episode.grid, hw, episode.cell_stride).cpu().numpy()
    masks = episode.attention_masks[index].detach().float().cpu().view(-1, *episode.grid)
    masks = upsample_cells(masks, hw, episode.cell_stride)
    for t in range(steps):
        ax = axes[t + 1, 0]
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        ax.imshow(masks[t].clamp(0, 1).numpy(), cmap="viridis", alpha=0.5, vmin=0, vmax=1)
        for j, (gx, gy) in enumerate(glimpse_xy[t]):
            ax.plot(gx, gy, "o", color="red", ms=4)
            ax.text(gx + 2, gy - 2, str(j + 1), color="red", fontsize=7)
        ax.set_title(f"step {t + 1}: attention, label {class_names[labels[t]]}", fontsize=7)
        for c, name in enumerate(methods, start=1):
            signed = name in SIGNED_METHODS
            shown = display_normalise(maps[name][t].detach().float().cpu(), signed=signed)
            ax = axes[t + 1, c]
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            im = ax.imshow(shown.numpy(), cmap="seismic" if signed else "inferno", alpha=0.6,
                           vmin=-1 if signed else 0, vmax=1)
            ax.set_title(f"{name} ({class_names[labels[t]]})", fontsize=7)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=5)
    if title:
        fig.suptitle(title, fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path
