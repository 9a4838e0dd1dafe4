"""The non-attentive multiset predictor of Welleck et al., NeurIPS 2018 (arXiv 1711.05246).

A conv encoder reads the whole image once; a convolutional LSTM decoder then emits one label
(or STOP) per step, its state a feature map over the encoder's grid. Nothing chooses where to
look: each step pools the whole state map. The baseline the glimpse model must beat.

    image -> backbone -> features A (B, C, h, w)
    for t in 1..T:
        (H_t, C_t) = ConvLSTM([A, embed(previous label)], (H_{t-1}, C_{t-1}))   # (B, hidden, h, w)
        label logits = MLP([max-pool H_t, mean-pool H_t])                      # (B, K + 1), K = STOP

The input part of the ConvLSTM's gates (a convolution of ``A``) is the same at every step, so
it is computed once; the previous label enters as a per-channel bias of the gates.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class PredictorEpisode:
    """A decoded batch: ``label_logits (B, T, K + 1)`` (index K is STOP) and ``labels (B, T)``."""

    label_logits: Tensor
    labels: Tensor


class ConvLSTMCell(nn.Module):
    """Shi et al. 2015: an LSTM whose gates are convolutions over a feature map."""

    def __init__(self, in_channels: int, hidden: int, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"model.policy.kernel_size={kernel_size} must be odd (same-size gates)")
        self.hidden = hidden
        self.input_gates = nn.Conv2d(in_channels, 4 * hidden, kernel_size, padding=kernel_size // 2)
        self.state_gates = nn.Conv2d(hidden, 4 * hidden, kernel_size, padding=kernel_size // 2, bias=False)
        with torch.no_grad():  # forget gate biased open: the state carries what was already named
            self.input_gates.bias[hidden:2 * hidden].fill_(1.0)

    def forward(self, input_gates: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """One step from precomputed ``input_gates (B, 4 hidden, h, w)``; returns ``(H, C)``."""
        h, c = state
        i, f, g, o = (input_gates + self.state_gates(h)).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class MultisetPredictor(nn.Module):
    """Conv encoder + ConvLSTM decoder emitting one label or STOP per step.

    backbone: any module with ``out_channels`` (the batch-norm :class:`ConvBackbone` for
    canvases, :class:`ResNetBackbone` for photographs, as the glimpse model's).
    hidden: channels of the ConvLSTM state; label_dim: embedding of the previous label.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, hidden: int = 32, label_dim: int = 16,
                 kernel_size: int = 3, head_hidden: int = 128) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if hidden < 1 or label_dim < 1 or head_hidden < 1:
            raise ValueError(f"model.policy: hidden={hidden}, label_dim={label_dim} and head_hidden={head_hidden} must be >= 1")
        self.num_classes = num_classes
        self.backbone = backbone
        self.label_embedding = nn.Embedding(num_classes + 2, label_dim)  # classes, STOP, start
        self.label_gates = nn.Linear(label_dim, 4 * hidden, bias=False)
        self.cell = ConvLSTMCell(backbone.out_channels, hidden, kernel_size)
        self.classifier = nn.Sequential(nn.Linear(2 * hidden, head_hidden), nn.ReLU(inplace=True),
                                        nn.Linear(head_hidden, num_classes + 1))

    def forward(self, image: Tensor, num_steps: int, label_mode: str = "greedy", labels: Tensor | None = None
                ) -> PredictorEpisode:
        """Decode ``num_steps`` steps; each step's input is the previous step's label: its argmax
        (``greedy``, the roll-in of the multiset loss and the test-time decoding), a sample
        (``sample``), or ``labels (B, T)`` when given (teacher forcing)."""
        if label_mode not in ("greedy", "sample"):
            raise ValueError(f"label_mode must be 'greedy' or 'sample', got {label_mode!r}")
        features = self.backbone(image)  # (B, C, h, w)
        x_gates = self.cell.input_gates(features)  # (B, 4 hidden, h, w): the same every step
        batch = image.shape[0]
        h = c = features.new_zeros(batch, self.cell.hidden, *features.shape[-2:])
        previous = torch.full((batch,), self.num_classes + 1, dtype=torch.long, device=image.device)
        logits_seq, labels_seq = [], []
        for t in range(num_steps):  # T is the multiset size + 1, never the batch
            gates = x_gates + self.label_gates(self.label_embedding(previous))[:, :, None, None]
            h, c = self.cell(gates, (h, c))
            pooled = torch.cat([h.amax((-2, -1)), h.mean((-2, -1))], -1)  # (B, 2 hidden)
            logits = self.classifier(pooled)  # (B, K + 1)
            if labels is not None:
                label = labels[:, t]
            elif label_mode == "sample":
                label = torch.distributions.Categorical(logits=logits).sample()
            else:
                label = logits.argmax(-1)
            logits_seq.append(logits), labels_seq.append(label.detach())
            previous = label.detach()
        return PredictorEpisode(label_logits=torch.stack(logits_seq, 1), labels=torch.stack(labels_seq, 1))
