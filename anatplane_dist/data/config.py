"""The ``data:`` and ``augment:`` sections of a config: which shards stream, and how they are augmented.

Torch-free, so a config validates on a login node (``submit --dry-run``) without importing
torch or WebDataset; :mod:`anatplane_dist.data.stream` and :mod:`anatplane_dist.data.augment`
consume these dataclasses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from anatplane_dist.data.shardspec import ShardSpec

__all__ = ["DataConfig", "AugmentConfig"]


@dataclass
class DataConfig:
    """What the stream reads and how (the ``data:`` section of the pretraining config).

    ``shards``/``val_shards``: a brace pattern, several joined by ``::`` (with ``weights`` such
    as ``"1::3"``), or a list of patterns or of ``{path, weight}`` mappings. A weight is a
    source's share of the samples drawn; unweighted sources are sampled in proportion to their
    size. ``samples_per_epoch`` defaults to the train shards' total from ``sizes.json``.
    ``batch_size`` is the micro batch per rank.
    """

    shards: ShardSpec = ""
    weights: str | list[float] | None = None
    val_shards: ShardSpec | None = None
    samples_per_epoch: int | None = None
    batch_size: int = 16
    val_batch_size: int | None = None
    num_workers: int = 2
    val_num_workers: int | None = None
    shuffle_buffer: int = 1000
    shuffle_initial: int = 100
    seed: int = 0
    resampled: bool = True
    pin_memory: bool = False
    prefetch_factor: int = 2
    #: shard check at start: ``size`` (every shard's size and its manifest listing: one stat
    #: each) or ``sha256`` (also hash every shard, as ``anatplane shard --verify`` does)
    verify: Literal["size", "sha256"] = "size"

    def __post_init__(self) -> None:
        for name in ("batch_size", "prefetch_factor"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_workers", "shuffle_buffer", "shuffle_initial", "seed"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"data.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("samples_per_epoch", "val_batch_size", "val_num_workers"):
            value = getattr(self, name)
            if value is not None and int(value) < (0 if name == "val_num_workers" else 1):
                raise ValueError(f"data.{name} must be positive, got {value}")


@dataclass
class AugmentConfig:
    """Ranges of the random augmentations; each is applied to a sample with probability ``p``.

    Attributes:
        p: per-sample, per-augmentation probability (the affine counts as one augmentation).
        rotation_deg: rotation angle drawn uniformly in ``[-rotation_deg, rotation_deg]``.
        scale: ``[min, max]`` isotropic zoom, drawn log-uniformly (1 = none).
        translate: shift as a fraction of the grid size, uniform in ``[-t, t]`` per axis.
        flip: random horizontal flip (off by default: it mirrors anatomy, a left heart would
            become a right one).
        gamma: ``[min, max]`` gamma exponent, log-uniform (1 = none).
        noise_std: standard deviation of additive Gaussian noise, in image units (z-scores).
        bias_field: strength of a smooth multiplicative field ``exp(s * g)``, ``g`` a bilinearly
            upsampled 4x4 standard normal grid (0 = none).
        min_visible_px: a transformed line with a shorter visible part becomes invalid.
    """

    p: float = 0.8
    rotation_deg: float = 15.0
    scale: list[float] = field(default_factory=lambda: [0.9, 1.1])
    translate: float = 0.05
    flip: bool = False
    gamma: list[float] = field(default_factory=lambda: [0.7, 1.5])
    noise_std: float = 0.05
    bias_field: float = 0.2
    min_visible_px: float = 2.0

    def __post_init__(self) -> None:
        self.scale = [float(v) for v in self.scale]
        self.gamma = [float(v) for v in self.gamma]
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field for an impossible range."""
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"augment.p must be in [0, 1], got {self.p}")
        for name in ("scale", "gamma"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1] or not all(map(math.isfinite, lo_hi)):
                raise ValueError(f"augment.{name} must be [min, max] with 0 < min <= max, got {lo_hi}")
        for name in ("rotation_deg", "translate", "noise_std", "bias_field", "min_visible_px"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"augment.{name} must be a finite number >= 0, got {v}")
        if self.translate >= 1:
            raise ValueError(f"augment.translate is a fraction of the grid size, < 1; got {self.translate}")

    @property
    def geometric(self) -> bool:
        """Whether any affine can differ from the identity."""
        return self.p > 0 and (self.rotation_deg > 0 or self.scale != [1.0, 1.0]
                               or self.translate > 0 or self.flip)

    @property
    def intensity(self) -> bool:
        """Whether any intensity change can happen."""
        return self.p > 0 and (self.gamma != [1.0, 1.0] or self.noise_std > 0 or self.bias_field > 0)


# -- random draws ---------------------------------------------------------------------------
