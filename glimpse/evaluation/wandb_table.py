"""The evaluation as a W&B table: one row per image, to sort by F1 and look at the failures.

Each row: the image with its glimpse trajectory drawn in (a line through the meta steps'
cells, each step's glimpses as dots in its colour) and two box layers the W&B viewer toggles,
``ground_truth`` (the boxes and their classes) and ``meta_steps`` (the cell each step
attended, captioned ``step: class``); the true and the predicted multiset; exact match; F1;
the glimpse hits (steps whose final glimpse claimed a box of the class they named); the
number of meta steps (STOP included); the class of each step.

    python -m glimpse.evaluation.wandb_table RUN_DIR/wandb/offline-run-* docs/wandb_table.png [MIN_OBJECTS]

draws rows of a logged table back from an offline run (lowest F1 first).
"""
from __future__ import annotations

import json
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glimpse import multiset
from glimpse.geometry import cell_centres, cell_geometry, glimpse_hits
from glimpse.heatmaps.render import _multiset_text
from glimpse.loggers import check_max_rows


COLUMNS = ("index", "image", "true", "predicted", "exact_match", "f1", "glimpse_hits", "meta_steps", "step_classes")
PIXELS = 300  # images are drawn at least this large (nearest-neighbour upscaling), so the glimpses are visible
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]  # matplotlib's tab10


@torch.no_grad()
def table_rows(model, datamodule, split: str, max_rows: int) -> list[dict[str, Any]]:
    """The first ``max_rows`` images of the split, one dict per image with the :data:`COLUMNS`
    (``image`` an ``(H, W, 3)`` uint8 array) and the box layers ``truth`` and ``steps`` as
    ``(x0, y0, x1, y1, class)`` in the drawn image's pixels. Greedy decoding, batched."""
    loader = datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()
    k = model.policy.num_classes
    names = list(model.class_names)
    rows: list[dict[str, Any]] = []
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            if len(rows) >= max_rows:
                break
            take = max_rows - len(rows)
            batch = {key: v[:take].to(model.device) if torch.is_tensor(v) else v for key, v in batch.items()}
            images, counts = batch["image"], batch["counts"]
            hw = tuple(images.shape[-2:])
            episode = model.predict_episode(images)
            predicted = model.predicted_counts(episode)
            overlap = multiset.intersection_size(predicted, counts)
            size = predicted.sum(-1) + counts.sum(-1)
            f1 = torch.where(size > 0, 2 * overlap / size.clamp(min=1), torch.ones_like(size, dtype=torch.float))
            labels = episode.labels  # (B, T), K is STOP
            stop = labels == k
            steps = torch.where(stop.any(-1), stop.int().argmax(-1) + 1, torch.full_like(labels[:, 0], labels.shape[1]))
            boxes = batch.get("boxes")
            hits = (glimpse_hits(episode, counts, boxes, batch["labels"], hw)[0].sum(-1) if boxes is not None
                    else torch.zeros_like(steps))
            meta = cell_centres(episode.meta_locations, episode.grid, hw, episode.cell_stride)  # (B, T, 2)
            glimpses = cell_centres(episode.step_locations(), episode.grid, hw, episode.cell_stride)  # (B, T, k', 2)
            half = (cell_geometry(episode.grid, hw, episode.cell_stride)[1] / 2).tolist()  # half a cell, x and y
            scale = max(1, round(PIXELS / max(hw)))
            pictures = (images.float().clamp(0, 1) * 255).round().byte().cpu()
            for i in range(images.shape[0]):
                n = int(steps[i])
                emitted = [int(c) for c in labels[i, :n].tolist()]
                image = draw_trajectory(pictures[i], meta[i, :n].cpu(), glimpses[i, :n].cpu(), emitted, k, scale)
                truth = [(*(v * scale for v in box), int(c)) for box, c in
                         zip((boxes[i].tolist() if boxes is not None else []), batch["labels"][i].tolist()) if c >= 0]
                cells = [((x - half[0]) * scale, (y - half[1]) * scale, (x + half[0]) * scale, (y + half[1]) * scale, c)
                         for (x, y), c in zip(meta[i, :n].tolist(), emitted) if c < k]
                rows.append({
                    "index": len(rows), "image": image, "truth": truth, "steps": cells,
                    "true": _multiset_text(counts[i], names), "predicted": _multiset_text(predicted[i], names),
                    "exact_match": bool(torch.equal(predicted[i], counts[i])), "f1": float(f1[i]),
                    "glimpse_hits": int(hits[i]), "meta_steps": n,
                    "step_classes": " → ".join(names[c] if c < k else "STOP" for c in emitted),
                })
    finally:
        model.train(was_training)
    return rows


def draw_trajectory(image: torch.Tensor, meta_xy: torch.Tensor, glimpse_xy: torch.Tensor, labels: list[int],
                    stop_index: int, scale: int) -> np.ndarray:
    """``image`` (C, H, W) uint8, upscaled ``scale`` times, with a line through the meta steps'
    cells ``(T, 2)`` (a ring on each) and each step's glimpses ``(T, k', 2)`` as dots; a step
    that emitted STOP is drawn as a cross. Returns ``(H', W', 3)`` uint8."""
    from PIL import Image, ImageDraw

    rgb = image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
    picture = Image.fromarray(rgb.permute(1, 2, 0).numpy()).resize((image.shape[2] * scale, image.shape[1] * scale),
                                                                    Image.NEAREST)
    pen = ImageDraw.Draw(picture)
    points = [(x * scale, y * scale) for x, y in meta_xy.tolist()]  # continuous pixel coordinates
    if len(points) > 1:
        pen.line(points, fill=(255, 255, 255), width=max(1, scale // 2))
    r = 2 * scale
    for t, ((x, y), label) in enumerate(zip(points, labels)):
        colour = COLOURS[t % len(COLOURS)]
        for gx, gy in glimpse_xy[t].tolist():
            gx, gy = gx * scale, gy * scale
            pen.ellipse((gx - scale, gy - scale, gx + scale, gy + scale), fill=colour)
        if label == stop_index:
            pen.line((x - r, y - r, x + r, y + r), fill=colour, width=scale)
            pen.line((x - r, y + r, x + r, y - r), fill=colour, width=scale)
        else:
            pen.ellipse((x - r, y - r, x + r, y + r), outline=colour, width=scale)
    return np.asarray(picture)


def wandb_table(rows: list[dict[str, Any]], class_names: list[str]):
    """A ``wandb.Table`` of :func:`table_rows`, the boxes as the image's ``ground_truth`` and
    ``meta_steps`` layers."""
    import wandb

    classes = dict(enumerate(class_names))

    def layer(boxes, caption):
        return {"box_data": [{"position": {"minX": x0, "minY": y0, "maxX": x1, "maxY": y1}, "domain": "pixel",
                              "class_id": c, "box_caption": caption(j, c)} for j, (x0, y0, x1, y1, c) in enumerate(boxes)],
                "class_labels": classes}

    table = wandb.Table(columns=list(COLUMNS))
    for row in rows:
        steps = layer(row["steps"], lambda j, c: f"{j + 1}: {class_names[c]}")
        image = wandb.Image(row["image"], boxes={"ground_truth": layer(row["truth"], lambda j, c: class_names[c]),
                                                 "meta_steps": steps})
        table.add_data(*[image if c == "image" else row[c] for c in COLUMNS])
    return table


def log_evaluation(logger, model, datamodule, split: str, metrics: dict[str, float], report: Path | None,
                   max_rows: int) -> None:
    """With a W&B logger: the metrics in the run summary (``<split>/<key>``), the table of the
    first ``max_rows`` images as ``<split>/images``, and the pictures of ``report`` as
    ``<split>/report/<name>``. Anything W&B cannot write is a warning."""
    from lightning.pytorch.loggers import WandbLogger

    if not isinstance(logger, WandbLogger):
        return
    max_rows = check_max_rows(max_rows)
    try:
        import wandb

        run = logger.experiment
        run.summary.update({f"{split}/{k}": v for k, v in metrics.items()})
        logged: dict[str, Any] = {}
        if report is not None and Path(report).is_file():
            for name in re.findall(r"!\[[^]]*\]\(([^)]+\.png)\)", Path(report).read_text()):
                if (Path(report).parent / name).is_file():
                    logged[f"{split}/report/{Path(name).stem}"] = wandb.Image(str(Path(report).parent / name))
        if max_rows:
            logged[f"{split}/images"] = wandb_table(table_rows(model, datamodule, split, max_rows), model.class_names)
        run.log(logged)
    except Exception as err:  # an unwritable staging dir, a full disk: metrics.json and report.md stand
        warnings.warn(f"W&B could not keep the evaluation table and pictures ({type(err).__name__}: {err}); "
                      "metrics.json and report.md hold the results", stacklevel=2)


# -- the table read back from an offline run --------------------------------------------------------
def read_table(run_dir: str | Path, key: str | None = None) -> tuple[list[str], list[list[Any]], dict[str, str]]:
    """Columns, rows and staged files (path in the artifact -> local file) of the table ``key``
    (default: the last one logged) of an offline run."""
    from glimpse.loggers import offline_run

    tables = [a for a in offline_run(run_dir)["artifacts"] if a["type"] == "run_table"
              and any(p.endswith(".table.json") and (key is None or p == f"{key}.table.json") for p in a["files"])]
    if not tables:
        raise FileNotFoundError(f"{run_dir} holds no logged table" + (f" {key}" if key else ""))
    files = tables[-1]["files"]
    path = next(p for p in files if p.endswith(".table.json"))
    table = json.loads(Path(files[path]).read_text())
    return table["columns"], table["data"], files


def draw_table(run_dir: str | Path, path: str | Path, count: int = 6, min_objects: int = 0, key: str | None = None) -> Path:
    """Draw ``count`` rows of a logged table, lowest F1 first (as a user sorting by F1 sees
    them), of the images with at least ``min_objects`` objects: each row's image with its box
    layers, its columns below it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    columns, data, files = read_table(run_dir, key)
    at = columns.index
    chosen = [r for r in data if len(r[at("image")].get("boxes", {}).get("ground_truth", [])) >= min_objects]
    rows = sorted(chosen, key=lambda r: r[at("f1")])[:count]
    width = min(3, len(rows))
    height = -(-len(rows) // width)
    fig, axes = plt.subplots(height, width, figsize=(3.4 * width, 5.0 * height), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows):
        cell = row[at("image")]
        ax.imshow(plt.imread(files[cell["path"]]))
        for layer, colour in (("ground_truth", "lime"), ("meta_steps", "white")):
            for box in cell.get("boxes", {}).get(layer, []):
                p = box["position"]
                ax.add_patch(Rectangle((p["minX"], p["minY"]), p["maxX"] - p["minX"], p["maxY"] - p["minY"],
                                       fill=False, ec=colour, lw=1, ls="-" if layer == "ground_truth" else ":"))
                ax.text(p["minX"], p["minY"] - 2, box.get("box_caption", ""), color=colour, fontsize=7,
                        va="bottom", bbox=dict(fc="black", alpha=0.5, lw=0, pad=0.5))
        text = "\n".join(f"{c}: {v:.3f}" if isinstance(v, float) else f"{c}: {v}"
                         for c, v in zip(columns, row) if c != "image")
        ax.text(0, -0.03, text, transform=ax.transAxes, fontsize=7.5, va="top", family="monospace")
    which = f"images with at least {min_objects} objects, " if min_objects else ""
    fig.suptitle(f"Rows of the W&B evaluation table ({which}lowest F1 first). Green: the ground_truth box layer; "
                 "dotted: the meta_steps layer", fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit("usage: python -m glimpse.evaluation.wandb_table OFFLINE_RUN_DIR OUT.png [MIN_OBJECTS]")
    print(draw_table(sys.argv[1], sys.argv[2], min_objects=int(sys.argv[3]) if len(sys.argv) == 4 else 0))
