"""What train.py and evaluate.py share: the command-line contract (bad input is one ``error:``
line, exit code 2, nothing written; a fault during a run one line, exit code 1), the run's
record (config, overrides, log file), building objects from the config and writing results."""
from __future__ import annotations

import functools
import inspect
import json
import logging
import math
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from glimpse.errors import ConfigError, RunFault

__all__ = ["ConfigError", "RunFault", "command", "user_errors", "record_run", "declared_arguments", "instantiate_logger",
           "write_metrics", "resolve_checkpoint", "resume_checkpoint"]

log = logging.getLogger("glimpse")

USAGE_ERROR, RUN_FAULT = 2, 1
# HYDRA_FULL_ERROR as the user set it (this module sets it for Hydra, to catch Hydra's errors itself)
_USER_FULL_ERROR = "GLIMPSE_USER_HYDRA_FULL_ERROR"


def command(hydra_main: Callable[[], Any]) -> None:
    """Run a ``@hydra.main`` entry point so that Hydra's own errors (an unknown config option,
    an unknown key, an override that does not parse) are one ``error:`` line and exit code 2,
    like the errors of the run itself. ``HYDRA_FULL_ERROR=1`` still shows Hydra's traceback."""
    os.environ.setdefault(_USER_FULL_ERROR, os.environ.get("HYDRA_FULL_ERROR", ""))
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing several lines and exiting 1
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        hydra_main()
    except (HydraException, OmegaConfBaseException) as err:
        if os.environ.get(_USER_FULL_ERROR) == "1":
            raise
        print(f"error: {hydra_message(err)}", file=sys.stderr)
        sys.exit(USAGE_ERROR)


def hydra_message(err: BaseException) -> str:
    """One line from a Hydra or OmegaConf error: what was asked for and what is allowed."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    if isinstance(err, MissingConfigException) and err.options is not None and err.missing_cfg_file:
        group, _, name = err.missing_cfg_file.rpartition("/")
        return f"{group}={name}: no such option in configs/{group}; choose one of {', '.join(sorted(err.options))}"
    if isinstance(err, MissingConfigException) and err.missing_cfg_file:
        return f"{err.missing_cfg_file}: no such config in configs/"
    if isinstance(err, OverrideParseException):
        return (f"{err.override}: not a valid override ({str(err).splitlines()[0]}); write key=value, "
                "lists as key=[a,b], see https://hydra.cc/docs/advanced/override_grammar/basic/")
    cause = err.__cause__
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and getattr(cause, "full_key", None) and isinstance(cause.parent_node, DictConfig):
        parent, _, name = str(cause.full_key).rpartition(".")
        keys = ", ".join(str(k) for k in cause.parent_node.keys())
        return (f"{cause.full_key}: {parent or 'the config'} has no key {name!r}; its keys are {keys} "
                f"(to add a new key, write +{cause.full_key}=VALUE)")
    lines = [str(err)] + ([str(err.__cause__)] if err.__cause__ is not None else [])
    kept = []
    for line in "\n".join(lines).splitlines():
        line = line.strip()
        if line and not line.startswith(("full_key:", "object_type=", "reference_type=", "See https://hydra.cc",
                                         "Config search path", "provider=")):
            kept.append(line.rstrip("."))
    return "; ".join(kept) or type(err).__name__


def user_errors(fn: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Run an entry point's task (under ``@hydra.main``). Bad input exits with code 2 and one
    ``error:`` line, and a run dir that was empty when the task started is removed again (so
    nothing is written); a fault during the run (:class:`~glimpse.errors.RunFault`: disk full,
    non-finite numbers; or any error once training has started, see
    :class:`~glimpse.training.run_phase.RunPhase`) exits with code 1 and one line, keeping
    what was saved. In a multirun each job writes into its own job dir (``hydra.sweep.dir/N``)."""

    @functools.wraps(fn)
    def wrapper(cfg: DictConfig) -> Any:
        from hydra.errors import InstantiationException

        out = _job_output_dir(cfg)
        fresh = out is not None and (not out.exists() or not any(out.iterdir()))
        try:
            check_override_types(cfg)
            return fn(cfg)
        except Exception as err:
            images = sys.modules.get("glimpse.data.images")  # not loaded: no image was read
            input_errors = (ConfigError, FileNotFoundError) + ((images.CorruptImageError,) if images else ())
            cause = err
            while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
                cause = cause.__cause__
            during = getattr(cause, "during_run", None)
            if isinstance(cause, RunFault):  # disk full, non-finite numbers: not the user's input
                _exit(RUN_FAULT, str(cause))
            if isinstance(cause, input_errors) or (
                    isinstance(cause, ValueError) and during is None):
                _close_log_file()
                if fresh and during is None:  # stopped before it ran: nothing of this run stays behind
                    shutil.rmtree(out, ignore_errors=True)
                _exit(USAGE_ERROR, _one_line(cause))
            if during is not None:  # e.g. numbers that blew up inside torch
                _exit(RUN_FAULT, f"the run failed {during} ({type(cause).__name__}: {_one_line(cause)}); "
                                 "the checkpoints on disk are kept (resume with ckpt_path=last)")
            raise

    return wrapper


def _job_output_dir(cfg: DictConfig) -> Path | None:
    """``paths.output_dir``; in a Hydra multirun set to the job's own dir under the sweep dir."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        with open_dict(cfg):
            cfg.paths.output_dir = HydraConfig.get().runtime.output_dir
    try:
        return Path(cfg.paths.output_dir)
    except Exception:  # an unresolvable interpolation: reported where it is used
        return None


def _exit(code: int, message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def _one_line(err: BaseException, limit: int = 500) -> str:
    """The message on one line (at most ``limit`` characters); for an error re-raised from a
    DataLoader worker, the original one only."""
    text = str(err)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]  # "package.module.ErrorType: message"
        text = last.split(": ", 1)[1] if ": " in last else last
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_override_types(cfg: DictConfig) -> None:
    """A command-line value must have the type of the value it replaces: an integer for an
    integer (``trainer.max_epochs=abc`` is an error), a number for a float, true/false for a
    boolean, a section for a section; ``null`` is always allowed, and so is anything where the
    default is null or a string."""
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not HydraConfig.initialized() or not GlobalHydra.instance().is_initialized():
        return
    hydra_cfg = HydraConfig.get()
    parsed = [o for o in OverridesParser.create().parse_overrides(list(hydra_cfg.overrides.task))
              if not o.key_or_group.startswith("hydra.") and not o.is_sweep_override()]
    groups = [o for o in parsed if _is_group(o.key_or_group)]
    values = [o for o in parsed if o not in groups and not (o.is_delete() or o.is_add() or o.is_force_add())]
    if not values:
        return
    # the defaults of the chosen options, without the value overrides (interpolations unresolved)
    base = compose(hydra_cfg.job.config_name, overrides=[o.input_line for o in groups])
    for override in values:
        key = override.key_or_group
        _check_type(key, _default(base, key), OmegaConf.select(cfg, key, throw_on_resolution_failure=False),
                    override.input_line)


def _is_group(key: str) -> bool:
    from hydra.core.global_hydra import GlobalHydra

    return bool(GlobalHydra.instance().config_loader().get_group_options(key.split("@")[0]))


_MISSING = object()


def _default(base: DictConfig, key: str) -> Any:
    node: Any = OmegaConf.to_container(base, resolve=False)
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


# keys whose documented values have more than one type (checked where they are used)
MIXED_TYPES = {"logger.log_model"}  # true, false or all (Lightning's WandbLogger)


def _check_type(key: str, default: Any, value: Any, line: str) -> None:
    if key in MIXED_TYPES or default is _MISSING or default is None or value is None or isinstance(default, str):
        return
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=False)
    if isinstance(default, bool):
        ok, what = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, what = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        ok, what = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif isinstance(default, dict):
        keys = ", ".join(sorted(default))
        if not isinstance(value, dict):
            raise ConfigError(f"{line}: {key} is a config section (keys {keys}), not a single value; set one of its "
                              f"keys ({key}.KEY=VALUE), or choose another config of its group")
        return
    elif isinstance(default, list):
        return  # lists also take single names (heatmaps.methods=all)
    else:
        return
    if not ok:
        raise ConfigError(f"{line}: {key} must be {what} (its default is {json.dumps(default, default=str)[:80]})")


def record_run(cfg: DictConfig) -> None:
    """Write the run's record into its output dir once its input has been checked: the
    composed config and the command-line overrides (``.hydra/``) and the log file
    (``<task>.log``). Nothing is written for a run that stops on bad input."""
    from hydra.core.hydra_config import HydraConfig

    out = Path(cfg.paths.output_dir)
    record = out / ".hydra"
    record.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, record / "config.yaml")
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    OmegaConf.save(OmegaConf.create(list(hydra_cfg.overrides.task)), record / "overrides.yaml")
    _close_log_file()
    handler = logging.FileHandler(out / f"{hydra_cfg.job.name}.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    handler.set_name("glimpse_run_file")
    logging.getLogger().addHandler(handler)


def _close_log_file() -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == "glimpse_run_file":
            root.removeHandler(handler)
            handler.close()


def declared_arguments(target: str, offered: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``offered`` that the class or function ``target`` declares as parameters."""
    from hydra.utils import get_method

    parameters = inspect.signature(get_method(target)).parameters
    return {k: v for k, v in offered.items() if k in parameters}


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


def read_metrics(output_dir: str | Path) -> dict[str, float]:
    """``output_dir/metrics.json``, or nothing."""
    path = Path(output_dir) / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def resolve_checkpoint(ckpt_path: str | None, output_dir: str | Path, key: str = "ckpt_path") -> str | None:
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
            f"{key}={ckpt_path}: no checkpoint at {path}. Give the path of a .ckpt file written by "
            f"train.py (RUN_DIR/checkpoints/last.ckpt), or {key}=last with paths.output_dir=RUN_DIR"
        )
    return str(path)


def resume_checkpoint(cfg: DictConfig) -> str | None:
    """The checkpoint train.py resumes from (``ckpt_path``, always a run to resume). A run with
    an ``explain`` section (experiment=explainer) also needs ``explain.glimpse_ckpt``, the
    glimpse model to explain, checked here."""
    explain = cfg.get("explain")
    if explain is not None:
        if not explain.get("glimpse_ckpt"):
            raise ConfigError("experiment=explainer needs explain.glimpse_ckpt=GLIMPSE_CKPT: the glimpse checkpoint "
                              "to explain (ckpt_path resumes an Explainer run)")
        resolve_checkpoint(explain.glimpse_ckpt, cfg.paths.output_dir, key="explain.glimpse_ckpt")
    return resolve_checkpoint(cfg.get("ckpt_path"), cfg.paths.output_dir)


def command_line_keys() -> set[str]:
    """The keys the user set on the command line (``data.channels=1`` gives ``data.channels``)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    return {o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task if "=" in o}


def data_from_checkpoint(data: DictConfig, hparams: dict, given: set[str]) -> DictConfig:
    """The data config with what the model's input depends on taken from the checkpoint's
    hyperparameters: the channel count (``data.channels``) and the image or canvas size
    (``data.image_size`` / ``data.canvas_size``), unless the user gave them (``given``). One
    log line says what was taken; channels that cannot match are a :class:`ConfigError`
    naming the data key. Data configs without a ``channels`` key (Multiset-MNIST) are grayscale."""
    trained = hparams.get("data") or {}
    backbone = (hparams.get("policy") or {}).get("backbone") or {}
    channels = backbone.get("in_channels")
    size = trained.get("image_size", trained.get("canvas_size"))
    # set in the run's own config (so that its record shows what was taken)
    taken, kept = [], []
    if isinstance(channels, int):
        if "channels" not in data:
            if channels != 1:
                raise ConfigError(f"data.channels: the checkpoint reads {channels}-channel images, but this data config "
                                  "has 1-channel canvases and no data.channels key; evaluate it on photographs "
                                  f"(data=coco or data=voc with data.channels={channels})")
        elif "data.channels" in given and data.channels != channels:
            raise ConfigError(f"data.channels={data.channels}: the checkpoint reads {channels}-channel images; "
                              f"give data.channels={channels}, or leave it out to take it from the checkpoint")
        elif data.channels != channels:
            data.channels = channels
            taken.append(f"data.channels={channels}")
    for key in ("image_size", "canvas_size"):
        if key not in data or size is None:
            continue
        value = size
        if key == "canvas_size" and not isinstance(value, int):
            value = value[0] if len(set(value)) == 1 else None  # a canvas is square
        if value is None:
            continue
        if f"data.{key}" in given:
            if data[key] != value:
                kept.append(f"data.{key}={data[key]} (from the command line; the checkpoint was trained at {size})")
        elif data[key] != value:
            data[key] = value
            taken.append(f"data.{key}={value}")
    if taken or kept:
        log.info("data from the checkpoint: %s%s", ", ".join(taken) or "nothing",
                 f"; kept {', '.join(kept)}" if kept else "")
    else:
        log.info("data as configured: it matches the checkpoint (channels %s, size %s)", channels, size)
    return data


def cpu_name() -> str:
    """The CPU's model name as ``lscpu`` prints it (benchmark records name their machine), else the architecture."""
    import platform
    import subprocess

    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()
