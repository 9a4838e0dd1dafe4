"""Run a trained glimpse policy in the env, greedily, exactly as evaluate.py decodes it.

The policy sees the whole image (as in training) and decides everything from it and its own
past decisions, so one greedy forward pass gives the episode's actions; they are then played
through ``env.step``, which scores them. Meta step ``t`` becomes ``k`` LOOK steps at its
glimpse locations and one decision step (its label or STOP) at its attended location.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from glimpse.env.multiset_env import MultisetVectorEnv, locations_at
from glimpse.geometry import even_cell_centres
from glimpse.metrics import MultisetMetrics
from glimpse.models.policy import GlimpsePolicy


def _unpack(policy: Any):
    """(module or None, GlimpsePolicy) from a GlimpseModule, a GlimpsePolicy or a checkpoint path."""
    if isinstance(policy, (str, Path)):
        from glimpse.module import load_checkpoint

        policy = load_checkpoint(str(policy))
    if isinstance(policy, GlimpsePolicy):
        return None, policy
    if isinstance(getattr(policy, "policy", None), GlimpsePolicy) and hasattr(policy, "predict_episode"):
        return policy, policy.policy
    raise TypeError(f"play_policy needs a GlimpseModule (glimpse.module.load_checkpoint), a GlimpsePolicy or a "
                    f"checkpoint path, got {type(policy).__name__}")


@torch.no_grad()
def play_policy(policy: Any, env: Any, indices: list[int] | None = None, seed: int | None = None) -> dict[str, Any]:
    """Play one greedy episode per image; returns per-episode arrays and the multiset metrics.

    env: a :class:`MultisetEnv` or :class:`MultisetVectorEnv` (wrapped or not).
    indices: the dataset items to play (default: one episode per env, drawn from ``seed``).
    Returns ``index``, ``return``, ``length``, ``terminated``, ``truncated`` (also when the
    policy's own budget of meta steps ran out), ``emitted`` and ``counts`` ``(N, K)``, and
    ``metrics``: :class:`MultisetMetrics` of emitted against counts, the keys of metrics.json.
    """
    base = env.unwrapped
    task = base.task
    module, net = _unpack(policy)
    if module is not None:
        module.check_classes(list(task.class_names))
    per_step = net.num_glimpses + 1
    num_steps = module.max_steps if module is not None else task.max_steps // per_step
    if num_steps < 1 or num_steps * per_step > task.max_steps:
        raise ValueError(f"the policy takes up to {num_steps} meta steps of {per_step} env steps each, more than the "
                         f"env's max_steps={task.max_steps}; make the env with max_steps={max(num_steps, 1) * per_step}")
    batch = base.num_envs if isinstance(base, MultisetVectorEnv) else 1
    if indices is None:
        chunks = [None]
    else:
        indices = [int(i) for i in indices]
        chunks = [indices[i : i + batch] for i in range(0, len(indices), batch)]
    was_training = net.training
    net.eval()
    try:
        parts = [_play(module, net, env, base, num_steps, chunk, seed if n == 0 else None) for n, chunk in enumerate(chunks)]
    finally:
        net.train(was_training)
    out = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    if indices is not None:
        out = {key: value[: len(indices)] for key, value in out.items()}
    metrics = MultisetMetrics()
    metrics.update(torch.from_numpy(out["emitted"]), torch.from_numpy(out["counts"]))
    out["metrics"] = {key: float(value) for key, value in metrics.compute().items()}
    return out


def _play(module, net: GlimpsePolicy, env, base, num_steps: int, chunk: list[int] | None, seed: int | None) -> dict:
    vector = isinstance(base, MultisetVectorEnv)
    size = base.num_envs if vector else 1
    options = None
    if chunk is not None:
        chunk = chunk + [chunk[-1]] * (size - len(chunk))  # a short last chunk: repeat, dropped afterwards
        options = {"indices": chunk} if vector else {"index": chunk[0]}
    _, info = env.reset(seed=seed, options=options)
    info = _batched(info, vector)
    images = base.episodes.image.to(next(net.parameters()).device)  # the whole image, whatever the observation
    if module is not None:
        episode = module.predict_episode(images)
    else:
        episode = net(images, num_steps, location_mode="greedy", label_mode="greedy")
    look = torch.full_like(episode.labels, base.task.look)[..., None].expand(-1, -1, net.num_glimpses)
    cells = torch.cat([episode.glimpse_locations, episode.meta_locations[..., None]], -1).flatten(1)  # (B, T*(k+1))
    decisions = torch.cat([look, episode.labels[..., None]], -1).flatten(1)
    centres = even_cell_centres(cells, episode.grid, tuple(images.shape[-2:]))
    locations = locations_at(centres, base.task).cpu().numpy()
    decisions = decisions.cpu().numpy()

    done = np.zeros(size, dtype=bool)
    out = {"index": info["index"].copy(), "counts": info["counts"].copy(), "emitted": np.zeros_like(info["counts"]),
           "return": np.zeros(size), "length": np.zeros(size, dtype=np.int64),
           "terminated": np.zeros(size, dtype=bool), "truncated": np.zeros(size, dtype=bool)}
    for s in range(decisions.shape[1]):
        action = {"location": locations[:, s], "decision": decisions[:, s]}
        obs, reward, terminated, truncated, _ = env.step(action if vector else {k: v[0] for k, v in action.items()})
        obs, reward, terminated, truncated = (_batched(x, vector) for x in (obs, reward, terminated, truncated))
        live = ~done
        out["return"][live] += reward[live]
        out["length"][live] += 1
        out["emitted"][live] = obs["emitted"][live]
        out["terminated"][live], out["truncated"][live] = terminated[live], truncated[live]
        done |= terminated | truncated
        if done.all():
            break
    out["truncated"] |= ~done  # the policy's own budget of meta steps ran out
    return out


def _batched(value: Any, vector: bool) -> Any:
    if vector:
        return value
    if isinstance(value, dict):
        return {key: np.asarray(v)[None] for key, v in value.items()}
    return np.asarray(value)[None]
