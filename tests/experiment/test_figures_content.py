"""Figures checked by what they show: heatmap ridges on the plane intersection, overlay outlines."""
from __future__ import annotations

import numpy as np
import pytest

from anatplane_dist.experiment.figures import overlay_rgb, plot_heatmaps, plot_overlays
from anatplane_dist.experiment.heatmaps import pick_samples, read_validation_samples, target_heatmaps
from anatplane_dist.shards.reader import read_samples
from tests.experiment.conftest import GRID, SPACING


def _pixel_to_mm(grid: dict, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    o, r, c = (np.asarray(grid[k], float) for k in ("origin", "row_dir", "col_dir"))
    srow, scol = grid["spacing"]
    return o + cols[:, None] * scol * r + rows[:, None] * srow * c


def assert_ridge_on_plane(heat: np.ndarray, grid: dict, ref_plane: dict, tol_mm: float) -> None:
    """Every ridge pixel (heat > 0.95) lies on the reference plane in 3D, within ``tol_mm``."""
    rows, cols = np.nonzero(heat > 0.95)
    assert rows.size >= min(heat.shape) // 2, "the ridge must cross the image"
    pts = _pixel_to_mm(grid, rows.astype(float), cols.astype(float))
    o = np.asarray(ref_plane["origin"], float)
    n = np.cross(np.asarray(ref_plane["row_dir"], float), np.asarray(ref_plane["col_dir"], float))
    n /= np.linalg.norm(n)
    assert np.abs((pts - o) @ n).max() < tol_mm


def test_heatmap_figure_ground_truth_ridge_lies_on_the_plane_intersection(tmp_path, tiny_data):
    shards, _ = tiny_data
    samples = read_validation_samples(shards)
    picks = pick_samples(samples, 2)
    assert len(picks) == 2
    metas = [samples[k]["meta"] for k, _ in picks]
    # the cardiac pick: one slice of one series at two phases, frame 0 (ED) first
    assert metas[0]["series"] == metas[1]["series"] and metas[0]["slice"] == metas[1]["slice"]
    assert metas[0]["frame"] == 0 < metas[1]["frame"]
    panels = []
    for key, title in picks:
        s = samples[key]
        image = np.asarray(s["image"], np.float32)
        gt = target_heatmaps(s, image.shape, sigma_px=1.5)
        panels.append({"title": title, "image": image, "gt": gt, "pred": 0.5 * gt})
    fig = plot_heatmaps(panels, tmp_path / "h.png", ["2ch", "4ch"])
    axes = fig.axes
    k = panels[0]["gt"].shape[0]
    for r, ((key, _), p) in enumerate(zip(picks, panels)):
        meta = samples[key]["meta"]
        for c in range(k):
            shown_gt = np.asarray(axes[r * (1 + 2 * k) + 1 + 2 * c].images[0].get_array())
            shown_pred = np.asarray(axes[r * (1 + 2 * k) + 2 + 2 * c].images[0].get_array())
            assert np.allclose(shown_pred, p["pred"][c])
            if not samples[key]["valid"][c]:
                assert not shown_gt.any()
                continue
            # independent of the stored line: back to 3D through the grid and onto the other plane
            assert_ridge_on_plane(shown_gt, meta["grid"], meta["references"][c]["plane"], tol_mm=SPACING)


def test_overlay_paints_exactly_the_outline_of_each_structure(tmp_path):
    labels = np.zeros((20, 20), np.uint8)
    labels[5:15, 5:15] = 3                     # LV square
    labels[8:12, 8:12] = 2                     # MYO inside
    image = np.linspace(0, 1, 400).reshape(20, 20)
    rgb = overlay_rgb(image, labels)
    red = np.all(rgb == (1.0, 0.2, 0.2), -1)
    green = np.all(rgb == (0.1, 0.9, 0.2), -1)
    lv = labels == 3
    lv_edge = lv & ~np.pad(lv, 1)[2:, 1:-1] | lv & ~np.pad(lv, 1)[:-2, 1:-1] \
        | lv & ~np.pad(lv, 1)[1:-1, 2:] | lv & ~np.pad(lv, 1)[1:-1, :-2]
    # LV outline = the LV square's border plus the LV pixels touching the MYO hole
    assert np.array_equal(red, lv_edge)
    assert green.sum() == 12 and green[8, 8] and not green[9, 9]
    assert np.allclose(rgb[0, 0], rgb[0, 0, 0])          # background stays grey
    fig = plot_overlays([("random", image, labels), ("multitask", image, np.zeros_like(labels))], labels,
                        tmp_path / "o.png", subject="p1")
    assert [a.get_title() for a in fig.axes] == ["ground truth", "random", "multitask"]
    assert not np.all(np.asarray(fig.axes[2].images[0].get_array()) == (1.0, 0.2, 0.2), -1).any()


def test_heatmap_figure_shows_the_network_output_on_the_training_normalised_image(tmp_path, tiny_data):
    """The figure used to feed the stored ~[0, 1] image without the stream's z-score: its
    predictions were not what the network gives on what it was trained on."""
    import torch

    from anatplane_dist.data.decode import zscore_
    from anatplane_dist.experiment.figures import heatmap_panels
    from anatplane_dist.model import ModelConfig
    from anatplane_dist.publish import load_pretrained
    from tests.experiment.conftest import GRID
    from tests.finetune.conftest import publish_weights

    name_dir = publish_weights(tmp_path, ModelConfig(name="unet", width=8, depth=3, loc_hidden=[16]),
                               grid=GRID, spacing=SPACING)
    shards, _ = tiny_data
    panels = heatmap_panels(name_dir / "latest", shards, count=2)
    net = load_pretrained((name_dir / "latest").resolve(), part="full").eval()
    samples = read_validation_samples(shards)
    for p in panels:
        stored = np.asarray(samples[p["key"]]["image"], np.float32)
        assert np.array_equal(p["image"], stored)                        # displayed as stored
        seen = zscore_(torch.from_numpy(stored.copy())[None])[0]
        assert abs(float(seen.mean())) < 1e-4 and abs(float(seen.std(unbiased=False)) - 1) < 1e-3
        with torch.no_grad():
            want = net(seen[None, None])["heatmaps"][0].numpy()
            raw = net(torch.from_numpy(stored)[None, None])["heatmaps"][0].numpy()
        assert np.allclose(p["pred"], want, atol=1e-6)
        assert not np.allclose(p["pred"], raw, atol=1e-3)                 # the old, un-normalised input



@pytest.mark.slow
def test_a_trained_orientation_model_draws_heatmaps_that_follow_the_targets(tmp_path, tiny_data, monkeypatch):
    """The figure of a network that learnt its pretext shows ridges where the targets are.

    The figure is drawn on a subject the network trained on: on the tiny cohort (one training
    heart) nothing generalises, but a figure pipeline that fed the network the wrong image
    (issue 17: the un-normalised image gave correlations of -0.09 / 0.06), rendered the target
    with another ridge width or transposed either would not correlate on a memorised subject.
    The same phantom is sharded a second time with another split seed, so the sealed shard set
    the figure reads has the training heart as its validation subject."""
    import subprocess
    import sys

    from anatplane_dist.experiment.figures import heatmap_panels
    from anatplane_dist.publish import publish

    shards, _ = tiny_data
    trained_on = {str(s["meta"]["subject"]) for t in sorted(shards.glob("train-*.tar"))
                  for s in read_samples(t).values()}
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "anatplane_dist.cli", "pretrain", "--config", "tiny-cpu",
                           "--run-dir", str(run), f"data.shards={shards}", "objective.name=orientation",
                           "train.epochs=8", "data.samples_per_epoch=256", "data.num_workers=0",
                           "train.progress=none"], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    version = publish(run, tmp_path / "published", "orientation")
    for seed in range(1, 20):                                        # a split whose val subject trained
        resharded = tmp_path / f"reshard-{seed}"
        subprocess.run([sys.executable, "-m", "anatplane_dist.cli", "shard", "--profile", "heart", "--input",
                        str(shards.parent / "heart-pretrain"), "--out", str(resharded), "--grid", str(GRID),
                        "--spacing", str(SPACING), "--val-fraction", "0.25", "--workers", "1", "--seed", str(seed)],
                       check=True, capture_output=True, timeout=300)
        val = {str(s["meta"]["subject"]) for s in read_validation_samples(resharded).values()}
        if val <= trained_on:
            break
    else:
        pytest.fail(f"no split seed put a training subject {sorted(trained_on)} in val")
    corr = [c for p in heatmap_panels(version, resharded, count=2) for c, ok in zip(p["corr"], p["valid"]) if ok]
    assert len(corr) >= 2 and min(corr) > 0.8, corr
    # the check can fail: the same figure fed the stored, un-normalised image (the old bug)
    monkeypatch.setattr("anatplane_dist.data.decode.zscore_", lambda images: images)
    raw = [c for p in heatmap_panels(version, resharded, count=2) for c, ok in zip(p["corr"], p["valid"]) if ok]
    assert max(raw) < min(corr) - 0.2, (raw, corr)
