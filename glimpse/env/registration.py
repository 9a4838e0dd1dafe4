"""Gymnasium ids of the glimpse environments. Entry points are strings, so registering
imports nothing but gymnasium; torch and the data load when an env is made."""
from __future__ import annotations

import gymnasium

ENVS = {
    # any dataset the project reads: gymnasium.make("glimpse/Multiset-v0", dataset=...)
    "glimpse/Multiset-v0": ("MultisetEnv", "MultisetVectorEnv"),
    # the default data, Multiset-MNIST built in-process: gymnasium.make("glimpse/MultisetMNIST-v0", data={...})
    "glimpse/MultisetMNIST-v0": ("multiset_mnist_env", "multiset_mnist_vector_env"),
}


def register_envs() -> None:
    """Register every id once; make_vec uses the natively batched torch env by default."""
    for env_id, (single, vector) in ENVS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(
                id=env_id,
                entry_point=f"glimpse.env.multiset_env:{single}",
                vector_entry_point=f"glimpse.env.multiset_env:{vector}",
            )
