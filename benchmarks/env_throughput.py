"""Environment steps per second: the torch-batched MultisetVectorEnv against gymnasium's
SyncVectorEnv over the single MultisetEnv, both built by gymnasium.make_vec, same data, same
random actions, measured in one run (the machine is shared, so read the ratios).

    python benchmarks/env_throughput.py [--num-envs 64] [--steps 300] [--threads 1]

Two data paths: items composed once and held in memory (the env's own cost), and canvases
composed on the fly at every reset by MultisetMNIST (what gymnasium.make gives by default).
Torch runs on one thread by default: an env step is many small tensor operations, and on a
busy machine intra-op threads mostly wait for each other (both envs step through torch).
"""
from __future__ import annotations

import argparse
import os
import time

import gymnasium
import torch

import glimpse  # noqa: F401 -- registers the envs
from glimpse.data import MultisetMNIST


def steps_per_second(envs, actions: list) -> float:
    envs.reset(seed=0)
    for action in actions[:10]:  # warm-up
        envs.step(action)
    start = time.perf_counter()
    for action in actions:
        envs.step(action)
    return envs.num_envs * len(actions) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300, help="vector steps per measurement")
    parser.add_argument("--items", type=int, default=512, help="dataset size")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    canvases = MultisetMNIST(split="train", size=args.items, seed=0)
    datasets = {"in memory": [canvases[i] for i in range(len(canvases))], "composed on the fly": canvases}
    print(f"{args.num_envs} envs, {args.steps} vector steps of random actions, Multiset-MNIST 100x100, default env, "
          f"{args.threads} torch thread(s), load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"| data | SyncVectorEnv steps/s | MultisetVectorEnv steps/s | ratio |\n|---|---|---|---|")
    for name, dataset in datasets.items():
        batched = gymnasium.make_vec("glimpse/Multiset-v0", num_envs=args.num_envs, dataset=dataset)
        sync = gymnasium.make_vec("glimpse/Multiset-v0", num_envs=args.num_envs, dataset=dataset, vectorization_mode="sync")
        batched.action_space.seed(0)
        actions = [batched.action_space.sample() for _ in range(args.steps)]
        sync_rate = steps_per_second(sync, actions)
        batched_rate = steps_per_second(batched, actions)
        print(f"| {name} | {sync_rate:,.0f} | {batched_rate:,.0f} | {batched_rate / sync_rate:.1f}x |")


if __name__ == "__main__":
    main()
