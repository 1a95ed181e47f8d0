"""Pretraining networks: encoders by name, the heatmap decoder, the location head.

``build_model(ModelConfig(name="unet"), num_channels=K)`` returns a :class:`MultitaskNet` with
``.encoder``, ``.decoder`` and ``.location_head``; ``export_parts`` gives their fp32 weights.
New encoders are added with ``@register_encoder("name")``; ``"nnunet"`` is nnU-Net's own 2d
network from a plans file (:mod:`anatplane_dist.model.nnunet`).

Names are handed on lazily, so ``anatplane_dist.model.config`` imports without torch (a
config validates on a login node). The registry lookups come from :mod:`.net`, which imports
the built-in architectures and so registers them before any lookup.
"""
from __future__ import annotations

from anatplane_dist.core.lazy import lazy_exports

_HOME = {"ModelConfig": "config", "MultitaskNet": "net", "build_model": "net", "export_parts": "net",
         "load_parts": "net", "unwrap_model": "net", "PARTS": "net", "available_models": "net",
         "get_builder": "net", "register_encoder": "registry", "UNetDecoder": "heads",
         "LocationHead": "heads", "check_data_grid": "nnunet"}

__all__ = sorted(_HOME)

__getattr__ = lazy_exports(__name__, _HOME)
