"""Gymnasium environments for the multiset glimpse task, sharing the reward with training.

``MultisetEnv`` (one episode = one image), ``MultisetVectorEnv`` (the same task, batched in
torch, registered as the vector entry point) and ``play_policy`` (run a trained policy in them).
Attributes load lazily so ``import glimpse`` stays cheap.
"""
from __future__ import annotations

from glimpse.env.registration import register_envs

_LAZY = {
    "MultisetEnv": "glimpse.env.multiset_env",
    "MultisetVectorEnv": "glimpse.env.multiset_env",
    "TaskSpec": "glimpse.env.multiset_env",
    "play_policy": "glimpse.env.run_policy",
}

__all__ = ["register_envs", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'glimpse.env' has no attribute {name!r}")
