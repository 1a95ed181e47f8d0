"""Device heatmaps equal the numpy ones; masked losses are exact, finite and sync-free."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from anatplane_dist.core.geometry import Plane, intersection_lines, render_heatmaps
from anatplane_dist.objectives.config import LossConfig
from anatplane_dist.objectives.losses import (
    MultitaskLoss,
    masked_heatmap_mse,
    masked_mse,
    render_heatmaps_torch,
)


def _random_lines(rng, shape, size):
    """Lines through random points of the grid with random directions (normalised)."""
    th = rng.uniform(0, np.pi, shape)
    px, py = rng.uniform(0, size, shape), rng.uniform(0, size, shape)
    a, b = np.cos(th), np.sin(th)
    return np.stack([a, b, -(a * px + b * py)], -1)


def test_torch_renderer_equals_numpy_on_random_lines():
    rng = np.random.default_rng(0)
    lines = _random_lines(rng, (5, 3), 64)
    valid = rng.random((5, 3)) > 0.3
    ref = render_heatmaps(lines, valid, (48, 64), sigma_px=3.3)
    lines_t = torch.tensor(np.where(valid[..., None], lines, 0.0), dtype=torch.float32)
    out = render_heatmaps_torch(lines_t, torch.tensor(valid, dtype=torch.float32), 48, 64, 3.3)
    assert out.dtype == torch.float32 and out.shape == (5, 3, 48, 64)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-5, rtol=0)
    assert (out[torch.tensor(~valid)] == 0).all()


def test_torch_renderer_equals_numpy_on_real_plane_intersections():
    """Lines from the geometry core (oblique planes, NaN rows where invalid) as the shards hold them."""
    image = Plane([-40.0, -30.0, 5.0], [1, 0, 0], [0, np.cos(0.3), np.sin(0.3)], [1.5, 1.5], [64, 64])
    refs = Plane.stack([Plane([0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1], [8, 8]),
                        Plane([0, 0, 0], [1, 0, 0], [0, 0.8, 0.6], [1, 1], [8, 8]),
                        Plane([0, 0, 0], [1, 0, 0], [0, np.cos(0.3), np.sin(0.3)], [1, 1], [8, 8])])
    lines, valid = intersection_lines(image, refs)
    assert valid.tolist() == [True, True, False]          # the last reference is parallel
    ref = render_heatmaps(lines, valid, (64, 64), sigma_px=7.5 / 1.5)
    out = render_heatmaps_torch(torch.tensor(lines, dtype=torch.float32), torch.tensor(valid), 64, 64, 5.0)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-5, rtol=0)


def test_renderer_stays_float32_under_autocast_and_takes_tensor_sigma():
    lines = torch.tensor([[[0.6, 0.8, -20.0], [1.0, 0.0, -7.0]]])
    valid = torch.ones(1, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = render_heatmaps_torch(lines, valid, 16, 16, torch.tensor([[2.0, 4.0]]))
    assert out.dtype == torch.float32
    x = torch.arange(16.0)
    torch.testing.assert_close(out[0, 1, 3], torch.exp(-(x - 7) ** 2 / 32))
    with pytest.raises(ValueError, match="valid must be"):
        render_heatmaps_torch(lines, torch.ones(2), 16, 16, 2.0)


def test_masked_heatmap_mse_means_over_valid_channel_pixels_only():
    pred = torch.zeros(2, 2, 4, 4)
    target = torch.zeros(2, 2, 4, 4)
    target[0, 0] = 1.0                      # valid: error 1 on 16 px
    target[1, 1] = 3.0                      # valid: error 9 on 16 px
    pred[0, 1] = float("inf")               # invalid channel: must not leak
    valid = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = masked_heatmap_mse(pred, target, valid)
    torch.testing.assert_close(loss, torch.tensor((16 * 1 + 16 * 9) / 32.0))


def test_nothing_valid_gives_zero_loss_and_zero_gradient():
    pred = torch.randn(2, 2, 8, 8, requires_grad=True)
    loss = masked_heatmap_mse(pred, torch.rand(2, 2, 8, 8), torch.zeros(2, 2))
    loc = torch.randn(2, requires_grad=True)
    l_loc = masked_mse(loc, torch.zeros(2), torch.zeros(2))
    (loss + l_loc).backward()
    assert loss.item() == 0.0 and l_loc.item() == 0.0
    assert (pred.grad == 0).all() and (loc.grad == 0).all()


def _batch(b=3, k=2, size=32, seed=0):
    rng = np.random.default_rng(seed)
    valid = np.array([[1, 0], [1, 1], [0, 0]], dtype=np.float32)[:b]
    lines = _random_lines(rng, (b, k), size) * valid[..., None]
    return {"image": torch.randn(b, 1, size, size),
            "lines": torch.tensor(lines, dtype=torch.float32), "valid": torch.tensor(valid),
            "loc": torch.tensor([0.2, 0.0, 0.9]), "loc_valid": torch.tensor([1.0, 0.0, 1.0]),
            "key": [f"s{i}" for i in range(b)]}


def test_multitask_loss_weights_terms_and_matches_numpy_target():
    batch = _batch()
    torch.manual_seed(0)
    outputs = {"heatmaps": torch.rand(3, 2, 32, 32), "location": torch.tensor([0.5, 7.0, 0.4])}
    fn = MultitaskLoss(LossConfig(alpha=2.0, beta=0.5, sigma_mm=7.5), grid_spacing_mm=2.5)
    assert fn.sigma_px == pytest.approx(3.0)
    total, parts = fn(outputs, batch)
    target = render_heatmaps(batch["lines"].numpy(), batch["valid"].numpy() > 0, (32, 32), 3.0)
    v = batch["valid"].numpy() > 0
    sq = (outputs["heatmaps"].numpy() - target) ** 2
    l_ori = sq[v].sum() / (v.sum() * 32 * 32)
    l_loc = ((0.5 - 0.2) ** 2 + (0.4 - 0.9) ** 2) / 2          # sample 1 has no location
    assert parts["loss_ori"].item() == pytest.approx(l_ori, rel=1e-5)
    assert parts["loss_loc"].item() == pytest.approx(l_loc, rel=1e-5)
    assert total.item() == pytest.approx(2.0 * l_ori + 0.5 * l_loc, rel=1e-5)
    assert not parts["loss_ori"].requires_grad


def test_zero_weight_disables_a_head():
    batch = _batch()
    heat = torch.rand(3, 2, 32, 32, requires_grad=True)
    loc = torch.rand(3, requires_grad=True)
    only_ori = MultitaskLoss(LossConfig(alpha=1.0, beta=0.0, sigma_px=3.0))
    total, parts = only_ori({"heatmaps": heat}, batch)          # no location output at all
    assert set(parts) == {"loss_ori"} and only_ori.cfg.terms == ("loss_ori",)
    torch.testing.assert_close(total, parts["loss_ori"])
    total, parts = only_ori({"heatmaps": heat, "location": loc}, batch)
    assert set(parts) == {"loss_ori", "loss_loc"}               # still reported, not trained
    total.backward()                                            # zero grads reach the idle head
    assert heat.grad.abs().sum() > 0 and loc.grad is not None and (loc.grad == 0).all()
    torch.testing.assert_close(total, parts["loss_ori"])
    only_loc = MultitaskLoss(LossConfig(alpha=0.0, beta=1.0))   # no sigma needed without L_ori
    total, parts = only_loc({"location": loc}, batch)
    assert set(parts) == {"loss_loc"}
    diverged = {"heatmaps": torch.full((3, 2, 32, 32), float("inf")), "location": loc}
    total, parts = MultitaskLoss(LossConfig(alpha=0.0, beta=1.0, sigma_px=3.0))(diverged, batch)
    assert torch.isfinite(total) and parts["loss_ori"] == float("inf")
    heat.grad = None
    total, parts = only_loc({"heatmaps": heat, "location": loc}, batch)   # no sigma: not reported
    total.backward()
    assert set(parts) == {"loss_loc"} and heat.grad is not None and (heat.grad == 0).all()
    with pytest.raises(KeyError, match="no 'heatmaps'"):
        MultitaskLoss(LossConfig(sigma_px=3.0))({"location": loc}, batch)


def test_loss_under_bf16_outputs_is_float32():
    batch = _batch()
    out = {"heatmaps": torch.rand(3, 2, 32, 32).bfloat16(), "location": torch.rand(3).bfloat16()}
    total, parts = MultitaskLoss(LossConfig(sigma_px=3.0))(out, batch)
    assert total.dtype == torch.float32 and torch.isfinite(total)


def test_loss_has_no_graph_break():
    """No ``.item()``/boolean indexing: the loss traces as one graph (compilable with the step)."""
    batch = _batch()
    fn = MultitaskLoss(LossConfig(sigma_px=3.0))
    out = {"heatmaps": torch.rand(3, 2, 32, 32), "location": torch.rand(3)}
    explanation = torch._dynamo.explain(lambda o, b: fn(o, b))(out, batch)
    assert explanation.graph_break_count == 0


def test_compiled_orientation_term_equals_eager():
    """The opt-in compiled path (inductor) gives the eager values and gradients."""
    batch = _batch(size=16)
    torch.manual_seed(0)
    heat = torch.rand(3, 2, 16, 16, requires_grad=True)
    loc = torch.rand(3, requires_grad=True)
    results = []
    for compiled in (False, True):
        heat.grad = None
        total, parts = MultitaskLoss(LossConfig(sigma_px=2.0, compile=compiled))(
            {"heatmaps": heat, "location": loc}, batch)
        total.backward()
        results.append((total.detach(), parts["loss_ori"], heat.grad.clone()))
    for eager, comp in zip(*results):
        torch.testing.assert_close(comp, eager, rtol=1e-5, atol=1e-7)


def test_config_validation():
    with pytest.raises(ValueError, match="sigma_px, or spacing_mm"):
        MultitaskLoss(LossConfig())
    with pytest.raises(ValueError, match="both 0"):
        LossConfig(alpha=0.0, beta=0.0)
    with pytest.raises(ValueError, match="loss.alpha"):
        LossConfig(alpha=-1.0)
    with pytest.raises(ValueError, match="loss.spacing_mm"):
        LossConfig(spacing_mm=0.0)
    assert LossConfig(sigma_mm=7.5, spacing_mm=1.25).resolved_sigma_px() == pytest.approx(6.0)
    assert LossConfig(sigma_px=4.0, spacing_mm=1.25).resolved_sigma_px() == 4.0
