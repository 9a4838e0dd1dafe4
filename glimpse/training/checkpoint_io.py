"""Atomic checkpoint writes: a kill or a full disk mid-write keeps the previous checkpoint."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from glimpse.errors import RunFault


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write a checkpoint to a temporary file in the same directory, fsync it, then
    ``os.replace`` it over the target: a kill or a full disk mid-write leaves the previous
    checkpoint in place, never a truncated one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                writer = _Writes(f)
                try:
                    torch.save(checkpoint, writer)
                except RuntimeError as err:  # torch's zip writer turns a failed write into a RuntimeError
                    raise (writer.error or OSError(str(err))) from err
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            kept = "the previous checkpoint there is kept" if path.exists() else "no checkpoint was there before"
            raise RunFault(f"could not write checkpoint {path} ({err.strerror or err}); {kept}") from err


class _Writes:
    """A binary file that remembers the OSError of a failed write (disk full, file too large),
    which torch's serializer reports only as a RuntimeError."""

    def __init__(self, f: Any) -> None:
        self.f, self.error = f, None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.f.flush()


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
