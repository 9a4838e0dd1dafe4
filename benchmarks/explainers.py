"""Time per map of the Explainer against iGOS++ and Integrated Gradients, on the same batch, one run.

The glimpse model's right labels on the first ``--images`` test images are the targets (the
targets evaluate.py scores). Each method makes one map per target; the time per map is the
method's wall time over the batch divided by the number of targets. Goal: the
Explainer at least 100x faster per map than iGOS++.

Integrated Gradients: the attribution issue's IG is not in main yet, so this file has its own
plain IG (``--ig-steps`` points from a black image, gradient of the target probability with
the episode's actions replayed, summed |IG| over channels), for timing only.

    python benchmarks/explainers.py GLIMPSE_CKPT EXPLAINER_CKPT [--images 32]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from glimpse.heatmaps.registry import explainer_method, igos_method, resolve_methods
    from glimpse.heatmaps.targets import right_label_targets
    from glimpse.module import load_checkpoint

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("glimpse_ckpt")
    parser.add_argument("explainer_ckpt")
    parser.add_argument("--images", type=int, default=32)
    args = parser.parse_args()

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"ckpt_path={args.glimpse_ckpt}", f"data.test_size={args.images}",
                                             "data.num_workers=0"])
    model = load_checkpoint(args.glimpse_ckpt).eval()
    datamodule = instantiate(cfg.data)
    datamodule.setup("test")
    batch = torch.utils.data.default_collate([datamodule.datasets["test"][i] for i in range(args.images)])
    images = batch["image"]
    with torch.no_grad():
        episode = model.predict_episode(images)
    targets = right_label_targets(episode, batch["counts"])
    igos_settings = {k: v for k, v in cfg.heatmaps.igos.items()}
    methods = {
        "explainer": explainer_method(args.explainer_ckpt),
        f"igos (iterations={igos_settings['iterations']}, ig_steps={igos_settings['ig_steps']})": igos_method(**igos_settings),
        # glimpse.heatmaps' Integrated Gradients, as evaluate.py calls it (its default steps)
        "integrated gradients (glimpse.heatmaps)": resolve_methods(["integrated_gradients"])["integrated_gradients"],
    }
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}")
    print(f"{args.images} images, {len(targets)} maps (right labels)")
    times = {}
    for name, method in methods.items():
        start = time.perf_counter()
        maps = method(model, images, episode, targets)
        times[name] = (time.perf_counter() - start) / len(targets)
        assert maps.shape == (len(targets), *images.shape[-2:])
        print(f"| {name} | {1000 * times[name]:.2f} ms |")
    explainer, igos = times["explainer"], next(v for k, v in times.items() if k.startswith("igos"))
    print(f"iGOS++ / Explainer: {igos / explainer:.0f}x per map")


if __name__ == "__main__":
    main()
