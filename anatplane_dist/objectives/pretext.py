"""The paper's objectives: ``multitask`` and its single-task ablations ``orientation`` / ``location``.

All three are today's network (:func:`anatplane_dist.model.build_model`) and today's
:class:`anatplane_dist.objectives.losses.MultitaskLoss`; a single-task variant switches the other head off
in the model config (it is not built, so neither its compute nor an unused-parameter problem
exists) and sets that term's weight to 0.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from anatplane_dist.model import ModelConfig, build_model
from anatplane_dist.objectives.base import register_objective
from anatplane_dist.objectives.config import LossConfig, ObjectiveError
from anatplane_dist.objectives.losses import MultitaskLoss
from anatplane_dist.objectives.validate import pretext_sums

__all__ = ["PretextObjective"]

#: which heads each variant keeps: (orientation_head, location_head)
_HEADS = {"multitask": (True, True), "orientation": (True, False), "location": (False, True)}


class PretextObjective:
    """Relative orientation heatmaps and/or relative slice location (the paper's method)."""

    def __init__(self, name: str, loss_cfg: LossConfig, grid_spacing_mm: float | None) -> None:
        self.name = name
        self.orientation, self.location = _HEADS[name]
        if name == "multitask":
            # exactly today's run: the model config's head toggles and the loss weights as given
            self.loss_cfg = loss_cfg
        else:
            weight = "alpha" if self.orientation else "beta"
            if getattr(loss_cfg, weight) == 0:
                raise ObjectiveError(f"objective.name={name} trains its one term with loss.{weight}=0")
            self.loss_cfg = dataclasses.replace(loss_cfg, alpha=loss_cfg.alpha if self.orientation else 0.0,
                                                beta=loss_cfg.beta if self.location else 0.0)
        self.loss_fn = MultitaskLoss(self.loss_cfg, grid_spacing_mm)
        self.transfer_parts: tuple[str, ...] = ("encoder", "decoder") if self.orientation else ("encoder",)
        names = ["val/loss"] + [f"val/{t}" for t in ("loss_ori", "loss_loc")
                                if name == "multitask" or t in self.loss_cfg.terms]
        if self.orientation:
            names += ["val/angle_err_deg", "val/offset_err_px"]
        if self.location:
            names += ["val/loc_mae"]
        self.validation_names: tuple[str, ...] = tuple(names)

    def build_model(self, model_cfg: ModelConfig, num_channels: int) -> nn.Module:
        if self.name == "multitask":
            return build_model(model_cfg, num_channels)
        cfg = dataclasses.replace(model_cfg, orientation_head=self.orientation, location_head=self.location)
        return build_model(cfg, num_channels)

    def inputs(self, batch: dict[str, Tensor], gen: torch.Generator) -> Tensor:
        return batch["image"]          # the geometric targets already follow the augmentation

    def loss(self, out: dict[str, Tensor], batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        return self.loss_fn(out, batch)

    def validation_sums(self, out: dict[str, Tensor], batch: dict[str, Tensor]
                        ) -> dict[str, tuple[float, float]]:
        """Today's pretext metrics, from ``train.validate.pretext_sums`` (host floats: it reads
        each batch's values back, which validation can afford)."""
        return pretext_sums(out, batch, self.loss_fn)

for _name in _HEADS:
    register_objective(_name)(lambda cfg, loss_cfg, spacing, _n=_name: PretextObjective(_n, loss_cfg, spacing))
