"""A faster copy of a trained model for evaluation: batch norm folded, channels-last.

Deletion/insertion replays the glimpse model on every perturbed image, and the backbone is
most of each replay. In eval mode a BatchNorm after a convolution is an affine map of its
output, so it folds into the convolution's weights (``torch.nn.utils.fusion.fuse_conv_bn_eval``)
and its pass over memory disappears; channels-last parameters let oneDNN (CPU) and cuDNN (GPU)
pick their faster convolution kernels. The copy computes the same function up to float
rounding (about 1e-5 on the default model's logits, tested); the model given is not touched.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

# (convolution, batch norm) attribute pairs of torchvision's residual blocks
BLOCK_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.running_mean is not None
            and bn.num_features == conv.out_channels)


def fold_batch_norms(module: nn.Module) -> int:
    """Fold, in place, every BatchNorm2d that directly follows a Conv2d (adjacent in an
    ``nn.Sequential``, or a residual block's ``convN``/``bnN``) into the convolution, leaving an
    ``nn.Identity`` where the norm was so module names stay the same. Eval mode only: the
    folded norm uses its running statistics. Returns the number of norms folded."""
    if module.training:
        raise ValueError("fold_batch_norms needs a module in eval mode (a folded BatchNorm uses its running statistics)")
    folded = 0
    for child in list(module.modules()):
        if isinstance(child, nn.Sequential):
            for i in range(len(child) - 1):
                if _foldable(child[i], child[i + 1]):
                    child[i], child[i + 1] = fuse_conv_bn_eval(child[i], child[i + 1]), nn.Identity()
                    folded += 1
        for conv_name, bn_name in BLOCK_PAIRS:
            conv, bn = getattr(child, conv_name, None), getattr(child, bn_name, None)
            if conv is not None and bn is not None and _foldable(conv, bn):
                setattr(child, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(child, bn_name, nn.Identity())
                folded += 1
    return folded


def inference_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with its batch norms folded and its parameters
    channels-last: for evaluation's many forward passes, never for training."""
    fast = copy.deepcopy(model).eval()
    fold_batch_norms(fast)
    return fast.to(memory_format=torch.channels_last)
