"""Segmentation fine-tuning: metrics, grid -> native round trip, the net, and that it learns."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from anatplane_dist.finetune.data import GridSpec, load_acdc
from anatplane_dist.finetune.segmentation import (
    SegNet,
    SegTrainConfig,
    dice_score,
    evaluate_segmentation,
    hd95,
    largest_component,
    probs_to_native,
    summarise_segmentation,
    train_segmentation,
)
from anatplane_dist.model import ModelConfig, build_model

GRID = GridSpec(size=64, spacing=1.5)
TINY = ModelConfig(name="unet", width=8, depth=3)


def _sphere(shape: tuple[int, int, int], spacing: tuple[float, float, float], radius: float) -> np.ndarray:
    grids = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)], indexing="ij")
    return np.sqrt(sum(g * g for g in grids)) <= radius


def test_dice_values() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert dice_score(a, b) == 1.0
    a[:2] = True
    assert dice_score(a, b) == 0.0
    b[1:3] = True
    assert dice_score(a, b) == pytest.approx(0.5)


def test_hd95_concentric_spheres_anisotropic() -> None:
    spacing = (2.0, 1.0, 1.0)
    gt = _sphere((40, 70, 70), spacing, 20.0)
    pred = _sphere((40, 70, 70), spacing, 26.0)
    # every surface point of one is ~6 mm from the other's surface
    assert hd95(pred, gt, spacing) == pytest.approx(6.0, abs=1.5)
    assert hd95(gt, gt, spacing) == 0.0
    # the spacing is honoured: the same voxels at twice the spacing are twice as far apart
    assert hd95(pred, gt, (4.0, 2.0, 2.0)) == pytest.approx(2 * hd95(pred, gt, spacing), rel=1e-6)
    assert np.isnan(hd95(np.zeros_like(gt), gt, spacing))


def test_largest_component_per_class() -> None:
    lab = np.zeros((1, 20, 20), np.uint8)
    lab[0, 2:10, 2:10] = 3
    lab[0, 15:17, 15:17] = 3      # island of class 3: removed
    lab[0, 12:14, 2:4] = 1        # the only component of class 1: kept
    out = largest_component(lab, [1, 2, 3])
    assert (out[0, 15:17, 15:17] == 0).all()
    assert (out[0, 2:10, 2:10] == 3).all() and (out[0, 12:14, 2:4] == 1).all()


def test_grid_to_native_round_trip(acdc_root: Path) -> None:
    """A perfect prediction on the model grid scores high at native resolution."""
    subjects, _ = load_acdc(acdc_root, GRID, subjects=["patient001"])
    vol = subjects[0].volumes[0]
    onehot = np.eye(4, dtype=np.float32)[vol.label].transpose(0, 3, 1, 2)
    pred = probs_to_native(onehot, vol, largest=True)
    assert pred.shape == vol.native_label.shape
    for value in (1, 2, 3):
        assert dice_score(pred == value, vol.native_label == value) > 0.85, value


@pytest.mark.parametrize("arch", ["unet", "resnet"])
def test_segnet_swaps_the_head_and_keeps_the_encoder(arch: str) -> None:
    net = build_model(ModelConfig(name=arch, width=8, depth=3), num_channels=2)
    old_head = net.decoder.head
    seg = SegNet(net.encoder, net.decoder, num_classes=4)
    assert seg.decoder.head is not old_head and seg.decoder.head.out_channels == 4
    assert seg.encoder is net.encoder
    assert seg(torch.zeros(2, 1, 64, 64)).shape == (2, 4, 64, 64)


def test_fine_tuning_learns_the_phantom(acdc_root: Path) -> None:
    subjects, _ = load_acdc(acdc_root, GRID)
    train, test = subjects[:3], subjects[4:]
    torch.manual_seed(0)
    net = build_model(TINY, num_channels=2)
    seg = SegNet(net.encoder, net.decoder, num_classes=4)
    cfg = SegTrainConfig(steps=200, batch_size=8, lr=3e-3)
    before = summarise_segmentation(evaluate_segmentation(seg, test, cfg))
    losses = train_segmentation(seg, train, cfg, seed=0)
    assert len(losses) == 200
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    rows = evaluate_segmentation(seg, test, cfg)
    assert {(r["subject"], r["phase"]) for r in rows} == {(s.subject, p) for s in test for p in ("ED", "ES")}
    after = summarise_segmentation(rows)
    assert after["dice_mean"] > 0.7, after
    assert after["dice_mean"] > before["dice_mean"] + 0.3
    assert after["hd95_mean"] < 15.0, after
