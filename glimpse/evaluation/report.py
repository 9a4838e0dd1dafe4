"""The evaluation report: a Markdown page with its pictures, beside metrics.json."""
from __future__ import annotations

from pathlib import Path

import torch

from glimpse.evaluation.multilabel import SCORE_KINDS, MultilabelMetrics, class_key, class_scores
from glimpse.heatmaps.evaluation import HeatmapEvaluation
from glimpse.heatmaps.render import render_episodes
from glimpse.localisation import localisation_scores
from glimpse.metrics import bootstrap_interval, multiset_fractions


@torch.no_grad()
def render_indices(model, datamodule, split: str, indices: list[int], path: Path) -> Path:
    """Draw the split's images at ``indices`` with their greedy trajectories into ``path``."""
    dataset = datamodule.datasets[split]
    batch = torch.utils.data.default_collate([dataset[i] for i in indices])
    was_training = model.training
    model.eval()
    try:
        images = batch["image"].to(model.device)
        episode = model.predict_episode(images)
        predicted = model.predicted_counts(episode)
    finally:
        model.train(was_training)
    return render_episodes(images, episode, batch["boxes"], batch["labels"], batch["counts"], predicted.cpu(),
                           model.class_names, path)


def render_examples(model, datamodule, split: str, output_dir: str | Path, count: int = 8) -> Path:
    """Draw the first ``count`` images of the split with their greedy trajectories."""
    indices = list(range(min(count, len(datamodule.datasets[split]))))
    return render_indices(model, datamodule, split, indices, Path(output_dir) / "trajectories.png")


@torch.no_grad()
def score_split(model, datamodule, split: str, methods: dict, max_images: int | None = None,
                perturbation_steps: int = 10) -> dict:
    """One pass over the split: heatmap metrics per method (on the first ``max_images``), and
    over every image the per-class multiset counts, per-image F1 and the per-image numerators
    and denominators of the headline metrics, from which the report's bootstrap intervals come;
    the multi-label and count metrics (:mod:`glimpse.evaluation.multilabel`). A model without
    glimpses (``model.localises`` false: the baseline) gets no localisation or heatmap metrics.

    Returns ``{"metrics", "heatmaps_per_class", "per_class", "image_f1", "per_image"}``;
    ``per_image`` maps a metric key to ``(numerator, denominator)``, one entry per image.
    """
    loader = datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()
    was_training = model.training
    model.eval()
    evaluation = HeatmapEvaluation(model.policy.num_classes, steps=perturbation_steps)
    k = model.policy.num_classes
    localises = getattr(model, "localises", True)
    kinds = SCORE_KINDS if localises else SCORE_KINDS[:1]  # expected counts need the glimpse model's densities
    multilabel = MultilabelMetrics(k, kinds).to(model.device)
    inter = torch.zeros(k, dtype=torch.long)
    predicted_total = torch.zeros(k, dtype=torch.long)
    target_total = torch.zeros(k, dtype=torch.long)
    parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    seen = 0

    def keep(key: str, numerator: torch.Tensor, denominator: torch.Tensor) -> None:
        parts.setdefault(key, []).append((numerator.double().cpu(), denominator.double().cpu()))

    try:
        for batch in loader:
            batch = {key: v.to(model.device) if torch.is_tensor(v) else v for key, v in batch.items()}
            episode = model.predict_episode(batch["image"])
            predicted = model.predicted_counts(episode)
            counts = batch["counts"]
            inter += torch.minimum(predicted, counts).sum(0).cpu()
            predicted_total += predicted.sum(0).cpu()
            target_total += counts.sum(0).cpu()
            for key, (numerator, denominator) in multiset_fractions(predicted, counts).items():
                keep(f"multiset/{key}", numerator, denominator)
            multilabel.update({kind: class_scores(episode, kind) for kind in kinds}, predicted, counts)
            if localises and "boxes" in batch:
                scores = localisation_scores(episode, counts, batch["boxes"], batch["labels"], tuple(batch["image"].shape[-2:]))
                keep("localisation/glimpse_hit_rate", scores["hits"].sum(-1), scores["scored"].sum(-1))
                keep("localisation/object_coverage", scores["covered"], scores["objects"])
                keep("localisation/attention_energy_in_box", scores["energy"].sum(-1), scores["emitted"].sum(-1))
            if localises and methods and (max_images is None or seen < max_images):
                with torch.enable_grad():
                    evaluation.update(model, batch, episode, methods)
            seen += counts.shape[0]
    finally:
        model.train(was_training)
    metrics, heatmaps_per_class = evaluation.compute()
    metrics.update({key: float(v) for key, v in multilabel.compute().items()})
    labelled = {key: v.cpu().tolist() for key, v in multilabel.per_class().items()}
    metrics.update({f"count/mae/{class_key(name)}": v for name, v in zip(model.class_names, labelled["count_mae"])})
    per_class = {
        "precision": (inter.double() / predicted_total.clamp(min=1)).tolist(),
        "recall": (inter.double() / target_total.clamp(min=1)).tolist(),
        "objects": target_total.tolist(),
        "images": labelled["positives"],
        "AP": labelled[f"AP_{kinds[0]}"],
        "set_precision": labelled["precision"],
        "set_recall": labelled["recall"],
        "count_mae": labelled["count_mae"],
    }
    per_image = {key: tuple(torch.cat(column) for column in zip(*pairs)) for key, pairs in parts.items()}
    num, den = per_image.get("multiset/f1", (torch.zeros(0), torch.zeros(0)))
    image_f1 = torch.where(den > 0, num / den.clamp(min=1), torch.ones_like(den))  # an empty image predicted empty scores 1
    return {"metrics": metrics, "heatmaps_per_class": heatmaps_per_class, "per_class": per_class,
            "image_f1": image_f1, "per_image": per_image}


def intervals(per_image: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, tuple[float, float]]:
    """95% bootstrap interval of each headline metric, resampling images."""
    return {key: bootstrap_interval(num, den) for key, (num, den) in per_image.items()}


def render_worst(model, datamodule, split: str, image_f1: torch.Tensor, output_dir: str | Path, count: int = 8) -> Path:
    """Trajectories and saliency maps of the ``count`` images with the lowest F1."""
    indices = torch.sort(image_f1, stable=True).indices[:count].tolist()
    return render_indices(model, datamodule, split, indices, Path(output_dir) / "worst.png")


def plot_steps(metrics: dict[str, float], output_dir: str | Path) -> Path | None:
    """Hit rate and attention energy per meta step, the model beside its baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    drawn = False
    for ax, key in zip(axes, ("glimpse_hit_rate", "attention_energy_in_box")):
        for who, style in (("", "o-"), ("random/", "s--"), ("saliency/", "^:")):
            points = sorted(
                (int(k.rsplit("_", 1)[1]), v) for k, v in metrics.items() if k.startswith(f"localisation/{who}{key}/step_")
            )
            if points:
                drawn = True
                ax.plot([p[0] for p in points], [p[1] for p in points], style, label=(who.rstrip("/") or "model"))
        ax.set_title(key), ax.set_xlabel("meta step"), ax.set_ylim(0, 1), ax.legend(fontsize=8)
    path = Path(output_dir) / "steps.png"
    if drawn:
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return path if drawn else None


def _metric_table(metrics: dict[str, float], cis: dict[str, tuple[float, float]] | None = None) -> str:
    """Localisation metrics side by side with their baselines, the rest one per row; beside the
    model's value its 95% bootstrap interval over images where one was computed."""
    cis = cis or {}
    rows = ["| metric | model | 95% interval | random | saliency argmax |", "|---|---|---|---|---|"]
    fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    ci = lambda k: f"{cis[k][0]:.4f} – {cis[k][1]:.4f}" if k in cis and cis[k][0] == cis[k][0] else ""  # noqa: E731
    for key in ("glimpse_hit_rate", "object_coverage", "attention_energy_in_box"):
        name = f"localisation/{key}"
        if name in metrics:
            rows.append(f"| `{name}` | {fmt(metrics.get(name))} | {ci(name)} | "
                        f"{fmt(metrics.get(f'localisation/random/{key}'))} | {fmt(metrics.get(f'localisation/saliency/{key}'))} |")
    rest = [k for k in sorted(metrics) if not k.startswith(("localisation/", "count/mae/"))]  # per class: the class table
    rows += [f"| `{k}` | {metrics[k]:.4f} | {ci(k)} | | |" for k in rest]
    return "\n".join(rows)


# per-class columns of the report: (heading, key of score_split's per_class, format)
CLASS_COLUMNS = (
    ("objects", "objects", "{}"), ("images", "images", "{}"), ("precision", "precision", "{:.3f}"),
    ("recall", "recall", "{:.3f}"), ("AP", "AP", "{:.3f}"), ("label-set precision", "set_precision", "{:.3f}"),
    ("label-set recall", "set_recall", "{:.3f}"), ("count MAE", "count_mae", "{:.3f}"),
)


def _class_table(class_names: list[str], per_class: dict, heatmaps_per_class: dict) -> str:
    """One row per class, by name: multiset precision and recall (copies matched), average
    precision of the class score, precision and recall of the label set, count MAE, pointing games."""
    methods = list(heatmaps_per_class)
    columns = [c for c in CLASS_COLUMNS if c[1] in per_class]
    head = "| class |" + "".join(f" {c[0]} |" for c in columns) + "".join(f" pointing game ({m}) |" for m in methods)
    rows = [head, "|---|" + "---:|" * (len(columns) + len(methods))]
    for c, name in enumerate(class_names):
        cells = [fmt.format(per_class[key][c]) for _, key, fmt in columns]
        cells += [f"{heatmaps_per_class[m]['pointing_game'][c]:.3f}" for m in methods]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def write_report(
    metrics: dict[str, float], output_dir: str | Path, ckpt_path: str, split: str, pictures: list[Path] = (),
    class_names: list[str] | None = None, per_class: dict | None = None, heatmaps_per_class: dict | None = None,
    steps_plot: Path | None = None, worst: Path | None = None, cis: dict[str, tuple[float, float]] | None = None,
    sag: str | None = None,
) -> Path:
    """Write ``report.md``: metrics beside their baselines, per class, per step, examples, worst images."""
    path = Path(output_dir) / "report.md"
    figures = "\n\n".join(f"![{p.stem}]({p.name})" for p in pictures)
    parts = [
        f"# glimpse evaluation\n\ncheckpoint: `{ckpt_path}`  \nsplit: `{split}`\n",
        "## Metrics\n\nLocalisation beside two baselines on the same images and labels: uniformly random "
        "glimpses, and the argmax of the model's initial saliency map with inhibition of return. Heatmap "
        "metrics (`attribution/<method>/...`): pointing game (15 px at 224 px, scaled to the image), energy "
        "pointing game, deletion AUC (lower is better), insertion AUC (higher is better). The interval is a "
        "95% percentile bootstrap over the split's images (1,000 resamples): a difference smaller than it is "
        "not a win.\n",
        _metric_table(metrics, cis) + "\n",
    ]
    if class_names and per_class:
        parts += ["## Per class\n", "precision and recall: of the emitted multisets, copies matched; AP: average precision "
                  "of the class score over the images; label-set precision and recall: a class counts as named when "
                  "the multiset holds it at least once (what CP and CR average); count MAE: mean absolute error of "
                  "the class's count per image.\n", _class_table(class_names, per_class, heatmaps_per_class or {}) + "\n"]
    if steps_plot:
        parts += ["## Per meta step\n", f"![steps]({steps_plot.name})\n"]
    if figures:
        parts += [
        "## Example trajectories\n",
        "Green: ground-truth boxes. Numbered circles: the cell each meta step attended, with the label it "
        "emitted; dots: its glimpses. Bottom row: the saliency map. A red title marks a wrong multiset.\n",
        figures + "\n",
        ]
    if worst:
        parts += ["## Worst images (lowest F1)\n", f"![worst]({worst.name})\n"]
    if sag:  # structured attention graphs (glimpse/heatmaps/sag_render.py: sag_markdown)
        parts.append(sag)
    path.write_text("\n".join(parts))
    return path
