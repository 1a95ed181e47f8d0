"""On-device augmentation: lines move exactly with the image, validity, intensity, identity."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anatplane_dist.core.geometry import clip_lines
from anatplane_dist.data.augment import (
    augment_batch,
    random_affines,
    transform_lines,
    visible_length,
    warp_images,
)
from anatplane_dist.data.config import AugmentConfig
from anatplane_dist.objectives.losses import render_heatmaps_torch

H = W = 64
IDENTITY = AugmentConfig(p=1.0, rotation_deg=0.0, scale=[1.0, 1.0], translate=0.0, flip=False,
                         gamma=[1.0, 1.0], noise_std=0.0, bias_field=0.0)
GEOMETRIC = AugmentConfig(p=1.0, rotation_deg=180.0, scale=[0.7, 1.4], translate=0.1, flip=True,
                          gamma=[1.0, 1.0], noise_std=0.0, bias_field=0.0)


def _lines_through_centre_region(n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    th = torch.rand(n, k, generator=g) * math.pi
    p = (W - 1) / 2 + (torch.rand(n, k, 2, generator=g) - 0.5) * 20
    a, b = th.cos(), th.sin()
    return torch.stack([a, b, -(a * p[..., 0] + b * p[..., 1])], -1)


def _pixel_grid():
    y, x = torch.meshgrid(torch.arange(float(H)), torch.arange(float(W)), indexing="ij")
    return torch.stack([x, y, torch.ones_like(x)]).reshape(3, -1)


def test_affine_and_inverse_and_identity_when_not_selected():
    g = torch.Generator().manual_seed(0)
    m, minv = random_affines(16, H, W, GEOMETRIC, g)
    torch.testing.assert_close(m @ minv, torch.eye(3).expand(16, 3, 3), atol=1e-5, rtol=0)
    assert (torch.linalg.det(m[:, :2, :2]) < 0).any()               # some samples flipped
    m0, minv0 = random_affines(8, H, W, AugmentConfig(p=0.0, rotation_deg=90), g)
    assert torch.equal(m0, torch.eye(3).expand(8, 3, 3)) and torch.equal(minv0, m0)


def test_points_on_a_line_stay_on_the_transformed_line():
    """Exact for every transform (scale and flip included): l' = M^-T l."""
    lines = _lines_through_centre_region(16, 2)
    m, minv = random_affines(16, H, W, GEOMETRIC, torch.Generator().manual_seed(1))
    out, _ = transform_lines(lines, torch.ones(16, 2), minv, H, W, min_visible_px=0.0)
    t = torch.linspace(-30, 30, 7)
    a, b, c = lines.unbind(-1)
    foot = torch.stack([-a * c, -b * c], -1)
    pts = foot[..., None, :] + t[:, None] * torch.stack([-b, a], -1)[..., None, :]   # (B, K, 7, 2)
    hom = torch.cat([pts, torch.ones_like(pts[..., :1])], -1)
    moved = torch.einsum("bij,bktj->bkti", m, hom)
    dist = torch.einsum("bki,bkti->bkt", out, moved)
    assert dist.abs().max() < 1e-3
    torch.testing.assert_close(torch.hypot(out[..., 0], out[..., 1]), torch.ones(16, 2))


def test_render_then_warp_equals_warp_then_render():
    """The heatmap warped with the image's grid_sample is the transformed line's heatmap.

    With scale ``s`` the ridge width becomes ``sigma * s``.  Compared wherever the output pixel
    reads from inside the input grid; the bound is bilinear interpolation of a Gaussian,
    ``max|f''| / 8 = 1 / (8 sigma^2)``.
    """
    sigma = 5.0
    lines = _lines_through_centre_region(12, 2, seed=2)
    valid = torch.ones(12, 2)
    heat = render_heatmaps_torch(lines, valid, H, W, sigma)
    m, minv = random_affines(12, H, W, GEOMETRIC, torch.Generator().manual_seed(3))
    warped = warp_images(heat, minv)
    out, ok = transform_lines(lines, valid, minv, H, W)
    scale = torch.linalg.det(m[:, :2, :2]).abs().sqrt()
    rendered = render_heatmaps_torch(out, ok, H, W, sigma * scale[:, None])
    src = (minv @ _pixel_grid()).reshape(12, 3, H, W)
    inside = ((src[:, 0] >= 0) & (src[:, 0] <= W - 1) & (src[:, 1] >= 0) & (src[:, 1] <= H - 1))[:, None]
    inside = inside & (ok[..., None, None] > 0)
    assert inside.float().mean() > 0.4
    err = torch.where(inside, (warped - rendered).abs(), 0.0).max()
    assert err <= 1.0 / (8 * (sigma * 0.7) ** 2) + 1e-4, err


def test_augment_batch_moves_image_and_lines_together():
    """Through the public entry point: image = the heatmap of channel 0, rigid transforms."""
    sigma = 6.0
    lines = _lines_through_centre_region(8, 2, seed=4)
    valid = torch.tensor([[1.0, 0.0]] * 4 + [[1.0, 1.0]] * 4)
    lines = lines * valid[..., None]
    image = render_heatmaps_torch(lines[:, :1], valid[:, :1], H, W, sigma)
    batch = {"image": image, "lines": lines, "valid": valid, "loc": torch.rand(8),
             "loc_valid": torch.ones(8), "key": [str(i) for i in range(8)]}
    cfg = AugmentConfig(p=1.0, rotation_deg=180.0, scale=[1.0, 1.0], translate=0.05, gamma=[1.0, 1.0],
                        noise_std=0.0, bias_field=0.0)
    out = augment_batch(batch, cfg, torch.Generator().manual_seed(5))
    assert out["key"] is batch["key"] and out["loc"] is batch["loc"]        # location untouched
    assert (out["valid"][:4, 1] == 0).all() and (out["lines"][:4, 1] == 0).all()  # invalid stays so
    assert out["valid"][:, 0].all()
    rendered = render_heatmaps_torch(out["lines"][:, :1], out["valid"][:, :1], H, W, sigma)
    # rotation about the centre, shift <= 3.2 px: a disc of radius 24 reads from inside the grid
    r = torch.hypot(*(_pixel_grid()[:2].reshape(2, H, W) - (W - 1) / 2))
    err = (out["image"] - rendered).abs()[..., r <= 24]
    assert err.max() <= 1.0 / (8 * sigma ** 2) + 1e-4, err.max()
    assert not torch.allclose(out["image"], image, atol=0.05)               # it did move


def test_line_leaving_the_grid_becomes_invalid():
    lines = torch.tensor([[[1.0, 0.0, -60.0], [0.0, 1.0, -32.0]]])           # x = 60 and y = 32
    valid = torch.ones(1, 2)
    shift = torch.eye(3)[None].clone()
    shift[0, 0, 2] = 10.0                                                    # content moves right by 10
    minv = torch.linalg.inv(shift)
    out, ok = transform_lines(lines, valid, minv, H, W)
    assert ok.tolist() == [[0.0, 1.0]]
    assert (out[0, 0] == 0).all()
    torch.testing.assert_close(out[0, 1], torch.tensor([0.0, 1.0, -32.0]))
    # x = 60 shifted by 3 px stays (63 is the last column), by 4 px it is gone
    shift[0, 0, 2] = 3.0
    assert transform_lines(lines, valid, torch.linalg.inv(shift), H, W)[1][0, 0] == 1
    shift[0, 0, 2] = 4.2
    assert transform_lines(lines, valid, torch.linalg.inv(shift), H, W)[1][0, 0] == 0


def test_visible_length_equals_geometry_clip_lines():
    rng = np.random.default_rng(0)
    th = rng.uniform(0, np.pi, 400)
    c = rng.uniform(-120, 40, 400)
    lines = np.stack([np.cos(th), np.sin(th), c], -1)
    lines[:4] = [[1, 0, -10], [0, 1, -63.5], [0, 1, 0.6], [1, 0, 0.5]]       # axis-aligned, edges
    _, _, ref = clip_lines(lines, np.array([48, 64]))
    out = visible_length(torch.tensor(lines, dtype=torch.float64), 48, 64)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-9)
    assert (ref > 0).sum() > 100 and (ref == 0).sum() > 50


def test_identity_config_is_identity():
    batch = {"image": torch.randn(4, 1, H, W), "lines": _lines_through_centre_region(4, 2),
             "valid": torch.ones(4, 2), "loc": torch.rand(4), "loc_valid": torch.ones(4), "key": list("abcd")}
    out = augment_batch(batch, IDENTITY, torch.Generator().manual_seed(0))
    assert all(out[k] is batch[k] for k in batch)
    # p = 0 with wide ranges runs the warp with identity affines: pixel centres map exactly
    off = AugmentConfig(p=0.0, rotation_deg=90.0, scale=[0.5, 2.0], translate=0.2, flip=True,
                        gamma=[0.5, 2.0], noise_std=1.0, bias_field=1.0)
    assert off.geometric is False          # p = 0 short-circuits; call the warp directly too
    _, minv = random_affines(4, H, W, AugmentConfig(p=0.0), torch.Generator())
    # float32 round trip pixel -> normalised -> pixel: ~1e-6 px, i.e. ~1e-5 on unit-variance noise
    torch.testing.assert_close(warp_images(batch["image"], minv), batch["image"], atol=5e-5, rtol=0)
    out_l, ok = transform_lines(batch["lines"], batch["valid"], minv, H, W)
    torch.testing.assert_close(out_l, batch["lines"])
    assert torch.equal(ok, batch["valid"])


def test_intensity_leaves_targets_and_is_seeded():
    batch = {"image": torch.rand(6, 1, H, W) * 3 - 1, "lines": _lines_through_centre_region(6, 2),
             "valid": torch.ones(6, 2), "loc": torch.rand(6), "loc_valid": torch.ones(6), "key": list("abcdef")}
    cfg = AugmentConfig(p=1.0, rotation_deg=0.0, scale=[1.0, 1.0], translate=0.0,
                        gamma=[0.5, 2.0], noise_std=0.1, bias_field=0.3)
    a = augment_batch(batch, cfg, torch.Generator().manual_seed(7))
    b = augment_batch(batch, cfg, torch.Generator().manual_seed(7))
    c = augment_batch(batch, cfg, torch.Generator().manual_seed(8))
    assert torch.equal(a["image"], b["image"]) and not torch.equal(a["image"], c["image"])
    assert a["lines"] is batch["lines"] and a["valid"] is batch["valid"]
    assert torch.isfinite(a["image"]).all() and a["image"].dtype == torch.float32
    # without noise, gamma and bias keep each image's range (min and max stay put)
    no_noise = AugmentConfig(p=1.0, rotation_deg=0.0, scale=[1.0, 1.0], translate=0.0,
                             gamma=[0.5, 2.0], noise_std=0.0, bias_field=0.0)
    d = augment_batch(batch, no_noise, torch.Generator().manual_seed(9))["image"]
    torch.testing.assert_close(d.amin(dim=(1, 2, 3)), batch["image"].amin(dim=(1, 2, 3)))
    torch.testing.assert_close(d.amax(dim=(1, 2, 3)), batch["image"].amax(dim=(1, 2, 3)))
    assert not torch.allclose(d, batch["image"])


def test_warp_fills_outside_with_background_and_has_no_graph_break():
    image = torch.rand(2, 1, H, W) + 5.0                       # background is the image minimum
    batch = {"image": image, "lines": torch.zeros(2, 1, 3), "valid": torch.zeros(2, 1),
             "loc": torch.zeros(2), "loc_valid": torch.zeros(2), "key": ["a", "b"]}
    cfg = AugmentConfig(p=1.0, rotation_deg=0.0, scale=[0.5, 0.5], translate=0.0, gamma=[1.0, 1.0],
                        noise_std=0.0, bias_field=0.0)
    out = augment_batch(batch, cfg, torch.Generator().manual_seed(0))
    corner = out["image"][:, 0, :8, :8]
    torch.testing.assert_close(corner, image.amin(dim=(1, 2, 3))[:, None, None].expand_as(corner))
    explanation = torch._dynamo.explain(lambda b: augment_batch(b, GEOMETRIC, None))(batch)
    assert explanation.graph_break_count == 0


def test_config_validation():
    with pytest.raises(ValueError, match="augment.scale"):
        AugmentConfig(scale=[1.2, 0.8])
    with pytest.raises(ValueError, match="augment.p"):
        AugmentConfig(p=1.5)
    with pytest.raises(ValueError, match="augment.translate"):
        AugmentConfig(translate=1.0)
    with pytest.raises(ValueError, match="augment.noise_std"):
        AugmentConfig(noise_std=-0.1)
    assert AugmentConfig().flip is False
