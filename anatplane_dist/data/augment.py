"""On-device augmentation of a whole batch: one random affine per sample, plus intensity.

Geometry.  Each sample gets a pixel-coordinate affine ``M`` (rotation about the grid centre,
isotropic scale, translation, optional horizontal flip) that moves image content from ``p`` to
``M p``.  The image is resampled with ``affine_grid``/``grid_sample`` (``align_corners=False``
with the matching pixel->normalised map, so pixel centres land exactly on pixel centres) and a
line ``l = (a, b, c)`` - the set ``l . (x, y, 1) = 0`` - moves analytically to ``M^-T l``,
renormalised so ``a^2 + b^2 = 1``.  A line that leaves the grid (visible part shorter than
``min_visible_px``, the same rule as ``geometry.intersection_lines``) becomes invalid; nothing
is ever made up.  The relative location does not change under an in-plane affine.

Intensity.  Gamma, a smooth multiplicative bias field and additive Gaussian noise; targets
are untouched.  Gamma and bias act on each image rescaled to [0, 1] (the stream z-scores, and
neither is defined on negative values), then the original range is restored.

Everything is batched tensor code with no host sync, so it can run inside the training step on
the GPU, after the host->device copy.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from anatplane_dist.data.config import AugmentConfig

__all__ = ["AugmentConfig", "augment_batch", "random_affines", "warp_images", "transform_lines",
           "visible_length"]


def uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Uniform [0, 1) drawn on the generator's device (then moved: a copy, not a sync)."""
    gdev = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gdev).to(device, non_blocking=True)


def normal(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    gdev = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gdev).to(device, non_blocking=True)


def _log_uniform(lo_hi: list[float], u: Tensor) -> Tensor:
    lo, hi = math.log(lo_hi[0]), math.log(lo_hi[1])
    return torch.exp(lo + u * (hi - lo))


def random_affines(batch_size: int, height: int, width: int, cfg: AugmentConfig,
                   generator: torch.Generator | None = None,
                   device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Draw one pixel-coordinate affine per sample.

    Returns:
        ``M`` and its inverse, both (B, 3, 3) float32: content at pixel ``(x, y)``
        (x = column, y = row) moves to ``M @ (x, y, 1)``.  Samples not selected
        (probability ``1 - p``) get exactly the identity.
    """
    device = torch.device(device)
    u = uniform((batch_size, 6), generator, device)
    apply = u[:, 0] < cfg.p
    ang = torch.where(apply, (2 * u[:, 1] - 1) * math.radians(cfg.rotation_deg), 0.0)
    s = torch.where(apply, _log_uniform(cfg.scale, u[:, 2]), 1.0)
    t = torch.where(apply[:, None], (2 * u[:, 3:5] - 1) * cfg.translate, 0.0)
    t = t * torch.tensor([width, height], device=device, dtype=torch.float32)
    flip = torch.where(apply & (u[:, 5] < 0.5), -1.0, 1.0) if cfg.flip else torch.ones_like(s)
    cos, sin = torch.cos(ang), torch.sin(ang)
    centre = torch.tensor([(width - 1) / 2.0, (height - 1) / 2.0], device=device)
    # L = R(ang) @ diag(s * flip, s);  M = [L | c + t - L c]
    lin = torch.stack([torch.stack([cos * s * flip, -sin * s], -1),
                       torch.stack([sin * s * flip, cos * s], -1)], -2)
    # L^-1 = diag(1 / (s flip), 1 / s) @ R^T ; M^-1 = [L^-1 | c - L^-1 (c + t)]
    inv = torch.stack([torch.stack([cos * flip / s, sin * flip / s], -1),
                       torch.stack([-sin / s, cos / s], -1)], -2)
    m = _homogeneous(lin, centre + t - lin @ centre)
    minv = _homogeneous(inv, centre - (inv @ (centre + t)[..., None]).squeeze(-1))
    return m, minv


def _homogeneous(lin: Tensor, offset: Tensor) -> Tensor:
    b = lin.shape[0]
    out = torch.zeros(b, 3, 3, device=lin.device, dtype=lin.dtype)
    out[:, :2, :2] = lin
    out[:, :2, 2] = offset.reshape(b, 2)
    out[:, 2, 2] = 1.0
    return out


# -- applying them ----------------------------------------------------------------------------

def _pixel_to_normalised(height: int, width: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``N`` and ``N^-1`` between pixel centres and ``grid_sample(align_corners=False)`` coords."""
    n = torch.tensor([[2.0 / width, 0.0, 1.0 / width - 1.0],
                      [0.0, 2.0 / height, 1.0 / height - 1.0],
                      [0.0, 0.0, 1.0]], device=device)
    n_inv = torch.tensor([[width / 2.0, 0.0, width / 2.0 - 0.5],
                          [0.0, height / 2.0, height / 2.0 - 0.5],
                          [0.0, 0.0, 1.0]], device=device)
    return n, n_inv


def warp_images(images: Tensor, minv: Tensor, fill: Tensor | float = 0.0,
                mode: str = "bilinear") -> Tensor:
    """Resample (B, C, H, W) images so content at ``p`` moves to ``M p`` (given ``M^-1``).

    Output pixel ``q`` reads the input at ``M^-1 q``; outside the input it is ``fill`` (a float,
    or a (B, 1, 1, 1) tensor such as each image's minimum, i.e. its background).
    """
    b, c, h, w = images.shape
    n, n_inv = _pixel_to_normalised(h, w, images.device)
    theta = (n @ minv.float() @ n_inv)[:, :2, :]
    grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
    fill_t = torch.as_tensor(fill, device=images.device, dtype=images.dtype)
    return F.grid_sample(images - fill_t, grid.to(images.dtype), mode=mode, padding_mode="zeros",
                         align_corners=False) + fill_t


def transform_lines(lines: Tensor, valid: Tensor, minv: Tensor, height: int, width: int,
                    min_visible_px: float = 2.0) -> tuple[Tensor, Tensor]:
    """Move (B, K, 3) lines with ``M^-T`` (given ``M^-1``), renormalise, re-check visibility.

    Returns:
        lines (B, K, 3) (0 where invalid, as in the batch layout) and valid (B, K) in the dtype
        of ``valid``: 1 only where the line was valid and still crosses the grid over at
        least ``min_visible_px`` pixels.
    """
    ok = valid > 0
    src = torch.where(ok[..., None], lines.float(), 0.0)
    out = torch.einsum("bji,bkj->bki", minv.float(), src)          # l' = M^-T l, per row
    norm = torch.hypot(out[..., 0], out[..., 1])
    out = out / norm.clamp(min=1e-12)[..., None]
    still = ok & (norm > 1e-12) & (visible_length(out, height, width) >= min_visible_px)
    return torch.where(still[..., None], out, 0.0), still.to(valid.dtype)


def visible_length(lines: Tensor, height: int, width: int) -> Tensor:
    """Length in pixels of each line inside the rectangle ``[-0.5, W-0.5] x [-0.5, H-0.5]``.

    The device form of the length returned by ``geometry.clip_lines`` (same slab clipping),
    so a line judged visible when the shard was written is judged the same way here.
    """
    a, b, c = lines[..., 0], lines[..., 1], lines[..., 2]
    px, py = -a * c, -b * c            # foot of the perpendicular from the origin
    dx, dy = -b, a                     # unit direction
    inf = torch.full_like(a, math.inf)
    lo, hi = -inf, inf
    for p, d, extent in ((px, dx, width), (py, dy, height)):
        lo_edge, hi_edge = -0.5, extent - 0.5
        moving = d.abs() > 1e-12
        d_safe = torch.where(moving, d, 1.0)
        t0 = torch.where(moving, (lo_edge - p) / d_safe, -inf)
        t1 = torch.where(moving, (hi_edge - p) / d_safe, inf)
        inside = moving | ((p >= lo_edge) & (p <= hi_edge))
        lo = torch.maximum(lo, torch.where(inside, torch.minimum(t0, t1), inf))
        hi = torch.minimum(hi, torch.where(inside, torch.maximum(t0, t1), -inf))
    ok = torch.isfinite(lo) & torch.isfinite(hi) & (hi > lo) & torch.isfinite(a)
    return torch.where(ok, hi - lo, 0.0)


def unit_range(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Each image of a (B, C, H, W) batch mapped to [0, 1]: ``(x01, lo, span)``, so that
    ``x01 * span + lo`` maps back to the image's own range (intensity transforms work in between)."""
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    span = (x.amax(dim=(1, 2, 3), keepdim=True) - lo).clamp(min=1e-6)
    return (x - lo) / span, lo, span


def _intensity(images: Tensor, cfg: AugmentConfig, generator: torch.Generator | None) -> Tensor:
    b, _, h, w = images.shape
    dev = images.device
    u = uniform((b, 4), generator, dev)
    x01, lo, span = unit_range(images.float())
    if cfg.gamma != [1.0, 1.0]:
        g = torch.where(u[:, 0] < cfg.p, _log_uniform(cfg.gamma, u[:, 1]), 1.0)
        x01 = x01.clamp(min=0.0).pow(g.view(b, 1, 1, 1))
    if cfg.bias_field > 0:
        coarse = normal((b, 1, 4, 4), generator, dev)
        coarse = torch.where((u[:, 2] < cfg.p).view(b, 1, 1, 1), coarse, 0.0)
        field_ = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True)
        x01 = x01 * torch.exp(cfg.bias_field * field_)
    x = x01 * span + lo
    if cfg.noise_std > 0:
        std = torch.where(u[:, 3] < cfg.p, cfg.noise_std, 0.0).view(b, 1, 1, 1)
        x = x + std * normal((b, 1, h, w), generator, dev)
    return x.to(images.dtype)


def augment_batch(batch: Mapping[str, Any], cfg: AugmentConfig,
                  generator: torch.Generator | None = None) -> dict[str, Any]:
    """A new batch with augmented ``image``, ``lines`` and ``valid`` (other keys passed through).

    Args:
        batch: the stream's batch (docs/architecture.md); tensors on any device.
        cfg: ranges; a config with nothing enabled returns the same tensors.
        generator: a ``torch.Generator``, ideally on the batch's device (seed it per rank so
            ranks augment differently and a resumed run repeats itself).  ``None`` uses
            torch's default generator of that device.
    """
    image: Tensor = batch["image"]
    if image.ndim != 4:
        raise ValueError(f"batch['image'] must be (B, C, H, W), got shape {tuple(image.shape)}")
    b, _, h, w = image.shape
    out = dict(batch)
    if cfg.geometric:
        _, minv = random_affines(b, h, w, cfg, generator, image.device)
        background = image.amin(dim=(1, 2, 3), keepdim=True)
        out["image"] = warp_images(image, minv, fill=background)
        out["lines"], out["valid"] = transform_lines(batch["lines"], batch["valid"], minv, h, w,
                                                     cfg.min_visible_px)
    if cfg.intensity:
        out["image"] = _intensity(out["image"], cfg, generator)
    return out


def rotate_scale(images: Tensor, angles: Tensor, scales: Tensor | None = None, *, mode: str = "bilinear",
                 padding_mode: str = "border") -> Tensor:
    """Rotate (radians) and isotropically scale each (B, C, H, W) image about its centre.

    The fine-tuning augmentation (segmentation: image bilinear/border and label nearest/zeros with
    the same angles; classification: one angle per stack); kept here beside the pretraining
    augmentation so the package has one rotation.
    """
    s = torch.ones_like(angles) if scales is None else scales
    cos, sin = torch.cos(angles) / s, torch.sin(angles) / s
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], 1)
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode=mode, padding_mode=padding_mode, align_corners=False)
