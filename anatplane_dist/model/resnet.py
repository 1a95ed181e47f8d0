"""A ResNet-style encoder (BasicBlocks, no torchvision) with a light decoder, as ``"resnet"``.

Level 0 is a single 3x3 conv stem at full resolution (a cheap skip for the decoder); each of
the ``depth`` stages halves the resolution with a stride-2 BasicBlock followed by
``blocks_per_stage - 1`` more (2 per stage = ResNet-18's block count).  Residual stages make
deep or wide encoders trainable without the decoder's help; the decoder is one conv per level
with bilinear upsampling, so most capacity sits in the (transferable) encoder.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from anatplane_dist.model.config import ModelConfig
from anatplane_dist.model.heads import UNetDecoder
from anatplane_dist.model.layers import check_input_size, make_norm
from anatplane_dist.model.registry import register_encoder

__all__ = ["BasicBlock", "ResNetEncoder", "build_resnet"]


class BasicBlock(nn.Module):
    """conv3x3(stride) -> norm -> ReLU -> conv3x3 -> norm, + (projected) identity, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = make_norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = make_norm(norm, cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), make_norm(norm, cout))

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.norm1(self.conv1(x)), inplace=True)
        return F.relu(self.norm2(self.conv2(y)) + self.shortcut(x), inplace=True)


class ResNetEncoder(nn.Module):
    """Returns the stem and every stage's output (the skips), bottleneck last."""

    def __init__(self, in_channels: int, channels: list[int], blocks_per_stage: int, norm: str) -> None:
        super().__init__()
        self.out_channels = list(channels)
        self.reduction = 2 ** (len(channels) - 1)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels[0], 3, padding=1, bias=False),
                                  make_norm(norm, channels[0]), nn.ReLU(inplace=True))
        self.stages = nn.ModuleList(
            nn.Sequential(BasicBlock(channels[i - 1], channels[i], 2, norm),
                          *(BasicBlock(channels[i], channels[i], 1, norm) for _ in range(blocks_per_stage - 1)))
            for i in range(1, len(channels)))

    def forward(self, x: Tensor) -> list[Tensor]:
        check_input_size(x.shape[-2], x.shape[-1], self.reduction)
        x = self.stem(x)
        feats = [x]
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


@register_encoder("resnet")
def build_resnet(cfg: ModelConfig, num_channels: int) -> tuple[ResNetEncoder, UNetDecoder]:
    chans = cfg.level_channels()
    enc = ResNetEncoder(cfg.in_channels, chans, cfg.blocks_per_stage, cfg.norm)
    dec = UNetDecoder(chans, num_channels, n_convs=1, norm=cfg.norm if cfg.decoder_norm else None,
                      upsample="bilinear")
    return enc, dec
