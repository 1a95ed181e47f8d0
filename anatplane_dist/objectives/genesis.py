"""Models Genesis-style restoration: the full U-Net reconstructs the original from a corruption.

Like ours, it pretrains the decoder too, so fine-tuning may take encoder + decoder (its last
1x1 conv outputs image channels instead of heatmaps; segmentation replaces it either way).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from anatplane_dist.model import ModelConfig
from anatplane_dist.objectives.base import register_objective
from anatplane_dist.objectives.config import GenesisConfig, LossConfig, ObjectiveConfig
from anatplane_dist.objectives.genesis_transforms import genesis_corrupt
from anatplane_dist.objectives.nets import RestorationNet, build_encoder_decoder

__all__ = ["GenesisObjective"]

TARGET_KEY = "target_image"


class GenesisObjective:
    name = "genesis"
    transfer_parts: tuple[str, ...] = ("encoder", "decoder")
    validation_names: tuple[str, ...] = ("val/loss", "val/restore_mae")

    def __init__(self, cfg: GenesisConfig) -> None:
        self.cfg = cfg

    def build_model(self, model_cfg: ModelConfig, num_channels: int) -> nn.Module:
        return RestorationNet(*build_encoder_decoder(model_cfg, model_cfg.in_channels))

    def inputs(self, batch: dict[str, Tensor], gen: torch.Generator) -> Tensor:
        image = batch["image"]
        batch[TARGET_KEY] = image
        out = genesis_corrupt(image, self.cfg, gen)
        if image.is_contiguous(memory_format=torch.channels_last):
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def _errors(self, out: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
        return out["reconstruction"].float() - batch[TARGET_KEY].float()

    def loss(self, out: dict[str, Tensor], batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        loss = self._errors(out, batch).square().mean()     # the paper's MSE
        return loss, {"loss_restore": loss.detach()}

    def validation_sums(self, out: dict[str, Tensor], batch: dict[str, Tensor]
                        ) -> dict[str, tuple[Tensor, Tensor]]:
        err = self._errors(out, batch)
        n = torch.tensor(float(err.shape[0]), device=err.device)
        per_image = err.square().mean(dim=(1, 2, 3))
        return {"val/loss": (per_image.sum(), n), "val/restore_mae": (err.abs().mean(dim=(1, 2, 3)).sum(), n)}


@register_objective("genesis")
def _make(cfg: ObjectiveConfig, loss_cfg: LossConfig, spacing: float | None) -> GenesisObjective:
    return GenesisObjective(cfg.genesis)
