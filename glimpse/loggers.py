"""Loggers: W&B offline unless the user is logged in, and never fatal.

With ``logger=wandb`` a run is a W&B run of ``job_type`` train or evaluate (the task's name),
in a ``group``: the sweep's for the runs of a Hydra multirun, else the run directory's. Its
checkpoints record the run (:class:`WandbRunRecord`), so an evaluation of them joins that
group and names the training run; ``log_model`` keeps the best and last checkpoints as a
``model`` artifact. Anything W&B cannot do (start, stage an artifact, write a table) is a
warning, never a failed run.
"""
from __future__ import annotations

import logging
import os
import struct
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import WandbLogger

log = logging.getLogger(__name__)

ARTIFACT_PREFIX = "wandb:"  # ckpt_path=wandb:[ENTITY/PROJECT/]NAME:ALIAS names a model artifact


def wandb_logged_in() -> bool:
    """True when W&B has an API key: ``WANDB_API_KEY``, or the netrc entry `wandb login` writes."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc

    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        hosts = netrc.netrc(path).hosts
    except (OSError, netrc.NetrcParseError):
        return False
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("//")[-1].split("/")[0]
    return base in hosts


def wandb_mode(mode: str | None = None) -> str:
    """``mode``, else ``WANDB_MODE``, else ``online`` only when an API key is present."""
    return mode or os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")


def hydra_group(save_dir: str | os.PathLike) -> str | None:
    """``<task>-<sweep dir name>`` for a job of a Hydra multirun, ``<task>-<run dir name>`` for a
    single Hydra run, ``None`` outside Hydra: the runs of one sweep share a W&B group."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra = HydraConfig.get()
    except (ImportError, ValueError):  # not inside a Hydra app
        return None
    where = hydra.sweep.dir if hydra.mode == RunMode.MULTIRUN else save_dir
    return f"{hydra.job.name}-{Path(str(where)).name}"


class GlimpseWandbLogger(WandbLogger):
    """Lightning's ``WandbLogger`` whose checkpoint uploads are never fatal, and which also
    keeps ``last.ckpt`` (:class:`glimpse.training.last_checkpoint.LastCheckpoint`) as a ``model`` artifact:
    aliases ``best`` (and ``latest`` while it is the newest) on the best checkpoint,
    ``last`` and ``latest`` on the last one."""

    last_checkpoint: Path | None = None  # set by WandbRunRecord from the trainer's LastCheckpoint

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        try:  # log_model=all: each save of the best checkpoint is logged here
            super().after_save_checkpoint(checkpoint_callback)
        except Exception as err:
            self._warn(err)

    def finalize(self, status: str) -> None:
        try:
            super().finalize(status)  # ModelCheckpoint's files, aliases best / latest
            last = self.last_checkpoint
            if (status == "success" and self._log_model and self._experiment is not None and last and last.is_file()
                    and self._logged_model_time.get(str(last)) != last.stat().st_mtime):  # not again after test
                import wandb

                self._checkpoint_name = self._checkpoint_name or f"model-{self.experiment.id}"
                artifact = wandb.Artifact(name=self._checkpoint_name, type="model",
                                          metadata={"original_filename": last.name})
                artifact.add_file(str(last), name="model.ckpt", policy=self.add_file_policy)
                self.experiment.log_artifact(artifact, aliases=["last", "latest"])
                self._logged_model_time[str(last)] = last.stat().st_mtime
        except Exception as err:
            self._warn(err)

    @staticmethod
    def _warn(err: Exception) -> None:  # a full disk, an unwritable staging dir: the checkpoints on disk stay
        warnings.warn(f"W&B could not keep the checkpoints as artifacts ({type(err).__name__}: {err}); "
                      "they are on disk under checkpoints/", stacklevel=3)


def resume_arguments(previous: dict, mode: str, kwargs: dict) -> dict:
    """``wandb.init`` arguments ``kwargs`` for going on with the W&B run ``previous`` (id, ...):
    online its ``id`` (Lightning's logger passes ``resume="allow"``), unless one is given;
    otherwise ``resumed_from: id`` in the config of a new run."""
    if not previous.get("id"):
        return kwargs
    if mode == "online" and "id" not in kwargs:
        return {**kwargs, "id": previous["id"]}
    return {**kwargs, "config": {**(kwargs.get("config") or {}), "resumed_from": previous["id"]}}


def wandb_logger(
    project: str = "glimpse", save_dir: str = ".", name: str | None = None, mode: str | None = None,
    tags: list[str] | None = None, group: str | None = None, job_type: str | None = None,
    log_model: bool | str = False, resume_run: dict | None = None, **kwargs: Any,
):
    """A :class:`GlimpseWandbLogger`; offline unless logged in; a CSV logger if W&B cannot start.

    ``mode``: ``online``, ``offline`` or ``disabled``; ``None`` respects ``WANDB_MODE`` and
    otherwise picks ``online`` only when an API key is present. ``group``: ``None`` is
    :func:`hydra_group`. ``log_model``: ``False``, ``True`` (the best and last checkpoints at
    the end of training) or ``all`` (every save of the best checkpoint as it is written).
    ``resume_run``: the W&B run of the checkpoint a training run resumes (:func:`resumed_logger`).
    Online, that run goes on (its id, ``resume="allow"``); offline, where W&B cannot resume a
    run (syncing two offline runs of one id keeps only the second), this is a new run of the
    same name in the same group, with ``resumed_from`` (the first part's id) in its config.
    """
    from lightning.pytorch.loggers import CSVLogger

    mode = wandb_mode(mode)
    if mode not in ("online", "offline", "disabled", "dryrun", "run"):
        raise ValueError(f"logger.mode={mode!r} is not known; choose online, offline or disabled")
    if log_model not in (True, False, "all"):
        raise ValueError(f"logger.log_model={log_model!r} is not known; choose false, true (best and last "
                         "checkpoints at the end) or all (every save)")
    try:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        probe = Path(save_dir) / ".write_test"
        probe.write_text("")
        probe.unlink()
        import wandb

        if wandb.run is not None:  # the previous job of a multirun in this process: each job is its own run
            wandb.run.finish()
        from omegaconf import OmegaConf

        previous = dict(resume_run or {})
        group = group or previous.get("group") or hydra_group(save_dir)
        kwargs = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for k, v in kwargs.items()}
        name = name or previous.get("name")
        kwargs = resume_arguments(previous, mode, kwargs)
        logger = GlimpseWandbLogger(project=project, name=name, save_dir=save_dir, mode=mode, tags=list(tags or []),
                                    group=group, job_type=job_type, log_model=log_model, **kwargs)
        logger._wandb_init.pop("anonymous", None)  # Lightning passes it; W&B warns that it has no effect
        logger.experiment  # start the run now, so a failure falls back here and not mid-training
        if mode == "offline":
            log.info("W&B is offline: the run is kept under %s/wandb; upload it later with `wandb sync %s/wandb/offline-run-*`",
                     save_dir, save_dir)
        if previous.get("id"):
            if logger.experiment.id == previous["id"]:
                log.info("W&B run %s resumed", previous["id"])
            else:
                log.info("W&B run %s continues run %s (config resumed_from) in group %s: W&B resumes a run only "
                         "online, so each resumed offline part is a run of its own", logger.experiment.id,
                         previous["id"], group)
        return logger
    except Exception as err:  # W&B unreachable, unwritable dir, broken install: keep training
        warnings.warn(f"W&B logger could not start ({type(err).__name__}: {err}); logging to CSV instead", stacklevel=2)
        return CSVLogger(save_dir=save_dir if os.access(save_dir, os.W_OK) else ".", name="csv")


# -- the training run, recorded in its checkpoints ---------------------------------------------------
class WandbRunRecord(pl.Callback):
    """Writes the W&B run (id, project, entity, group, name) into every checkpoint under
    ``checkpoint["wandb"]``, so an evaluation of it can name and join its training run; and
    points :class:`GlimpseWandbLogger` at ``last.ckpt`` for ``log_model``. Does nothing
    without a W&B logger."""

    @staticmethod
    def _logger(trainer: pl.Trainer) -> WandbLogger | None:
        return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        from glimpse.training.last_checkpoint import LastCheckpoint

        logger = self._logger(trainer)
        last = next((c for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)
        if isinstance(logger, GlimpseWandbLogger) and last is not None:
            logger.last_checkpoint = Path(last.path)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        logger = self._logger(trainer)
        if logger is None or not trainer.is_global_zero:
            return
        try:
            run = logger.experiment
            checkpoint["wandb"] = {"id": run.id, "project": run.project, "entity": run.entity, "group": run.group,
                                   "name": run.name, "job_type": run.job_type}
        except Exception as err:  # the record is a convenience: never lose a checkpoint over it
            log.warning("the W&B run could not be recorded in the checkpoint (%s: %s)", type(err).__name__, err)


def training_run(ckpt_path: str | os.PathLike) -> dict | None:
    """The W&B run a checkpoint was trained in (:class:`WandbRunRecord`), or ``None``."""
    import torch

    checkpoint = None
    for mmap in (True, False):  # mmap: the weights stay on disk; an old-format file needs a full read
        try:
            checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=mmap)
            break
        except Exception:  # unreadable: the caller reports bad files
            continue
    record = checkpoint.get("wandb") if isinstance(checkpoint, dict) else None
    return dict(record) if isinstance(record, dict) else None


def is_wandb(logger_cfg) -> bool:
    """Whether a logger config builds :func:`wandb_logger`."""
    return bool(logger_cfg) and logger_cfg.get("_target_") == f"{__name__}.wandb_logger"


def editable_copy(logger_cfg):
    """A resolved copy of a logger config that takes new keys."""
    from omegaconf import OmegaConf

    return OmegaConf.create(OmegaConf.to_container(logger_cfg, resolve=True))


def resumed_logger(logger_cfg, ckpt_path: str | os.PathLike | None):
    """The logger config of ``train.py`` resuming ``ckpt_path``: for W&B, with the checkpoint's
    training run (:class:`WandbRunRecord`) as ``resume_run``; anything else unchanged."""
    if not ckpt_path or not is_wandb(logger_cfg):
        return logger_cfg
    record = training_run(ckpt_path)
    if not record or not record.get("id"):
        return logger_cfg
    cfg = editable_copy(logger_cfg)
    cfg.resume_run = record
    return cfg


def check_max_rows(max_rows: Any) -> int:
    from glimpse.errors import ConfigError

    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 0:
        raise ConfigError(f"wandb.max_rows={max_rows} must be a whole number >= 0 (0: no table)")
    return max_rows


def evaluation_logger(eval_cfg, ckpt_path: str, given: str):
    """The logger config of evaluate.py's ``eval_cfg`` scoring ``ckpt_path`` (``given`` as the
    user wrote it): for W&B, ``job_type=evaluate``, the training run's group, and in the run's
    config the training run and the checkpoint. Other loggers unchanged."""
    from omegaconf import OmegaConf

    cfg = eval_cfg.get("logger")
    if not is_wandb(cfg):
        return cfg
    check_max_rows(OmegaConf.select(eval_cfg, "wandb.max_rows", default=500))
    trained = training_run(ckpt_path) or {}
    cfg = editable_copy(cfg)
    cfg.job_type = cfg.get("job_type") or "evaluate"
    if not cfg.get("group") and trained.get("group"):
        cfg.group = trained["group"]
    link = {"checkpoint": str(given), "checkpoint_file": str(ckpt_path), "training_run": trained.get("id"),
            "training_run_path": "/".join(str(trained[k]) for k in ("entity", "project", "id") if trained.get(k)) or None,
            "training_run_name": trained.get("name")}
    cfg.config = OmegaConf.merge(cfg.get("config") or {}, link)
    return cfg


# -- artifacts --------------------------------------------------------------------------------------
def download_artifact(reference: str, output_dir: str | os.PathLike) -> str:
    """The ``model.ckpt`` of the model artifact ``wandb:[ENTITY/PROJECT/]NAME:ALIAS``, downloaded
    under ``output_dir/artifacts``; a :class:`~glimpse.run.ConfigError` when W&B cannot fetch it."""
    from glimpse.errors import ConfigError

    name = reference[len(ARTIFACT_PREFIX):]
    how = (f"give a .ckpt path, or fetch it first with `wandb artifact get {name or 'ENTITY/PROJECT/NAME:ALIAS'}`")
    if not name or ":" not in name:
        raise ConfigError(f"ckpt_path={reference}: an artifact reference is wandb:[ENTITY/PROJECT/]NAME:ALIAS, "
                          "e.g. wandb:me/glimpse/model-1a2b3c4d:best")
    mode = wandb_mode()
    if mode != "online":
        raise ConfigError(f"ckpt_path={reference}: W&B is {mode} (WANDB_MODE, or no API key), so the artifact "
                          f"cannot be fetched; {how}")
    try:
        import wandb

        if name.count("/") == 0:
            name = f"glimpse/{name}"  # the project train.py logs to
        artifact = wandb.Api().artifact(name, type="model")
        root = artifact.download(root=str(Path(output_dir) / "artifacts" / name.replace("/", "_").replace(":", "_")))
    except Exception as err:  # no such artifact, no access, no network
        raise ConfigError(f"ckpt_path={reference}: W&B could not fetch it ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}); {how}") from err
    path = Path(root) / "model.ckpt"
    if not path.is_file():
        found = sorted(p.name for p in Path(root).glob("*.ckpt"))
        if len(found) != 1:
            raise ConfigError(f"ckpt_path={reference}: the artifact holds no single checkpoint (files: {found})")
        path = Path(root) / found[0]
    return str(path)


# -- reading an offline run -------------------------------------------------------------------------
def read_records(path: str | os.PathLike):
    """The protobuf records of a run's ``.wandb`` file, in order (a LevelDB-style log: a 7-byte
    ``:W&B`` header, then 32 KiB blocks of chunks ``crc32 (4) | length (2) | type (1) | data``)."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a .wandb run file")
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's trailer: too short for a chunk header
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 2):  # FULL, FIRST
            pending = chunk
        elif kind in (3, 4):  # MIDDLE, LAST
            pending += chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def offline_run(run_dir: str | os.PathLike) -> dict:
    """What an offline run holds, read from its ``.wandb`` file: ``run`` (id, project, group,
    job_type, name), ``config`` and ``summary`` (last values), and ``artifacts``: per logged
    artifact its name, type, aliases, metadata and ``files`` (path in the artifact -> the staged
    local file, which ``wandb sync`` uploads)."""
    import json

    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"{run_dir} holds no run-*.wandb file")
    out: dict[str, Any] = {"run": {}, "config": {}, "summary": {}, "artifacts": []}
    for record in read_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            out["run"] = {"id": r.run_id, "project": r.project, "group": r.run_group, "job_type": r.job_type,
                          "name": r.display_name}
            out["config"].update({u.key: json.loads(u.value_json) for u in r.config.update})
        elif kind == "config":
            out["config"].update({u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in record.config.update})
        elif kind == "summary":
            out["summary"].update({u.key or "/".join(u.nested_key): json.loads(u.value_json)
                                   for u in record.summary.update})
        elif kind == "artifact":
            a = record.artifact
            out["artifacts"].append({
                "name": a.name, "type": a.type, "aliases": list(a.aliases),
                "metadata": json.loads(a.metadata) if a.metadata else {},
                "files": {c.path: c.local_path for c in a.manifest.contents},
            })
    return out
