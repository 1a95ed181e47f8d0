"""`ModelConfig`: the one description of a pretraining network.

It is a plain dataclass of numbers, strings and lists so it round-trips through YAML
(``dataclasses.asdict`` / ``ModelConfig(**d)``) and can be stored as text inside weight files
(loadable with ``torch.load(weights_only=True)``): a checkpoint then says exactly which network
its tensors belong to.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import yaml

from anatplane_dist.core.mapping import from_dict
from anatplane_dist.model.plans import PlansError, read_plans

__all__ = ["ModelConfig"]

_NORMS = ("batch", "group")
_POOLS = ("max", "avg")


@dataclass
class ModelConfig:
    """Architecture of the multitask network.

    Attributes:
        name: registered architecture (``"unet"``, ``"resnet"``, or one added with
            :func:`anatplane_dist.model.register_encoder`).
        width: channels of the first (full-resolution) level; level ``i`` has
            ``width * 2**i`` channels, capped at ``max_width``.  The paper's U-Net is
            ``width=64, depth=4`` (64 -> 1024).
        depth: number of 2x downsamplings; inputs must be divisible by ``2**depth``.
        norm: ``"batch"`` or ``"group"`` (GroupNorm is batch-size independent, useful with
            micro-batches of 1-2 per device).
        in_channels: image channels (1 for MRI).
        max_width: cap on the channels of any level (0: no cap).
        blocks_per_stage: ResNet only, BasicBlocks per downsampling stage (2 = ResNet-18-like).
        decoder_norm: normalise the decoder convolutions (the paper's U-Net decoder has none).
        loc_hidden: hidden sizes of the location MLP (paper: pooled 1024 -> 128 -> 1).
        loc_pool: pooling of the bottleneck for the location head (paper: global ``"max"``).
        loc_dropout: dropout after each hidden layer of the location MLP (paper: 0.5).
        orientation_head: build the heatmap decoder (False for location-only pretraining).
        location_head: build the location MLP (False for orientation-only pretraining).
            A disabled head has no parameters, so DDP needs no ``find_unused_parameters``.
        plans: ``name: nnunet`` only - an nnU-Net ``nnUNetPlans.json``; its ``2d``
            configuration is the network (``width``/``depth``/``norm`` do not apply).
        nnunet: the plans' 2d architecture, patch size and spacing, copied from ``plans`` when
            the config is made (:func:`anatplane_dist.model.plans.read_plans`), so a weights
            file rebuilds its network without the plans file.
    """

    name: str = "unet"
    width: int = 64
    depth: int = 4
    norm: str = "batch"
    in_channels: int = 1
    max_width: int = 0
    blocks_per_stage: int = 2
    decoder_norm: bool = False
    loc_hidden: list[int] = field(default_factory=lambda: [128])
    loc_pool: str = "max"
    loc_dropout: float = 0.5
    orientation_head: bool = True
    location_head: bool = True
    plans: str = ""
    nnunet: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.loc_hidden = [int(h) for h in self.loc_hidden]
        if self.name == "nnunet" and self.plans and self.plans != self.nnunet.get("plans_file"):
            self.nnunet = read_plans(self.plans, self.in_channels)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field for any value no network can be built from."""
        if self.width < 1:
            raise ValueError(f"model.width must be >= 1, got {self.width}")
        if self.depth < 1:
            raise ValueError(f"model.depth must be >= 1, got {self.depth}")
        if self.norm not in _NORMS:
            raise ValueError(f"model.norm must be one of {_NORMS}, got {self.norm!r}")
        if self.in_channels < 1:
            raise ValueError(f"model.in_channels must be >= 1, got {self.in_channels}")
        if self.max_width < 0:
            raise ValueError(f"model.max_width must be >= 0 (0 = no cap), got {self.max_width}")
        if self.blocks_per_stage < 1:
            raise ValueError(f"model.blocks_per_stage must be >= 1, got {self.blocks_per_stage}")
        if any(h < 1 for h in self.loc_hidden):
            raise ValueError(f"model.loc_hidden sizes must be >= 1, got {self.loc_hidden}")
        if self.loc_pool not in _POOLS:
            raise ValueError(f"model.loc_pool must be one of {_POOLS}, got {self.loc_pool!r}")
        if not 0.0 <= self.loc_dropout < 1.0:
            raise ValueError(f"model.loc_dropout must be in [0, 1), got {self.loc_dropout}")
        if not (self.orientation_head or self.location_head):
            raise ValueError("model: at least one of orientation_head / location_head must be on")
        if self.name == "nnunet" and self.nnunet:  # no plans yet: refused when the network is built
            if int(self.nnunet.get("input_channels", self.in_channels)) != self.in_channels:
                raise PlansError(f"model.plans: the nnU-Net dataset has {self.nnunet['input_channels']} input "
                                 f"channel(s), model.in_channels={self.in_channels}")

    # -- derived -----------------------------------------------------------------------
    def level_channels(self) -> list[int]:
        """Channels of levels 0..depth (full resolution first, bottleneck last)."""
        chans = [self.width * 2 ** i for i in range(self.depth + 1)]
        return [min(c, self.max_width) for c in chans] if self.max_width else chans

    @property
    def reduction(self) -> int:
        """Total downsampling factor; input H and W must be multiples of it."""
        return 2 ** self.depth

    # -- text form -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """YAML text (what fp32 weight files store under ``model_config``)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        return from_dict(cls, d, "model", kind="model config key")

    @classmethod
    def from_yaml(cls, text: str) -> "ModelConfig":
        d = yaml.safe_load(text) or {}
        if not isinstance(d, dict):
            raise ValueError(f"model config YAML must be a mapping, got {type(d).__name__}")
        return cls.from_dict(d)
