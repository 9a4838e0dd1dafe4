"""Compare training objectives, or models, on the same data, seeds and wall-clock budget.

    python -m glimpse.compare objectives=[multiset,reinforce] seeds=[0,1,2] budget_minutes=10 \
        data=mnist_multi_4 [output=benchmarks/objectives.md] [overrides=[data.train_size=20000]]
    python -m glimpse.compare models=[glimpse,baseline] objectives=[multiset] budget_minutes=20 \
        checkpoints_at=[5,10,20] data=multiset_mnist output=docs/multilabel.md

``models`` are configs/model/<name>.yaml (default: the glimpse model alone). With
``checkpoints_at`` (CPU minutes, budget=cpu) one run per (model, objective, seed) keeps its model
at each of those points of its budget (:class:`BudgetCheckpoints`) and ``evaluate.py`` scores
each on the test split: with the constant learning rate of these runs, the model after 5 of 20
CPU minutes is the model a 5-minute run ends with, so one run gives every budget's row, with
the multi-label and count metrics beside the multiset ones.

Each (objective, seed) is one ``train.py`` run in a subprocess with ``threads`` torch threads
and its data composed in the same process, stopped after ``budget_minutes`` of fitting
(validation included), then tested. The budget is CPU time by default (``budget=cpu``,
:class:`glimpse.training.cpu_budget.CpuBudget`): the same work for every run whatever else the machine
is doing; ``budget=wall`` uses Lightning's ``trainer.max_time`` instead. ``jobs`` runs go at
once (``jobs=2 threads=1`` keeps two cores busy). A finished run (its ``run.json`` and
``metrics.json`` in ``runs_dir``, with the commit it ran) is read back, not run again, so an interrupted comparison
resumes with the same command. The script writes one markdown table (mean ± standard
deviation over the seeds, test split) and, with ``logger=wandb``, the same table to W&B.
"""
from __future__ import annotations

import functools
import json
import math
import os
import pickle
import platform
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import lightning.pytorch as pl
from omegaconf import OmegaConf

from glimpse.run import ConfigError, user_errors

ROOT = Path(__file__).resolve().parents[1]
# (column, metrics.json key): the test split's headline numbers
COLUMNS = (
    ("exact match", "test/multiset/exact_match"),
    ("precision", "test/multiset/precision"),
    ("recall", "test/multiset/recall"),
    ("F1", "test/multiset/f1"),
    ("glimpse hit rate", "test/localisation/glimpse_hit_rate"),
)

# columns shown when some run has them: evaluate.py's multi-label and count metrics (checkpoints_at)
MULTILABEL_COLUMNS = (("mAP", "test/multilabel/mAP"), ("count accuracy", "test/count/accuracy"))

# columns from each run's record: (name, key, decimals); the optimiser steps the budget bought
# (from last.ckpt) and the whole run's wall time
EXTRA = (("steps", "steps", 0), ("wall time (s)", "wall_time", 1))


@dataclass
class CompareConfig:
    objectives: list = field(default_factory=lambda: ["multiset", "reinforce"])  # configs/objective/<name>.yaml
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    budget_minutes: float = 10.0  # each run's fit: CPU minutes (budget=cpu) or wall-clock minutes (budget=wall)
    budget: str = "cpu"  # cpu (CpuBudget: the same work under any load) | wall (trainer.max_time)
    threads: int = 1  # torch threads of each run (OMP_NUM_THREADS)
    jobs: int = 1  # runs at once
    data: str = "mnist_multi_4"  # configs/data/<name>.yaml
    overrides: list = field(default_factory=list)  # more train.py overrides, the same for every run
    logger: str = "none"  # configs/logger/<name>.yaml, for the runs and (wandb) the table
    output: str = "benchmarks/objectives.md"
    append: bool = False  # add the table to the end of `output` instead of replacing it
    runs_dir: str = ""  # where the runs go; "" = outputs/compare/<UTC time>
    note: str = ""  # a line printed above the table (e.g. "smoke budget")
    models: list = field(default_factory=lambda: ["glimpse"])  # configs/model/<name>.yaml
    checkpoints_at: list = field(default_factory=list)  # CPU minutes at which each run's model is kept and evaluated


def config_names(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "configs" / group).glob("*.yaml"))


def parse(argv: list[str]) -> CompareConfig:
    """``key=value`` arguments (lists as ``[a,b]``) onto :class:`CompareConfig`; bad ones are a ConfigError."""
    allowed = list(CompareConfig.__dataclass_fields__)
    bad = [a for a in argv if "=" not in a or a.split("=", 1)[0] not in allowed]
    if bad:
        raise ConfigError(f"unknown argument {bad[0]!r}; give key=value with key one of {allowed}")
    text = {"data", "logger", "output", "runs_dir", "note", "budget"}  # taken as written (a note may hold a colon)
    pairs = [a.split("=", 1) for a in argv]
    given = OmegaConf.to_container(OmegaConf.from_dotlist([a for a, (k, _) in zip(argv, pairs) if k not in text]))
    given.update({k: v for k, v in pairs if k in text})
    cfg = CompareConfig(**{**CompareConfig().__dict__, **given})
    for key in ("objectives", "seeds", "overrides", "models", "checkpoints_at"):
        value = getattr(cfg, key)
        if not isinstance(value, list):
            setattr(cfg, key, [value])
    for key, names, group in (("objectives", cfg.objectives, "objective"), ("data", [cfg.data], "data"),
                              ("logger", [cfg.logger], "logger"), ("models", cfg.models, "model")):
        unknown = [n for n in names if str(n) not in config_names(group)]
        if unknown:
            raise ConfigError(f"{key}={unknown[0]} is not a config in configs/{group}; choose from {config_names(group)}")
    if not cfg.objectives or not cfg.seeds or not cfg.models:
        raise ConfigError("models, objectives and seeds must each name at least one value, e.g. objectives=[multiset] seeds=[0]")
    at = cfg.checkpoints_at
    if at and (cfg.budget != "cpu" or not all(isinstance(m, (int, float)) and not isinstance(m, bool) and m > 0 for m in at)
               or max(at) != cfg.budget_minutes or sorted(set(at)) != list(at)):
        raise ConfigError(f"checkpoints_at={at} must be increasing CPU minutes > 0 ending at budget_minutes="
                          f"{cfg.budget_minutes}, with budget=cpu (e.g. checkpoints_at=[5,10,20] budget_minutes=20)")
    if not all(isinstance(s, int) for s in cfg.seeds):
        raise ConfigError(f"seeds={cfg.seeds} must be integers")
    if isinstance(cfg.budget_minutes, bool) or not isinstance(cfg.budget_minutes, (int, float)) or not cfg.budget_minutes > 0:
        raise ConfigError(f"budget_minutes={cfg.budget_minutes} must be a number of minutes > 0")
    if cfg.budget not in ("cpu", "wall"):
        raise ConfigError(f"budget={cfg.budget} must be cpu (CPU minutes of each run) or wall (wall-clock minutes)")
    for key in ("threads", "jobs"):
        value = getattr(cfg, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key}={value} must be a whole number >= 1")
    return cfg


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The commit the runs are trained with (``+dirty`` with uncommitted changes), or ``unknown``."""
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def max_time(minutes: float) -> str:
    """Lightning's ``DD:HH:MM:SS`` for a budget in minutes (whole seconds, at least one)."""
    seconds = max(round(minutes * 60), 1)
    return f"{seconds // 86400:02d}:{seconds // 3600 % 24:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def run_settings(cfg: CompareConfig, objective: str, seed: int, model: str = "glimpse") -> dict:
    """What makes two runs the same run: recorded in ``run.json`` and checked before one is read back."""
    settings = {"objective": objective, "seed": seed, "data": cfg.data, "budget": cfg.budget,
                "budget_minutes": float(cfg.budget_minutes), "threads": cfg.threads,
                "overrides": list(map(str, cfg.overrides))}
    if model != "glimpse":
        settings["model"] = model
    if cfg.checkpoints_at:
        settings["checkpoints_at"] = [float(m) for m in cfg.checkpoints_at]
    return settings


def run_path(runs_dir: Path, model: str, objective: str, seed: int) -> Path:
    """``runs_dir/<objective>/seed_<n>`` for the glimpse model, ``runs_dir/<model>/<objective>/seed_<n>`` for another."""
    return runs_dir / (objective if model == "glimpse" else f"{model}/{objective}") / f"seed_{seed}"


def run_label(cfg: CompareConfig, model: str, objective: str) -> str:
    """A table row's name: the objective, the model, or both when both vary."""
    parts = [model] if len(cfg.models) > 1 or model != "glimpse" else []
    if len(cfg.objectives) > 1 or not parts:
        parts.append(objective)
    return " · ".join(parts)


class BudgetCheckpoints(pl.Callback):
    """Save ``dirpath/budget_<m>min.ckpt`` once the run's :class:`~glimpse.training.cpu_budget.CpuBudget`
    has used ``m`` CPU minutes, for each ``m`` in ``minutes`` (the last one when the budget stops fitting)."""

    def __init__(self, minutes: list[float], dirpath: str) -> None:
        self.minutes, self.dirpath = sorted(float(m) for m in minutes), Path(dirpath)

    @staticmethod
    def path(dirpath: Path, minutes: float) -> Path:
        return Path(dirpath) / f"budget_{minutes:g}min.ckpt"

    def _save(self, trainer: pl.Trainer, final: bool) -> None:
        from glimpse.training.cpu_budget import CpuBudget

        budget = next((c for c in trainer.callbacks if isinstance(c, CpuBudget)), None)
        if budget is None:
            raise ValueError("callbacks.budget_checkpoints needs callbacks.cpu_budget (glimpse.training.cpu_budget.CpuBudget)")
        used = budget.used()
        for m in self.minutes:
            path = self.path(self.dirpath, m)
            due = used >= m * 60 or (final and m * 60 >= budget.seconds and used >= budget.seconds)
            if due and not path.is_file():
                trainer.save_checkpoint(path, weights_only=False)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args) -> None:
        self._save(trainer, final=False)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer, final=True)


def check_runs_dir(cfg: CompareConfig, runs_dir: Path) -> None:
    """Before anything runs: a run already in ``runs_dir`` must have this comparison's settings,
    or reading it back (or resuming it) would put another budget's numbers in the table."""
    for model, objective, seed in ((m, o, s) for m in cfg.models for o in cfg.objectives for s in cfg.seeds):
        record = run_path(runs_dir, model, objective, seed) / "run.json"
        if not record.is_file():
            continue
        try:
            recorded = json.loads(record.read_text()).get("settings")
        except (OSError, ValueError) as err:
            raise ConfigError(f"{record} is not readable JSON ({err}); move it away or give another runs_dir")
        wanted = run_settings(cfg, objective, seed, model)
        if recorded is not None and recorded != wanted:
            diff = ", ".join(f"{k}={recorded.get(k)!r} there, {wanted[k]!r} here" for k in wanted
                             if recorded.get(k) != wanted[k])
            raise ConfigError(f"runs_dir={runs_dir} already holds {objective} seed {seed} with other settings "
                              f"({diff}); give another runs_dir, or the same settings to read it back or resume it")


def steps_reached(run_dir: Path) -> float:
    """The optimiser steps a run took (its ``last.ckpt``), NaN without one."""
    import torch

    last = run_dir / "checkpoints" / "last.ckpt"
    try:
        return float(torch.load(last, map_location="cpu", weights_only=False)["global_step"])
    except (OSError, KeyError, RuntimeError, EOFError, pickle.UnpicklingError):  # none, or not a checkpoint
        return float("nan")


def run_one(cfg: CompareConfig, objective: str, seed: int, run_dir: Path, model: str = "glimpse") -> dict:
    """Train and test one (model, objective, seed) in a subprocess; its metrics, wall time and return code.

    A run already finished in ``run_dir`` (``run.json`` and ``metrics.json``) is read back instead;
    one that was stopped with a ``last.ckpt`` resumes from it (its CPU budget continues). With
    ``checkpoints_at``, ``budgets`` holds each kept model's :func:`evaluate_checkpoint`."""
    record, metrics_path = run_dir / "run.json", run_dir / "metrics.json"
    if record.is_file() and metrics_path.is_file():
        done = json.loads(record.read_text())
        if done.get("returncode") == 0:
            return {**done, "objective": objective, "seed": seed, "model": model,
                    "metrics": json.loads(metrics_path.read_text()), "reused": True,
                    "budgets": evaluate_checkpoints(cfg, seed, run_dir)}
    if cfg.budget == "cpu":
        budget = ["+callbacks.cpu_budget._target_=glimpse.training.cpu_budget.CpuBudget",
                  f"+callbacks.cpu_budget.minutes={float(cfg.budget_minutes)}",
                  "data.num_workers=0"]  # the data's work is counted in the same process
    else:
        budget = [f"trainer.max_time='{max_time(cfg.budget_minutes)}'"]
    resume = (run_dir / "checkpoints" / "last.ckpt").is_file()
    if cfg.checkpoints_at:
        budget += ["+callbacks.budget_checkpoints._target_=glimpse.compare.BudgetCheckpoints",
                   f"+callbacks.budget_checkpoints.minutes=[{','.join(str(float(m)) for m in cfg.checkpoints_at)}]",
                   f"+callbacks.budget_checkpoints.dirpath={run_dir / 'checkpoints'}"]
    overrides = [
        *([f"model={model}"] if model != "glimpse" else []),
        f"objective={objective}", f"seed={seed}", f"data={cfg.data}", f"logger={cfg.logger}",
        f"paths.output_dir={run_dir}", *budget,
        "trainer.max_epochs=-1",  # the budget stops training
        "model.scheduler=constant",  # a cosine schedule needs a known number of steps
        # with checkpoints_at evaluate.py tests each kept model; else the best by val F1 is tested here
        f"test={str(not cfg.checkpoints_at).lower()}", *(["ckpt_path=last"] if resume else []),
        # the comparison's runs in one W&B group (grouped further by config objective in the UI)
        *([f"logger.group={wandb_group(run_dir.parent.parent)}"] if cfg.logger == "wandb" else []),
        *map(str, cfg.overrides),
    ]
    settings = run_settings(cfg, objective, seed, model)
    run_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"settings": settings, "returncode": None}, indent=1))  # claimed, not finished
    threads = str(cfg.threads)
    env = {**os.environ, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": threads,
           "MKL_NUM_THREADS": threads}
    start = time.perf_counter()
    # a CPU budget takes longer than its minutes in wall-clock time on a loaded machine
    timeout = float(cfg.budget_minutes) * 60 * (10 if cfg.budget == "cpu" else 3) + 900
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    wall = time.perf_counter() - start
    metrics = json.loads(metrics_path.read_text()) if proc.returncode == 0 and metrics_path.is_file() else {}
    result = {"wall_time": wall, "returncode": proc.returncode, "commit": code_version(), "resumed": resume,
              "steps": steps_reached(run_dir)}
    if not metrics:
        print(f"  {model} {objective} seed {seed} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}", file=sys.stderr)
    record.write_text(json.dumps({"settings": settings, **result}, indent=1))
    return {"objective": objective, "seed": seed, "model": model, "metrics": metrics, **result,
            "budgets": evaluate_checkpoints(cfg, seed, run_dir) if metrics else {}}


def evaluate_checkpoints(cfg: CompareConfig, seed: int, run_dir: Path) -> dict[float, dict]:
    """``{minutes: {"metrics", "steps"}}``: ``evaluate.py`` on the test split of each model kept at
    ``checkpoints_at`` (metric keys prefixed ``test/``), into ``run_dir/eval_<m>min``; read back
    when that evaluation is already there. Heatmaps are not scored (``heatmaps.methods=[]``)."""
    import torch

    out = {}
    data = [o for o in map(str, cfg.overrides) if o.startswith(("data.", "+data.", "~data."))]  # the same canvases
    for minutes in cfg.checkpoints_at:
        ckpt = BudgetCheckpoints.path(run_dir / "checkpoints", float(minutes))
        if not ckpt.is_file():
            continue
        eval_dir = run_dir / f"eval_{float(minutes):g}min"
        metrics_path = eval_dir / "metrics.json"
        if not metrics_path.is_file():
            threads = str(cfg.threads)
            env = {**os.environ, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": threads,
                   "MKL_NUM_THREADS": threads}
            proc = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), f"ckpt_path={ckpt}", f"data={cfg.data}",
                                   f"seed={seed}", "data.num_workers=0", "heatmaps.methods=[]", "logger=none",
                                   f"paths.output_dir={eval_dir}", "trainer.enable_progress_bar=false", *data],
                                  cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
            if proc.returncode != 0:
                print(f"  evaluate.py on {ckpt} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}", file=sys.stderr)
                continue
        steps = float(torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"])
        out[float(minutes)] = {"metrics": {f"test/{k}": v for k, v in json.loads(metrics_path.read_text()).items()},
                               "steps": steps}
    return out


def budget_rows(cfg: CompareConfig, runs: list[dict]) -> tuple[list[dict], list[str]]:
    """With ``checkpoints_at``: one pseudo-run per (run, kept model), named ``<label> @ <m> CPU min``
    (its wall time is not its own: NaN), and the row names in table order (by budget, then label)."""
    expanded, names = [], []
    for minutes in map(float, cfg.checkpoints_at):
        for model in cfg.models:
            for objective in cfg.objectives:
                name = f"{run_label(cfg, model, objective)} @ {minutes:g} CPU min"
                names.append(name)
                for run in runs:
                    if run.get("model", "glimpse") == model and run["objective"] == objective:
                        kept = run.get("budgets", {}).get(minutes)
                        expanded.append({**run, "objective": name, "metrics": kept["metrics"] if kept else {},
                                         "steps": kept["steps"] if kept else float("nan"), "wall_time": float("nan")})
    return expanded, names


def summarise(runs: list[dict], objectives: list[str]) -> list[dict]:
    """Per objective: mean and standard deviation over the seeds of each column and the wall time."""
    rows = []
    for objective in objectives:
        done = [r for r in runs if r["objective"] == objective and r["metrics"]]
        row = {"objective": objective, "runs": len(done), "seeds": len([r for r in runs if r["objective"] == objective]),
               "commits": sorted({r.get("commit", "unknown") for r in done})}
        columns = [(name, [r["metrics"].get(key, float("nan")) for r in done]) for name, key in COLUMNS + MULTILABEL_COLUMNS]
        columns += [(name, [r.get(key, float("nan")) for r in done]) for name, key, _ in EXTRA]
        for name, values in columns:
            values = [v for v in values if math.isfinite(v)]  # NaN: nothing to score (e.g. no right label to hit)
            row[name] = (statistics.fmean(values) if values else float("nan"),
                         statistics.stdev(values) if len(values) > 1 else float("nan"))
        rows.append(row)
    return rows


def fmt(mean: float, spread: float, digits: int) -> str:
    if mean != mean:  # NaN: no run finished
        return "—"
    return f"{mean:.{digits}f}" + ("" if spread != spread else f" ± {spread:.{digits}f}")


def markdown(cfg: CompareConfig, rows: list[dict], command: str, runs_dir: Path) -> str:
    """One section: what ran, on which machine, and the table."""
    names = column_names(rows)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cpu = " ".join(filter(None, (platform.machine(), platform.processor())))
    machine = (f"{platform.node()}: {cpu}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
               f"torch {version('torch')}")
    budget = "CPU" if cfg.budget == "cpu" else "wall-clock"
    shown_dir = runs_dir.relative_to(ROOT) if runs_dir.is_relative_to(ROOT) else runs_dir  # the repo's own: relative
    models = "" if cfg.models == ["glimpse"] else f"models {list(cfg.models)}, "
    per_run = (f"{', '.join(f'{m:g}' for m in cfg.checkpoints_at)} {budget} min of one run each" if cfg.checkpoints_at
               else f"{cfg.budget_minutes:g} {budget} min per run")
    lines = [f"## data={cfg.data}, {models}{per_run}, seeds {list(cfg.seeds)}", ""]
    tested = ("the model kept at each budget point (`glimpse.compare.BudgetCheckpoints`) scored by `evaluate.py` on the "
              "test split" if cfg.checkpoints_at else "then the test split with the best checkpoint by val F1")
    if cfg.note:
        lines += [cfg.note, ""]
    lines += [
        f"- command: `{command}`",
        f"- machine: {machine}; {when}",
        f"- each run: `train.py` with {cfg.threads} torch thread(s), stopped after the budget of fitting (validation "
        "included; " + ("CPU time of the run's process, data composed in it: `glimpse.training.cpu_budget.CpuBudget`"
                        if cfg.budget == "cpu" else "wall-clock time: `trainer.max_time`") +
        f"), {cfg.jobs} run(s) at once, constant learning rate, {tested}; "
        f"extra overrides: `{' '.join(map(str, cfg.overrides)) or 'none'}`; runs under `{shown_dir}`",
        code_line(rows),
        "- mean ± standard deviation over the seeds (test split; a run with nothing to score, NaN, is left out of "
        "that column); steps: the optimiser steps the budget bought; wall time is the whole run (start-up, fit, test)"
        + ("; not shown per budget point" if cfg.checkpoints_at else ""),
        "",
        f"| {'objective' if cfg.models == ['glimpse'] else 'run'} | " + " | ".join(names) + " | runs |",
        "|---|" + "---:|" * (len(names) + 1),
    ]
    decimals = {name: digits for name, _, digits in EXTRA}
    for row in rows:
        cells = [fmt(*row[name], decimals.get(name, 3)) for name in names]
        lines.append(f"| `{row['objective']}` | " + " | ".join(cells) + f" | {row['runs']}/{row['seeds']} |")
    return "\n".join(lines) + "\n"


def column_names(rows: list[dict]) -> list[str]:
    """The table's columns: the multiset ones, the multi-label ones when some row has them, the run record's."""
    shown = [name for name, _ in MULTILABEL_COLUMNS if any(row[name][0] == row[name][0] for row in rows)]
    return [name for name, _ in COLUMNS] + shown + [name for name, _, _ in EXTRA]


def put_section(text: str, section: str) -> str:
    """``section`` in place of the section with the same heading, from the heading to the end of
    its table (a resumed comparison updates its table; notes written below it stay), else at the end."""
    heading = section.split("\n", 1)[0]
    lines = text.rstrip("\n").split("\n")
    if heading not in lines:
        return text.rstrip("\n") + "\n\n" + section
    start = lines.index(heading)
    end = start + 1
    while end < len(lines) and not lines[end].startswith("|") and not lines[end].startswith("## "):
        end += 1
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "\n".join(lines[:start] + section.rstrip("\n").split("\n") + lines[end:]) + "\n"


def code_line(rows: list[dict]) -> str:
    """Which commit trained the runs; a table resumed across code changes says so, per objective."""
    commits = sorted({c for row in rows for c in row.get("commits", [])})
    if len(commits) <= 1:
        return f"- code: commit `{commits[0] if commits else 'unknown'}`"
    each = "; ".join(f"{row['objective']}: {', '.join(row['commits'])}" for row in rows)
    return f"- code: **runs from {len(commits)} commits** (read back from earlier runs): {each}"


def wandb_group(runs_dir: Path) -> str:
    """The W&B group of a comparison's runs and its table: named after its runs_dir."""
    return f"compare-{runs_dir.name}"


def log_wandb_table(cfg: CompareConfig, rows: list[dict], runs_dir: Path) -> None:
    """The table as a W&B Table in its own run (offline unless logged in, see glimpse.loggers)."""
    from lightning.pytorch.loggers import WandbLogger

    from glimpse.loggers import wandb_logger

    logger = wandb_logger(save_dir=str(runs_dir), name=f"compare-{cfg.data}", tags=["compare"],
                          group=wandb_group(runs_dir), job_type="compare")
    if not isinstance(logger, WandbLogger):
        return  # W&B could not start: the markdown table is the record
    names = column_names(rows)
    columns = ["objective"] + [c for name in names for c in (name, f"{name} std")] + ["runs"]
    data = [[row["objective"]] + [v for name in names for v in row[name]] + [row["runs"]] for row in rows]
    logger.log_table(key="objectives", columns=columns, data=data)
    logger.experiment.finish()


def compare(cfg: CompareConfig, command: str) -> list[dict]:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d_%H-%M-%S")
    runs_dir = Path(cfg.runs_dir or ROOT / "outputs" / "compare" / stamp).resolve()

    def one(model: str, objective: str, seed: int) -> dict:
        run = run_one(cfg, objective, seed, run_path(runs_dir, model, objective, seed), model)
        f1 = run["metrics"].get("test/multiset/f1") or run["metrics"].get("val/multiset/f1")
        print(f"{run_label(cfg, model, objective)} seed {seed}: F1 {f1 if f1 is None else round(f1, 4)}, wall time "
              f"{run['wall_time']:.0f} s{' (read back from an earlier run)' if run.get('reused') else ''}", flush=True)
        return run

    check_runs_dir(cfg, runs_dir)
    jobs = [(m, o, s) for s in cfg.seeds for m in cfg.models for o in cfg.objectives]  # a seed's runs side by side
    print(f"{len(jobs)} runs of {cfg.budget_minutes:g} {cfg.budget} min, {cfg.jobs} at once, under {runs_dir}", flush=True)
    with ThreadPoolExecutor(max_workers=cfg.jobs) as pool:
        runs = list(pool.map(lambda job: one(*job), jobs))
    if cfg.checkpoints_at:
        runs, names = budget_rows(cfg, runs)
    else:
        names = [run_label(cfg, m, o) for m in cfg.models for o in cfg.objectives]
        runs = [{**r, "objective": run_label(cfg, r.get("model", "glimpse"), r["objective"])} for r in runs]
    rows = summarise(runs, names)
    section = markdown(cfg, rows, command, runs_dir)
    output = Path(cfg.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if cfg.append and output.is_file():
        output.write_text(put_section(output.read_text(), section))
    else:
        output.write_text("# Objectives compared\n\n" + section)
    print(section)
    if cfg.logger == "wandb":
        log_wandb_table(cfg, rows, runs_dir)
    return runs


@user_errors
def main(argv: list[str]) -> int:
    cfg = parse(argv)
    runs = compare(cfg, "python -m glimpse.compare " + " ".join(shlex.quote(a) for a in argv))
    failed = [r for r in runs if not r["metrics"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
