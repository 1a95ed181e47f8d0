"""nnU-Net's own 2d network as a pretraining backbone: ``model.name: nnunet`` + ``model.plans``.

Users fine-tune and compare with nnU-Net, whose ``-pretrained_weights`` takes every tensor of
*its* network but the ``seg_layers``.  So the encoder and decoder here are not a look-alike: they
are built by nnU-Net itself (``nnunetv2.utilities.get_network_from_plans``, the function its
trainer uses, which builds from ``dynamic-network-architectures``) from the ``2d`` configuration
of an ``nnUNetPlans.json``.  Our heads attach where the method needs them:

* orientation heatmaps: the decoder's output side - nnU-Net's last ``seg_layer`` built with
  ``K`` outputs, kept as ``decoder.head`` (the layer fine-tuning swaps, and one nnU-Net never
  loads);
* location: :class:`~anatplane_dist.model.heads.LocationHead` on the bottleneck (the
  encoder's last stage), added by :func:`anatplane_dist.model.build_model` as for every backbone.

The architecture section of the plans is copied into the config (``ModelConfig.nnunet``) when
the config is made, so weight files say which network they belong to without the plans file.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from anatplane_dist.model.heads import UNetDecoder
from anatplane_dist.model.plans import CONFIGURATION, PlansError, read_plans
from anatplane_dist.model.registry import register_encoder

__all__ = ["PlansError", "CONFIGURATION", "read_plans", "build_nnunet_network", "NnUNetDecoder",
           "build_nnunet", "check_data_grid", "nnunet_state_dict"]

_INSTALL = "pip install 'anatplane_dist[nnunet]'"


def build_nnunet_network(arch: dict[str, Any], input_channels: int, num_classes: int) -> nn.Module:
    """nnU-Net's network for ``arch`` (:func:`read_plans`), by nnU-Net's own construction."""
    try:
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    except ImportError as exc:
        raise PlansError(f"model.name=nnunet needs nnU-Net: {_INSTALL} ({exc})") from exc
    return get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["arch_kwargs_requires_import"],
                                  input_channels, num_classes, allow_init=True, deep_supervision=False)


def _check_patch(encoder: nn.Module, args: tuple[Tensor, ...]) -> None:
    """Forward pre-hook: inputs must have the plans' 2d patch size (the size nnU-Net will
    fine-tune at; a network pretrained at another size sees other receptive-field statistics)."""
    h, w = args[0].shape[-2:]
    if [int(h), int(w)] != list(encoder.patch_size):
        raise PlansError(f"input {int(h)}x{int(w)} px != the nnU-Net plans' 2d patch size "
                         f"{encoder.patch_size[0]}x{encoder.patch_size[1]}: make the shards with "
                         f"--grid {encoder.patch_size[0]} (non-square patches are not supported)")


class NnUNetDecoder(nn.Module):
    """nnU-Net's decoder stages and up-convolutions (the very modules nnU-Net built, so the
    tensor names are nnU-Net's ``decoder.stages.*`` / ``decoder.transpconvs.*``), with its
    full-resolution seg layer as ``head`` (``K`` heatmaps in pretraining).

    nnU-Net's decoder also holds a second reference to the encoder (its state dict lists every
    encoder tensor again as ``decoder.encoder.*``) and one seg layer per stage for deep
    supervision; neither is kept here, so every tensor is in exactly one part.  The nnU-Net
    export (:func:`nnunet_state_dict`) writes the encoder copy back.
    """

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        missing = [a for a in ("stages", "transpconvs", "seg_layers") if not hasattr(decoder, a)]
        if missing:
            raise PlansError(f"nnU-Net decoder {type(decoder).__name__} has no {missing}: only U-Net "
                             f"decoders (stages + transpconvs + seg_layers) can carry our heads")
        self.stages = decoder.stages
        self.transpconvs = decoder.transpconvs
        self.head = decoder.seg_layers[-1]
        self.num_channels = int(self.head.out_channels)

    init_output = UNetDecoder.init_output  # near-zero heatmaps at start (same reason as ours)

    def features(self, skips: list[Tensor]) -> Tensor:
        """nnU-Net's decoder pass without the seg layer (full-resolution features)."""
        x = skips[-1]
        for s, (up, stage) in enumerate(zip(self.transpconvs, self.stages)):
            x = stage(torch.cat((up(x), skips[-(s + 2)]), 1))
        return x

    def forward(self, skips: list[Tensor]) -> Tensor:
        return self.head(self.features(skips))


@register_encoder("nnunet")
def build_nnunet(cfg: Any, num_channels: int) -> tuple[nn.Module, NnUNetDecoder]:
    """``(encoder, decoder)`` of the plans' 2d network with ``num_channels`` heatmap outputs."""
    arch = cfg.nnunet
    if not arch:
        raise PlansError("model.name=nnunet needs model.plans=<nnUNet_preprocessed/DatasetXXX/nnUNetPlans.json>")
    net = build_nnunet_network(arch, cfg.in_channels, num_channels)
    enc = net.encoder
    # the encoder protocol of anatplane_dist.model.registry, on nnU-Net's own module
    enc.out_channels = [int(c) for c in enc.output_channels]
    enc.reduction = math.lcm(*[math.prod(int(s) for s in dim) for dim in zip(*enc.strides)])
    enc.patch_size = list(arch["patch_size"])
    enc.register_forward_pre_hook(_check_patch)
    return enc, NnUNetDecoder(net.decoder)


def check_data_grid(cfg: Any, grid: int, spacing_mm: float, *, rel_tol: float = 1e-3) -> None:
    """Refuse shards whose grid does not match the plans' 2d patch size and spacing (one line).

    A no-op for the other backbones (any grid divisible by their reduction works).
    """
    if cfg.name != "nnunet":
        return
    patch, spacing = cfg.nnunet["patch_size"], cfg.nnunet["spacing"]
    if list(patch) != [grid, grid]:
        raise PlansError(f"shards are {grid}x{grid} px, the nnU-Net plans' 2d patch size is "
                         f"{patch[0]}x{patch[1]}: make the shards with --grid {patch[0]}"
                         + ("" if patch[0] == patch[1] else " (non-square nnU-Net patches are not supported)"))
    if not all(math.isclose(s, spacing_mm, rel_tol=rel_tol) for s in spacing):
        raise PlansError(f"shards have {spacing_mm:g} mm pixels, the nnU-Net plans' 2d spacing is "
                         f"{' x '.join(f'{s:g}' for s in spacing)} mm: make the shards with --spacing {spacing[0]:g}")


def nnunet_state_dict(encoder: dict[str, Tensor], decoder: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our encoder + decoder parts under nnU-Net's key names: ``encoder.*``, the encoder again
    as ``decoder.encoder.*`` (nnU-Net's decoder holds it), ``decoder.stages.*`` and
    ``decoder.transpconvs.*``; no seg layer (our ``head``), which nnU-Net never loads."""
    out = {f"encoder.{k}": v for k, v in encoder.items()}
    out.update({f"decoder.encoder.{k}": v for k, v in encoder.items()})
    out.update({f"decoder.{k}": v for k, v in decoder.items() if not k.startswith("head.")})
    return out
