"""Pretext losses with targets rendered on the device.

Heatmaps are never stored: shards carry each line's ``(a, b, c)`` and a ``valid`` flag, and the
Gaussian ridge ``exp(-d^2 / 2 sigma^2)`` (``d = a*x + b*y + c``, the pixel distance to the line)
is drawn here, on the batch's device, inside the loss.  That keeps shards ~K*H*W*4 bytes smaller
per sample and lets augmentation move lines analytically instead of warping target images.

Everything is straight-line tensor code: no ``.item()``, no boolean indexing, no shape that
depends on the data, so the loss can sit inside a compiled or CUDA-graphed step, and the
per-term values it returns are device tensors the trainer syncs only when it logs.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from anatplane_dist.objectives.config import LossConfig

__all__ = ["LossConfig", "MultitaskLoss", "render_heatmaps_torch", "orientation_loss", "masked_heatmap_mse",
           "masked_mse"]


_MIN_EXP_ARG = -80.0


def render_heatmaps_torch(lines: Tensor, valid: Tensor, height: int, width: int,
                          sigma_px: float | Tensor) -> Tensor:
    """Gaussian ridge of each line, zero for invalid channels: ``(..., K, H, W)`` float32.

    The torch twin of :func:`anatplane_dist.core.geometry.render_heatmaps` (equal to ~1e-6).

    Args:
        lines: (..., K, 3) normalised ``(a, b, c)``, x = column, y = row, in grid pixels.
            Invalid rows may hold anything (zeros, NaN): they are masked with ``where``.
        valid: (..., K) flags (bool, or float/int where nonzero means valid).
        height, width: the grid the lines live on.
        sigma_px: ridge width in pixels (a float, or a tensor broadcastable to (..., K)).
    """
    if lines.shape[-1] != 3:
        raise ValueError(f"lines must be (..., K, 3), got shape {tuple(lines.shape)}")
    if valid.shape != lines.shape[:-1]:
        raise ValueError(f"valid must be {tuple(lines.shape[:-1])} (lines without the last axis), "
                         f"got {tuple(valid.shape)}")
    dev = lines.device
    with torch.autocast(dev.type, enabled=False):      # targets stay float32 under bf16 autocast
        ok = valid.bool() if valid.dtype != torch.bool else valid
        ln = torch.where(ok[..., None], lines.float(), torch.zeros((), device=dev))
        x = torch.arange(width, device=dev, dtype=torch.float32)
        y = torch.arange(height, device=dev, dtype=torch.float32)[:, None]
        a, b, c = (ln[..., i, None, None] for i in range(3))
        d = a * x + b * y + c
        sigma = torch.as_tensor(sigma_px, device=dev, dtype=torch.float32)
        if sigma.ndim:
            sigma = sigma[..., None, None]
        # clamp: exp of arguments below ~-87 (denormal or zero results) takes a slow path, 10x
        # slower on this CPU (bench); exp(-80) ~ 2e-35 is zero for every use of a heatmap
        heat = torch.exp(torch.clamp_min(-(d * d) / (2.0 * sigma * sigma), _MIN_EXP_ARG))
        return torch.where(ok[..., None, None], heat, torch.zeros((), device=dev))


def masked_heatmap_mse(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Mean squared error over the pixels of valid channels only.

    ``sum_{b,k valid} sum_p (pred - target)^2 / (n_valid * H * W)``; exactly 0 (not NaN, and
    with zero gradient) when no channel in the batch is valid.  ``where`` rather than a
    multiply, so a non-finite prediction on a masked channel cannot leak NaN into the loss.
    """
    ok = (valid > 0)[..., None, None]
    diff = pred.float() - target.float()
    sq = torch.where(ok, diff * diff, torch.zeros((), device=diff.device))
    denom = ok.sum().clamp(min=1).float() * (pred.shape[-1] * pred.shape[-2])
    return sq.sum() / denom


def masked_mse(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``(pred - target)^2`` over entries with ``valid``; 0 when none is valid."""
    ok = valid > 0
    diff = pred.float() - target.float()
    sq = torch.where(ok, diff * diff, torch.zeros((), device=diff.device))
    return sq.sum() / ok.sum().clamp(min=1).float()


def orientation_loss(pred: Tensor, lines: Tensor, valid: Tensor, sigma_px: float) -> Tensor:
    """``L_ori``: masked MSE between predicted (B, K, H, W) heatmaps and the lines' ridges."""
    target = render_heatmaps_torch(lines, valid, pred.shape[-2], pred.shape[-1], sigma_px)
    return masked_heatmap_mse(pred, target, valid)


class MultitaskLoss(torch.nn.Module):
    """``alpha * L_ori + beta * L_loc`` from model outputs and a batch (see docs/architecture.md).

    ``__call__(outputs, batch) -> (total, {"loss_ori": ..., "loss_loc": ...})``.  Each term is a
    detached 0-d device tensor (log it without syncing every step).  A term whose weight is 0 is
    neither computed nor reported when its output is absent; when the output is present it is
    still reported (handy to watch a head that is not trained) and enters ``total`` as
    ``0 * term``: it adds nothing, but every parameter of that head still gets a (zero)
    gradient, so DDP without ``find_unused_parameters`` does not stop with an unused-parameter
    error.  Switching the head off in ``ModelConfig`` saves its compute altogether.
    """

    def __init__(self, cfg: LossConfig, grid_spacing_mm: float | None = None) -> None:
        """``grid_spacing_mm``: the model grid's spacing from the data (``cfg.spacing_mm``
        wins when set); converts ``cfg.sigma_mm`` to pixels."""
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        # needed when L_ori is trained; optional (for monitoring only) when alpha == 0
        known = cfg.sigma_px is not None or cfg.spacing_mm is not None or grid_spacing_mm is not None
        self.sigma_px = cfg.resolved_sigma_px(grid_spacing_mm) if (cfg.alpha > 0 or known) else None
        self._orientation = (torch.compile(orientation_loss, dynamic=False) if cfg.compile
                             else orientation_loss)

    def forward(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]
                ) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.cfg
        total: Tensor | None = None
        parts: dict[str, Tensor] = {}
        if cfg.alpha > 0 or ("heatmaps" in outputs and self.sigma_px is not None):
            if "heatmaps" not in outputs:
                raise KeyError("loss.alpha > 0 but the model returned no 'heatmaps' "
                               "(orientation head disabled?)")
            l_ori = self._orientation(outputs["heatmaps"], batch["lines"], batch["valid"], self.sigma_px)
            parts["loss_ori"] = l_ori.detach()
            total = _weighted(total, cfg.alpha, l_ori)
        elif "heatmaps" in outputs:      # alpha == 0 and no ridge width known: not reported
            total = _weighted(total, 0.0, outputs["heatmaps"].float().mean())
        if cfg.beta > 0 or "location" in outputs:
            if "location" not in outputs:
                raise KeyError("loss.beta > 0 but the model returned no 'location' "
                               "(location head disabled?)")
            l_loc = masked_mse(outputs["location"], batch["loc"], batch["loc_valid"])
            parts["loss_loc"] = l_loc.detach()
            total = _weighted(total, cfg.beta, l_loc)
        assert total is not None  # validate() rejects alpha == beta == 0
        return total, parts


def _weighted(total: Tensor | None, weight: float, term: Tensor) -> Tensor:
    """``total + weight * term``; a zero weight keeps the graph connected without adding a value
    (``nan_to_num`` so that an untrained head's overflow cannot turn the total into NaN)."""
    part = weight * term if weight > 0 else 0.0 * torch.nan_to_num(term, nan=0.0, posinf=0.0, neginf=0.0)
    return part if total is None else total + part
