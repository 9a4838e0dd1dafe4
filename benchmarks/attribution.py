"""Milliseconds per (image, class) map: glimpse.heatmaps against pytorch-grad-cam, captum and
torch-cam, in one run on the same model and batch, beside the limit (one forward pass plus
the batched vector-Jacobian products alone). The last column, library / limit, is the most
any exact implementation could gain over each library on this model and batch.

    python benchmarks/attribution.py [--ckpt RUN/checkpoints/last.ckpt] [--repeats 5] [--batch 8]

Two models: a torchvision ResNet-18 (random weights, ``--size`` px (112), 3 target classes per image, CAMs
at layer4) and the glimpse model (every emitted label of a greedy episode as a target, CAMs at
the backbone's last feature layer, the episode replayed). The libraries take one target per
image per call, so they run once per target column; torch-cam reuses one forward pass with a
retained graph. Medians of ``--repeats`` runs.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import torch
from torch import nn

from glimpse.heatmaps.gradients import attribute, batched_vjp, find_layer, graph_from_layer
from glimpse.heatmaps.replay import attribute_episode, default_layer, replay_logits
from glimpse.heatmaps.targets import emitted_label_targets

OURS = {"gradcam": "gradcam", "gradcam++": "gradcam_plus_plus", "gradient": "gradient", "IG": "integrated_gradients"}


def median_ms(fn, repeats: int, label: str = "") -> float:
    start = time.perf_counter()
    fn()  # warm-up
    print(f"  {label}: warm-up {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def limit(model: nn.Module, forward, images: torch.Tensor, targets: torch.Tensor, layer: str | None):
    """One forward pass and the batched VJPs to the layer (CAMs) or to the input (gradients).

    For the layer, the forward records a graph from the layer's output on only (nothing
    before the layer is needed for its gradient): the least work any exact method can do.
    """

    def run():
        captured = []
        handle = find_layer(model, layer).register_forward_hook(graph_from_layer(captured)) if layer else None
        try:
            if layer:
                with torch.no_grad():
                    logits = forward(images)
            else:
                x = images.clone().requires_grad_(True)
                logits = forward(x)
        finally:
            if handle is not None:
                handle.remove()
        index = targets.clamp(min=0)
        picked = logits.gather(1, index) if logits.dim() == 2 else logits.gather(2, index[..., None])[..., 0]
        batched_vjp(picked * (targets >= 0), captured[-1:] if layer else [x])

    return run


class FlatReplay(nn.Module):
    """The replayed episode as a classifier over (step, class) pairs, for the libraries: (n, T * K)."""

    def __init__(self, policy, forward):
        super().__init__()
        self.policy, self.forward_fn = policy, forward

    def forward(self, x):
        return self.forward_fn(x).flatten(1)


def library_runs(model, images, columns, layer_module, layer_name, ig_steps):
    """{(method, library): fn} where columns is a list of (B,) target index tensors, one call each."""
    from captum.attr import IntegratedGradients, LayerGradCam, Saliency
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from torchcam.methods import GradCAM as TcGradCAM
    from torchcam.methods import GradCAMpp as TcGradCAMpp

    def pgc(cls):
        def run():
            with cls(model=model, target_layers=[layer_module]) as cam:
                for col in columns:
                    cam(input_tensor=images, targets=[ClassifierOutputTarget(int(c)) for c in col])
        return run

    def captum(make, **kw):
        def run():
            method = make()
            for col in columns:
                method.attribute(images.clone().requires_grad_(True), target=col, **kw)
        return run

    def torchcam(cls):
        def run():
            with cls(model, target_layer=layer_name, input_shape=tuple(images.shape[1:])) as cam:
                scores = model(images)
                for col in columns:
                    cam(class_idx=[int(c) for c in col], scores=scores, retain_graph=True)
        return run

    return {
        ("gradcam", "pytorch-grad-cam"): pgc(GradCAM),
        ("gradcam++", "pytorch-grad-cam"): pgc(GradCAMPlusPlus),
        ("gradcam", "captum"): captum(lambda: LayerGradCam(model, layer_module), relu_attributions=True),
        ("gradient", "captum"): captum(lambda: Saliency(model)),
        ("IG", "captum"): captum(lambda: IntegratedGradients(model), n_steps=ig_steps, method="gausslegendre"),
        ("gradcam", "torch-cam"): torchcam(TcGradCAM),
        ("gradcam++", "torch-cam"): torchcam(TcGradCAMpp),
    }


def bench(name, model, images, targets, layer, forward, ours_fn, lib_model, lib_columns, lib_layer, repeats, ig_steps):
    maps = int((targets >= 0).sum())
    rows = {}
    lim_cam = median_ms(limit(model, forward, images, targets, layer), repeats) / maps
    lim_in = median_ms(limit(model, forward, images, targets, None), repeats) / maps
    for short, method in OURS.items():
        rows[(short, "ours")] = median_ms(lambda: ours_fn([method]), repeats, f"ours {short}") / maps
    for key, fn in library_runs(lib_model, images, lib_columns, find_layer(lib_model, lib_layer), lib_layer, ig_steps).items():
        try:
            rows[key] = median_ms(fn, repeats, " ".join(key)) / maps
        except Exception as err:  # report, do not hide
            print(f"{name}: {key} failed: {type(err).__name__}: {err}")
    print(f"\n## {name}: {images.shape[0]} images, {maps} (image, class) maps, ms per map (median of {repeats})\n")
    print(f"limit (1 forward + batched VJPs): to the CAM layer {lim_cam:.2f} ms, to the input {lim_in:.2f} ms\n")
    print("| method | ours | ours / limit | pytorch-grad-cam | captum | torch-cam | library / ours | library / limit |")
    print("|---|---|---|---|---|---|---|---|")
    for short in OURS:
        ours = rows[(short, "ours")]
        lim = lim_cam if short.startswith("gradcam") else lim_in
        libs = {lib: rows.get((short, lib)) for lib in ("pytorch-grad-cam", "captum", "torch-cam")}
        ratio = ", ".join(f"{lib} {v / ours:.1f}x" for lib, v in libs.items() if v is not None)
        ratio_limit = f"{ours / lim:.2f}" if short != "IG" else f"{ours / lim:.1f} ({ig_steps} steps)"
        cells = " | ".join(f"{v:.2f}" if v is not None else "" for v in libs.values())
        steps = ig_steps if short == "IG" else 1  # IG's limit: one forward + VJPs per step
        bound = ", ".join(f"{lib} {v / (lim * steps):.1f}x" for lib, v in libs.items() if v is not None)
        print(f"| {short} | {ours:.2f} | {ratio_limit} | {cells} | {ratio} | {bound} |")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ckpt", default=None, help="a glimpse checkpoint (default: fresh weights)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=112, help="ResNet-18 input size")
    parser.add_argument("--ig-steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")

    import torchvision

    resnet = torchvision.models.resnet18().eval()
    images = torch.rand(args.batch, 3, args.size, args.size)
    targets = torch.stack([torch.randperm(1000)[:3] for _ in range(args.batch)])
    bench(f"ResNet-18, {args.size} px, 3 classes per image", resnet, images, targets, "layer4", resnet,
          lambda m: attribute(resnet, images, targets, m, layer="layer4", ig_steps=args.ig_steps),
          resnet, list(targets.T), "layer4", args.repeats, args.ig_steps)

    from glimpse.models.backbone import ConvBackbone
    from glimpse.models.policy import GlimpsePolicy

    if args.ckpt:
        from glimpse.module import load_checkpoint

        module = load_checkpoint(args.ckpt).eval()
        policy, steps = module.policy, module.max_steps
        from glimpse.data import MultisetMNIST

        data = MultisetMNIST(split="val", size=args.batch)
        canvases = torch.stack([data[i]["image"] for i in range(args.batch)])
    else:
        policy, steps = GlimpsePolicy(ConvBackbone(), 10).eval(), 5
        canvases = torch.rand(args.batch, 1, 100, 100)
    with torch.no_grad():
        episode = policy(canvases, steps, location_mode="greedy", label_mode="greedy")
    targets = emitted_label_targets(episode, policy.num_classes)
    if not (targets >= 0).any():  # fresh weights may stop at once: take every step's argmax label
        targets = episode.label_logits[..., : policy.num_classes].argmax(-1)
    last = int((targets >= 0).any(0).nonzero().max()) + 1
    targets, k = targets[:, :last], policy.num_classes
    forward = replay_logits(policy, episode, last)
    flat = FlatReplay(policy, forward).eval()
    # the libraries run once per step: the images whose step emitted a label (others target class 0 of that step)
    columns = [t * k + targets[:, t].clamp(min=0) for t in range(last)]
    layer = default_layer(policy)
    bench(f"glimpse model ({'checkpoint' if args.ckpt else 'fresh weights'}), 100 px, every emitted label of an episode",
          policy, canvases, targets, layer, forward,
          lambda m: attribute_episode(policy, canvases, m, episode=episode,
                                      targets=torch.nn.functional.pad(targets, (0, episode.labels.shape[1] - last), value=-1),
                                      ig_steps=args.ig_steps),
          flat, columns, f"policy.{layer}", args.repeats, args.ig_steps)


if __name__ == "__main__":
    main()
