"""What train.py and evaluate.py share: building objects from the config, writing results,
and turning bad input into a clear message instead of a stack trace."""
from __future__ import annotations

import functools
import json
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

log = logging.getLogger("glimpse")


class ConfigError(ValueError):
    """A config value or path that cannot work; the message says what to change."""


def user_errors(fn: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Run an entry point; bad input exits with code 2 and one clear message, not a traceback;
    a fault during the run (:class:`~glimpse.reliability.RunFault`) with code 1 and one line."""

    @functools.wraps(fn)
    def wrapper(cfg: DictConfig) -> Any:
        from hydra.errors import InstantiationException

        from glimpse.reliability import RunFault

        try:
            return fn(cfg)
        except RunFault as err:  # a fault during the run (disk full, non-finite numbers): not the user's input
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)
        except (ConfigError, FileNotFoundError, InstantiationException, ValueError) as err:
            cause = err
            while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
                cause = cause.__cause__
            if not isinstance(cause, (ConfigError, FileNotFoundError, ValueError)):
                raise
            print(f"error: {_one_line(cause)}", file=sys.stderr)
            sys.exit(2)

    return wrapper


def _one_line(err: BaseException) -> str:
    """The message; for an error re-raised from a DataLoader worker, the original one only."""
    text = str(err)
    if "Original Traceback" not in text:
        return text
    last = text.strip().splitlines()[-1]  # "package.module.ErrorType: message"
    return last.split(": ", 1)[1] if ": " in last else last


def instantiate_logger(cfg: DictConfig | None):
    from hydra.utils import instantiate

    if not cfg or "_target_" not in cfg:
        return False
    return instantiate(cfg)


def write_metrics(metrics: dict[str, Any], output_dir: str | Path) -> Path:
    """Write a flat JSON object of float metrics to ``output_dir/metrics.json`` (atomically)."""
    path = Path(output_dir) / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {k: float(v) for k, v in sorted(metrics.items())}
    bad = [k for k, v in flat.items() if not math.isfinite(v)]
    if bad:
        log.warning("non-finite metrics: %s", bad)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(flat, indent=2) + "\n")
    tmp.replace(path)
    return path


def resolve_checkpoint(ckpt_path: str | None, output_dir: str | Path) -> str | None:
    """``None``, ``last`` (this run dir's ``checkpoints/last.ckpt``), an existing file, or a W&B
    model artifact ``wandb:[ENTITY/PROJECT/]NAME:ALIAS`` (downloaded; :mod:`glimpse.loggers`)."""
    if ckpt_path is None:
        return None
    if str(ckpt_path).startswith("wandb:"):
        from glimpse.loggers import download_artifact

        return download_artifact(str(ckpt_path), output_dir)
    path = Path(output_dir) / "checkpoints" / "last.ckpt" if str(ckpt_path) == "last" else Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ckpt_path={ckpt_path}: no checkpoint at {path}. Give the path of a .ckpt file written by "
            f"train.py (RUN_DIR/checkpoints/last.ckpt), or ckpt_path=last with paths.output_dir=RUN_DIR"
        )
    return str(path)


def resume_checkpoint(cfg: DictConfig) -> str | None:
    """The checkpoint train.py resumes from: ``ckpt_path``, except for a run with an ``explain``
    section (experiment=explainer), where ``ckpt_path`` is the glimpse model to explain (read,
    frozen, checked here) and ``explain.resume`` the Explainer run to resume."""
    explain = cfg.get("explain")
    if explain is None:
        return resolve_checkpoint(cfg.get("ckpt_path"), cfg.paths.output_dir)
    if not explain.get("glimpse_ckpt"):
        raise ConfigError("experiment=explainer needs ckpt_path=GLIMPSE_CKPT: the glimpse checkpoint to explain")
    resolve_checkpoint(explain.glimpse_ckpt, cfg.paths.output_dir)
    return resolve_checkpoint(explain.get("resume"), cfg.paths.output_dir)
