"""Class-specific attribution maps for any PyTorch model: one forward pass, batched gradients.

``attribute(model, images, targets, methods, layer=...)`` explains ``M`` target logits per
image (``targets (B, M)`` class indices, several classes per image) and returns raw maps
``{method: (B, M, H, W)}``. Every target's gradient comes from the same forward pass: the
logit of target ``m`` of image ``b`` depends on image ``b`` only (the model runs in eval
mode), so summing it over the batch and asking ``torch.autograd.grad`` for the M
vector-Jacobian products at once (``is_grads_batched``) gives all ``B * M`` gradients
without a Python loop over images or classes.

Methods (formulas in docs/references.md; ``g`` the gradient of the target logit ``z_c``):

- ``gradient``: vanilla gradient (Simonyan et al. 2014), ``max_ch |dz_c/dx|``.
- ``saliency_positive``, ``saliency_negative``, ``saliency_active``: sign-aware saliency
  (Llorente, Boal, Sanchez-Ubeda, "A matter of attitude: focusing on positive and active
  gradients to boost saliency maps", arXiv 2309.12913): ``max_ch ReLU(g)``,
  ``max_ch ReLU(-g)``, and ``max_ch |g|`` kept only at the pixels/channels where ``g``
  exceeds the gradient of every other class (needs the logits of all classes: one
  gradient per class).
- ``gradcam``: ``ReLU(sum_k mean_ij(g^k) A^k)`` at ``layer``.
- ``gradcam_plus_plus``: Grad-CAM++ with pytorch-grad-cam's closed-form alpha
  ``a = g^2 / (2 g^2 + sum_ab(A_ab) g^3 + 1e-6)`` (0 where ``g = 0``),
  ``w_k = sum_ij a ReLU(g)``, ``ReLU(sum_k w_k A^k)``.
- ``global_guidance_map``: the global guidance map of arXiv 2207.05374 (Sensors 2022),
  ``G = A * dz_c/dA`` element-wise. Reading implemented: the map is the guidance map's
  positive evidence summed over channels, ``sum_k ReLU(A^k * g^k)`` (the element-wise
  Grad-CAM reading, instance-specific because each position keeps its own gradient instead
  of a channel mean); the paper's further fusion with a channel-weighted CAM is not done.
- ``integrated_gradients``: ``(x - x') * integral_0^1 dz_c/dx(x' + a (x - x')) da`` summed
  over channels (signed, so the map sums to ``z_c(x) - z_c(x')``); zero baseline by default,
  Riemann or Gauss-Legendre steps as in captum, all steps batched.

Maps are raw (unnormalised, CAMs at the layer's resolution unless ``upsample``); display
normalisation lives in :mod:`glimpse.heatmaps.render`.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glimpse.heatmaps.targets import NO_TARGET

INPUT_METHODS = ("gradient", "saliency_positive", "saliency_negative", "saliency_active", "integrated_gradients")
LAYER_METHODS = ("gradcam", "gradcam_plus_plus", "global_guidance_map")
METHODS = INPUT_METHODS[:4] + LAYER_METHODS + INPUT_METHODS[4:]
IG_RULES = ("riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle", "gausslegendre")
GRADCAM_PP_EPS = 1e-6  # pytorch-grad-cam's constant in the alpha denominator

Forward = Callable[[Tensor], Tensor]
TargetLogits = Callable[[Tensor], Tensor]


def check_methods(methods: Sequence[str], key: str = "methods") -> list[str]:
    """The method names, or a ValueError naming the unknown ones and the known ones."""
    methods = [methods] if isinstance(methods, str) else list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"{key} has unknown attribution methods {unknown or '(none given)'}; choose from {list(METHODS)}")
    return methods


def find_layer(model: nn.Module, layer: str) -> nn.Module:
    """``dict(model.named_modules())[layer]``, or a ValueError listing the closest names."""
    modules = dict(model.named_modules())
    if layer not in modules:
        close = difflib.get_close_matches(str(layer), [n for n in modules if n], n=5, cutoff=0.4)
        hint = f"closest: {close}" if close else f"e.g. {[n for n in modules if n][-5:]}"
        raise ValueError(f"layer={layer!r} is not a module of {type(model).__name__}; {hint}")
    return modules[layer]


def integration_rule(steps: int, rule: str) -> tuple[Tensor, Tensor]:
    """``(alphas, weights)`` of a ``steps``-point rule for the integral over [0, 1]; the nodes
    are captum's, and so are the weights except the trapezoid's: captum gives its ``n`` nodes
    weights ``1/n`` (halved at the ends, summing to ``(n-1)/n``), here ``1/(n-1)`` (summing to 1)."""
    if int(steps) != steps or steps < 1 or (rule == "riemann_trapezoid" and steps < 2):
        raise ValueError(f"ig_steps={steps} must be an integer >= 1 (>= 2 for riemann_trapezoid)")
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return torch.tensor(0.5 * (nodes + 1)), torch.tensor(0.5 * weights)
    if rule == "riemann_trapezoid":
        weights = torch.full((steps,), 1.0 / (steps - 1), dtype=torch.float64)
        weights[[0, -1]] /= 2
        return torch.linspace(0, 1, steps, dtype=torch.float64), weights
    starts = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}
    if rule not in starts:
        raise ValueError(f"ig_rule={rule!r} is not known; choose from {list(IG_RULES)}")
    alphas = (torch.arange(steps, dtype=torch.float64) + starts[rule]) / steps
    return alphas, torch.full((steps,), 1.0 / steps, dtype=torch.float64)


def _target_logits(logits: Tensor, targets: Tensor) -> Tensor:
    """Logits ``(B, K)`` or ``(B, M, K)`` and targets ``(B, M)`` -> target logits ``(B, M)``;
    entries marked :data:`NO_TARGET` give 0 (no gradient)."""
    if logits.dim() not in (2, 3) or logits.shape[0] != targets.shape[0] or (logits.dim() == 3 and logits.shape[1] != targets.shape[1]):
        raise ValueError(f"the model's logits {tuple(logits.shape)} must be (B, K) or (B, M, K) for targets {tuple(targets.shape)}")
    k = logits.shape[-1]
    bad = (targets < NO_TARGET) | (targets >= k)
    if bad.any():
        raise ValueError(f"target class {int(targets[bad][0])} is out of range for {k} classes (0..{k - 1}; {NO_TARGET} marks no target)")
    index = targets.clamp(min=0)
    picked = logits.gather(1, index) if logits.dim() == 2 else logits.gather(2, index[..., None])[..., 0]
    return picked * (targets != NO_TARGET)


def batched_vjp(outputs: Tensor, inputs: Sequence[Tensor], retain_graph: bool = False) -> list[Tensor]:
    """Gradients ``(B, M, *input.shape[1:])`` of each column of ``outputs (B, M)`` w.r.t. each input.

    Row ``b`` of ``outputs`` must depend on row ``b`` of the inputs only; then column ``m``
    summed over the batch has the per-image gradients of column ``m``, and the M columns are
    one batched vector-Jacobian product.
    """
    m = outputs.shape[1]
    if m == 1:
        grads = torch.autograd.grad(outputs, inputs, grad_outputs=torch.ones_like(outputs), retain_graph=retain_graph)
        return [g[:, None] for g in grads]
    eye = torch.eye(m, dtype=outputs.dtype, device=outputs.device)
    one_hot = eye[:, None, :].expand(m, outputs.shape[0], m)  # (M, B, M)
    grads = torch.autograd.grad(outputs, inputs, grad_outputs=one_hot, is_grads_batched=True, retain_graph=retain_graph)
    return [g.transpose(0, 1) for g in grads]


def graph_from_layer(captured: list[Tensor]) -> Callable:
    """A forward hook for a forward run under ``torch.no_grad()``: gradients turn on at the
    layer, whose output becomes a leaf (appended to ``captured``) that the rest of the forward
    records a graph from. CAMs need nothing before the layer, so nothing there is recorded."""

    def hook(module, args, output):
        torch.set_grad_enabled(True)  # the enclosing no_grad() restores the mode when the forward ends
        leaf = output.detach().requires_grad_(True)
        captured.append(leaf)
        return leaf.clone()  # in-place ops after the layer act on the copy, not on what was read

    return hook


def _all_class_gradients(logits: Tensor, targets: Tensor, x: Tensor) -> Tensor:
    """Gradients ``(B, M, K, C, H, W)`` of every class's logit at each target's slot."""
    b, k = logits.shape[0], logits.shape[-1]
    m = targets.shape[1]
    slots = logits[:, None, :].expand(b, m, k) if logits.dim() == 2 else logits  # (B, M, K)
    if logits.dim() == 2:  # the same K logits for every target: K gradients, shared
        grads = batched_vjp(logits, [x], retain_graph=True)[0]  # (B, K, C, H, W)
        return grads[:, None].expand(b, m, *grads.shape[1:])
    grads = batched_vjp(slots.reshape(b, m * k), [x], retain_graph=True)[0]
    return grads.view(b, m, k, *x.shape[1:])


def _active(grad: Tensor, all_grads: Tensor, targets: Tensor) -> Tensor:
    """``max_ch |g_c|`` where ``g_c`` exceeds the gradient of every other class (Llorente et al.)."""
    k = all_grads.shape[2]
    is_target = F.one_hot(targets.clamp(min=0), k).bool()  # (B, M, K)
    others = all_grads.masked_fill(is_target[..., None, None, None], float("-inf")).amax(2)  # (B, M, C, H, W)
    return torch.where(grad > others, grad.abs(), torch.zeros_like(grad)).amax(2)


def _cams(methods: Sequence[str], activations: Tensor, grads: Tensor) -> dict[str, Tensor]:
    """CAMs ``(B, M, h, w)`` from layer activations ``A (B, C, h, w)`` and gradients ``(B, M, C, h, w)``."""
    a = activations[:, None]
    out = {}
    if "gradcam" in methods:
        out["gradcam"] = torch.einsum("bmc,bmchw->bmhw", grads.mean((-2, -1)), a.expand_as(grads)).relu()
    if "gradcam_plus_plus" in methods:
        g2 = grads.pow(2)
        denom = 2 * g2 + a.sum((-2, -1), keepdim=True) * g2 * grads + GRADCAM_PP_EPS
        alpha = torch.where(grads != 0, g2 / denom, torch.zeros_like(grads))
        weights = (alpha * grads.relu()).sum((-2, -1))
        out["gradcam_plus_plus"] = torch.einsum("bmc,bmchw->bmhw", weights, a.expand_as(grads)).relu()
    if "global_guidance_map" in methods:
        out["global_guidance_map"] = (a * grads).relu().sum(2)
    return out


def _integrated_gradients(
    pick: Callable[[Tensor, int], tuple[Tensor, Tensor | None]], images: Tensor, baseline: Tensor, steps: int, rule: str,
    batch_limit: int,
) -> Tensor:
    """IG maps ``(B, M, H, W)``: the path points of all steps go through the model in chunks of
    at most ``batch_limit`` images (whole copies of the batch, step-major)."""
    alphas, weights = (v.to(images.device, images.dtype) for v in integration_rule(steps, rule))
    b = images.shape[0]
    diff = images - baseline
    total = None
    per_chunk = max(1, batch_limit // b)
    for start in range(0, steps, per_chunk):
        a, w = alphas[start : start + per_chunk], weights[start : start + per_chunk]
        r = len(a)
        path = (baseline + a.view(r, 1, 1, 1, 1) * diff).flatten(0, 1).requires_grad_(True)  # (r * B, C, H, W)
        grads = batched_vjp(pick(path, r)[0], [path])[0]  # (r * B, M, C, H, W)
        part = (grads.view(r, b, *grads.shape[1:]) * w.view(r, 1, 1, 1, 1, 1)).sum(0)
        total = part if total is None else total + part
    return (total * diff[:, None]).sum(2)


def _check_targets(targets: Tensor | TargetLogits, images: Tensor) -> Tensor | TargetLogits:
    if callable(targets) and not torch.is_tensor(targets):
        return targets
    targets = torch.as_tensor(targets, device=images.device)
    if targets.dim() == 1:
        targets = targets[:, None]
    if targets.dim() != 2 or targets.shape[0] != images.shape[0] or targets.dtype.is_floating_point:
        raise ValueError(f"targets must be class indices (B, M) = ({images.shape[0]}, M), got {tuple(targets.shape)} {targets.dtype}")
    return targets.long()


def _upsample(maps: Tensor, image_hw: tuple[int, int], upsample: bool | Callable[[Tensor], Tensor]) -> Tensor:
    if upsample is False or tuple(maps.shape[-2:]) == image_hw:
        return maps
    flat = maps.flatten(0, 1)
    if callable(upsample):
        up = upsample(flat)
    else:
        up = F.interpolate(flat[:, None], size=image_hw, mode="bilinear", align_corners=False)[:, 0]
    return up.view(*maps.shape[:2], *up.shape[-2:])


def attribute(
    model: nn.Module,
    images: Tensor,
    targets: Tensor | TargetLogits,
    methods: Sequence[str] = ("gradcam",),
    layer: str | None = None,
    upsample: bool | Callable[[Tensor], Tensor] = True,
    forward: Forward | None = None,
    baseline: Tensor | None = None,
    ig_steps: int = 16,
    ig_rule: str = "gausslegendre",
    ig_batch: int = 256,
) -> dict[str, Tensor]:
    """Raw attribution maps ``{method: (B, M, H, W)}`` of ``M`` targets per image.

    model: any ``nn.Module``; run in eval mode (its train/eval state is restored after).
    images: ``(B, C, H, W)``; cloned, never modified.
    targets: class indices ``(B, M)`` (or ``(B,)``); :data:`NO_TARGET` (-1) entries get zero
        maps. Or a callable ``images (n, C, H, W) -> target logits (n, M)``, e.g. the label
        logits of a replayed episode (``saliency_active`` needs indices and all logits).
    methods: names from :data:`METHODS`.
    layer: ``dict(model.named_modules())`` name of the layer the CAMs read (their activations).
    upsample: CAMs to the image size: True (bilinear), False (raw layer resolution), or a
        callable ``(N, h, w) -> (N, H, W)``.
    forward: ``images (n, ...) -> logits (n, K)`` or ``(n, M, K)`` (default ``model``). For
        Integrated Gradients it is called on ``r`` copies of the batch stacked step-major
        (``n = r * B``); per-image state must be tiled (``tensor.repeat``) to match.
    baseline, ig_steps, ig_rule, ig_batch: Integrated Gradients' baseline (zeros), number of
        steps, integration rule (:data:`IG_RULES`, as captum names them) and the most
        path images per forward pass.

    Gradients are re-enabled explicitly (also inside ``torch.inference_mode``), taken with
    ``torch.autograd.grad`` (no parameter's ``.grad`` is touched); the hook is removed and the
    CPU and CUDA RNG states are restored whatever happens.
    """
    methods = check_methods(methods)
    if any(m in LAYER_METHODS for m in methods) and layer is None:
        raise ValueError(f"layer=None: {[m for m in methods if m in LAYER_METHODS]} need a layer name of the model")
    if ig_rule not in IG_RULES:
        raise ValueError(f"ig_rule={ig_rule!r} is not known; choose from {list(IG_RULES)}")
    target_module = find_layer(model, layer) if layer is not None else None
    targets = _check_targets(targets, images)
    index_targets = torch.is_tensor(targets)
    if "saliency_active" in methods and not index_targets:
        raise ValueError("saliency_active compares the target's gradient with every other class's: give targets as class "
                         "indices (B, M) and a forward returning all logits")
    forward = forward or model
    captured: list[Tensor] = []

    def pick(inputs: Tensor, copies: int) -> tuple[Tensor, Tensor | None]:
        """Target logits ``(n, M)`` of ``copies`` stacked copies of the batch, and the logits."""
        if not index_targets:
            return targets(inputs), None
        logits = forward(inputs)
        return _target_logits(logits, targets.repeat(copies, 1)), logits

    def hook(module, args, output):
        captured.append(output)
        return output.clone()  # later in-place ops (e.g. ReLU(inplace=True)) must not change what was read

    was_training = model.training
    devices = [images.device] if images.device.type == "cuda" else []
    handle = None
    try:
        with torch.random.fork_rng(devices=devices), torch.inference_mode(False), torch.enable_grad():
            model.eval()
            x = images.detach().clone().requires_grad_(True)
            out: dict[str, Tensor] = {}
            input_methods = [m for m in methods if m in INPUT_METHODS[:4]]
            layer_methods = [m for m in methods if m in LAYER_METHODS]
            if input_methods or layer_methods:
                if layer_methods:
                    handle = target_module.register_forward_hook(hook if input_methods else graph_from_layer(captured))
                if input_methods:
                    picked, logits = pick(x, 1)
                else:
                    with torch.no_grad():
                        picked, logits = pick(x.detach(), 1)
                if handle is not None:
                    handle.remove()
                    handle = None
                if layer_methods and not captured:
                    raise ValueError(f"layer={layer!r} was not called in the forward pass")
                if "saliency_active" in methods:
                    all_grads = _all_class_gradients(logits, targets, x)
                grads = batched_vjp(picked, ([x] if input_methods else []) + (captured[-1:] if layer_methods else []))
                if input_methods:
                    gx = grads.pop(0)  # (B, M, C, H, W)
                    maps = {
                        "gradient": lambda: gx.abs().amax(2),
                        "saliency_positive": lambda: gx.clamp(min=0).amax(2),
                        "saliency_negative": lambda: (-gx).clamp(min=0).amax(2),
                        "saliency_active": lambda: _active(gx, all_grads, targets),
                    }
                    out.update({m: maps[m]() for m in input_methods})
                if layer_methods:
                    cams = _cams(layer_methods, captured[-1].detach(), grads[0])
                    out.update({k: _upsample(v, tuple(images.shape[-2:]), upsample) for k, v in cams.items()})
            if "integrated_gradients" in methods:
                base = torch.zeros_like(x) if baseline is None else baseline.to(x).expand_as(x)
                out["integrated_gradients"] = _integrated_gradients(pick, x.detach(), base.detach(), ig_steps, ig_rule, ig_batch)
            if index_targets:
                none = targets == NO_TARGET
                out = {k: v.masked_fill(none[..., None, None], 0.0) for k, v in out.items()}
            return {k: out[k].detach() for k in methods}
    finally:
        if handle is not None:
            handle.remove()
        model.train(was_training)
