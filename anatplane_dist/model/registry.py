"""Architectures by name.

An architecture is a builder ``(cfg, num_channels) -> (encoder, decoder)``; the location head is
shared by all of them (it only needs the bottleneck channels).  Encoders follow one small
protocol so decoders, heads and fine-tuning code never look inside them:

* ``encoder(x) -> list[Tensor]``: features of levels 0..depth (full resolution first,
  bottleneck last); levels are the skips a U-Net decoder consumes;
* ``encoder.out_channels: list[int]`` (channels of those levels);
* ``encoder.reduction: int`` (input H and W must be multiples of it).

The decoder maps that list to ``(B, K, H, W)`` heatmaps and keeps its last 1x1 conv as
``decoder.head`` so a segmentation network can swap it for a new one.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from anatplane_dist.model.config import ModelConfig

__all__ = ["Builder", "register_encoder", "available_models", "get_builder"]

Builder = Callable[[ModelConfig, int], "tuple[nn.Module, nn.Module]"]
_REGISTRY: dict[str, Builder] = {}


def register_encoder(name: str, *, overwrite: bool = False) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(cfg, num_channels) -> (encoder, decoder)`` as ``name``.

    Raises:
        ValueError: ``name`` is taken (pass ``overwrite=True`` to replace it on purpose).
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"architecture name must be a non-empty string, got {name!r}")

    def deco(builder: Builder) -> Builder:
        if name in _REGISTRY and not overwrite and _REGISTRY[name] is not builder:
            raise ValueError(f"architecture {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder
    return deco


def available_models() -> list[str]:
    """Registered architecture names, sorted."""
    return sorted(_REGISTRY)


def get_builder(name: str) -> Builder:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available_models())}") from None
