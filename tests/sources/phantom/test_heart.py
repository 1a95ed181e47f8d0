"""Cardiac anatomy and the technologist's prescription: geometry checked against the truth."""
from __future__ import annotations

import numpy as np
import pytest

from anatplane_dist.core.geometry import ANATOMICAL_APEX_LPS, heart_locations, intersection_lines
from anatplane_dist.sources.phantom.heart import (
    GROUPS,
    LABEL_LV,
    LABEL_MYO,
    LABEL_RV,
    render_cine,
    sample_heart,
)
from anatplane_dist.sources.phantom.prescribe import prescribe_heart_views
from anatplane_dist.sources.phantom.render import plane_points

SEEDS = range(6)


def _subject(seed: int, matrix: int = 64):
    rng = np.random.default_rng(seed)
    anatomy = sample_heart(rng, GROUPS[seed % len(GROUPS)])
    return anatomy, prescribe_heart_views(anatomy, rng, matrix)


def _lv_centre_px(anatomy, views):
    """(row, col) of the true long axis in every SAX image, and the out-of-plane residual."""
    pts = anatomy.base[None] + views.sax_t[:, None] * anatomy.u[None]
    return views.sax.world_to_pixel(pts)


@pytest.mark.parametrize("seed", SEEDS)
def test_long_axis_views_contain_the_long_axis(seed):
    anatomy, views = _subject(seed)
    row, col, off = _lv_centre_px(anatomy, views)
    np.testing.assert_allclose(off, 0.0, atol=1e-6)
    for ref in (views.ch2, views.ch4):
        lines, valid = intersection_lines(views.sax, ref)
        assert valid.all()
        dist_mm = np.abs(lines[:, 0] * col + lines[:, 1] * row + lines[:, 2]) * views.sax.spacing[:, 0]
        assert dist_mm.max() < 4.0, dist_mm
    # the two LAX planes cross along (about) the long axis, roughly perpendicular to each other
    common = np.cross(views.ch2.normal, views.ch4.normal)
    common /= np.linalg.norm(common)
    assert np.degrees(np.arccos(abs(common @ anatomy.u))) < 3.0
    assert 60.0 < np.degrees(np.arccos(abs(views.ch2.normal @ views.ch4.normal))) <= 90.0


@pytest.mark.parametrize("seed", SEEDS)
def test_sax_stack_runs_base_to_apex_along_the_true_long_axis(seed):
    anatomy, views = _subject(seed)
    n = len(views.sax)
    assert 8 <= n <= 14 and 8.0 <= views.gap <= 10.0
    assert np.all(np.diff(views.sax_t) > 0)
    assert views.sax_t[0] <= 1.0 and views.sax_t[-1] >= anatomy.length - views.gap
    tilt = np.degrees(np.arccos(abs(float(views.sax.normal[0] @ anatomy.u))))
    assert tilt <= 6.0 + 1e-9
    loc, info = heart_locations(views.sax)
    assert loc is not None and loc[0] == 0.0 and loc[-1] == 1.0
    assert np.all(np.diff(loc) > 0), "locations must grow from base to apex"
    # the same holds for any slice order (readers may hand the slices over shuffled)
    perm = np.random.default_rng(seed).permutation(n)
    loc_perm, _ = heart_locations(views.sax[perm])
    np.testing.assert_allclose(loc_perm, loc[perm])
    assert anatomy.u @ ANATOMICAL_APEX_LPS > 0.8


def test_views_vary_between_subjects_in_spacing_rotation_and_direction():
    spacings, row_dirs, signs = [], [], []
    for seed in SEEDS:
        anatomy, views = _subject(seed)
        for p in (views.sax[0], views.ch2, views.ch4):
            assert 1.2 <= p.spacing[0] <= 1.8 and p.spacing[0] == p.spacing[1]
        spacings.append(views.sax.spacing[0, 0])
        row_dirs.append(views.sax.row_dir[0])
        signs.append(np.sign(views.sax.normal[0] @ anatomy.u))
    assert np.ptp(spacings) > 0.1
    assert min(abs(a @ b) for a in row_dirs for b in row_dirs) < 0.9     # in-plane axes rotate
    assert len(set(signs)) == 2                                          # stacks written both ways


def _lv_volume_ml(anatomy, phase: float) -> float:
    g = np.arange(-70.0, 70.0, 2.0)
    centre = anatomy.base + 0.45 * anatomy.length * anatomy.u
    pts = centre + np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1)
    labels = anatomy.render_heart(anatomy.render_background(pts), pts, anatomy.contraction(phase)).labels
    return float((labels == LABEL_LV).sum()) * 8.0 / 1000.0


@pytest.mark.parametrize("group", ["NOR", "DCM"])
def test_contraction_ejects_about_the_sampled_fraction(group):
    anatomy = sample_heart(np.random.default_rng(3), group)
    ed = _lv_volume_ml(anatomy, 0.0)
    es = _lv_volume_ml(anatomy, anatomy.es_phase)
    assert 60.0 < ed < 400.0
    assert abs((ed - es) / ed - anatomy.ef) < 0.12
    assert anatomy.contraction(0.0) == 0.0 and anatomy.contraction(anatomy.es_phase) == pytest.approx(1.0)


def test_mid_sax_slice_has_bright_blood_dark_myocardium_and_all_labels():
    anatomy, views = _subject(1, matrix=96)
    mid = views.sax[len(views.sax) // 2]
    px, labels = render_cine(anatomy, mid, 2, np.random.default_rng(0))
    assert px.dtype == np.uint16 and px.max() <= 4095
    ed_px, ed_lab = px[0].astype(float), labels[0]
    assert set(np.unique(ed_lab)) == {0, LABEL_RV, LABEL_MYO, LABEL_LV}
    lv, myo, rv = (ed_px[ed_lab == k].mean() for k in (LABEL_LV, LABEL_MYO, LABEL_RV))
    assert lv > 2.0 * myo and rv > 2.0 * myo
    assert (labels[1] == LABEL_LV).sum() < (ed_lab == LABEL_LV).sum()       # frame 1 is in systole
    # the RV sits on the septal side: towards +v of the LV centre
    rows, cols = np.nonzero(ed_lab == LABEL_RV)
    rv_world = mid.pixel_to_world(rows.mean(), cols.mean())
    lr, lc = np.nonzero(ed_lab == LABEL_LV)
    lv_world = mid.pixel_to_world(lr.mean(), lc.mean())
    assert (rv_world - lv_world) @ anatomy.v > 10.0


def test_render_cine_is_deterministic_for_a_given_generator():
    anatomy, views = _subject(2, matrix=32)
    a = render_cine(anatomy, views.ch4, 3, np.random.default_rng(5))
    b = render_cine(anatomy, views.ch4, 3, np.random.default_rng(5))
    c = render_cine(anatomy, views.ch4, 3, np.random.default_rng(6))
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
    assert plane_points(views.ch4).shape == (32, 32, 3)


def test_unknown_group_is_rejected():
    with pytest.raises(ValueError, match="unknown group"):
        sample_heart(np.random.default_rng(0), "XYZ")
