"""The two kinds of error an entry point reports in one line: bad input (exit code 2) and a
fault during a run (exit code 1)."""
from __future__ import annotations


class ConfigError(ValueError):
    """A config value or path that cannot work; the message says what to change."""


class RunFault(RuntimeError):
    """A fault during a run (disk full, non-finite numbers): one clear line, no traceback."""
