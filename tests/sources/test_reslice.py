"""Reslicer: exact axis-aligned slices, and oblique planes that agree along their common line.

The common-line checks run on a smooth synthetic volume always, and on real anatomy (the
Colin27 T1 of the Debian package ``mricron-data``) when it is installed.
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from anatplane_dist.core.geometry import (
    GeometryError,
    Plane,
    clip_lines,
    intersection_lines,
    plane_from_nifti,
)
from anatplane_dist.sources.reslice import plane_through, reslice, world_to_voxel

COLIN27 = Path("/usr/share/mricron/templates/ch2.nii.gz")


def smooth_volume(shape=(48, 52, 44), seed=0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(size=shape)
    vol = ndimage.gaussian_filter(noise, sigma=4.0)
    return ((vol - vol.min()) / (vol.max() - vol.min()) * 1000).astype(np.float32)


def oblique_affine() -> np.ndarray:
    q, _ = np.linalg.qr(np.array([[0.9, 0.3, 0.1], [-0.2, 0.8, 0.5], [0.1, -0.4, 0.9]]))
    a = np.eye(4)
    a[:3, :3] = q * np.array([1.1, 0.9, 1.3])
    a[:3, 3] = [-25.0, -20.0, -30.0]
    return a


def volume_center_lps(shape, affine) -> np.ndarray:
    ras = affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0) + affine[:3, 3]
    return ras * np.array([-1.0, -1.0, 1.0])


@pytest.mark.parametrize("order", [0, 1, 3])
def test_axis_aligned_reslice_is_the_volume_slice(order: int):
    vol, aff = smooth_volume(), oblique_affine()
    for axis in range(3):
        k = vol.shape[axis] // 3
        plane = plane_from_nifti(aff, vol.shape, k, axis)
        got = reslice(vol, aff, plane, order=order)
        np.testing.assert_allclose(got, np.take(vol, k, axis), atol=1e-3)


def test_batch_and_nibabel_input(tmp_path: Path):
    vol, aff = smooth_volume(), oblique_affine()
    nib.save(nib.Nifti1Image(vol, aff), str(tmp_path / "v.nii.gz"))
    img = nib.load(str(tmp_path / "v.nii.gz"))
    c = volume_center_lps(vol.shape, img.affine)
    planes = [plane_through(c + [0, 0, dz], [1, 0.2, 0], [0, 1, 0.3], 1.0, (20, 30)) for dz in (-4.0, 0.0, 5.0)]
    batch = reslice(img, None, Plane.stack(planes))
    assert batch.shape == (3, 20, 30) and batch.dtype == np.float32
    for p, b in zip(planes, batch):
        np.testing.assert_allclose(reslice(vol, img.affine, p), b, atol=1e-4)


def test_outside_the_volume_is_cval():
    vol, aff = smooth_volume(), oblique_affine()
    far = plane_through(volume_center_lps(vol.shape, aff) + [500, 0, 0], [0, 1, 0], [0, 0, 1], 1.0, 8)
    assert np.all(reslice(vol, aff, far, cval=-7.0) == -7.0)


def test_plane_through():
    p = plane_through([1.0, 2.0, 3.0], [2.0, 0, 0], [0.5, 1.0, 0.0], (1.5, 0.5), (9, 11))
    np.testing.assert_allclose(p.center, [1, 2, 3], atol=1e-12)
    np.testing.assert_allclose(p.col_dir, [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(p.normal, [0, 0, 1], atol=1e-12)
    with pytest.raises(GeometryError, match="parallel"):
        plane_through([0, 0, 0], [1, 0, 0], [2, 0, 0], 1.0, 4)


def test_bad_inputs():
    vol = smooth_volume((8, 8, 8))
    p = plane_through([0, 0, 0], [1, 0, 0], [0, 1, 0], 1.0, 4)
    with pytest.raises(GeometryError, match="singular"):
        reslice(vol, np.diag([1.0, 0.0, 1.0, 1.0]), p)
    with pytest.raises(GeometryError, match="finite 4x4"):
        reslice(vol, np.full((4, 4), np.nan), p)
    with pytest.raises(ValueError, match="must be 3D"):
        reslice(vol[0], np.eye(4), p)
    with pytest.raises(ValueError, match="needs its voxel->RAS affine"):
        reslice(vol, None, p)
    q = plane_through([0, 0, 0], [1, 0, 0], [0, 1, 0], 1.0, 5)
    with pytest.raises(ValueError, match="share one matrix size"):
        reslice(vol, np.eye(4), Plane.stack([p, Plane(q.origin, q.row_dir, q.col_dir, q.spacing, (4, 5))]))


def _shared_row_planes(center: np.ndarray, u: np.ndarray, v: np.ndarray, w: np.ndarray, n: int = 64,
                       row: int = 20, col: int = 37) -> tuple[Plane, Plane]:
    """A: rows along u, columns along v; B: rows along w, columns along u.  Row ``row`` of A
    and column ``col`` of B are the same world points (the line through ``center`` along u)."""
    a = Plane(center - (n // 2) * u - row * v, u, v, (1.0, 1.0), (n, n))
    b = Plane(center - col * w - (n // 2) * u, w, u, (1.0, 1.0), (n, n))
    return a, b


def _oblique_frame(seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    u, v = q[:, 0], q[:, 1]
    w = q[:, 2] * np.cos(0.7) + v * np.sin(0.7)          # B at ~50 deg to A, both oblique
    w = w - (w @ u) * u
    return u, v, w / np.linalg.norm(w)


def _check_shared_line(vol: np.ndarray, aff: np.ndarray, center: np.ndarray, min_std: float) -> None:
    u, v, w = _oblique_frame()
    a, b = _shared_row_planes(center, u, v, w)
    img_a, img_b = reslice(vol, aff, a), reslice(vol, aff, b)
    # the geometry says: B cuts A along row 20 (y = 20), A cuts B along column 37 (x = 37)
    line_ab, ok_ab = intersection_lines(a, b)
    line_ba, ok_ba = intersection_lines(b, a)
    assert ok_ab and ok_ba
    np.testing.assert_allclose(-line_ab[2] / line_ab[1], 20.0, atol=1e-9)
    assert abs(line_ab[0]) < 1e-9
    np.testing.assert_allclose(-line_ba[2] / line_ba[0], 37.0, atol=1e-9)
    # and the pixels agree: both images sampled the same voxels along it
    profile_a, profile_b = img_a[20, :], img_b[:, 37]
    assert profile_a.std() > min_std                          # the line crosses real structure
    np.testing.assert_allclose(profile_a, profile_b, rtol=0, atol=1e-3 * max(1.0, float(np.abs(profile_a).max())))
    # a neighbouring row is a different line: the check can fail
    assert np.abs(img_a[24, :] - profile_b).mean() > 10 * np.abs(profile_a - profile_b).mean() + 1e-6


def _check_generic_oblique(vol: np.ndarray, aff: np.ndarray, center: np.ndarray) -> None:
    """Arbitrary oblique planes (the line at no pixel row): sample the computed line in both
    images; they agree far better than a line shifted by 3 px."""
    u, v, w = _oblique_frame(seed=11)
    a = plane_through(center + 2.3 * v, u, v, (0.9, 1.1), (70, 64))
    b = plane_through(center - 3.1 * u, w, u + 0.3 * v, (1.0, 0.8), (60, 72))
    img_a, img_b = reslice(vol, aff, a), reslice(vol, aff, b)
    line, ok = intersection_lines(a, b)
    assert ok
    p0, p1, length = clip_lines(line, a.shape)
    t = np.linspace(0.1, 0.9, 200)[:, None]
    pts = p0 + t * (p1 - p0)                             # (x=col, y=row) in A
    world = a.pixel_to_world(pts[:, 1], pts[:, 0])
    rb, cb, off = b.world_to_pixel(world)
    assert np.abs(off).max() < 1e-6                      # the line's points lie on plane B
    inside = (rb > 0) & (rb < b.shape[0] - 1) & (cb > 0) & (cb < b.shape[1] - 1)
    assert inside.sum() > 50

    def sample(img, r, c):
        return ndimage.map_coordinates(img, [r, c], order=1)

    va = sample(img_a, pts[inside, 1], pts[inside, 0])
    vb = sample(img_b, rb[inside], cb[inside])
    truth = ndimage.map_coordinates(vol, world_to_voxel(world[inside], aff).T, order=1)
    err = np.abs(va - vb).mean()
    shifted = pts[inside] + 3.0 * line[:2]               # 3 px along the line's normal in A
    err_shift = np.abs(sample(img_a, shifted[:, 1], shifted[:, 0]) - vb).mean()
    assert err < 0.25 * err_shift, (err, err_shift)
    assert np.abs(va - truth).mean() < 0.25 * err_shift


def test_common_line_synthetic():
    vol, aff = smooth_volume(), oblique_affine()
    center = volume_center_lps(vol.shape, aff)
    _check_shared_line(vol, aff, center, min_std=5.0)
    _check_generic_oblique(vol, aff, center)


@pytest.mark.skipif(not COLIN27.exists(), reason="real anatomy needs Debian package mricron-data")
def test_common_line_real_anatomy():
    img = nib.load(str(COLIN27))
    vol = np.asarray(img.dataobj, dtype=np.float32)
    center = volume_center_lps(vol.shape, img.affine) + [0.0, 0.0, 10.0]
    _check_shared_line(vol, img.affine, center, min_std=10.0)
    _check_generic_oblique(vol, img.affine, center)


def _volume(kind: str) -> tuple[np.ndarray, np.ndarray]:
    if kind == "colin27":
        if not COLIN27.exists():
            pytest.skip("real anatomy needs Debian package mricron-data")
        img = nib.load(str(COLIN27))
        return np.asarray(img.dataobj, dtype=np.float32), img.affine
    vol = smooth_volume()
    return vol * (255.0 / vol.max()), oblique_affine()


@pytest.mark.parametrize("kind", ["synthetic", "colin27"])
def test_resliced_dicom_through_the_reader(tmp_path: Path, kit, kind: str):
    """Volume -> oblique resliced planes -> DICOM files -> knee reader -> line from the read
    geometry -> the pixels read back agree along it (and not along a shifted line)."""
    from anatplane_dist.sources import knee
    from anatplane_dist.sources.dicom_write import write_mr_image

    vol, aff = _volume(kind)
    center = volume_center_lps(vol.shape, aff) + [0.0, 0.0, 10.0]
    tilt = np.radians(12.0)
    sag_row, sag_col = np.array([0.0, np.cos(tilt), np.sin(tilt)]), np.array([0.0, np.sin(tilt), -np.cos(tilt)])
    sag_normal = np.cross(sag_row, sag_col)
    sagittal = [plane_through(center + d * sag_normal, sag_row, sag_col, 1.0, 96) for d in (-12.0, -6.0, 0.0, 6.0, 12.0)]
    coronal = plane_through(center + [3.0, 4.0, 0.0], [1.0, 0.0, 0.15], [0.0, 0.1, -1.0], (1.2, 0.9), (80, 100))
    for name, planes in (("sag", sagittal), ("cor", [coronal])):
        info = kit.series_info("V", name, 1)
        for i, p in enumerate(planes):
            write_mr_image(tmp_path / "V" / name / f"{i}.dcm", reslice(vol, aff, p) * 16.0, p, info, instance_number=i + 1)
    st = knee.read_study(tmp_path / "V")
    assert {v: len(s) for v, s in st.views.items()} == {"sagittal": 5, "coronal": 1}
    sag, cor = st.views["sagittal"][2], st.views["coronal"][0]
    line, ok = intersection_lines(sag.plane, cor.plane)
    assert ok
    img_s, img_c = sag.load()[0] / 16.0, cor.load()[0] / 16.0
    p0, p1, _ = clip_lines(line, sag.plane.shape)
    pts = p0 + np.linspace(0.05, 0.95, 150)[:, None] * (p1 - p0)
    rc, cc, off = cor.plane.world_to_pixel(sag.plane.pixel_to_world(pts[:, 1], pts[:, 0]))
    assert np.abs(off).max() < 1e-3
    inside = (rc > 0) & (rc < cor.plane.shape[0] - 1) & (cc > 0) & (cc < cor.plane.shape[1] - 1)
    assert inside.sum() > 40
    vs = ndimage.map_coordinates(img_s, [pts[inside, 1], pts[inside, 0]], order=1)
    vc = ndimage.map_coordinates(img_c, [rc[inside], cc[inside]], order=1)
    shifted = pts[inside] + 3.0 * line[:2]
    vshift = ndimage.map_coordinates(img_s, [shifted[:, 1], shifted[:, 0]], order=1)
    assert vs.std() > 5.0                                  # the line crosses real structure
    assert np.abs(vs - vc).mean() < 0.4 * np.abs(vshift - vc).mean()
