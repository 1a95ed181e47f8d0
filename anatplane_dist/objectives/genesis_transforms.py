"""Models Genesis corruptions of a batch, on the device, every draw from one generator.

Zhou et al. (MICCAI 2019; MedIA 2021) corrupt an image with, in this order, local pixel
shuffling, a non-linear intensity curve and in- or out-painting, and train the full U-Net to
restore the original. Here each is rewritten as batched tensor code with static shapes (no
per-block Python loop, no host sync), so it runs inside the train step, and the same
generator state gives the same corruption (a resumed run repeats itself):

* local shuffling: the image is tiled into cells of side ``local_block x`` the image side;
  inside each cell a random window (side 1..cell) has its pixels permuted. Cells do not overlap,
  so the permutation is a gather with no write conflicts (the paper draws 10 000 possibly
  overlapping blocks of up to 1/10 of each side in a 3D volume, one after the other).
* non-linear curve: a cubic Bezier curve from (0, 0) to (1, 1) with two random control points
  in the unit square, which makes it monotone; with probability 0.5 it is turned into a
  decreasing one (``1 - y``, an intensity inversion). Applied by interpolating in a table of
  the curve.
* painting: in-painting replaces up to ``paint_blocks`` windows by uniform noise; out-painting
  replaces everything but up to ``paint_blocks`` windows by noise; after the first window each
  further one is kept with probability 0.95 while the previous was (the paper's loop).

All work on each image rescaled to [0, 1] (the paper's intensity range); the result is mapped
back to the image's own range.
"""
from __future__ import annotations

import torch
from torch import Tensor

from anatplane_dist.data.augment import uniform, unit_range
from anatplane_dist.objectives.config import GenesisConfig

__all__ = ["genesis_corrupt", "local_shuffle", "bezier_map", "paint_masks"]

_CURVE_POINTS = 129       #: samples of the Bezier table (interpolation error < 1e-3 of the range)
_INVERT_P = 0.5           #: probability that the intensity curve is decreasing
_NEXT_BLOCK_P = 0.95      #: probability of one more painting window (the paper's loop)


def local_shuffle(x: Tensor, apply: Tensor, frac: float, gen: torch.Generator) -> Tensor:
    """Permute the pixels of a random window inside each cell of side ``frac x`` the image side.

    ``x`` (B, C, H, W); ``apply`` (B,) bool. The strip right/below the last full cell is left
    as is. Every channel of a pixel moves together.
    """
    b, c, h, w = x.shape
    cs = max(2, round(frac * min(h, w)))
    hc, wc = h // cs, w // cs
    if hc == 0 or wc == 0:
        return x
    n = cs * cs
    dev = x.device
    cells = (x[:, :, :hc * cs, :wc * cs].reshape(b, c, hc, cs, wc, cs)
             .permute(0, 2, 4, 1, 3, 5).reshape(b, hc, wc, c, n))
    u = uniform((b, hc, wc, 4), gen, dev)
    sh = (1 + (u[..., 0] * cs).long()).clamp(max=cs)
    sw = (1 + (u[..., 1] * cs).long()).clamp(max=cs)
    oy = (u[..., 2] * (cs - sh + 1)).long()
    ox = (u[..., 3] * (cs - sw + 1)).long()
    idx = torch.arange(n, device=dev)
    row, col = (idx // cs).view(1, 1, 1, n), (idx % cs).view(1, 1, 1, n)
    inside = ((row >= oy[..., None]) & (row < (oy + sh)[..., None])
              & (col >= ox[..., None]) & (col < (ox + sw)[..., None]))
    keys = uniform((b, hc, wc, n), gen, dev)
    rest = 2.0 + idx.to(torch.float32)                     # outside the window: stay, in order
    src = torch.sort(torch.where(inside, keys, rest), dim=-1, stable=True).indices
    dst = torch.sort(torch.where(inside, idx.to(torch.float32) / n, rest), dim=-1, stable=True).indices
    src_for_dst = src.gather(-1, torch.argsort(dst, dim=-1))
    src_for_dst = torch.where(apply.view(b, 1, 1, 1), src_for_dst, idx.view(1, 1, 1, n))
    moved = cells.gather(-1, src_for_dst[:, :, :, None, :].expand(b, hc, wc, c, n))
    moved = moved.reshape(b, hc, wc, c, cs, cs).permute(0, 3, 1, 4, 2, 5).reshape(b, c, hc * cs, wc * cs)
    out = x.clone()
    out[:, :, :hc * cs, :wc * cs] = moved
    return out


def bezier_map(x01: Tensor, control: Tensor, invert: Tensor, apply: Tensor) -> Tensor:
    """Map intensities in [0, 1] through a per-image cubic Bezier curve where ``apply``.

    ``control`` (B, 4) = (x1, y1, x2, y2) in [0, 1]; with x1, x2 in [0, 1] the curve's x(t) is
    non-decreasing (x'(t) >= 0 at the four corners of the control box and linear in them), so
    it is a function of x and is read from a table by ``searchsorted``.
    """
    b = x01.shape[0]
    t = torch.linspace(0.0, 1.0, _CURVE_POINTS, device=x01.device)[None]
    a1, a2, a3 = 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t ** 2, t ** 3
    xs = (a1 * control[:, 0:1] + a2 * control[:, 2:3] + a3).contiguous()        # (B, N)
    ys = a1 * control[:, 1:2] + a2 * control[:, 3:4] + a3
    v = x01.reshape(b, -1).float().clamp(0.0, 1.0).contiguous()
    i = torch.searchsorted(xs, v).clamp(1, _CURVE_POINTS - 1)
    x0, x1 = xs.gather(1, i - 1), xs.gather(1, i)
    y0, y1 = ys.gather(1, i - 1), ys.gather(1, i)
    y = y0 + (v - x0) / (x1 - x0).clamp(min=1e-6) * (y1 - y0)
    y = torch.where(invert[:, None], 1.0 - y, y).clamp(0.0, 1.0).reshape(x01.shape)
    return torch.where(apply.view(b, 1, 1, 1), y.to(x01.dtype), x01)


def _boxes(u: Tensor, size: list[float], h: int, w: int) -> Tensor:
    """(B, M, H, W) masks of axis-aligned windows from (B, M, 4) uniforms, sides in ``size``."""
    bh = (torch.round((size[0] + u[..., 0] * (size[1] - size[0])) * h)).long().clamp(1, h)
    bw = (torch.round((size[0] + u[..., 1] * (size[1] - size[0])) * w)).long().clamp(1, w)
    y0 = (u[..., 2] * (h - bh + 1)).long()
    x0 = (u[..., 3] * (w - bw + 1)).long()
    ys = torch.arange(h, device=u.device).view(1, 1, h, 1)
    xs = torch.arange(w, device=u.device).view(1, 1, 1, w)
    return ((ys >= y0[..., None, None]) & (ys < (y0 + bh)[..., None, None])
            & (xs >= x0[..., None, None]) & (xs < (x0 + bw)[..., None, None]))


def paint_masks(b: int, h: int, w: int, cfg: GenesisConfig, gen: torch.Generator,
                device: torch.device) -> tuple[Tensor, Tensor]:
    """(B, 1, H, W) masks: pixels in-painting replaces, and pixels out-painting keeps."""
    m = cfg.paint_blocks
    u = uniform((b, 2, m, 5), gen, device)
    more = torch.cumprod((u[..., 4] < _NEXT_BLOCK_P).to(torch.int32), dim=-1).bool()     # (B, 2, M)
    in_present = more[:, 0]
    out_present = torch.cat([torch.ones_like(more[:, 1, :1]), more[:, 1, :-1]], dim=-1)  # first window always
    inpaint = (_boxes(u[:, 0, :, :4], cfg.inpaint_size, h, w) & in_present[..., None, None]).any(1, keepdim=True)
    keep = (_boxes(u[:, 1, :, :4], cfg.outpaint_size, h, w) & out_present[..., None, None]).any(1, keepdim=True)
    return inpaint, keep


def genesis_corrupt(image: Tensor, cfg: GenesisConfig, gen: torch.Generator) -> Tensor:
    """The Models Genesis input for a (B, C, H, W) batch; same shape and dtype."""
    b, c, h, w = image.shape
    dev = image.device
    u = uniform((b, 9), gen, dev)
    x = image.float()
    x01, lo, span = unit_range(x)
    x01 = local_shuffle(x01, u[:, 0] < cfg.local_shuffle_p, cfg.local_block, gen)
    x01 = bezier_map(x01, u[:, 5:9], u[:, 2] < _INVERT_P, u[:, 1] < cfg.nonlinear_p)
    inpaint, keep = paint_masks(b, h, w, cfg, gen, dev)
    noise = uniform((b, c, h, w), gen, dev)
    painted = torch.where((u[:, 4] < cfg.outpaint_p).view(b, 1, 1, 1),
                          torch.where(keep, x01, noise), torch.where(inpaint, noise, x01))
    x01 = torch.where((u[:, 3] < cfg.paint_p).view(b, 1, 1, 1), painted, x01)
    return (x01 * span + lo).to(image.dtype)
