"""Pretraining networks: encoders by name, the heatmap decoder, the location head.

``build_model(ModelConfig(name="unet"), num_channels=K)`` returns a :class:`MultitaskNet` with
``.encoder``, ``.decoder`` and ``.location_head``; ``export_parts`` gives their fp32 weights.
New encoders are added with ``@register_encoder("name")``; ``"nnunet"`` is nnU-Net's own 2d
network from a plans file (:mod:`anatplane_dist.model.nnunet`).
"""
from anatplane_dist.model import nnunet as _nnunet  # noqa: F401  (registers "nnunet"; nnU-Net itself is imported on use)
from anatplane_dist.model import resnet as _resnet  # noqa: F401  (registers "resnet")
from anatplane_dist.model import unet as _unet  # noqa: F401  (registers "unet")
from anatplane_dist.model.config import ModelConfig
from anatplane_dist.model.heads import LocationHead, UNetDecoder
from anatplane_dist.model.net import PARTS, MultitaskNet, build_model, export_parts, load_parts, unwrap_model
from anatplane_dist.model.nnunet import check_data_grid
from anatplane_dist.model.registry import available_models, get_builder, register_encoder

__all__ = ["ModelConfig", "MultitaskNet", "build_model", "export_parts", "load_parts", "unwrap_model",
           "PARTS", "register_encoder", "available_models", "get_builder", "UNetDecoder", "LocationHead",
           "check_data_grid"]
