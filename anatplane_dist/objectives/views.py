"""SimCLR's random views of a batch, on the device, every draw from one generator.

One call gives one view per image: random resized crop (resampled back to the full grid, with
an optional horizontal flip), brightness/contrast jitter, Gaussian blur and additive noise,
each with its own probability (SimCLR's recipe with the colour operations reduced to the
two a grayscale MR image has). Intensity operations act on each image rescaled to [0, 1] (the
stream z-scores images), then the image's own range is restored, as in
:mod:`anatplane_dist.data.augment`. Shapes are static and nothing is read back to the host, so it
runs inside the train step after the host-to-device copy.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from anatplane_dist.data.augment import normal, uniform, unit_range
from anatplane_dist.objectives.config import SimCLRConfig

__all__ = ["random_view", "crop_thetas", "gaussian_blur"]


def _uniform(lo_hi: list[float], u: Tensor) -> Tensor:
    return lo_hi[0] + u * (lo_hi[1] - lo_hi[0])


def crop_thetas(u: Tensor, cfg: SimCLRConfig) -> Tensor:
    """(B, 2, 3) ``affine_grid`` matrices of random resized crops from (B, 5) uniforms.

    Area fraction uniform in ``crop_scale``, aspect ratio log-uniform in ``crop_ratio``; a crop
    that would not fit is shrunk to the grid along that axis (instead of torchvision's retry
    loop, which needs data-dependent control flow).
    """
    area = _uniform(cfg.crop_scale, u[:, 0])
    log_r = _uniform([math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])], u[:, 1])
    ratio = torch.exp(log_r)
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (2 * u[:, 2] - 1) * (1 - w)
    cy = (2 * u[:, 3] - 1) * (1 - h)
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0) if cfg.flip else torch.ones_like(w)
    zero = torch.zeros_like(w)
    return torch.stack([torch.stack([w * flip, zero, cx], -1), torch.stack([zero, h, cy], -1)], -2)


def gaussian_blur(x: Tensor, sigma: Tensor, apply: Tensor) -> Tensor:
    """Separable Gaussian blur of (B, C, H, W) with a per-image sigma (px) where ``apply``.

    Kernel side ~10% of the image side (SimCLR), odd, at least 3; reflect padding.
    """
    b, c, h, w = x.shape
    half = max(1, int(0.1 * min(h, w)) // 2)
    t = torch.arange(-half, half + 1, device=x.device, dtype=torch.float32)
    g = torch.exp(-(t[None] ** 2) / (2 * sigma[:, None].float() ** 2))
    g = g / g.sum(dim=1, keepdim=True)
    delta = (t == 0).to(torch.float32)[None].expand_as(g)
    g = torch.where(apply[:, None], g, delta)                          # (B, k)
    k = g.repeat_interleave(c, dim=0)                                  # (B*C, k)
    y = F.pad(x.float().reshape(1, b * c, h, w), (half, half, half, half), mode="reflect")
    y = F.conv2d(y, k[:, None, :, None], groups=b * c)
    y = F.conv2d(y, k[:, None, None, :], groups=b * c)
    return y.reshape(b, c, h, w)


def random_view(image: Tensor, cfg: SimCLRConfig, gen: torch.Generator) -> Tensor:
    """One random view of each image of a (B, C, H, W) batch (same shape and dtype)."""
    b, c, h, w = image.shape
    dev = image.device
    u = uniform((b, 11), gen, dev)
    x = image.float()
    grid = F.affine_grid(crop_thetas(u[:, :5], cfg), [b, c, h, w], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    x01, lo, span = unit_range(x)
    jitter = (u[:, 5] < cfg.jitter_p).view(b, 1, 1, 1)
    bright = _uniform([1 - cfg.brightness, 1 + cfg.brightness], u[:, 6]).view(b, 1, 1, 1)
    contrast = _uniform([1 - cfg.contrast, 1 + cfg.contrast], u[:, 7]).view(b, 1, 1, 1)
    xb = x01 * bright
    mean = xb.mean(dim=(1, 2, 3), keepdim=True)
    x01 = torch.where(jitter, ((xb - mean) * contrast + mean).clamp(0.0, 1.0), x01)
    x01 = gaussian_blur(x01, _uniform(cfg.blur_sigma, u[:, 8]), u[:, 9] < cfg.blur_p)
    noise = (u[:, 10] < cfg.noise_p).to(torch.float32).view(b, 1, 1, 1) * cfg.noise_std
    x01 = x01 + noise * normal((b, c, h, w), gen, dev)
    return (x01 * span + lo).to(image.dtype)
