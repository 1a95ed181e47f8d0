"""Pretraining networks: encoders by name, the heatmap decoder, the location head.

``build_model(ModelConfig(name="unet"), num_channels=K)`` returns a :class:`MultitaskNet` with
``.encoder``, ``.decoder`` and ``.location_head``; ``export_parts`` gives their fp32 weights.
New encoders are added with ``@register_encoder("name")``; ``"nnunet"`` is nnU-Net's own 2d
network from a plans file (:mod:`anatplane_dist.model.nnunet`).
"""
from .config import ModelConfig
from .heads import LocationHead, UNetDecoder
from .net import PARTS, MultitaskNet, build_model, export_parts, load_parts, unwrap_model
from .registry import available_models, get_builder, register_encoder
from . import resnet as _resnet  # noqa: F401  (registers "resnet")
from . import unet as _unet  # noqa: F401  (registers "unet")
from . import nnunet as _nnunet  # noqa: F401  (registers "nnunet"; nnU-Net itself is imported on use)
from .nnunet import check_data_grid

__all__ = ["ModelConfig", "MultitaskNet", "build_model", "export_parts", "load_parts", "unwrap_model",
           "PARTS", "register_encoder", "available_models", "get_builder", "UNetDecoder", "LocationHead",
           "check_data_grid"]
