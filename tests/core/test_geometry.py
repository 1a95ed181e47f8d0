"""Geometry against analytic cases, a brute-force check, and real DICOM/NIfTI round trips."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest

from anatplane_dist.core.geometry import (
    GeometryError,
    Plane,
    clip_lines,
    heart_locations,
    intersection_lines,
    line_angle_deg,
    plane_from_dicom,
    plane_from_nifti,
    render_heatmaps,
    resample_to_grid,
    stack_positions,
    symmetric_locations,
    target_grid,
)
from anatplane_dist.sources.dicom_write import SeriesInfo, deterministic_uid, write_mr_image


def axial(z: float = 0.0, shape=(100, 100), spacing=(1.0, 1.0)) -> Plane:
    return Plane([0, 0, z], [1, 0, 0], [0, 1, 0], spacing, shape)


def random_plane(rng: np.random.Generator, shape=(96, 128)) -> Plane:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return Plane(rng.uniform(-80, 0, 3), q[:, 0], q[:, 1], rng.uniform(0.8, 2.0, 2), shape)


# -- analytic cases ---------------------------------------------------------------------

def test_vertical_line_from_sagittal_reference():
    ref = Plane([10, 0, -50], [0, 1, 0], [0, 0, 1], [1, 1], [100, 100])     # plane x = 10
    line, valid = intersection_lines(axial(), ref)
    assert valid
    np.testing.assert_allclose(np.abs(line), [1, 0, 10], atol=1e-12)
    assert line_angle_deg(line) == pytest.approx(90.0)


def test_horizontal_line_from_coronal_reference():
    ref = Plane([0, 25, -50], [1, 0, 0], [0, 0, 1], [1, 1], [100, 100])     # plane y = 25
    line, valid = intersection_lines(axial(), ref)
    assert valid
    a, b, c = line * np.sign(line[1])
    assert (a, b, c) == pytest.approx((0, 1, -25))
    assert line_angle_deg(line) == pytest.approx(0.0)


def test_anisotropic_pixels_use_dicom_spacing_order():
    # rows 2 mm apart, columns 0.5 mm apart: the plane x = 10 mm is column 20
    img = axial(shape=(50, 200), spacing=(2.0, 0.5))
    ref = Plane([10, 0, -50], [0, 1, 0], [0, 0, 1], [1, 1], [100, 100])
    line, valid = intersection_lines(img, ref)
    assert valid
    assert -line[2] / line[0] == pytest.approx(20.0)
    # and the plane y = 30 mm is row 15
    line, valid = intersection_lines(img, Plane([0, 30, -50], [1, 0, 0], [0, 0, 1], [1, 1], [9, 9]))
    assert -line[2] / line[1] == pytest.approx(15.0)


def test_oblique_45_degree_line():
    n = np.array([1.0, -1.0, 0.0]) / np.sqrt(2)          # plane x - y = 0 through the origin
    r = np.array([0.0, 0.0, 1.0])
    ref = Plane([0, 0, 0], r, np.cross(n, r), [1, 1], [10, 10])
    line, valid = intersection_lines(axial(), ref)
    assert valid
    assert line_angle_deg(line) == pytest.approx(45.0)
    # pixel (row 30, col 30) is on it, (30, 40) is 10/sqrt(2) px away
    assert line @ [30, 30, 1] == pytest.approx(0.0, abs=1e-9)
    assert abs(line @ [40, 30, 1]) == pytest.approx(10 / np.sqrt(2))


def test_parallel_planes_are_invalid_never_a_line():
    line, valid = intersection_lines(axial(0.0), axial(5.0))
    assert not valid and np.all(np.isnan(line))
    # nearly parallel (1 degree) is also refused with the default 5-degree guard
    t = np.deg2rad(1.0)
    tilted = Plane([0, 50, 0], [1, 0, 0], [0, np.cos(t), np.sin(t)], [1, 1], [100, 100])
    assert not intersection_lines(axial(), tilted)[1]
    assert intersection_lines(axial(), tilted, min_angle_deg=0.5)[1]


def test_line_outside_the_grid_is_invalid():
    ref = Plane([500, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1], [10, 10])       # x = 500 mm, image spans 0..99
    line, valid = intersection_lines(axial(), ref)
    assert not valid and np.all(np.isnan(line))


def test_corner_clipping_line_is_invalid():
    # the line x + y = -0.6 only grazes the (-0.5, -0.5) corner: visible length 0.57 px
    n = np.array([1.0, 1.0, 0.0]) / np.sqrt(2)
    r = np.array([0.0, 0.0, 1.0])
    ref = Plane([-0.3, -0.3, 0.0], r, np.cross(n, r), [1, 1], [10, 10])
    _, valid = intersection_lines(axial(), ref)
    assert not valid
    assert intersection_lines(axial(), ref, min_visible_px=0.1)[1]


def test_clip_lines_endpoints_and_length():
    p0, p1, length = clip_lines(np.array([[1.0, 0.0, -10.0], [0.0, 1.0, -500.0]]), np.array([100, 50]))
    np.testing.assert_allclose(sorted([p0[0][1], p1[0][1]]), [-0.5, 99.5])
    np.testing.assert_allclose(p0[0][0], 10.0)
    assert length[0] == pytest.approx(100.0)
    assert length[1] == 0.0 and np.all(np.isnan(p0[1]))


# -- brute force ---------------------------------------------------------------------------

def test_random_oblique_pairs_match_brute_force_points():
    """Points sampled on the reference plane that fall into the image plane lie on the line."""
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(200):
        img, ref = random_plane(rng), random_plane(rng)
        # make the reference pass through the image centre so most lines are visible
        ref = Plane(img.center + rng.normal(scale=10, size=3), ref.row_dir, ref.col_dir, ref.spacing, ref.shape)
        line, valid = intersection_lines(img, ref)
        if not valid:
            continue
        # brute force: walk a grid on the reference plane; where the signed distance to the image
        # plane changes sign between neighbours, interpolate the crossing (a point on both planes)
        u, v = np.meshgrid(np.linspace(-300, 300, 121), np.linspace(-300, 300, 121))
        pts = ref.origin + u[..., None] * ref.row_dir + v[..., None] * ref.col_dir
        _, _, off = img.world_to_pixel(pts)
        cross = np.sign(off[:, :-1]) != np.sign(off[:, 1:])
        t = off[:, :-1][cross] / (off[:, :-1][cross] - off[:, 1:][cross])
        on_both = pts[:, :-1][cross] + t[:, None] * (pts[:, 1:][cross] - pts[:, :-1][cross])
        row, col, off_both = img.world_to_pixel(on_both)
        inside = (row > 0) & (row < img.shape[0] - 1) & (col > 0) & (col < img.shape[1] - 1)
        if inside.sum() < 2:
            continue
        assert np.abs(off_both).max() < 1e-6
        dist = np.abs(line[0] * col[inside] + line[1] * row[inside] + line[2])
        assert dist.max() < 1e-6, dist.max()
        checked += 1
    assert checked > 100


def test_vectorised_batch_equals_pairwise():
    rng = np.random.default_rng(1)
    imgs = Plane.stack([random_plane(rng) for _ in range(7)])
    refs = Plane.stack([random_plane(rng) for _ in range(3)])
    lines, valid = intersection_lines(imgs[:, None], refs[None, :])
    assert lines.shape == (7, 3, 3) and valid.shape == (7, 3)
    for i in range(7):
        for j in range(3):
            one, ok = intersection_lines(imgs[i], refs[j])
            assert ok == valid[i, j]
            if ok:
                np.testing.assert_allclose(one, lines[i, j])


# -- model grid ------------------------------------------------------------------------------

def test_target_grid_is_centred_and_lines_map_exactly():
    rng = np.random.default_rng(2)
    img = random_plane(rng, shape=(180, 220))
    grid = target_grid(img, 64, 2.5)
    np.testing.assert_allclose(grid.center, img.center, atol=1e-9)
    np.testing.assert_allclose(grid.normal, img.normal, atol=1e-12)
    ref = Plane(img.center, img.col_dir, img.normal, [1, 1], [10, 10])    # cuts through the centre
    line_native, _ = intersection_lines(img, ref)
    line_grid, valid = intersection_lines(grid, ref)
    assert valid
    # the same world point, expressed in both grids, lies on both lines
    w = img.pixel_to_world(np.array(90.0), np.array(-line_native[2] / line_native[0] - line_native[1] / line_native[0] * 90))
    r, c, _ = grid.world_to_pixel(w)
    assert line_grid @ [c, r, 1] == pytest.approx(0.0, abs=1e-9)


def test_resample_to_grid_puts_pixel_centres_on_pixel_centres():
    img = Plane([0, 0, 0], [1, 0, 0], [0, 1, 0], [1.0, 1.0], [41, 41])
    pixels = np.zeros((41, 41), np.float32)
    pixels[20, 30] = 1.0                                     # a dot at x = 30 mm, y = 20 mm
    grid = target_grid(img, 21, 2.0)                         # same centre, 2 mm pixels
    out = resample_to_grid(pixels, img, grid, order=1)
    r, c, _ = grid.world_to_pixel(np.array([30.0, 20.0, 0.0]))
    assert (r, c) == pytest.approx((10.0, 15.0))
    assert out[10, 15] == pytest.approx(1.0)
    assert out.sum() == pytest.approx(1.0)
    frames = resample_to_grid(np.stack([pixels, 2 * pixels]), img, grid)
    assert frames.shape == (2, 21, 21) and frames[1, 10, 15] == pytest.approx(2.0)


# -- stacks and locations --------------------------------------------------------------------------

def oblique_stack(axis: np.ndarray, positions: list[float]) -> Plane:
    axis = axis / np.linalg.norm(axis)
    r = np.cross(axis, [0, 0, 1.0])
    r /= np.linalg.norm(r)
    c = np.cross(axis, r)
    return Plane.stack([Plane(p * axis + [5, 5, 5], r, c, [1, 1], [32, 32]) for p in positions])


def test_heart_locations_base_to_apex_on_oblique_stack():
    apex_dir = np.array([0.6, -0.5, -0.62])                 # left, anterior, inferior
    stack = oblique_stack(-apex_dir, [0, 10, 20, 25, 40])     # written with normals pointing to the base
    loc, info = heart_locations(stack)
    # slice positions along apex_dir: 0, -10, ... so the first slice is the most apical
    np.testing.assert_allclose(loc, [1.0, 0.75, 0.5, 0.375, 0.0])
    assert np.dot(info["axis"], apex_dir) > 0
    # distance-based: uneven gaps stay uneven
    assert info["extent_mm"] == pytest.approx(40.0)


def test_stack_order_never_by_z_alone():
    stack = oblique_stack(np.array([1.0, 0.0, 0.0]), [30, 0, 20, 10])        # sagittal: z identical
    order = np.argsort(stack_positions(stack))
    assert list(order) in ([1, 3, 2, 0], [0, 2, 3, 1])


def test_one_slice_and_duplicate_positions_have_no_location():
    loc, info = heart_locations(oblique_stack(np.array([1.0, -1, -1]), [0.0]))
    assert loc is None and "fewer than two" in info["reason"]
    loc, _ = symmetric_locations(oblique_stack(np.array([1.0, 0, 0]), [5.0, 5.0]))
    assert loc is None


def test_symmetric_knee_locations_agree_for_mirrored_stacks():
    left, _ = symmetric_locations(oblique_stack(np.array([1.0, 0, 0]), [0, 4, 8, 12, 16]))
    right, _ = symmetric_locations(oblique_stack(np.array([-1.0, 0, 0]), [0, 4, 8, 12, 16]))
    np.testing.assert_allclose(left, [1, 0.5, 0, 0.5, 1])
    np.testing.assert_allclose(np.sort(left), np.sort(right))


# -- heatmaps ---------------------------------------------------------------------------------------

def test_heatmap_peak_on_line_and_sigma():
    lines = np.array([[1.0, 0.0, -20.0], [np.nan, np.nan, np.nan]])
    heat = render_heatmaps(lines, np.array([True, False]), (32, 48), sigma_px=3.0)
    assert heat.shape == (2, 32, 48) and heat.dtype == np.float32
    assert np.all(heat[0, :, 20] == 1.0)
    assert heat[0, 5, 23] == pytest.approx(np.exp(-0.5), rel=1e-6)
    assert not heat[1].any()


# -- real files ---------------------------------------------------------------------------------------

def _series(n: int) -> SeriesInfo:
    return SeriesInfo("p1", deterministic_uid("study"), deterministic_uid("series", n),
                      deterministic_uid("for"), n, f"s{n}")


def test_dicom_round_trip_keeps_geometry(tmp_path):
    rng = np.random.default_rng(3)
    for k in range(5):
        plane = random_plane(rng, shape=(40, 56))
        path = write_mr_image(tmp_path / f"{k}.dcm", rng.uniform(0, 4000, (40, 56)), plane, _series(k),
                              instance_number=1)
        back = plane_from_dicom(pydicom.dcmread(path, stop_before_pixels=True))
        np.testing.assert_allclose(back.origin, plane.origin, atol=1e-4)
        np.testing.assert_allclose(back.row_dir, plane.row_dir, atol=1e-6)
        np.testing.assert_allclose(back.col_dir, plane.col_dir, atol=1e-6)
        np.testing.assert_allclose(back.spacing, plane.spacing, atol=1e-6)
        assert back.shape.tolist() == [40, 56]


@pytest.mark.parametrize("tag, value, message", [
    ("ImageOrientationPatient", [1, 0, 0, 0, 1.2, 0], "not unit"),
    ("ImageOrientationPatient", [1, 0, 0, 0.5, 0.8660254, 0], "not orthogonal"),
    ("PixelSpacing", [0, 1], "positive"),
    ("ImagePositionPatient", None, "missing"),
])
def test_bad_dicom_geometry_gives_specific_errors(tmp_path, tag, value, message):
    path = write_mr_image(tmp_path / "x.dcm", np.zeros((8, 8)), axial(shape=(8, 8)), _series(1), instance_number=1)
    ds = pydicom.dcmread(path)
    if value is None:
        delattr(ds, tag)
    else:
        setattr(ds, tag, value)
    with pytest.raises(GeometryError, match=message):
        plane_from_dicom(ds)


def test_nifti_round_trip_matches_dicom_convention(tmp_path):
    """A NIfTI volume whose slices are written as DICOM gives the same planes both ways."""
    rng = np.random.default_rng(4)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    zooms = np.array([1.4, 1.2, 8.0])
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = q * zooms
    affine_lps[:3, 3] = [-30, 40, 12]
    affine_ras = np.diag([-1, -1, 1, 1]) @ affine_lps
    data = rng.uniform(0, 100, (20, 24, 6)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, affine_ras), tmp_path / "v.nii.gz")
    img = nib.load(tmp_path / "v.nii.gz")
    planes = plane_from_nifti(img.affine, img.shape, np.arange(6))
    for k in range(6):
        # voxel (i, j, k) in LPS must be pixel (row i, col j) of slice k
        i, j = 7, 11
        world = affine_lps @ [i, j, k, 1]
        np.testing.assert_allclose(planes[k].pixel_to_world(np.array(i), np.array(j)), world[:3], atol=1e-4)
        path = write_mr_image(tmp_path / f"{k}.dcm", data[:, :, k], planes[k], _series(7), instance_number=k + 1)
        back = plane_from_dicom(pydicom.dcmread(path, stop_before_pixels=True))
        np.testing.assert_allclose(back.origin, planes[k].origin, atol=1e-4)
        np.testing.assert_allclose(back.normal, planes[k].normal, atol=1e-6)
