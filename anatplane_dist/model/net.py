"""The multitask network: one encoder, a heatmap decoder and a location head.

The three parts are separate attributes so each can be exported, published and re-used on its
own (fine-tuning builds a segmentation network from ``encoder`` (+ ``decoder`` with a new
``decoder.head``)).  ``forward`` is straight-line tensor code - no Python loop over data, no
host sync, no data-dependent shape - so it runs under ``torch.compile(fullgraph=True)``,
``channels_last`` and bf16 autocast unchanged.
"""
from __future__ import annotations

from typing import Mapping

from torch import Tensor, nn

from anatplane_dist.core import weights
from anatplane_dist.model import nnunet as _nnunet  # noqa: F401  (registers "nnunet"; nnU-Net is imported on use)
from anatplane_dist.model import resnet as _resnet  # noqa: F401  (registers "resnet")
from anatplane_dist.model import unet as _unet  # noqa: F401  (registers "unet")
from anatplane_dist.model.config import ModelConfig
from anatplane_dist.model.heads import LocationHead
from anatplane_dist.model.layers import init_weights
from anatplane_dist.model.registry import available_models, get_builder

__all__ = ["MultitaskNet", "build_model", "export_parts", "load_parts", "unwrap_model", "PARTS",
           "available_models", "get_builder"]  # the lookups, with the built-ins registered

#: The parts every network has (when enabled), in their listed order; a network may have more
#: (any top-level submodule is a part).  Also the weights file names: ``<part>.safetensors``.
PARTS = weights.CORE_PARTS


class MultitaskNet(nn.Module):
    """``forward(x) -> {"heatmaps": (B, K, H, W), "location": (B,)}``.

    A head that is switched off in the config is ``None`` and its key is absent from the
    output (single-task pretraining; the loss then needs that term's weight at 0).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module | None,
                 location_head: nn.Module | None, config: ModelConfig, num_channels: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.location_head = location_head
        self.config = config
        self.num_channels = num_channels

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        feats = self.encoder(x)
        out: dict[str, Tensor] = {}
        if self.decoder is not None:
            out["heatmaps"] = self.decoder(feats)
        if self.location_head is not None:
            out["location"] = self.location_head(feats[-1])
        return out


def build_model(cfg: ModelConfig, num_channels: int) -> MultitaskNet:
    """Build the registered architecture ``cfg.name`` with ``num_channels`` (K) heatmaps.

    Raises:
        ValueError: unknown architecture name or an invalid config value.
    """
    cfg.validate()
    if num_channels < 1:
        raise ValueError(f"num_channels (K reference views) must be >= 1, got {num_channels}")
    encoder, decoder = get_builder(cfg.name)(cfg, num_channels)
    loc = (LocationHead(encoder.out_channels[-1], cfg.loc_hidden, pool=cfg.loc_pool,
                        dropout=cfg.loc_dropout) if cfg.location_head else None)
    net = MultitaskNet(encoder, decoder if cfg.orientation_head else None, loc, cfg, num_channels)
    init_weights(net)
    for head in (net.decoder, net.location_head):
        if head is not None and hasattr(head, "init_output"):
            head.init_output()
    return net


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare network inside DDP / DeepSpeed engine (``.module``) and ``torch.compile``
    (``._orig_mod``) wrappers, in any nesting."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        else:
            return model


def export_parts(model: nn.Module) -> dict[str, dict[str, Tensor]]:
    """fp32 CPU copies of the state dict of each present part (every top-level submodule:
    ``encoder``, ``decoder``, ``location_head``, then any head an objective adds), with
    part-local names, independent of wrappers and of the training precision; what
    :func:`anatplane_dist.core.weights.save_part` writes."""
    return weights.split_parts(weights.fp32_cpu(unwrap_model(model).state_dict()))


def load_parts(model: nn.Module, parts: Mapping[str, Mapping[str, Tensor]], *,
               strict: bool = True) -> list[str]:
    """Load exported parts into ``model``; returns the names loaded.

    Raises:
        ValueError: a part the model does not have (unknown, or disabled in its config).
        RuntimeError: (``strict``) missing or unexpected tensors, from ``load_state_dict``.
    """
    net = unwrap_model(model)
    present = dict(net.named_children())
    loaded = []
    for name, sd in parts.items():
        if name not in present:
            known = weights.order_parts([*present, *PARTS])
            raise ValueError(f"model has no part {name!r} (disabled in its config, or unknown); "
                             f"parts are {known}")
        present[name].load_state_dict(dict(sd), strict=strict)
        loaded.append(name)
    return loaded
