"""4-way rotation prediction: rotate each image by k x 90 degrees, classify k from the bottleneck.

One random rotation per image (one forward per image, the same cost as ours); the four
rotations are exact pixel permutations (``rot90``), so no interpolation hints at the angle.
Needs square grids: a 90-degree turn of a non-square image changes its shape.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anatplane_dist.model import ModelConfig
from anatplane_dist.objectives.base import register_objective
from anatplane_dist.objectives.config import LossConfig, ObjectiveConfig, ObjectiveError, RotationConfig
from anatplane_dist.objectives.nets import PooledHeadNet, build_encoder, mlp

__all__ = ["RotationObjective", "rotate_batch"]


def rotate_batch(image: Tensor, k: Tensor) -> Tensor:
    """Each (C, H, W) image turned by ``k[i] * 90`` degrees counter-clockwise (H == W)."""
    if image.shape[-1] != image.shape[-2]:
        raise ObjectiveError(f"objective.name=rotation needs square images, got {tuple(image.shape[-2:])}")
    turns = torch.stack([torch.rot90(image, r, dims=(-2, -1)) for r in range(4)])   # (4, B, C, H, W)
    pick = k.view(1, -1, 1, 1, 1).expand(1, *image.shape)
    return turns.gather(0, pick).squeeze(0)


class RotationObjective:
    name = "rotation"
    transfer_parts: tuple[str, ...] = ("encoder",)
    validation_names: tuple[str, ...] = ("val/loss", "val/rot_acc")

    def __init__(self, cfg: RotationConfig) -> None:
        self.cfg = cfg

    def build_model(self, model_cfg: ModelConfig, num_channels: int) -> nn.Module:
        encoder = build_encoder(model_cfg)
        head = mlp(encoder.out_channels[-1], [int(h) for h in self.cfg.hidden], 4, self.cfg.dropout)
        return PooledHeadNet(encoder, "rotation_head", head, "rotation_logits")

    def inputs(self, batch: dict[str, Tensor], gen: torch.Generator) -> Tensor:
        image = batch["image"]
        k = torch.randint(0, 4, (image.shape[0],), generator=gen, device=gen.device).to(image.device)
        batch["rotation"] = k
        out = rotate_batch(image, k)
        if image.is_contiguous(memory_format=torch.channels_last):
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def loss(self, out: dict[str, Tensor], batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        loss = F.cross_entropy(out["rotation_logits"].float(), batch["rotation"])
        return loss, {"loss_rot": loss.detach()}

    def validation_sums(self, out: dict[str, Tensor], batch: dict[str, Tensor]
                        ) -> dict[str, tuple[Tensor, Tensor]]:
        logits = out["rotation_logits"].float()
        per = F.cross_entropy(logits, batch["rotation"], reduction="none")
        n = torch.tensor(float(per.shape[0]), device=per.device)
        hit = (logits.argmax(dim=1) == batch["rotation"]).float()
        return {"val/loss": (per.sum(), n), "val/rot_acc": (hit.sum(), n)}


@register_objective("rotation")
def _make(cfg: ObjectiveConfig, loss_cfg: LossConfig, spacing: float | None) -> RotationObjective:
    return RotationObjective(cfg.rotation)
