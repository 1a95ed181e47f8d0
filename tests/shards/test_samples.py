"""Targets of in-memory studies: lines, locations, images, masks and skip records."""
from __future__ import annotations

import dataclasses
import io
import json
import re

import numpy as np
import pytest
from scipy import ndimage

from anatplane_dist.core.geometry import Plane
from anatplane_dist.shards.samples import sample_key, study_samples
from tests.shards.conftest import heart_study, make_slice, plane_through


def decode(sample):
    """(image, lines with NaN rows where masked, valid, loc, meta) as the loader reads them."""
    from anatplane_dist.shards.format import decode_sample
    m = sample.members
    d = decode_sample({"__key__": sample.key, **m})
    valid = d["valid"].astype(bool)
    lines = np.where(valid[:, None], d["lines"], np.float32(np.nan))
    return (np.load(io.BytesIO(m["image.npy"])), lines, valid.astype(np.uint8),
            np.float32(d["loc"]) if d["loc_valid"] else np.float32(np.nan), json.loads(m["meta.json"]))


def line_points_by_solve(grid: Plane, ref: Plane) -> np.ndarray:
    """Two points (x, y) of the intersection in grid pixels, by solving the 3x3 system."""
    n1, n2 = grid.normal, ref.normal
    d = np.cross(n1, n2)
    p = np.linalg.solve(np.stack([n1, n2, d]), [n1 @ grid.origin, n2 @ ref.origin, 0.0])
    pts = []
    for t in (-40.0, 40.0):
        q = p + t * d / np.linalg.norm(d) - grid.origin
        pts.append([q @ grid.row_dir / grid.spacing[1], q @ grid.col_dir / grid.spacing[0]])
    return np.array(pts)


def test_every_frame_becomes_a_sample_with_exact_lines(heart_cfg):
    study = heart_study(n_sax=4, n_frames=3)
    out = study_samples(study, heart_cfg)
    assert len(out.samples) == 4 * 3
    keys = [s.key for s in out.samples]
    assert len(set(keys)) == len(keys) and not any("." in k for k in keys)
    for s in out.samples:
        img, lines, valid, loc, meta = decode(s)
        assert img.dtype == np.float16 and img.shape == (32, 32)
        assert lines.dtype == np.float32 and lines.shape == (2, 3)
        assert valid.dtype == np.uint8 and valid.tolist() == [1, 1]
        assert meta["channels"] == ["2ch", "4ch"]
        grid = Plane.from_dict(meta["grid"])
        assert grid.shape.tolist() == [32, 32] and np.allclose(grid.spacing, 3.0)
        for k, ref in enumerate(meta["references"]):
            pts = line_points_by_solve(grid, Plane.from_dict(ref["plane"]))
            a, b, c = lines[k].astype(np.float64)
            assert abs(np.hypot(a, b) - 1) < 1e-5
            assert np.max(np.abs(a * pts[:, 0] + b * pts[:, 1] + c)) < 1e-3


def test_heart_location_runs_base_to_apex_and_frames_share_targets(heart_cfg):
    out = study_samples(heart_study(n_sax=5, n_frames=2), heart_cfg)
    by_slice = {}
    for s in out.samples:
        _, lines, _, loc, meta = decode(s)
        by_slice.setdefault(meta["slice"], []).append((float(loc), lines))
        assert meta["location"]["name"] == "heart"
    locs = [v[0][0] for _, v in sorted(by_slice.items())]
    assert locs[0] == pytest.approx(0.0) and locs[-1] == pytest.approx(1.0)
    assert np.all(np.diff(locs) > 0)
    assert np.allclose(np.diff(locs), 0.25)              # 8 mm gaps over 32 mm: distance-based
    for frames in by_slice.values():
        assert all(f[0] == frames[0][0] and np.array_equal(f[1], frames[0][1]) for f in frames)
    # base -> apex: the apex lies along +(1,-1,-1)
    first = decode(out.samples[0])[4]["source_plane"]["origin"]
    last = decode(out.samples[-1])[4]["source_plane"]["origin"]
    assert (np.subtract(last, first) @ np.array([1, -1, -1])) > 0


def test_image_is_robustly_rescaled_and_matches_an_independent_resampling(heart_cfg):
    study = heart_study(n_sax=2, n_frames=2)
    sl = study.views["sax"][0]
    raw = sl.load()
    out = study_samples(study, heart_cfg)
    img, *_, meta = decode(out.samples[0])
    assert meta["series"] == sl.series and meta["frame"] == 0
    lo, hi = np.percentile(raw, [0.5, 99.5])
    assert meta["intensity"]["values"] == pytest.approx([lo, hi])
    grid = Plane.from_dict(meta["grid"])
    rows, cols = np.mgrid[0:32, 0:32]
    world = grid.pixel_to_world(rows, cols)
    r, c, _ = sl.plane.world_to_pixel(world)
    expected = ndimage.map_coordinates((raw[0] - lo) / (hi - lo), [r, c], order=1, cval=0.0)
    assert np.max(np.abs(img.astype(np.float64) - expected)) < 2e-3
    inside = (r >= 0) & (r <= 39) & (c >= 0) & (c <= 47)
    assert -0.2 < img[inside].min() and img[inside].max() < 1.2


def test_missing_view_masks_its_channel_or_drops_the_study(heart_cfg):
    out = study_samples(heart_study(with_2ch=False, n_sax=3, n_frames=1), heart_cfg)
    assert len(out.samples) == 3
    for s in out.samples:
        _, lines, valid, _, meta = decode(s)
        assert valid.tolist() == [0, 1] and np.all(np.isnan(lines[0])) and np.all(np.isfinite(lines[1]))
        assert meta["references"][0]["valid"] is False and "no 2ch view" in meta["references"][0]["reason"]
    assert any(s.level == "channel" and "no 2ch view" in s.reason for s in out.skipped)
    strict = dataclasses.replace(heart_cfg, require_all_views=True)
    out = study_samples(heart_study(with_2ch=False), strict)
    assert out.samples == [] and any(s.level == "study" and "--require-all-views" in s.reason for s in out.skipped)


def test_reference_in_another_frame_of_reference_is_masked(heart_cfg):
    out = study_samples(heart_study(for_2ch="9.9.9", n_sax=2, n_frames=1), heart_cfg)
    for s in out.samples:
        _, lines, valid, _, meta = decode(s)
        assert valid.tolist() == [0, 1] and "another frame of reference" in meta["references"][0]["reason"]
    assert sum("another frame of reference" in s.reason for s in out.skipped) == 2


def test_parallel_reference_and_line_outside_grid_are_masked(heart_cfg):
    study = heart_study(n_sax=3, n_frames=1)
    sax0 = study.views["sax"][0].plane
    # a "2ch" parallel to the SAX stack, and a "4ch" cutting far outside the grid
    study.views["2ch"] = [make_slice("2ch", "2ch_1", plane_through(sax0.center + 3 * sax0.normal,
                                                                   sax0.row_dir, sax0.col_dir), 1)]
    far = sax0.center + 500 * sax0.row_dir
    study.views["4ch"] = [make_slice("4ch", "4ch_1", plane_through(far, sax0.normal, sax0.col_dir), 1)]
    out = study_samples(study, heart_cfg)
    assert len(out.samples) == 3
    for s in out.samples:
        assert decode(s)[2].tolist() == [0, 0]
    reasons = [s.reason for s in out.skipped if s.level == "channel"]
    assert sum("nearly parallel" in r for r in reasons) == 3
    assert sum("misses the 32x32 grid" in r for r in reasons) == 3


def test_nan_frame_unreadable_slice_and_one_slice_stack(heart_cfg):
    study = heart_study(n_sax=3, n_frames=3)
    sl = study.views["sax"][1]
    bad = sl.load()
    bad[1, 3, 4] = np.nan
    study.views["sax"][1] = dataclasses.replace(sl, loader=lambda: bad)

    def broken():
        raise OSError("truncated pixel data")
    study.views["sax"][2] = dataclasses.replace(study.views["sax"][2], loader=broken)
    out = study_samples(study, heart_cfg)
    assert len(out.samples) == 3 + 2                       # slice 0: 3 frames, slice 1: 2 of 3, slice 2: none
    assert any("frame 1 left out: 1 non-finite" in s.reason for s in out.skipped)
    assert any(s.level == "slice" and "truncated pixel data" in s.reason for s in out.skipped)

    one = heart_study(n_sax=1, n_frames=2)
    out = study_samples(one, heart_cfg)
    assert len(out.samples) == 2 and all(np.isnan(decode(s)[3]) for s in out.samples)
    assert all(decode(s)[4]["location"]["value"] is None for s in out.samples)
    assert any("location masked" in s.reason for s in out.skipped)


def test_duplicated_positions_are_kept_and_recorded(heart_cfg):
    study = heart_study(n_sax=3, n_frames=1)
    dup = dataclasses.replace(study.views["sax"][1], series="sax_99")
    study.views["sax"].append(dup)
    out = study_samples(study, heart_cfg)
    assert len(out.samples) == 4
    assert any("duplicated position" in s.reason and "sax_99" in s.reason for s in out.skipped)


def test_study_without_input_view_is_recorded(heart_cfg):
    study = heart_study()
    del study.views["sax"]
    out = study_samples(study, heart_cfg)
    assert out.samples == [] and out.skipped[0].level == "study" and "no sax slices" in out.skipped[0].reason


def test_sample_key_escapes_instead_of_replacing():
    assert sample_key("a.b/c", "sax 5.1", 3, 12) == "a-2Eb-2Fc_sax-205-2E1_s003_f012"
    assert sample_key("1", "sax_20", 0, 1) == "1_sax_20_s000_f001"          # DSBCC names unchanged
    for key in (sample_key("a.b/c", "sax 5.1", 3, 12), sample_key("pé1", "x", 0, 0)):
        assert re.fullmatch(r"[A-Za-z0-9_-]+", key)


ADVERSARIAL = ["p.1", "p-1", "p 1", "pé1", "p_1", "p1", "p-2E1", "p--1", "p\u00e91", "pe\u03011", "p/1", "p..1",
               "日本", "p1_", "_p1", "-", "_", " "]
ADVERSARIAL = list(dict.fromkeys(ADVERSARIAL))        # "p\u00e91" is "pé1"; NFD "pe\u03011" is not


def test_sample_keys_are_unique_over_adversarial_names():
    pairs = [(a, b) for a in ADVERSARIAL for b in ADVERSARIAL]
    keys = {sample_key(a, b, 1, 2) for a, b in pairs}
    assert len(keys) == len(pairs)
    # and injective across the subject/series boundary too
    assert sample_key("a_b", "c", 0, 0) != sample_key("a", "b_c", 0, 0)


def test_over_long_and_repeated_keys_are_refused_with_a_record(heart_cfg):
    study = heart_study(subject="x" * 80, n_sax=2, n_frames=1)
    out = study_samples(study, heart_cfg)
    assert out.samples == []
    assert any(s.level == "file" and "a tar member name holds" in s.reason for s in out.skipped)
    study = heart_study(n_sax=3, n_frames=1)
    for i, sl in enumerate(study.views["sax"]):    # three one-slice stacks named alike (knee a/T1, b/T1)
        sl.series, sl.frame_of_reference = "same", f"1.2.{i}"
    out = study_samples(study, heart_cfg)
    assert len(out.samples) == 1 and len({s.key for s in out.samples}) == 1
    assert sum("already used by another sample" in s.reason for s in out.skipped) == 2


def test_float16_cast_is_numpys_bit_for_bit():
    from anatplane_dist.shards.samples import to_float16
    rng = np.random.default_rng(3)
    src = (rng.standard_normal((64, 64)) * 10.0 ** rng.integers(-9, 5, (64, 64))).astype(np.float32)
    src[0, :6] = [6e-8, 5.96e-8, 65504.0, -65504.0, 0.0, -0.0]
    out = np.empty_like(src, dtype=np.float16)
    to_float16(src, out)
    assert np.array_equal(out.view(np.uint16), src.astype(np.float16).view(np.uint16))
