"""Task heads on top of an encoder's level features.

* :class:`UNetDecoder` - the orientation head: upsample, concatenate the skip, convolve, level
  by level, then a linear 1x1 conv to ``K`` heatmap channels (``.head``, the one layer a
  segmentation network replaces when it re-uses the pretrained decoder).
* :class:`LocationHead` - the location head: global pooling of the bottleneck and an MLP to one
  scalar per image (paper: global max pool, FC 1024 -> 128 -> 1, dropout 0.5, no sigmoid).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from anatplane_dist.model.layers import conv_block

__all__ = ["UNetDecoder", "LocationHead"]


class _UpLevel(nn.Module):
    """One decoder level: x2 upsampling of the deeper features, concat with the skip, convs."""

    def __init__(self, cin: int, cskip: int, cout: int, n_convs: int, norm: str | None,
                 upsample: str) -> None:
        super().__init__()
        if upsample == "transpose":
            self.up: nn.Module = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        elif upsample == "bilinear":
            self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                    nn.Conv2d(cin, cout, 1))
        else:
            raise ValueError(f"unknown upsample {upsample!r} (use 'transpose' or 'bilinear')")
        self.convs = conv_block(cout + cskip, cout, n_convs, norm)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.convs(torch.cat([self.up(x), skip], dim=1))


class UNetDecoder(nn.Module):
    """U-Net decoder from level features (full resolution first, bottleneck last) to heatmaps.

    Args:
        channels: channels of the encoder levels 0..depth (``encoder.out_channels``).
        num_channels: ``K`` output heatmaps (one per reference view).
        n_convs: convolutions per level (paper U-Net: 2; the light ResNet decoder: 1).
        norm: ``None`` (the paper's decoder), ``"batch"`` or ``"group"``.
        upsample: ``"transpose"`` (2x2 stride-2 transposed conv, the paper's) or
            ``"bilinear"`` (+1x1 conv; cheaper, no checkerboard).
    """

    def __init__(self, channels: list[int], num_channels: int, *, n_convs: int = 2,
                 norm: str | None = None, upsample: str = "transpose") -> None:
        super().__init__()
        if num_channels < 1:
            raise ValueError(f"num_channels must be >= 1, got {num_channels}")
        if len(channels) < 2:
            raise ValueError(f"a U-Net decoder needs >= 2 levels, got channels {channels}")
        # deepest level first
        self.levels = nn.ModuleList(
            _UpLevel(channels[i + 1], channels[i], channels[i], n_convs, norm, upsample)
            for i in reversed(range(len(channels) - 1)))
        self.head = nn.Conv2d(channels[0], num_channels, 1)
        self.num_channels = num_channels

    def init_output(self, std: float = 1e-3) -> None:
        """Near-zero heatmaps at start: targets are mostly 0, and a Kaiming-scaled linear
        output starts with an MSE 10-25x the target energy (measured on the tiny networks),
        large early gradients that large-batch optimisers amplify."""
        nn.init.normal_(self.head.weight, std=std)
        nn.init.zeros_(self.head.bias)

    def features(self, feats: list[Tensor]) -> Tensor:
        """Full-resolution decoder features before ``head`` (what a segmentation head re-uses)."""
        x = feats[-1]
        for level, skip in zip(self.levels, reversed(feats[:-1])):
            x = level(x, skip)
        return x

    def forward(self, feats: list[Tensor]) -> Tensor:
        return self.head(self.features(feats))


class LocationHead(nn.Module):
    """Global pool of the bottleneck -> MLP -> one relative location per image, shape (B,)."""

    def __init__(self, in_channels: int, hidden: list[int], *, pool: str = "max",
                 dropout: float = 0.5) -> None:
        super().__init__()
        if pool not in ("max", "avg"):
            raise ValueError(f"unknown pool {pool!r} (use 'max' or 'avg')")
        self.pool = pool
        layers: list[nn.Module] = []
        c = in_channels
        for h in hidden:
            layers += [nn.Linear(c, h), nn.Dropout(dropout), nn.ReLU(inplace=True)]
            c = h
        layers.append(nn.Linear(c, 1))
        self.mlp = nn.Sequential(*layers)

    def init_output(self, std: float = 1e-3, bias: float = 0.5) -> None:
        """Start at the middle of the target range [0, 1] (both location rules map there),
        with a near-zero slope, instead of a random scalar of unit scale."""
        last = self.mlp[-1]
        nn.init.normal_(last.weight, std=std)
        nn.init.constant_(last.bias, bias)

    def forward(self, bottleneck: Tensor) -> Tensor:
        # amax/mean over H, W: no view(), so channels_last inputs need no copy
        pooled = bottleneck.amax(dim=(2, 3)) if self.pool == "max" else bottleneck.mean(dim=(2, 3))
        return self.mlp(pooled).squeeze(-1)
