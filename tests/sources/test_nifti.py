"""NIfTI stack reader on real files written with nibabel."""
from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from anatplane_dist.sources import nifti
from anatplane_dist.sources.base import ReaderError
from anatplane_dist.sources.dicom_read import read_header
from anatplane_dist.sources.dicom_write import write_mr_image


def oblique_affine(zooms=(1.5, 1.2, 4.0), angle_deg=20.0, offset=(-30.0, 12.0, 5.0)) -> np.ndarray:
    t = np.radians(angle_deg)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t) * 0.9, np.cos(t) * 0.9, -0.4359],
                    [np.sin(t) * 0.4359, np.cos(t) * 0.4359, 0.9]])
    rot, _ = np.linalg.qr(rot)                       # orthonormal, oblique
    a = np.eye(4)
    a[:3, :3] = rot * np.asarray(zooms)
    a[:3, 3] = offset
    return a


def save(path: Path, data: np.ndarray, affine: np.ndarray, *, codes: int = 1) -> Path:
    img = nib.Nifti1Image(data, affine)
    img.header.set_sform(affine, code=codes)
    img.header.set_qform(affine, code=codes)
    nib.save(img, str(path))
    return path


def test_planes_and_pixels_along_each_axis(tmp_path: Path):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(9, 11, 6)).astype(np.float32)
    aff = oblique_affine()
    path = save(tmp_path / "vol.nii.gz", data, aff)
    aff = nib.load(str(path)).affine                  # as stored (float32 in the header)
    ras_to_lps = np.diag([-1.0, -1.0, 1.0])
    for axis in range(3):
        st = nifti.read_nifti_stack(path, "stack", axis)
        slices = st.views["stack"]
        assert len(slices) == data.shape[axis] and st.subject == "vol" and slices[0].series == "vol"
        assert st.meta["orientation"] == "sform" and st.skipped == []
        for k in (0, data.shape[axis] - 1):
            img = np.take(data, k, axis)
            px = slices[k].load()
            assert px.shape == (1,) + img.shape
            np.testing.assert_array_equal(px[0], img)
            # pixel (row i, col j) of the slice is voxel (.., k, ..) of the volume, in LPS
            i, j = img.shape[0] - 1, img.shape[1] - 1
            vox = [i, j]
            vox.insert(axis, k)
            world_ras = aff[:3, :3] @ vox + aff[:3, 3]
            np.testing.assert_allclose(slices[k].plane.pixel_to_world(i, j), ras_to_lps @ world_ras, atol=1e-9)
        # slices in index order are monotonic along the stack normal
        pos = np.array([s.plane.origin @ slices[0].plane.normal for s in slices])
        assert np.all(np.diff(pos) > 0) or np.all(np.diff(pos) < 0)


def test_round_trip_through_dicom(tmp_path: Path, kit):
    """A NIfTI slice written as DICOM reads back with the same plane (one convention)."""
    data = np.arange(8 * 10 * 5, dtype=np.float32).reshape(8, 10, 5)
    path = save(tmp_path / "v.nii", data, oblique_affine())
    sl = nifti.read_nifti_stack(path, "stack", 2).views["stack"][3]
    f = write_mr_image(tmp_path / "s.dcm", sl.load()[0], sl.plane, kit.series_info("S", "s", 1), instance_number=1)
    h = read_header(f)
    for name in ("origin", "row_dir", "col_dir", "spacing"):
        np.testing.assert_allclose(getattr(h.plane, name), getattr(sl.plane, name), atol=1e-6)


def test_4d_cine_frames_along_axis_3(tmp_path: Path):
    data = np.random.default_rng(1).random((7, 6, 4, 5)).astype(np.float32)
    path = save(tmp_path / "patient001_4d.nii.gz", data, np.diag([1.4, 1.4, 10.0, 1.0]))
    st = nifti.read_nifti_stack(path, "sax")
    sl = st.views["sax"][2]
    assert [f.index for f in sl.frames] == [0, 1, 2, 3, 4] and sl.series == "patient001_4d"
    px = sl.load()
    assert px.shape == (5, 7, 6)
    np.testing.assert_array_equal(px[3], data[:, :, 2, 3])


def test_scaling_applied(tmp_path: Path):
    data = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_slope_inter(0.5, 10.0)
    nib.save(img, str(tmp_path / "s.nii"))
    px = nifti.read_nifti_stack(tmp_path / "s.nii", "stack").views["stack"][1].load()
    np.testing.assert_allclose(px[0], data[:, :, 1] * 0.5 + 10.0)


def test_nan_voxels_fail_only_their_slice(tmp_path: Path):
    data = np.ones((5, 5, 4), dtype=np.float32)
    data[2, 3, 2] = np.nan
    data[0, 0, 2] = np.inf
    st = nifti.read_nifti_stack(save(tmp_path / "n.nii.gz", data, np.eye(4)), "stack")
    st.views["stack"][1].load()
    with pytest.raises(ReaderError, match=r"n.nii.gz: slice 2 has 2 non-finite"):
        st.views["stack"][2].load()


@pytest.mark.parametrize("affine, match", [
    (np.diag([1.0, 0.0, 2.0, 1.0]), "zero voxel size"),
    (np.array([[1.0, 0.7, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), "not orthogonal"),
])
def test_bad_affines(tmp_path: Path, affine: np.ndarray, match: str):
    path = tmp_path / "bad.nii"
    img = nib.Nifti1Image(np.zeros((4, 4, 3), np.float32), None)
    img.header.set_sform(affine, code=1)             # sform only: a qform cannot hold such an affine
    nib.save(img, str(path))
    with pytest.raises(ReaderError, match=match):
        nifti.read_nifti_stack(path, "stack")


def test_bad_files(tmp_path: Path):
    (tmp_path / "junk.nii").write_bytes(b"\x00" * 40)
    with pytest.raises(ReaderError, match="not a readable NIfTI"):
        nifti.read_nifti_stack(tmp_path / "junk.nii", "stack")
    nib.save(nib.Nifti1Image(np.zeros((4, 4), np.float32), np.eye(4)), str(tmp_path / "flat.nii"))
    with pytest.raises(ReaderError, match=r"expected a 3D volume or a 4D cine, got shape \(4, 4\)"):
        nifti.read_nifti_stack(tmp_path / "flat.nii", "stack")
    good = save(tmp_path / "ok.nii", np.zeros((4, 4, 3), np.float32), np.eye(4))
    with pytest.raises(ReaderError, match="slice axis must be 0, 1 or 2"):
        nifti.read_nifti_stack(good, "stack", axis=3)
    # a .nii.gz cut short: the header reads, the pixels do not -> error at load, per slice
    raw = gzip.compress(nib.Nifti1Image(np.random.default_rng(0).random((32, 32, 8)).astype(np.float32),
                                        np.eye(4)).to_bytes())
    (tmp_path / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    st = nifti.read_nifti_stack(tmp_path / "cut.nii.gz", "stack")
    with pytest.raises(ReaderError, match="cut.nii.gz: cannot read slice 7"):
        st.views["stack"][7].load()


def test_no_orientation_is_recorded(tmp_path: Path):
    path = tmp_path / "plain.nii"
    img = nib.Nifti1Image(np.zeros((4, 4, 3), np.float32), None)
    img.header.set_zooms((2.0, 2.0, 5.0))
    nib.save(img, str(path))
    st = nifti.read_nifti_stack(path, "stack")
    np.testing.assert_allclose(st.views["stack"][0].plane.spacing, [2.0, 2.0])
    assert st.meta["orientation"] == "none"
    assert [(s.level, s.reason.split(":")[0]) for s in st.skipped] == [("channel", "NIfTI header has no qform/sform")]
    assert st.views["stack"][0].frame_of_reference == "nifti:plain.nii"


def test_iter_studies_never_raises(tmp_path: Path):
    (tmp_path / "a").mkdir()
    save(tmp_path / "a" / "a.nii.gz", np.zeros((4, 4, 3), np.float32), np.eye(4))
    (tmp_path / "b.nii").write_bytes(b"garbage")
    save(tmp_path / "c.nii", np.zeros((4, 4, 2), np.float32), np.eye(4))
    studies = list(nifti.iter_studies(tmp_path, "stack"))
    assert [s.subject for s in studies] == ["a", "b", "c"]
    assert [len(s.views.get("stack", [])) for s in studies] == [3, 0, 2]
    assert studies[0].views["stack"][0].frames[0].path == "a/a.nii.gz"
    assert studies[1].skipped[0].level == "study" and "not a readable NIfTI" in studies[1].skipped[0].reason
