"""The ACDC-layout labelled cohort: files, Info.cfg, masks that match the image and geometry."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from anatplane_dist.core.geometry import Plane, plane_from_nifti
from anatplane_dist.sources.phantom.acdc import stack_affine_ras
from anatplane_dist.sources.phantom.heart import GROUPS
from tests.sources.phantom.support import ACDC_CFG


def _info(path) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in path.read_text().splitlines())


def test_layout_and_info_cfg(acdc_cohort):
    out, records = acdc_cohort
    assert [r["patient"] for r in records] == ["patient001", "patient002"]
    for rec in records:
        pdir = out / rec["patient"]
        info = _info(pdir / "Info.cfg")
        assert set(info) == {"ED", "ES", "Group", "Height", "NbFrame", "Weight"}
        assert info["Group"] in GROUPS and int(info["ED"]) == 1 and 1 < int(info["ES"]) <= int(info["NbFrame"])
        ed, es = int(info["ED"]), int(info["ES"])
        expected = {f"{rec['patient']}_4d.nii.gz", "Info.cfg"} | {
            f"{rec['patient']}_frame{f:02d}{sfx}.nii.gz" for f in (ed, es) for sfx in ("", "_gt")}
        assert {p.name for p in pdir.iterdir()} == expected
        four_d = nib.load(pdir / f"{rec['patient']}_4d.nii.gz")
        assert four_d.shape[3] == int(info["NbFrame"]) == rec["n_frames"] and four_d.shape[2] == rec["slices"]
        for f in (ed, es):
            frame = nib.load(pdir / f"{rec['patient']}_frame{f:02d}.nii.gz")
            np.testing.assert_array_equal(np.asarray(frame.dataobj), np.asarray(four_d.dataobj)[..., f - 1])
            np.testing.assert_allclose(frame.affine, four_d.affine)


@pytest.mark.parametrize("which", ["ED", "ES"])
def test_masks_hold_the_three_structures_and_match_the_image(acdc_cohort, which):
    out, records = acdc_cohort
    for rec in records:
        pdir = out / rec["patient"]
        f = int(_info(pdir / "Info.cfg")[which])
        img = np.asarray(nib.load(pdir / f"{rec['patient']}_frame{f:02d}.nii.gz").dataobj).astype(float)
        gt_img = nib.load(pdir / f"{rec['patient']}_frame{f:02d}_gt.nii.gz")
        gt = np.asarray(gt_img.dataobj)
        assert gt.dtype == np.uint8 and set(np.unique(gt)) == {0, 1, 2, 3}
        lv, myo, rv, bg = (img[gt == k].mean() for k in (3, 2, 1, 0))
        assert lv > 2.0 * myo and rv > 2.0 * myo, (lv, myo, rv, bg)
        np.testing.assert_allclose(gt_img.affine, nib.load(pdir / f"{rec['patient']}_4d.nii.gz").affine)


def test_systole_shrinks_the_lv_cavity(acdc_cohort):
    out, records = acdc_cohort
    for rec in records:
        pdir = out / rec["patient"]
        vol = {f: (np.asarray(nib.load(pdir / f"{rec['patient']}_frame{f:02d}_gt.nii.gz").dataobj) == 3).sum()
               for f in (rec["ed"], rec["es"])}
        assert vol[rec["es"]] < 0.85 * vol[rec["ed"]]


def test_affine_puts_the_long_axis_in_the_lv_of_every_mid_slice(acdc_cohort):
    out, records = acdc_cohort
    for rec in records:
        gt_img = nib.load(out / rec["patient"] / f"{rec['patient']}_frame01_gt.nii.gz")
        gt = np.asarray(gt_img.dataobj)
        base, u = np.asarray(rec["base"]), np.asarray(rec["long_axis"])
        planes = plane_from_nifti(gt_img.affine, gt.shape, np.arange(gt.shape[2]))
        assert np.degrees(np.arccos(abs(float(planes.normal[0] @ u)))) < 6.5    # SAX: along the long axis
        pts = base[None] + np.asarray(rec["sax_t_mm"])[:, None] * u[None]
        row, col, off = planes.world_to_pixel(pts)
        np.testing.assert_allclose(off, 0.0, atol=1e-3)     # slice k of the volume is plane k
        for k, t in enumerate(rec["sax_t_mm"]):
            if 15.0 < t < 50.0:                               # well inside the LV cavity
                assert gt[int(round(row[k])), int(round(col[k])), k] == 3


def test_stack_affine_round_trips_through_plane_from_nifti():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    r, c = q[:, 0], q[:, 1]
    n = np.cross(r, c)
    stack = Plane.stack([Plane(np.array([5.0, -3.0, 2.0]) + 9.0 * k * n, r, c, [1.4, 1.4], [20, 24])
                         for k in range(4)])
    back = plane_from_nifti(stack_affine_ras(stack), (20, 24, 4), np.arange(4))
    for f in ("origin", "row_dir", "col_dir", "spacing", "shape"):
        np.testing.assert_allclose(getattr(back, f), getattr(stack, f), atol=1e-9)
    uneven = Plane.stack([stack[0], stack[1], stack[3]])
    with pytest.raises(ValueError, match="evenly spaced"):
        stack_affine_ras(uneven)


def test_cohort_size_follows_the_config(acdc_cohort):
    out, records = acdc_cohort
    assert len(records) == ACDC_CFG.patients
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [r["patient"] for r in records]
