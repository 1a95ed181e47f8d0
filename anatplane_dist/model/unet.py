"""The paper's U-Net encoder (and its decoder pairing), registered as ``"unet"``.

Level 0 is two 3x3 conv-norm-ReLU at full resolution; each further level max-pools by 2 and
doubles the channels.  ``width=64, depth=4`` is the paper's 64-128-256-512-1024 network.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from anatplane_dist.model.config import ModelConfig
from anatplane_dist.model.heads import UNetDecoder
from anatplane_dist.model.layers import check_input_size, conv_block
from anatplane_dist.model.registry import register_encoder

__all__ = ["UNetEncoder", "build_unet"]


class UNetEncoder(nn.Module):
    """Returns the features of every level (the skips), bottleneck last."""

    def __init__(self, in_channels: int, channels: list[int], norm: str) -> None:
        super().__init__()
        self.out_channels = list(channels)
        self.reduction = 2 ** (len(channels) - 1)
        self.levels = nn.ModuleList(
            conv_block(in_channels if i == 0 else channels[i - 1], c, 2, norm)
            for i, c in enumerate(channels))

    def forward(self, x: Tensor) -> list[Tensor]:
        check_input_size(x.shape[-2], x.shape[-1], self.reduction)
        feats: list[Tensor] = []
        for i, level in enumerate(self.levels):
            x = level(x if i == 0 else F.max_pool2d(x, 2))
            feats.append(x)
        return feats


@register_encoder("unet")
def build_unet(cfg: ModelConfig, num_channels: int) -> tuple[UNetEncoder, UNetDecoder]:
    chans = cfg.level_channels()
    enc = UNetEncoder(cfg.in_channels, chans, cfg.norm)
    dec = UNetDecoder(chans, num_channels, n_convs=2, norm=cfg.norm if cfg.decoder_norm else None,
                      upsample="transpose")
    return enc, dec
