"""Training objectives (:class:`GlimpseObjective`): REINFORCE for the location decisions, a
label loss (:mod:`glimpse.objectives.labels`: multiset, sequence, REINFORCE), the stop head's
loss, and the saliency model's own losses (:mod:`glimpse.objectives.saliency`)."""
from glimpse.objectives.labels import (
    LabelLoss, MultisetLoss, OracleRollIn, ReinforceLoss, SequenceLoss, make_label_loss, order_keys,
)
from glimpse.objectives.objective import GlimpseObjective
from glimpse.objectives.saliency import centring_loss, count_loss, peak_loss, running_statistics_kept

__all__ = [
    "GlimpseObjective", "LabelLoss", "MultisetLoss", "OracleRollIn", "ReinforceLoss", "SequenceLoss", "centring_loss",
    "count_loss", "make_label_loss", "order_keys", "peak_loss", "running_statistics_kept",
]
