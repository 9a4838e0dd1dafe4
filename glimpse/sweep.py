"""The summary of a Hydra multirun: one row per job (its overrides and headline metrics)."""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("glimpse")

HEADLINE = ("multiset/exact_match", "multiset/precision", "multiset/recall", "multiset/f1", "localisation/glimpse_hit_rate")


def job_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job dir under ``sweep_dir`` (``0``, ``1``, ...): its number, the overrides
    no other job shares, status (``done`` with a metrics.json, else ``failed``) and metrics."""
    rows = []
    jobs = [d for d in sweep_dir.iterdir() if d.is_dir() and d.name.isdigit()]
    for job in sorted(jobs, key=lambda d: int(d.name)):
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = list(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
        metrics_file = job / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        rows.append({"job": job.name, "overrides": overrides, "status": "done" if metrics else "failed", **metrics})
    common = set.intersection(*(set(row["overrides"]) for row in rows)) if rows else set()
    for row in rows:  # the overrides that tell the jobs apart (the swept values)
        row["overrides"] = " ".join(o for o in row["overrides"] if o not in common)
    return rows


def write_summary(sweep_dir: str | Path) -> tuple[Path, Path]:
    """``summary.csv`` (every metric of every job) and ``summary.md`` (the headline metrics of
    the test split, or of the scored split for evaluate.py) in ``sweep_dir``."""
    sweep_dir = Path(sweep_dir)
    rows = job_rows(sweep_dir)
    keys = sorted({k for row in rows for k in row} - {"job", "overrides", "status"})
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["job", "overrides", "status", *keys])
        writer.writeheader()
        writer.writerows(rows)
    shown = [k for k in keys if any(k in (name, f"test/{name}") for name in HEADLINE)]
    lines = [f"# Sweep {sweep_dir.name}: {len(rows)} jobs", "",
             "| job | overrides | status | " + " | ".join(f"`{k}`" for k in shown) + " |",
             "|---|---|---|" + "---:|" * len(shown)]
    for row in rows:
        cells = [f"{row[k]:.4f}" if k in row else "" for k in shown]
        lines.append(f"| {row['job']} | `{row['overrides']}` | {row['status']} | " + " | ".join(cells) + " |")
    (sweep_dir / "summary.md").write_text("\n".join(lines) + "\n")
    return sweep_dir / "summary.md", sweep_dir / "summary.csv"


class SweepSummary(Callback):
    """At the end of a multirun, ``summary.md`` and ``summary.csv`` in the sweep dir."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            markdown, _ = write_summary(sweep_dir)
            log.info("sweep summary: %s", markdown)
