"""The Models Genesis corruptions: deterministic per seed, and each does what it claims."""
from __future__ import annotations

import dataclasses

import torch

from anatplane_dist.objectives.config import GenesisConfig
from anatplane_dist.objectives.genesis_transforms import (
    bezier_map,
    genesis_corrupt,
    local_shuffle,
    paint_masks,
)
from tests.objectives.conftest import fixed_batch


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_corruption_is_deterministic_per_seed_and_differs_across_seeds():
    image = fixed_batch(b=16)["image"]
    cfg = GenesisConfig()
    a, b, c = (genesis_corrupt(image, cfg, _gen(s)) for s in (11, 11, 12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == image.shape and a.dtype == image.dtype
    # the paper's probabilities leave some images untouched by painting, most changed somewhere
    changed = (a != image).flatten(1).any(1)
    assert changed.float().mean() > 0.5


def test_local_shuffle_permutes_pixels_within_cells_only():
    x = torch.rand(3, 2, 20, 23, generator=_gen(0))
    out = local_shuffle(x, torch.tensor([True, True, False]), 0.2, _gen(1))   # cells of 4 px
    assert torch.equal(out[2], x[2])                                           # not selected: as is
    assert not torch.equal(out[:2], x[:2])
    assert torch.equal(out[..., 20:, :], x[..., 20:, :]) and torch.equal(out[..., 20:], x[..., 20:])
    cells = lambda t: t[:, :, :20, :20].reshape(3, 2, 5, 4, 5, 4).permute(0, 2, 4, 1, 3, 5).reshape(3, 5, 5, 2, 16)
    before, after = cells(x), cells(out)
    # each cell holds the same pixels, and both channels of a pixel moved together
    assert torch.equal(before.sort(-1).values, after.sort(-1).values)
    order_b = before[:, :, :, 0].argsort(-1)
    assert torch.equal(before[:, :, :, 1].gather(-1, order_b),
                       after[:, :, :, 1].gather(-1, after[:, :, :, 0].argsort(-1)))


def test_bezier_curve_is_monotone_from_0_to_1_and_inverts_when_asked():
    v = torch.linspace(0, 1, 101).view(1, 1, 1, 101).expand(4, 1, 1, 101)
    control = torch.rand(4, 4, generator=_gen(2))
    up = bezier_map(v, control, torch.zeros(4, dtype=torch.bool), torch.ones(4, dtype=torch.bool))
    down = bezier_map(v, control, torch.ones(4, dtype=torch.bool), torch.ones(4, dtype=torch.bool))
    assert (up.diff(dim=-1) >= -1e-6).all()
    assert torch.allclose(up[..., 0], torch.zeros(4, 1, 1), atol=1e-5)
    assert torch.allclose(up[..., -1], torch.ones(4, 1, 1), atol=1e-5)
    assert torch.allclose(down, 1 - up, atol=1e-6)
    # identity control points (1/3, 1/3), (2/3, 2/3) give the identity curve
    ident = torch.tensor([[1 / 3, 1 / 3, 2 / 3, 2 / 3]]).expand(4, 4)
    same = bezier_map(v, ident, torch.zeros(4, dtype=torch.bool), torch.ones(4, dtype=torch.bool))
    assert torch.allclose(same, v, atol=1e-3)
    kept = bezier_map(v, control, torch.zeros(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool))
    assert torch.equal(kept, v)


def test_painting_windows_have_the_configured_sizes():
    cfg = GenesisConfig(paint_blocks=1)
    inpaint, keep = paint_masks(64, 48, 48, cfg, _gen(3), torch.device("cpu"))
    rows = inpaint.any(-1).sum(-1).flatten()
    present = rows > 0
    assert 0.85 < present.float().mean() < 1.0                        # first in-painting window: p = 0.95
    assert rows[present].min() >= round(48 / 6) and rows[present].max() <= round(48 / 3)
    kept_rows = keep.any(-1).sum(-1).flatten()                         # out-painting keeps >= 1 window
    assert kept_rows.min() >= round(48 * 3 / 7) and kept_rows.max() <= round(48 * 4 / 7)


def test_out_painting_replaces_everything_outside_the_kept_windows_by_noise_in_range():
    image = fixed_batch(b=8)["image"]
    cfg = dataclasses.replace(GenesisConfig(), nonlinear_p=0.0, local_shuffle_p=0.0, paint_p=1.0, outpaint_p=1.0)
    out = genesis_corrupt(image, cfg, _gen(5))
    lo, hi = image.amin(dim=(1, 2, 3), keepdim=True), image.amax(dim=(1, 2, 3), keepdim=True)
    assert ((out >= lo - 1e-5) & (out <= hi + 1e-5)).all()
    same = torch.isclose(out, image, atol=1e-5).float().mean(dim=(1, 2, 3))
    # kept: 1-5 windows of 3/7..4/7 of each side, i.e. between ~18% and all of the image
    assert (same > 0.15).all() and (same < 1.0).all()
    nothing = dataclasses.replace(cfg, paint_p=0.0)
    assert torch.allclose(genesis_corrupt(image, nothing, _gen(5)), image, atol=1e-5)
