"""Cheap pretext validation: line angle / offset error from predicted heatmaps, location MAE.

The ridge of each predicted heatmap channel is fitted with weighted second moments (its
centroid and principal axis), which needs no peak search and runs as a handful of tensor
reductions on the device. :func:`pretext_sums` gives one batch's (sum, count) per metric; the
trainer's validation pass (``Trainer.validate``) adds them over this rank's share of the split,
with no collective inside the loop, and reduces once at the end (``dist.MetricSums``).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch

#: reported means (every rank reduces the same names, also a rank that saw no batch)
NAMES = ("val/loss", "val/loss_ori", "val/loss_loc", "val/angle_err_deg", "val/offset_err_px", "val/loc_mae")


def fit_ridges(heat: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centroid and principal direction of each (B, K, H, W) channel.

    Weights are ``relu(h)^2`` so that a Gaussian ridge dominates a flat background.
    Returns ``cx, cy`` (px), ``theta`` (radians, direction of the ridge in x=column/y=row
    coordinates, modulo pi) and the total weight (0 where nothing was predicted).
    """
    h = heat.float().clamp_min(0).square()
    _, _, H, W = h.shape
    y = torch.arange(H, device=h.device, dtype=h.dtype).view(1, 1, H, 1)
    x = torch.arange(W, device=h.device, dtype=h.dtype).view(1, 1, 1, W)
    s = h.sum(dim=(-2, -1))
    sd = s.clamp_min(eps)
    cx = (h * x).sum(dim=(-2, -1)) / sd
    cy = (h * y).sum(dim=(-2, -1)) / sd
    dx = x - cx[..., None, None]
    dy = y - cy[..., None, None]
    sxx = (h * dx * dx).sum(dim=(-2, -1)) / sd
    syy = (h * dy * dy).sum(dim=(-2, -1)) / sd
    sxy = (h * dx * dy).sum(dim=(-2, -1)) / sd
    theta = 0.5 * torch.atan2(2 * sxy, sxx - syy)
    return cx, cy, theta, s


def line_errors(heat: torch.Tensor, lines: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-line angle error (deg, in [0, 90]) and offset (px) of the fitted ridge; and the mask.

    ``lines`` are (a, b, c) with ``a x + b y + c = 0`` and unit normal (a, b); the line's
    direction is (-b, a). The offset is the distance from the fitted centroid to the line.
    """
    cx, cy, theta, s = fit_ridges(heat)
    a, b, c = lines[..., 0], lines[..., 1], lines[..., 2]
    true_theta = torch.atan2(a, -b)
    diff = torch.remainder(theta - true_theta, math.pi)
    diff = torch.minimum(diff, math.pi - diff)
    offset = (a * cx + b * cy + c).abs()
    mask = (valid > 0.5) & (s > 1e-6)
    return torch.rad2deg(diff), offset, mask


def pretext_sums(out: Mapping[str, torch.Tensor], batch: Mapping[str, Any],
                 loss_fn: Callable) -> dict[str, tuple[float, float]]:
    """(sum, count) of each of :data:`NAMES` over one batch; the trainer's validation (:meth:`anatplane_dist.train.trainer.Trainer.validate`) sums them over the validation stream.

    Pretraining objectives with heatmap / location heads report these; a head the model
    does not have is left out (its names then count nothing).
    """
    total, parts = loss_fn(out, batch)
    n = float(batch["image"].shape[0])
    sums: dict[str, tuple[float, float]] = {"val/loss": (float(total) * n, n)}
    for k, v in parts.items():
        sums[f"val/{k}"] = (float(v) * n, n)
    if "heatmaps" in out:
        ang, off, mask = line_errors(out["heatmaps"], batch["lines"], batch["valid"])
        count = float(mask.sum())
        sums["val/angle_err_deg"] = (float(ang[mask].sum()), count)
        sums["val/offset_err_px"] = (float(off[mask].sum()), count)
    if "location" in out:
        loc_mask = batch["loc_valid"] > 0.5
        sums["val/loc_mae"] = (float((out["location"].float() - batch["loc"]).abs()[loc_mask].sum()),
                               float(loc_mask.sum()))
    return sums
