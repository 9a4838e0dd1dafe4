"""The LightningModule: the glimpse policy, its objective and the multiset metrics."""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from glimpse import multiset
from glimpse.localisation import LocalisationSuite
from glimpse.metrics import MultisetMetrics
from glimpse.models.backbone import WEIGHT_KEYS
from glimpse.models.policy import Episode, GlimpsePolicy
from glimpse.objectives import GlimpseObjective, centring_loss


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def check_arguments(num_classes: int, class_names: list[str], max_steps: int, backbone_lr: float | None,
                    scheduler: str, steps_are: str) -> None:
    """The constructor checks of both LightningModules (this one and the baseline's);
    ``steps_are`` names what ``max_steps`` counts."""
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for num_classes={num_classes}")
    if max_steps < 1:
        raise ValueError(f"model.max_steps={max_steps} must be >= 1 ({steps_are} per image, STOP included)")
    if backbone_lr is not None and backbone_lr < 0:
        raise ValueError(f"model.backbone_lr={backbone_lr} must be >= 0, or null for model.lr")
    if scheduler not in ("cosine", "constant"):
        raise ValueError(f"model.scheduler={scheduler!r} is not known; choose 'cosine' or 'constant'")


class GlimpseModule(pl.LightningModule):
    """Trains :class:`GlimpsePolicy` with :class:`GlimpseObjective`; greedy decoding to evaluate.

    Built from plain config dicts so a checkpoint alone rebuilds the model
    (``GlimpseModule.load_from_checkpoint(path)``).
    """

    def __init__(
        self,
        policy: dict,
        objective: dict,
        num_classes: int,
        class_names: list[str],
        max_steps: int,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        scheduler: str = "cosine",
        data: dict | None = None,
        backbone_lr: float | None = None,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        policy, objective = _plain(policy), _plain(objective)
        # `data` is kept only as a record of what the model was trained on
        self.save_hyperparameters({"policy": policy, "objective": objective, "num_classes": num_classes,
                                   "class_names": list(class_names), "max_steps": max_steps, "lr": lr,
                                   "weight_decay": weight_decay, "warmup_steps": warmup_steps, "scheduler": scheduler,
                                   "data": _plain(data), "backbone_lr": backbone_lr, "channels_last": channels_last})
        check_arguments(num_classes, class_names, max_steps, backbone_lr, scheduler, steps_are="meta steps")
        self.objective = GlimpseObjective(**objective)
        # the objective decides what the policy needs beyond the model config: a stop head, a second value output
        self.policy: GlimpsePolicy = instantiate(policy, num_classes=num_classes,
                                                 stop_head=self.objective.termination == "head",
                                                 num_values=self.objective.num_values)
        if channels_last:  # oneDNN's and cuDNN's faster convolution kernels; the same function
            self.policy.to(memory_format=torch.channels_last)
        self.class_names = list(class_names)
        self.max_steps = max_steps
        self.val_metrics = MultisetMetrics()
        self.test_metrics = MultisetMetrics()
        self.val_localisation = LocalisationSuite(max_steps)
        self.test_localisation = LocalisationSuite(max_steps)

    def check_classes(self, class_names: list[str]) -> None:
        """A dataset must name the checkpoint's classes, in the same order."""
        if list(class_names) != self.class_names:
            missing = sorted(set(class_names) ^ set(self.class_names))
            raise ValueError(
                f"the dataset's classes {list(class_names)} do not match the checkpoint's {self.class_names}"
                + (f"; unmatched: {missing}" if missing else " (same names, another order)")
            )

    # -- decoding ---------------------------------------------------------------------------------
    def predict_episode(self, images: torch.Tensor, record: bool = False) -> Episode:
        """Greedy rollout of ``max_steps`` meta steps (the episode ends at the first STOP)."""
        return self.policy(images, self.max_steps, location_mode="greedy", label_mode="greedy", record=record)

    def predicted_counts(self, episode: Episode) -> torch.Tensor:
        """The emitted multiset ``(B, K)``: labels before the first STOP."""
        targets = torch.zeros(episode.labels.shape[0], self.policy.num_classes, dtype=torch.long, device=episode.labels.device)
        return multiset.rollout(targets, episode.labels, stop_ends=True)["predicted"]

    # -- steps ------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        counts, objective = batch["counts"], self.objective
        steps = objective.num_steps(counts, self.max_steps)
        episode = self.policy(batch["image"], steps, location_mode="sample", label_mode=objective.label_mode,
                              head_stops=False, **objective.roll_in_args(batch, steps))
        greedy = None
        if objective.baseline == "self_critical":  # the greedy rollout of the same images is the baseline
            # as at test time: eval mode, so BatchNorm neither normalises by this batch nor updates its statistics twice
            self.policy.eval()
            try:
                with torch.no_grad():
                    rollout = self.policy(batch["image"], steps, location_mode="greedy", label_mode="greedy", head_stops=False)
                    greedy = objective.returns(rollout, counts, batch)
            finally:
                self.policy.train()
        losses = objective(episode, counts, batch, greedy)
        if objective.centring_weight:
            n = objective.centring_images  # None: the whole batch
            losses["centring_loss"] = centring_loss(self.policy.backbone, self.policy.saliency, batch["image"][:n],
                                                    episode.saliency_map[:n])
            losses["loss"] = losses["loss"] + objective.centring_weight * losses["centring_loss"]
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, prog_bar=False, on_step=True, on_epoch=False)
        self.log("train/loss_epoch", losses["loss"].detach(), on_step=False, on_epoch=True, prog_bar=True)
        return losses["loss"]

    def _evaluate(self, batch: dict, batch_idx: int, metrics: MultisetMetrics, localisation: LocalisationSuite) -> None:
        episode = self.predict_episode(batch["image"])
        metrics.update(self.predicted_counts(episode), batch["counts"])
        localisation.update(episode, batch, self.policy.meta.attention, batch_idx)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, self.val_metrics, self.val_localisation)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, self.test_metrics, self.test_localisation)

    def on_validation_epoch_end(self) -> None:
        values = {f"val/{k}": v for k, v in self.val_metrics.compute().items()}
        self.val_metrics.reset()
        self.log_dict(values, prog_bar=True, sync_dist=False)
        localisation = {f"val/{k}": v for k, v in self.val_localisation.compute().items()}
        self.val_localisation.reset()
        self.log_dict(localisation)
        hit = localisation.get("val/localisation/glimpse_hit_rate")
        self.print_epoch_summary({**values, **({} if hit is None else {"val/localisation/glimpse_hit_rate": hit})})

    def print_epoch_summary(self, values: dict) -> None:
        """One line per epoch (not during the sanity check): epoch, step, the epoch's training loss and ``values``."""
        if self.trainer.sanity_checking:
            return
        train_loss = self.trainer.callback_metrics.get("train/loss_epoch")
        parts = [f"epoch {self.current_epoch}", f"step {self.global_step}"]
        if train_loss is not None:
            parts.append(f"train/loss {float(train_loss):.4f}")
        self.print(" | ".join(parts + [f"{k} {float(v):.4f}" for k, v in values.items()]))

    def on_test_epoch_end(self) -> None:
        self.log_dict({f"test/{k}": v for k, v in self.test_metrics.compute().items()})
        self.test_metrics.reset()
        self.log_dict({f"test/{k}": v for k, v in self.test_localisation.compute().items()})
        self.test_localisation.reset()

    # -- optimisation -----------------------------------------------------------------------------
    def parameter_groups(self) -> list[dict]:
        """Trainable parameters: the backbone's at ``backbone_lr`` (when set), the rest at ``lr``."""
        backbone = {id(p) for p in self.policy.backbone.parameters()}
        trainable = [(id(p) in backbone, p) for p in self.parameters() if p.requires_grad]
        backbone_lr = self.hparams.get("backbone_lr")
        if backbone_lr is None:
            return [{"params": [p for _, p in trainable]}]
        groups = [{"params": [p for in_backbone, p in trainable if not in_backbone]},
                  {"params": [p for in_backbone, p in trainable if in_backbone], "lr": backbone_lr}]
        return [g for g in groups if g["params"]]  # a frozen backbone has none

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        optimizer = torch.optim.Adam(self.parameter_groups(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler == "constant":
            return {"optimizer": optimizer}
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = min(hp.warmup_steps, total // 10)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def load_checkpoint(path: str, map_location: str | torch.device = "cpu",
                    module_for: Callable[[dict], type[pl.LightningModule]] | None = None) -> pl.LightningModule:
    """Load a :class:`GlimpseModule` checkpoint, with a clear error for anything else;
    ``module_for`` picks another LightningModule class from the checkpoint's hyperparameters."""
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise ValueError(f"{path} is not a readable checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise ValueError(f"{path} is not a glimpse checkpoint (no state_dict / hyper_parameters); use a .ckpt from train.py")
    bad = [k for k, v in checkpoint["state_dict"].items() if torch.is_tensor(v) and v.is_floating_point()
           and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"{path} holds non-finite weights in {len(bad)} tensor(s), first {bad[:3]}; "
                         "use an earlier checkpoint of the run")
    # The state dict holds every weight: a pretrained backbone's source file need not exist here.
    recorded = checkpoint["hyper_parameters"].get("policy") or {}
    policy = dict(recorded)
    if isinstance(policy.get("backbone"), dict):
        policy["backbone"] = {k: v for k, v in policy["backbone"].items() if k not in WEIGHT_KEYS}
    module_class = module_for(checkpoint["hyper_parameters"]) if module_for else GlimpseModule
    try:
        module = module_class.load_from_checkpoint(path, map_location=map_location, weights_only=False, policy=policy)
        module.hparams["policy"] = recorded  # keep the record of what the run started from
        return module
    except (RuntimeError, TypeError, KeyError) as err:
        raise ValueError(f"{path} does not fit this version's {module_class.__name__}: {err}") from err
