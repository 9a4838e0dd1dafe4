"""What `python evaluate.py` costs on 2,000 Multiset-MNIST test images with every metric.

Runs the real evaluate() (multiset and localisation metrics with both baselines, every
heatmap method's pointing game, energy pointing game and deletion/insertion AUC, the
bootstrap intervals, the report and its pictures) and, in the same run on the same images,
the floor: one greedy rollout of the model over the split. Prints both, and their ratio
(absolute times drift on a shared machine). Goal: the whole evaluation in at most
5 minutes on two CPU cores.

    python benchmarks/evaluation.py CKPT [--images 2000] [--methods saliency_map ...] [--breakdown]

``--breakdown`` also prints the seconds spent in the heatmap metrics' parts (attribution maps,
the shared endpoints, deletion/insertion).
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))


def main() -> None:
    import sys

    sys.path.insert(0, str(ROOT))
    from evaluate import evaluate
    from glimpse.module import load_checkpoint

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--methods", nargs="*", default=None, help="heatmap methods, or all (default: evaluate.yaml's)")
    parser.add_argument("--breakdown", action="store_true", help="seconds in the heatmap metrics' parts")
    args = parser.parse_args()
    spent = time_parts() if args.breakdown else None

    out = Path(tempfile.mkdtemp(prefix="glimpse-eval-bench-"))
    overrides = [f"ckpt_path={args.ckpt}", f"data.test_size={args.images}", f"paths.output_dir={out}",
                 "logger=none", "hydra.run.dir=."]
    if args.methods is not None:
        overrides.append(f"heatmaps.methods=[{','.join(args.methods)}]")
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("evaluate", overrides=overrides)

    model = load_checkpoint(args.ckpt).eval()
    datamodule = instantiate(cfg.data)
    datamodule.setup("test")
    start = time.perf_counter()
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            model.predict_episode(batch["image"])
    floor = time.perf_counter() - start

    start = time.perf_counter()
    metrics = evaluate(cfg)
    whole = time.perf_counter() - start

    print(f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{args.images} test images, methods {cfg.heatmaps.methods}, {len(metrics)} metric keys, output {out}")
    print("| what | seconds | x floor |\n|---|---|---|")
    print(f"| greedy rollout over the split (floor) | {floor:.1f} | 1.0 |")
    print(f"| python evaluate.py, every metric, report | {whole:.1f} | {whole / floor:.1f} |")
    print(f"goal: <= 300 s -> {'met' if whole <= 300 else 'NOT met'}")
    if spent is not None:
        print("breakdown (s):", {k: round(v, 1) for k, v in spent.items()})


def time_parts() -> Counter:
    """Wrap the heatmap metrics' parts with timers; returns the seconds each has taken so far."""
    from glimpse.heatmaps import evaluation, registry, scores

    spent: Counter = Counter()

    def timed(owner, name: str, key: str) -> None:
        inner = getattr(owner, name)

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - start

        setattr(owner, name, wrapper)

    timed(registry.AttributionMethods, "maps", "attribution maps")
    timed(scores, "perturbation_endpoints", "endpoints")
    timed(scores, "perturbation_auc", "deletion/insertion")
    timed(evaluation.HeatmapEvaluation, "update", "heatmap metrics in all")
    return spent


if __name__ == "__main__":
    main()
