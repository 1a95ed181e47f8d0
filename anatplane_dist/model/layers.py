"""Convolution building blocks shared by the encoders and the decoder."""
from __future__ import annotations

import math

from torch import nn

__all__ = ["make_norm", "conv_block", "init_weights", "check_input_size"]


def make_norm(kind: str, channels: int) -> nn.Module:
    """BatchNorm, or GroupNorm with up to 32 groups that divide ``channels``."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(32, channels), channels)
    raise ValueError(f"unknown norm {kind!r} (use 'batch' or 'group')")


def conv_block(cin: int, cout: int, n_convs: int, norm: str | None) -> nn.Sequential:
    """``n_convs`` x (Conv3x3 -> [norm] -> ReLU); no bias before a norm (it would be cancelled)."""
    layers: list[nn.Module] = []
    for i in range(n_convs):
        layers.append(nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=norm is None))
        if norm is not None:
            layers.append(make_norm(norm, cout))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan_in, ReLU) convs/linears, zero biases, unit norms (as the paper's code)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def check_input_size(height: int, width: int, reduction: int) -> None:
    """Fail early, with the fix, when skips would not line up after ``log2(reduction)`` poolings.

    Shapes are static Python ints under ``torch.compile`` (or guarded symbols with dynamic
    shapes), so this check costs nothing on the device and causes no graph break.
    """
    if height % reduction or width % reduction:
        raise ValueError(
            f"input size {height}x{width} is not divisible by {reduction} (= 2**depth); "
            f"use a grid size that is a multiple of {reduction} or a smaller model depth")
