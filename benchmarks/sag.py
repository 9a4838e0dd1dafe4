"""Seconds per decision of structured attention graphs (glimpse/heatmaps/sag.py) on a glimpse
checkpoint: the batched search (every successor of a beam step, every pruning round and every
child of a graph level of all decisions in one chunked forward pass) against the same search
scoring one composite per forward pass, in the same run, on the same decisions; the two must
find the same roots.

    python benchmarks/sag.py --ckpt RUN/checkpoints/last.ckpt [--images 4] [--threads 1] [--grids 10 7]

The settings are configs/evaluate.yaml's ``sag`` section (``--grids`` overrides the grid; the
first grid is the one timed both ways, the others batched only, for the choice of grid). The
images are the first ``--images`` of Multiset-MNIST's test split; every label the greedy episode
emitted is one decision. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from glimpse.heatmaps.sag import SAGSettings, glimpse_attention_graphs, summary, timed  # noqa: E402
from glimpse.module import load_checkpoint  # noqa: E402
from glimpse.run import cpu_name  # noqa: E402


def config(images: int):
    """Settings of configs/evaluate.yaml's sag section and the first test images of its data."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        cfg = compose("evaluate", overrides=["ckpt_path=none", "data.num_workers=0", f"data.test_size={max(images, 1)}"])
    settings = SAGSettings.from_config(OmegaConf.to_container(cfg.sag, resolve=True))
    datamodule = instantiate(cfg.data)
    datamodule.setup("test")
    dataset = datamodule.datasets["test"]
    batch = torch.utils.data.default_collate([dataset[i] for i in range(images)])
    return settings, batch["image"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="a glimpse checkpoint (RUN/checkpoints/last.ckpt)")
    parser.add_argument("--images", type=int, default=4, help="first N test images; each emitted label is a decision")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--grids", type=int, nargs="+", default=None, help="patches per side (default: the config's)")
    args = parser.parse_args()
    if not Path(args.ckpt).is_file():
        print(f"error: --ckpt {args.ckpt}: no checkpoint there", file=sys.stderr)
        sys.exit(2)
    torch.set_num_threads(args.threads)
    settings, images = config(args.images)
    model = load_checkpoint(args.ckpt).eval()
    grids = args.grids or [settings.grid]
    print(f"checkpoint {args.ckpt}; {args.images} images; {args.threads} thread(s); CPU {cpu_name()}; "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    print("\n| grid | search | decisions | s / decision | roots / decision | patches / root | with a root |")
    print("|---|---|---|---|---|---|---|")
    rows = {}
    for k, grid in enumerate(grids):
        s = dataclasses.replace(settings, grid=grid)
        ways = [("batched", s, True)] + ([("one composite per pass", dataclasses.replace(s, chunk=1), False)] if k == 0 else [])
        for name, each, lockstep in ways:
            sags, seconds = timed(glimpse_attention_graphs, model, images, each, lockstep=lockstep)
            m = summary(sags, seconds)
            rows[(grid, name)] = (sags, m)
            print(f"| {grid} x {grid} | {name} | {len(sags)} | {m['sag/seconds_per_decision']:.3f} | {m['sag/num_roots']:.2f} "
                  f"| {m['sag/root_size']:.2f} | {m['sag/sufficient_fraction']:.2f} |", flush=True)
    grid = grids[0]
    (fast, m_fast), (slow, m_slow) = rows[(grid, "batched")], rows[(grid, "one composite per pass")]
    same = all(a.roots == b.roots and a.diverse == b.diverse and set(a.graph.nodes) == set(b.graph.nodes)
               for a, b in zip(fast, slow))
    ratio = m_slow["sag/seconds_per_decision"] / m_fast["sag/seconds_per_decision"]
    print(f"\nbatched {ratio:.1f}x faster than one composite per pass on the same {len(fast)} decisions "
          f"(same roots, diverse subsets and graph nodes: {same}); load average after: "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
