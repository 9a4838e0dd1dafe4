"""Time to accuracy: validation F1 and exact match against wall-clock time, per training setting.

Each setting is ``python train.py`` with its overrides (seed 0, the CSV logger), run one after
another in the same sitting, each stopped at ``--minutes`` of fitting (``trainer.max_time``; a
setting that finishes earlier ends on its own and is tested). The callback ``FitClock`` logs
``time/fit_seconds`` with every validation, so the table is read from each run's metrics.csv.
Before the runs, ``benchmarks/train_throughput.py`` prints the ratio of a training step to the
backbone's forward+backward in the same sitting.

    python benchmarks/time_to_accuracy.py [--minutes 10.5] [--out benchmarks/runs/time_to_accuracy] \
        default= three_epochs="trainer.max_epochs=3" ...

A setting is ``NAME=OVERRIDES`` (space-separated Hydra overrides, empty for the defaults). A run
already finished in ``OUT/NAME`` is read back, so an interrupted sitting continues.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from glimpse.compare import max_time  # noqa: E402
from glimpse.run import cpu_name  # noqa: E402

F1, EXACT, CLOCK = "val/multiset/f1", "val/multiset/exact_match", "time/fit_seconds"
# (F1, exact match) the table reports the first time of: a non-attentive reference's 20-minute result, the default's
GOALS = ((0.964, 0.898), (0.968, 0.92))


def curve(run_dir: Path) -> list[dict[str, float]]:
    """``[{epoch, seconds, f1, exact_match}]``, one per validation, from the run's CSV log."""
    rows = []
    for path in sorted(run_dir.glob("csv/version_*/metrics.csv")):
        with path.open() as f:
            for row in csv.DictReader(f):
                if row.get(CLOCK):
                    rows.append({"epoch": int(float(row["epoch"])), "seconds": float(row[CLOCK]),
                                 "f1": float(row[F1]), "exact_match": float(row[EXACT])})
    return rows


def run_setting(name: str, overrides: list[str], minutes: float, out: Path) -> dict:
    """Train one setting (or read it back when finished); its curve, test metrics and wall time."""
    run_dir = out / name
    record = run_dir / "run.json"
    if record.is_file():
        done = json.loads(record.read_text())
        if done.get("returncode") == 0:
            return {**done, "curve": curve(run_dir)}
    command = [sys.executable, "train.py", "logger=csv", "seed=0", f"paths.output_dir={run_dir}",
               f"trainer.max_time='{max_time(minutes)}'", *overrides]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"error: setting {name} failed ({proc.returncode}): {proc.stderr.strip()[-1500:]}")
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    result = {"name": name, "overrides": overrides, "returncode": 0, "wall_seconds": wall,
              "test_f1": metrics.get("test/multiset/f1"), "test_exact_match": metrics.get("test/multiset/exact_match"),
              "test_hit_rate": metrics.get("test/localisation/glimpse_hit_rate"),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_name()}
    record.write_text(json.dumps(result, indent=1))
    return {**result, "curve": curve(run_dir)}


def first_reaching(points: list[dict], f1: float, exact: float) -> float:
    """Fit seconds of the first validation with F1 >= ``f1`` and exact match >= ``exact`` (nan: none)."""
    return next((p["seconds"] for p in points if p["f1"] >= f1 and p["exact_match"] >= exact), math.nan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.5, help="fit wall-clock cap of each run")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "runs" / "time_to_accuracy")
    parser.add_argument("--no-throughput", action="store_true", help="skip benchmarks/train_throughput.py")
    parser.add_argument("settings", nargs="*", default=["default="], help="NAME=OVERRIDES")
    args = parser.parse_args()
    settings = {}
    for item in args.settings:
        name, sep, overrides = item.partition("=")
        if not sep or not name:
            sys.exit(f"error: setting {item!r} must be NAME=OVERRIDES (overrides may be empty: default=)")
        settings[name] = shlex.split(overrides)

    print(f"CPU: {cpu_name()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    if not args.no_throughput:
        bench = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_throughput.py")], cwd=ROOT,
                               capture_output=True, text=True)
        print(bench.stdout.strip() or bench.stderr.strip()[-800:])
    results = [run_setting(name, overrides, args.minutes, args.out) for name, overrides in settings.items()]

    print("\n| setting | epoch | fit seconds | val F1 | val exact match |")
    print("|---|---|---|---|---|")
    for r in results:
        for p in r["curve"]:
            print(f"| {r['name']} | {p['epoch']} | {p['seconds']:.0f} | {p['f1']:.4f} | {p['exact_match']:.4f} |")
    goals = " | ".join(f"first val F1>={f1}, EM>={em} (s)" for f1, em in GOALS)
    print(f"\n| setting | overrides | whole command (s) | test F1 | test exact match | test hit rate | {goals} |")
    print("|---|---|---|---|---|---|" + "---|" * len(GOALS))
    for r in results:
        test = [r.get(k) for k in ("test_f1", "test_exact_match", "test_hit_rate")]
        cells = " | ".join("-" if v is None else f"{v:.4f}" for v in test)
        firsts = " | ".join(f"{first_reaching(r['curve'], f1, em):.0f}" for f1, em in GOALS)
        print(f"| {r['name']} | `{' '.join(r['overrides']) or '(defaults)'}` | {r['wall_seconds']:.0f} | {cells} | {firsts} |")


if __name__ == "__main__":
    main()
