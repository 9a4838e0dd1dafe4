"""The evaluation report: a Markdown page with its pictures, beside metrics.json."""
from __future__ import annotations

from pathlib import Path

import torch

from glimpse.attribution.render import render_episodes


@torch.no_grad()
def render_examples(model, datamodule, split: str, output_dir: str | Path, count: int = 8) -> Path:
    """Draw the first ``count`` images of the split with their greedy trajectories."""
    dataset = datamodule.datasets[split]
    batch = torch.utils.data.default_collate([dataset[i] for i in range(min(count, len(dataset)))])
    was_training = model.training
    model.eval()
    try:
        images = batch["image"].to(model.device)
        episode = model.predict_episode(images)
        predicted = model.predicted_counts(episode)
    finally:
        model.train(was_training)
    return render_episodes(images, episode, batch["boxes"], batch["labels"], batch["counts"], predicted.cpu(),
                           model.class_names, Path(output_dir) / "trajectories.png")


def write_report(
    metrics: dict[str, float], output_dir: str | Path, ckpt_path: str, split: str, pictures: list[Path] = ()
) -> Path:
    """Write ``report.md``: the metrics of one checkpoint on one split, then the pictures."""
    path = Path(output_dir) / "report.md"
    rows = "\n".join(f"| `{k}` | {v:.4f} |" for k, v in sorted(metrics.items()))
    figures = "\n\n".join(f"![{p.stem}]({p.name})" for p in pictures)
    path.write_text(
        f"# glimpse evaluation\n\ncheckpoint: `{ckpt_path}`  \nsplit: `{split}`\n\n"
        f"| metric | value |\n|---|---|\n{rows}\n\n## Example trajectories\n\n"
        "Green: ground-truth boxes. Numbered circles: the cell each meta step attended, with the label it "
        "emitted; dots: its glimpses. Bottom row: the saliency map. A red title marks a wrong multiset.\n\n"
        f"{figures}\n"
    )
    return path
