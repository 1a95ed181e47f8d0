"""The ``objective:`` and ``loss:`` sections of a config: which pretext is trained, and how.

Torch-free, so a config validates on a login node (``submit --dry-run``) without importing
the objectives themselves; :mod:`anatplane_dist.objectives.base` and the objectives read
these dataclasses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from anatplane_dist.core.errors import AnatplaneError

__all__ = ["ObjectiveConfig", "SimCLRConfig", "GenesisConfig", "RotationConfig", "LossConfig",
           "ObjectiveError", "ObjectiveName"]

ObjectiveName = Literal["multitask", "orientation", "location", "simclr", "genesis", "rotation"]


class ObjectiveError(AnatplaneError, ValueError):
    """An objective name or hyper-parameter no run can use (a ValueError too, like the other
    config sections' validation errors, so config loading treats it the same way)."""


def _check(ok: bool, key: str, value: object, rule: str) -> None:
    if not ok:
        raise ObjectiveError(f"objective.{key} must be {rule}, got {value!r}")


@dataclass
class SimCLRConfig:
    """SimCLR (Chen et al. 2020, arXiv:2002.05709) on grayscale slices; see docs/training.md.

    Attributes:
        temperature: NT-Xent temperature tau (paper: 0.1 for ImageNet; 0.1 also in Chaitanya
            et al. 2020's contrastive pretraining for MRI segmentation).
        projection_hidden: hidden width of the projection MLP; 0 = the bottleneck channels (paper:
            the 2048-d ResNet-50 feature -> 2048 -> 128).
        projection_dim: output size of the projection (paper: 128).
        crop_scale: [min, max] area fraction of the random resized crop (paper: [0.08, 1]).
        crop_ratio: [min, max] aspect ratio of the crop, log-uniform (paper: [3/4, 4/3]).
        flip: random horizontal flip with probability 0.5 (paper: yes).
        jitter_p: probability of brightness/contrast jitter (paper's colour jitter: 0.8).
        brightness: multiplicative brightness factor in ``[1 - b, 1 + b]`` (paper: 0.8 x strength 0.5).
        contrast: contrast factor in ``[1 - c, 1 + c]`` around the image mean (same source).
        blur_p: probability of Gaussian blur (paper: 0.5).
        blur_sigma: [min, max] blur sigma in pixels (paper: [0.1, 2.0]); kernel ~10% of the side.
        noise_p: probability of additive Gaussian noise (MRI stand-in for the paper's colour drop).
        noise_std: its standard deviation, as a fraction of the image's intensity range.
        gather: use the negatives of every rank (the paper's large-batch setting); False uses
            only this rank's batch (then the result depends on the number of ranks).
    """

    temperature: float = 0.1
    projection_hidden: int = 0
    projection_dim: int = 128
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [3.0 / 4.0, 4.0 / 3.0])
    flip: bool = True
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    blur_p: float = 0.5
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0])
    noise_p: float = 0.5
    noise_std: float = 0.05
    gather: bool = True

    def validate(self) -> None:
        _check(self.temperature > 0, "simclr.temperature", self.temperature, "> 0")
        _check(self.projection_hidden >= 0, "simclr.projection_hidden", self.projection_hidden, ">= 0")
        _check(self.projection_dim >= 1, "simclr.projection_dim", self.projection_dim, ">= 1")
        for key in ("crop_scale", "crop_ratio", "blur_sigma"):
            v = [float(x) for x in getattr(self, key)]
            _check(len(v) == 2 and 0 < v[0] <= v[1], f"simclr.{key}", v, "[min, max] with 0 < min <= max")
        _check(self.crop_scale[1] <= 1.0, "simclr.crop_scale", self.crop_scale, "at most 1 (a fraction)")
        for key in ("jitter_p", "blur_p", "noise_p"):
            _check(0.0 <= getattr(self, key) <= 1.0, f"simclr.{key}", getattr(self, key), "in [0, 1]")
        for key in ("brightness", "contrast"):
            _check(0.0 <= getattr(self, key) < 1.0, f"simclr.{key}", getattr(self, key), "in [0, 1)")
        _check(self.noise_std >= 0, "simclr.noise_std", self.noise_std, ">= 0")


@dataclass
class GenesisConfig:
    """Models Genesis restoration (Zhou et al. 2019, MICCAI, arXiv:1908.06912; MedIA 2021).

    Probabilities are the paper's: each transform is applied to an image independently with
    its probability; a painted image is out-painted with ``outpaint_p``, else in-painted.

    Attributes:
        nonlinear_p: non-linear intensity transform (monotone cubic Bezier curve; paper 0.9).
        local_shuffle_p: local pixel shuffling (paper 0.5).
        local_block: side of the shuffled windows, as a fraction of the image side (paper: up
            to 1/10 of each dimension).
        paint_p: in- or out-painting (paper 0.9).
        outpaint_p: out-painting rather than in-painting, given painting (paper 0.8).
        paint_blocks: windows per painted image (paper: up to 5).
        inpaint_size: [min, max] side of an in-painted window, fraction of the image side
            (paper: 1/6 to 1/3).
        outpaint_size: [min, max] side of a window kept by out-painting (paper: 3/7 to 4/7).
    """

    nonlinear_p: float = 0.9
    local_shuffle_p: float = 0.5
    local_block: float = 0.1
    paint_p: float = 0.9
    outpaint_p: float = 0.8
    paint_blocks: int = 5
    inpaint_size: list[float] = field(default_factory=lambda: [1.0 / 6.0, 1.0 / 3.0])
    outpaint_size: list[float] = field(default_factory=lambda: [3.0 / 7.0, 4.0 / 7.0])

    def validate(self) -> None:
        for key in ("nonlinear_p", "local_shuffle_p", "paint_p", "outpaint_p"):
            _check(0.0 <= getattr(self, key) <= 1.0, f"genesis.{key}", getattr(self, key), "in [0, 1]")
        _check(0.0 < self.local_block <= 0.5, "genesis.local_block", self.local_block, "in (0, 0.5]")
        _check(self.paint_blocks >= 1, "genesis.paint_blocks", self.paint_blocks, ">= 1")
        for key in ("inpaint_size", "outpaint_size"):
            v = [float(x) for x in getattr(self, key)]
            _check(len(v) == 2 and 0 < v[0] <= v[1] <= 1, f"genesis.{key}", v,
                   "[min, max] fractions with 0 < min <= max <= 1")


@dataclass
class RotationConfig:
    """4-way rotation prediction (Gidaris et al. 2018, ICLR, arXiv:1803.07728).

    Attributes:
        hidden: hidden sizes of the classifier MLP on the pooled bottleneck ([] = linear).
        dropout: dropout after each hidden layer.
    """

    hidden: list[int] = field(default_factory=lambda: [128])
    dropout: float = 0.0

    def validate(self) -> None:
        _check(all(int(h) >= 1 for h in self.hidden), "rotation.hidden", self.hidden, "sizes >= 1")
        _check(0.0 <= self.dropout < 1.0, "rotation.dropout", self.dropout, "in [0, 1)")


@dataclass
class ObjectiveConfig:
    """Which pretraining objective, and the hyper-parameters of each (``objective:`` in YAML).

    ``multitask`` / ``orientation`` / ``location`` are the paper's method and its single-task
    ablations; they take their weights and ridge width from the ``loss:`` section. The others
    are generic self-supervised baselines with their own sub-sections.
    """

    name: ObjectiveName = "multitask"
    simclr: SimCLRConfig = field(default_factory=SimCLRConfig)
    genesis: GenesisConfig = field(default_factory=GenesisConfig)
    rotation: RotationConfig = field(default_factory=RotationConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for sub in (self.simclr, self.genesis, self.rotation):
            sub.validate()


@dataclass
class LossConfig:
    """Weights of the two pretext terms and the width of the heatmap ridge.

    Attributes:
        alpha: weight of ``L_ori`` (heatmap MSE); 0 disables it (no decoder output needed).
        beta: weight of ``L_loc`` (location MSE); 0 disables it (no location output needed).
        sigma_mm: ridge width in millimetres (paper code: 6 px at 1.26 mm, about 7.5 mm).
        spacing_mm: model-grid pixel spacing, converts ``sigma_mm`` to pixels.
        sigma_px: ridge width in pixels directly; takes precedence over ``sigma_mm``.
        compile: run the orientation term (render + masked MSE, forward and backward) through
            ``torch.compile``, which fuses it into a few kernels and never materialises the
            target heatmaps: measured 3.1-4.4x eager on CPU at 32x2x224^2 (five runs of
            ``bench/bench_model.py --compile``, variants interleaved), for a one-off
            compilation of ~2-5 s.  Off by default so short runs and tests pay nothing.
    """

    alpha: float = 1.0
    beta: float = 1.0
    sigma_mm: float = 7.5
    spacing_mm: float | None = None
    sigma_px: float | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name in ("alpha", "beta"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"loss.{name} must be a finite number >= 0, got {v}")
        if self.alpha == 0 and self.beta == 0:
            raise ValueError("loss.alpha and loss.beta are both 0: nothing to train")
        for name in ("sigma_mm", "spacing_mm", "sigma_px"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ValueError(f"loss.{name} must be > 0, got {v}")

    def resolved_sigma_px(self, grid_spacing_mm: float | None = None) -> float:
        """Ridge width in pixels of the model grid.

        Args:
            grid_spacing_mm: the data's grid spacing, used when ``spacing_mm`` is not set (the
                trainer passes what the shards declare, so the config need not repeat it).
        Raises:
            ValueError: no ``sigma_px`` and no spacing known.
        """
        if self.sigma_px is not None:
            return float(self.sigma_px)
        spacing = self.spacing_mm if self.spacing_mm is not None else grid_spacing_mm
        if spacing is not None and not (math.isfinite(spacing) and spacing > 0):
            raise ValueError(f"grid spacing must be > 0 mm, got {spacing}")
        if spacing is None:
            raise ValueError("loss: set sigma_px, or spacing_mm (the model grid spacing) so "
                             f"sigma_mm={self.sigma_mm} can be converted to pixels")
        return float(self.sigma_mm) / float(spacing)

    @property
    def terms(self) -> tuple[str, ...]:
        """Names of the enabled terms, in the order they are reported."""
        return tuple(n for n, w in (("loss_ori", self.alpha), ("loss_loc", self.beta)) if w > 0)
