"""SimCLR: two random views of each image, a projection head, NT-Xent over the global batch.

``inputs`` stacks the views as ``[view 1 of every image; view 2 of every image]`` (2B images),
so the positive of row ``i`` is row ``(i + B) mod 2B``. The loss normalises the projections,
gathers them from every rank with gradients (:func:`anatplane_dist.core.dist.all_gather_with_grad`) and
takes, for each local anchor, the cross-entropy of its positive among all 2N - 1 other
embeddings of the global batch (N = images over all ranks). Its mean over ranks - what DDP's
gradient averaging optimises - equals the loss of one process on the concatenated batch, and so
do the gradients (tests/objectives/test_simclr_dist.py).

Both views go through the network, so a SimCLR step costs two forward/backward passes per
image; the budget (optimiser steps x global batch of images) is the same as the others'.
Validation uses the local batch only: validation runs no collective.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anatplane_dist.core.dist import all_gather_with_grad
from anatplane_dist.model import ModelConfig
from anatplane_dist.objectives.base import register_objective
from anatplane_dist.objectives.config import LossConfig, ObjectiveConfig, SimCLRConfig
from anatplane_dist.objectives.nets import PooledHeadNet, build_encoder, mlp
from anatplane_dist.objectives.views import random_view

__all__ = ["SimCLRObjective", "nt_xent_logits"]


def nt_xent_logits(z: Tensor, temperature: float, gather: bool) -> tuple[Tensor, Tensor]:
    """Logits (2B, M) of each local anchor against the candidates, and the positives' columns.

    ``z`` is (2B, D), rows ``[view 1; view 2]``. Candidates are this rank's rows, or with
    ``gather`` every rank's (M = 2N); an anchor's own column is set to a large negative number
    (not -inf: a masked entry must not become NaN in half precision or in the softmax's backward).
    """
    z = F.normalize(z.float(), dim=1)
    cand, offset = all_gather_with_grad(z) if gather else (z, 0)
    two_b = z.shape[0]
    rows = torch.arange(two_b, device=z.device)
    self_col = offset + rows
    pos_col = offset + (rows + two_b // 2) % two_b
    logits = z @ cand.t() / temperature
    own = torch.arange(cand.shape[0], device=z.device)[None, :] == self_col[:, None]
    return logits.masked_fill(own, -1e9), pos_col


class SimCLRObjective:
    name = "simclr"
    transfer_parts: tuple[str, ...] = ("encoder",)
    validation_names: tuple[str, ...] = ("val/loss", "val/top1")

    def __init__(self, cfg: SimCLRConfig) -> None:
        self.cfg = cfg

    def build_model(self, model_cfg: ModelConfig, num_channels: int) -> nn.Module:
        encoder = build_encoder(model_cfg)
        c = encoder.out_channels[-1]
        hidden = self.cfg.projection_hidden or c
        return PooledHeadNet(encoder, "projection", mlp(c, [hidden], self.cfg.projection_dim), "projection")

    def inputs(self, batch: dict[str, Tensor], gen: torch.Generator) -> Tensor:
        image = batch["image"]
        views = torch.cat([random_view(image, self.cfg, gen), random_view(image, self.cfg, gen)])
        if image.is_contiguous(memory_format=torch.channels_last):
            views = views.contiguous(memory_format=torch.channels_last)
        return views

    def loss(self, out: dict[str, Tensor], batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        logits, pos = nt_xent_logits(out["projection"], self.cfg.temperature, self.cfg.gather)
        loss = F.cross_entropy(logits, pos)
        return loss, {"loss_nt_xent": loss.detach()}

    def validation_sums(self, out: dict[str, Tensor], batch: dict[str, Tensor]
                        ) -> dict[str, tuple[Tensor, Tensor]]:
        logits, pos = nt_xent_logits(out["projection"], self.cfg.temperature, gather=False)
        # per image (the mean of its two anchors), so val/loss counts images like every objective's
        per = F.cross_entropy(logits, pos, reduction="none").view(2, -1).mean(0)
        hit = (logits.argmax(dim=1) == pos).float().view(2, -1).mean(0)
        n = torch.tensor(float(per.shape[0]), device=per.device)
        return {"val/loss": (per.sum(), n), "val/top1": (hit.sum(), n)}

@register_objective("simclr")
def _make(cfg: ObjectiveConfig, loss_cfg: LossConfig, spacing: float | None) -> SimCLRObjective:
    return SimCLRObjective(cfg.simclr)
