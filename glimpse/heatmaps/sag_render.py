"""Drawing a structured attention graph with matplotlib (no system binary such as graphviz).

The graph is laid out in layers: the diverse roots on top, then each node one patch removal
further down (its distance from the nearest root), nodes of a layer ordered by the mean
position of their parents so edges cross little. Each node is the composite the model saw
(revealed patches over the baseline) with its probability and its share of the full image's;
the patch removed from its parent is outlined in red, and each edge is labelled with the
probability drop.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import networkx as nx
import torch

from glimpse.heatmaps.sag import SAG, composite, patch_masks


def layers(sag: SAG) -> list[list[frozenset]]:
    """Nodes by layer: distance from the nearest diverse root; a layer's nodes ordered by the
    mean position of their parents in the layer above (the roots in root order)."""
    graph = sag.graph
    roots = [sag.roots[i] for i in sag.diverse if sag.roots[i] in graph]
    if not roots:
        return []
    depth = nx.multi_source_dijkstra_path_length(graph, roots)
    out = [roots]
    for level in range(1, max(depth.values()) + 1):
        position = {node: i for i, node in enumerate(out[-1])}
        nodes = [n for n in graph if depth[n] == level]

        def key(node, position=position):
            above = [position[p] for p in graph.predecessors(node) if p in position]
            return (sum(above) / len(above) if above else 0.0, len(node), sorted(node))

        out.append(sorted(nodes, key=key))
    return out


def _display(image: torch.Tensor):
    img = image.detach().float().cpu().clamp(0, 1)
    return (img.mean(0) if img.shape[0] != 3 else img.permute(1, 2, 0)).numpy()


def _patch_box(patch: int, grid: int, hw: tuple[int, int]) -> tuple[float, float, float, float]:
    """(x, y, width, height) in pixels of a patch (the grid's even split of the image)."""
    row, col = divmod(patch, grid)
    ph, pw = hw[0] / grid, hw[1] / grid
    return col * pw - 0.5, row * ph - 0.5, pw, ph


def render_sag(sag: SAG, path: str | Path, class_names: Sequence[str] | None = None, title: str | None = None,
               max_per_layer: int = 8) -> Path:
    """Draw ``sag`` into ``path`` (PNG): the image on the left, the layered graph on the right
    (at most ``max_per_layer`` nodes per layer, the rest summarised as '+n more')."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    name = class_names[sag.target] if class_names is not None and sag.target < len(class_names) else str(sag.target)
    rows = layers(sag)
    shown = [row[:max_per_layer] for row in rows]
    width = max([len(r) for r in shown] + [1])
    fig = plt.figure(figsize=(2.2 + 1.5 * width, 0.4 + 1.75 * max(len(shown), 1)))
    left = fig.add_axes([0.01, 0.05, 1.9 / (2.2 + 1.5 * width), 0.8])
    left.imshow(_display(sag.image), cmap="gray", vmin=0, vmax=1)
    grid_lines = [i * sag.image.shape[-1] / sag.grid - 0.5 for i in range(1, sag.grid)]
    for v in grid_lines:
        left.axvline(v, color="white", lw=0.3, alpha=0.4), left.axhline(v, color="white", lw=0.3, alpha=0.4)
    left.set_xticks([]), left.set_yticks([])
    step = "" if sag.step is None else f"step {sag.step + 1}: "
    left.set_title(f"{step}{name}, p = {sag.probability:.2f}\n{len(sag.roots)} minimal sufficient sets", fontsize=8)
    ax = fig.add_axes([(2.0) / (2.2 + 1.5 * width), 0.0, 1 - 2.0 / (2.2 + 1.5 * width), 1.0])
    overflow = any(len(row) > max_per_layer for row in rows)
    ax.set_xlim(-0.6, width - 0.4 + 0.6 * overflow)
    ax.set_ylim(-len(shown) + 0.35, 0.75)
    ax.axis("off")
    if not rows:
        ax.text(width / 2 - 0.5, 0, f"no patch set of the {sag.grid} x {sag.grid} grid keeps 90% of p", ha="center",
                fontsize=9)
    hw = tuple(sag.image.shape[-2:])
    nodes = [n for row in shown for n in row]
    xy = {n: (i + (width - len(row)) / 2, -level) for level, row in enumerate(shown) for i, n in enumerate(row)}
    pictures = composite(sag.image[None].expand(len(nodes), *sag.image.shape), sag.baseline[None].expand(len(nodes), *sag.image.shape),
                         patch_masks(nodes, sag.grid)) if nodes else []
    size = 0.62  # thumbnail side in layer units
    for (parent, child, data) in sag.graph.edges(data=True):
        if parent in xy and child in xy:
            (x0, y0), (x1, y1) = xy[parent], xy[child]
            ax.annotate("", xy=(x1, y1 + size / 2), xytext=(x0, y0 - size / 2 - 0.12),
                        arrowprops=dict(arrowstyle="->", color="0.5", lw=0.8))
            ax.text((x0 + x1) / 2, (y0 - size / 2 - 0.12 + y1 + size / 2) / 2, f"{-data['drop']:+.2f}", fontsize=6,
                    color="firebrick", ha="center", va="center", bbox=dict(fc="white", lw=0, alpha=0.8, pad=0.3))
    for node, picture in zip(nodes, pictures):
        x, y = xy[node]
        inset = ax.inset_axes([x - size / 2, y - size / 2, size, size], transform=ax.transData)
        inset.imshow(_display(picture), cmap="gray", vmin=0, vmax=1)
        inset.set_xticks([]), inset.set_yticks([])
        data = sag.graph.nodes[node]
        root = data.get("root") is not None
        for side in inset.spines.values():
            side.set_edgecolor("royalblue" if root else "0.6"), side.set_linewidth(1.6 if root else 0.6)
        for parent in sag.graph.predecessors(node):
            removed = sag.graph.edges[parent, node]["removed"]
            bx, by, bw, bh = _patch_box(removed, sag.grid, hw)
            inset.add_patch(Rectangle((bx, by), bw, bh, fill=False, ec="red", lw=0.9, ls="--"))
        inset.set_title(f"{data['probability']:.2f} ({data['probability'] / max(sag.probability, 1e-12):.0%})", fontsize=6,
                        pad=1.5)
    for level, row in enumerate(rows):
        if len(row) > max_per_layer:
            ax.text(width - 0.35, -level, f"+{len(row) - max_per_layer}\nmore", fontsize=7, ha="left", va="center")
    if title:
        fig.suptitle(title, fontsize=9, x=0.01, ha="left")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_sags(model, images: torch.Tensor, settings, output_dir: str | Path, title: str = "image {i}") -> tuple[list, float, list[Path]]:
    """SAGs of every label the glimpse ``model`` emits on ``images``, drawn one PNG per decision
    (``<output_dir>/image_<i>_step_<t>.png``, titled ``title`` with ``{i}`` the image's row).
    Returns the SAGs, the seconds they took (drawing excluded) and the paths."""
    from glimpse.heatmaps.sag import glimpse_attention_graphs, timed

    was_training = model.training
    model.eval()
    try:
        sags, seconds = timed(glimpse_attention_graphs, model, images, settings)
    finally:
        model.train(was_training)
    paths = [render_sag(sag, Path(output_dir) / f"image_{sag.source}_step_{sag.step + 1}.png", model.class_names,
                        title=f"{title.format(i=sag.source)}, meta step {sag.step + 1}") for sag in sags]
    return sags, seconds, paths


def check_num_images(num_images) -> None:
    """A ValueError naming ``sag.num_images`` unless it is an integer >= 0."""
    if isinstance(num_images, bool) or not isinstance(num_images, (int, float)) or int(num_images) != num_images \
            or num_images < 0:
        raise ValueError(f"sag.num_images={num_images!r} must be an integer >= 0 (0: no SAGs)")


def split_sags(model, datamodule, split: str, settings, num_images: int, output_dir: str | Path,
               loggers: Sequence = ()) -> dict:
    """SAGs of every label the glimpse ``model`` emitted on the first ``num_images`` images of
    ``split``: one PNG per decision in ``<output_dir>/sag/``, logged to W&B as ``sag`` when a
    W&B logger is given. Returns ``{"metrics": sag/*, "pictures": [paths], "markdown": report section}``."""
    from glimpse.heatmaps.sag import summary

    check_num_images(num_images)
    dataset = datamodule.datasets[split]
    batch = torch.utils.data.default_collate([dataset[i] for i in range(min(int(num_images), len(dataset)))])
    sags, seconds, pictures = draw_sags(model, batch["image"].to(model.device), settings, Path(output_dir) / "sag",
                                        title=f"{split} image {{i}}")
    metrics = summary(sags, seconds)
    for logger in loggers:
        from lightning.pytorch.loggers import WandbLogger

        if isinstance(logger, WandbLogger) and pictures:
            logger.log_image(key="sag", images=[str(p) for p in pictures], caption=[p.stem for p in pictures])
    return {"metrics": metrics, "pictures": pictures, "markdown": sag_markdown(metrics, pictures, Path(output_dir), settings)}


def sag_markdown(metrics: dict[str, float], pictures: Sequence[Path], output_dir: Path, settings) -> str:
    """The report's section: what the pictures show (the ``sag/*`` numbers are in the metrics table)."""
    figures = "\n\n".join(f"![{p.stem}]({p.relative_to(output_dir).as_posix()})" for p in pictures)
    return (
        "## Structured attention graphs\n\n"
        f"For each label the model emitted: the minimal sets of {settings.grid} x {settings.grid} patches that each keep "
        f"the label's probability above {settings.sufficient:.0%} of the full image's (the episode's glimpse actions "
        f"replayed on the image showing only those patches over a {settings.baseline} baseline), found by beam search; "
        f"on top the largest subset overlapping in at most {settings.max_overlap} patch (up to {settings.num_diverse}), "
        f"below them the sets with one patch fewer while the probability stays above {settings.expand:.0%} "
        "(red: the removed patch; edges: the probability change). In the metrics table, `sag/num_roots` counts the "
        "minimal sets per decision before the diverse cut, `sag/root_size` their patches, "
        "`sag/sufficient_fraction` the share of decisions with at least one, over "
        f"{len(pictures)} decisions ({metrics.get('sag/seconds_per_decision', float('nan')):.2f} s each).\n\n"
        f"{figures}\n"
    )
