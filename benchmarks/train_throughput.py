"""Training throughput of the default glimpse model, and what the recurrent part costs.

Prints, measured in one run on the same batch: images/s of a full training step (policy
rollout, objective, backward, Adam step) and of the backbone's forward+backward alone,
and their ratio. Absolute times drift on a shared machine; the ratio is the number to keep.
``--layouts`` also times the full step with the parameters channels-last (the default,
``model.channels_last=true``) against contiguous (NCHW), alternating, in the same run.
``--compile`` times the backbone's forward+backward and the full step eager against
``torch.compile`` (inductor), alternating, after compiling (the compile time is printed: it
counts in a training run's wall time).

    python benchmarks/train_throughput.py [--batch-size 64] [--repeats 20] [--layouts] [--compile]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls, after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--layouts", action="store_true", help="full step channels-last against NCHW")
    parser.add_argument("--compile", action="store_true", help="backbone and full step eager against torch.compile")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model.policy.num_glimpses=1")
    args = parser.parse_args()

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["logger=none", f"data.batch_size={args.batch_size}", "data.train_size=512",
                                          *args.overrides])
    torch.manual_seed(0)
    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.model, _recursive_=False, num_classes=datamodule.num_classes,
                         class_names=datamodule.class_names, max_steps=datamodule.max_objects + 1)
    batch = next(iter(datamodule.train_dataloader()))
    policy, objective = module.policy, module.objective
    images, counts = batch["image"], batch["counts"]
    steps = objective.num_steps(counts, module.max_steps)
    full_step = training_step(policy, objective, images, counts, steps)

    def backbone_only() -> None:
        policy.backbone(images).sum().backward()

    full = timed(full_step, args.repeats)
    backbone = timed(backbone_only, args.repeats)
    n = images.shape[0]
    print(f"machine: {platform.machine()} {platform.processor() or ''} torch {torch.__version__} threads {torch.get_num_threads()}")
    print(f"batch {n}, meta steps {steps}, glimpses/step {policy.num_glimpses}")
    print(f"full training step      {full * 1e3:8.1f} ms  {n / full:8.1f} images/s")
    print(f"backbone fwd+bwd alone  {backbone * 1e3:8.1f} ms  {n / backbone:8.1f} images/s")
    print(f"ratio full / backbone   {full / backbone:8.2f}")
    if args.layouts:
        layout_ratio(policy, objective, images, counts, steps, args.repeats)
    if args.compile:
        compile_ratio(policy, objective, images, counts, steps, args.repeats)


def alternating(fns: dict, repeats: int) -> dict[str, float]:
    """Best of five rounds of each of ``fns``'s median times, the rounds alternating between them
    so drift on a shared machine hits all alike."""
    best = {name: float("inf") for name in fns}
    for _ in range(5):
        for name, fn in fns.items():
            best[name] = min(best[name], timed(fn, max(1, repeats // 5)))
    return best


def training_step(model, objective, images, counts, steps: int):
    """One training step of ``model`` (rollout, objective, backward, Adam step) as a function."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        episode = model(images, steps, location_mode="sample", label_mode=objective.label_mode)
        loss = objective(episode, counts)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def compile_ratio(policy, objective, images, counts, steps: int, repeats: int) -> None:
    """The backbone's forward+backward and the full step, eager against ``torch.compile``."""
    import copy

    eager, compiled = copy.deepcopy(policy), copy.deepcopy(policy)
    start = time.perf_counter()
    compiled_backbone = torch.compile(compiled.backbone)
    compiled_backbone(images).sum().backward()
    backbone_compile = time.perf_counter() - start
    compiled.backbone = compiled_backbone
    start = time.perf_counter()
    compiled_step = training_step(torch.compile(compiled), objective, images, counts, steps)
    compiled_step()
    step_compile = time.perf_counter() - start
    best = alternating({
        "backbone eager": lambda: eager.backbone(images).sum().backward(),
        "backbone compiled": lambda: compiled_backbone(images).sum().backward(),
        "full step eager": training_step(eager, objective, images, counts, steps),
        "full step compiled": compiled_step,
    }, repeats)
    for name, seconds in best.items():
        print(f"{name:20s}{seconds * 1e3:8.1f} ms")
    print(f"compile time: backbone {backbone_compile:.0f} s, then the whole policy {step_compile:.0f} s")
    print(f"eager / compiled: backbone {best['backbone eager'] / best['backbone compiled']:.2f}x, "
          f"full step {best['full step eager'] / best['full step compiled']:.2f}x")


def layout_ratio(policy, objective, images, counts, steps: int, repeats: int) -> None:
    """Full training step with channels-last parameters against contiguous ones, alternating
    rounds so drift on a shared machine hits both alike."""
    import copy

    layouts = {"channels-last": torch.channels_last, "contiguous (NCHW)": torch.contiguous_format}
    best = alternating({name: training_step(copy.deepcopy(policy).to(memory_format=layout), objective, images, counts,
                                            steps) for name, layout in layouts.items()}, repeats)
    for name, seconds in best.items():
        print(f"full step, {name:18s}{seconds * 1e3:8.1f} ms")
    print(f"contiguous / channels-last {best['contiguous (NCHW)'] / best['channels-last']:.2f}x")


if __name__ == "__main__":
    main()
