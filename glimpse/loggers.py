"""Loggers: W&B offline unless the user is logged in, and never fatal."""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


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


def wandb_logger(
    project: str = "glimpse", save_dir: str = ".", name: str | None = None, mode: str | None = None,
    tags: list[str] | None = None, **kwargs: Any,
):
    """A Lightning ``WandbLogger``; offline unless logged in; a CSV logger if W&B cannot start.

    ``mode``: ``online``, ``offline`` or ``disabled``; ``None`` respects ``WANDB_MODE`` and
    otherwise picks ``online`` only when an API key is present.
    """
    from lightning.pytorch.loggers import CSVLogger

    if mode is None:
        mode = os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")
    if mode not in ("online", "offline", "disabled", "dryrun", "run"):
        raise ValueError(f"logger.mode={mode!r} is not known; choose online, offline or disabled")
    try:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        probe = Path(save_dir) / ".write_test"
        probe.write_text("")
        probe.unlink()
        from lightning.pytorch.loggers import WandbLogger

        logger = WandbLogger(project=project, name=name, save_dir=save_dir, mode=mode, tags=list(tags or []), **kwargs)
        logger.experiment  # start the run now, so a failure falls back here and not mid-training
        if mode == "offline":
            log.info("W&B is offline: the run is kept under %s/wandb; upload it later with `wandb sync %s/wandb/offline-run-*`",
                     save_dir, save_dir)
        return logger
    except Exception as err:  # W&B unreachable, unwritable dir, broken install: keep training
        warnings.warn(f"W&B logger could not start ({type(err).__name__}: {err}); logging to CSV instead", stacklevel=2)
        return CSVLogger(save_dir=save_dir if os.access(save_dir, os.W_OK) else ".", name="csv")
