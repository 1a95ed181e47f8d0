"""Target-task loaders: ACDC NIfTI -> model grid, label tables, knee stacks."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from anatplane_dist.core.geometry import Plane
from anatplane_dist.finetune.data import (
    ACDC_CLASSES,
    FinetuneDataError,
    GridSpec,
    load_acdc,
    load_knee,
    read_labels_csv,
    stack_from_study,
)
from anatplane_dist.sources.base import Frame, Slice, Study
from tests.finetune.conftest import write_acdc, write_acdc_subject

GRID = GridSpec(size=64, spacing=1.5)


def _centroid_world(label: np.ndarray, planes: Plane, value: int) -> np.ndarray:
    """Mean LPS position of all pixels with ``value`` over a slice-first stack."""
    pts = []
    for s in range(label.shape[0]):
        r, c = np.nonzero(label[s] == value)
        if r.size:
            pts.append(planes[s].pixel_to_world(r, c))
    return np.concatenate(pts).mean(axis=0)


def test_acdc_volumes_on_model_grid(acdc_root: Path) -> None:
    subjects, skips = load_acdc(acdc_root, GRID)
    assert [s.subject for s in subjects] == [f"patient{i:03d}" for i in range(1, 7)]
    assert skips == []
    vol = subjects[0].volumes[0]
    assert [v.phase for v in subjects[0].volumes] == ["ED", "ES"]
    assert subjects[0].info["Group"] == "NOR"
    assert vol.image.shape == (5, 64, 64) and vol.image.dtype == np.float32
    assert vol.label.shape == (5, 64, 64) and vol.label.dtype == np.uint8
    assert vol.native_label.shape == (5, 56, 48)
    assert vol.voxel_mm == pytest.approx((8.0, 1.6, 1.4))
    assert set(np.unique(vol.label)) == {0, 1, 2, 3}
    # z-scored slices, as in pretraining
    assert np.allclose(vol.image.mean(axis=(1, 2)), 0, atol=1e-4)
    assert np.allclose(vol.image.std(axis=(1, 2)), 1, atol=1e-3)
    # the same anatomy in the same place: LV centroid in world mm agrees native vs grid
    for value in ACDC_CLASSES:
        native = _centroid_world(vol.native_label, vol.native_planes, value)
        grid = _centroid_world(vol.label, vol.grids, value)
        assert np.linalg.norm(native - grid) < 1.0, value
    # grid pixels are isotropic at the requested spacing, centred on the native slice
    assert np.allclose(vol.grids.spacing, 1.5)
    assert np.allclose(vol.grids.center, vol.native_planes.center)
    # bright blood: the LV pool is brighter than the myocardium after normalisation
    assert vol.image[vol.label == 3].mean() > vol.image[vol.label == 2].mean() + 1.0


def test_acdc_bad_inputs_are_recorded_not_fatal(tmp_path: Path) -> None:
    root = write_acdc(tmp_path / "acdc", 2, seed=1)
    rng = np.random.default_rng(3)
    # a frame without ground truth
    d = write_acdc_subject(root, "patient003", rng, write_info=False)
    (d / "patient003_frame09_gt.nii.gz").unlink()
    # label values outside 0..3
    d4 = write_acdc_subject(root, "patient004", rng)
    img = nib.load(str(d4 / "patient004_frame01_gt.nii.gz"))
    bad = np.asarray(img.dataobj).copy()
    bad[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(bad, img.affine), str(d4 / "patient004_frame01_gt.nii.gz"))
    # a truncated file
    d5 = write_acdc_subject(root, "patient005", rng)
    p = d5 / "patient005_frame01.nii.gz"
    p.write_bytes(p.read_bytes()[:200])
    # a shape mismatch
    d6 = write_acdc_subject(root, "patient006", rng)
    gt = nib.load(str(d6 / "patient006_frame09_gt.nii.gz"))
    nib.save(nib.Nifti1Image(np.asarray(gt.dataobj)[:, :, :3], gt.affine), str(d6 / "patient006_frame09_gt.nii.gz"))
    # an empty subject folder
    (root / "patient007").mkdir()

    subjects, skips = load_acdc(root, GRID)
    by_subject = {s.subject: s for s in subjects}
    assert set(by_subject) == {f"patient{i:03d}" for i in range(1, 7)}
    assert [v.phase for v in by_subject["patient003"].volumes] == ["frame01"]
    assert len(by_subject["patient004"].volumes) == 1
    assert len(by_subject["patient005"].volumes) == 1
    assert len(by_subject["patient006"].volumes) == 1
    reasons = {(s.subject, s.path): s.reason for s in skips}
    assert "without ground truth" in reasons[("patient003", "patient003/patient003_frame09.nii.gz")]
    assert "Info.cfg" in reasons[("patient003", "patient003/Info.cfg")]
    assert "[7]" in reasons[("patient004", "patient004/patient004_frame01.nii.gz")]
    assert ("patient005", "patient005/patient005_frame01.nii.gz") in reasons
    assert "shape" in reasons[("patient006", "patient006/patient006_frame09.nii.gz")]
    assert "no usable" in reasons[("patient007", "patient007")]


def test_acdc_empty_root_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FinetuneDataError, match="not a directory"):
        load_acdc(tmp_path / "missing", GRID)
    (tmp_path / "empty" / "patient001").mkdir(parents=True)
    with pytest.raises(FinetuneDataError, match="no usable labelled ACDC frame"):
        load_acdc(tmp_path / "empty", GRID)


def test_labels_csv(tmp_path: Path) -> None:
    p = tmp_path / "labels.csv"
    p.write_text("subject,abnormal,acl,meniscus\nk1,1,0,1\nk2,0,0,0\nk3,1,x,0\nk4,2,0,0\nk1,0,0,0\n,1,1,1\n")
    table, names, skips = read_labels_csv(p)
    assert names == ["abnormal", "acl", "meniscus"]
    assert table == {"k1": {"abnormal": 1, "acl": 0, "meniscus": 1}, "k2": {"abnormal": 0, "acl": 0, "meniscus": 0}}
    assert len(skips) == 4
    p.write_text("id,abnormal\nk1,1\n")
    with pytest.raises(FinetuneDataError, match="subject"):
        read_labels_csv(p)


def test_stack_from_study_resamples_each_slice(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    slices = []
    for k in range(4):
        plane = Plane([0.0, 0.0, 4.0 * k], [1, 0, 0], [0, 1, 0], [0.5, 0.5], [100, 120])
        pix = rng.normal(1000, 100, (1, 100, 120)).astype(np.float32)
        pix[0, 40:60, 50:70] = 3000 + 100 * k
        slices.append(Slice("sagittal", "sag", plane, [Frame(f"s{k}.dcm", 0)], "1.2.3", "1.2.3.4",
                            loader=lambda p=pix: p))
    study = Study("k1", tmp_path, {"sagittal": slices})
    stack = stack_from_study(study, "sagittal", GridSpec(32, 2.0))
    assert stack.shape == (4, 32, 32)
    # the bright 10 mm square sits at the centre of a 64 mm field of view
    centre = stack[:, 13:18, 13:18].mean()
    assert centre > stack[:, :5, :5].mean() + 1.0
    with pytest.raises(Exception, match="no 'coronal' stack"):
        stack_from_study(study, "coronal", GRID)


def test_knee_dicom_through_the_reader(knee_root: Path) -> None:
    (knee_root / "labels.csv").write_text((knee_root / "labels.csv").read_text() + "ghost,1,0,0\n")
    stacks, names, skips = load_knee(knee_root, GridSpec(32, 1.5))
    assert names == ["abnormal", "acl", "meniscus"]
    assert [s.subject for s in stacks] == [f"knee{i:03d}" for i in range(8)]
    assert all(s.image.shape == (6, 32, 32) and s.view == "sagittal" for s in stacks)
    assert [s.labels["abnormal"] for s in stacks] == [0, 1] * 4
    assert any(s.subject == "ghost" for s in skips)
    # the lesion is visible after normalisation: the brightest pixel of abnormal stacks stands out
    peak = {s.labels["abnormal"]: [] for s in stacks}
    for s in stacks:
        peak[s.labels["abnormal"]].append(s.image.max())
    assert min(peak[1]) > max(peak[0])
    coronal, _, _ = load_knee(knee_root, GridSpec(32, 1.5), view="coronal")
    assert len(coronal) == 8


def test_phantom_acdc_cohort(tmp_path: Path) -> None:
    """The built-in labelled cohort (what ``make demo`` fine-tunes on) loads without skips."""
    from anatplane_dist.sources.phantom import AcdcCohortConfig, write_acdc_cohort

    write_acdc_cohort(tmp_path / "acdc", AcdcCohortConfig(patients=2, seed=3, matrix=(96, 96), frames=(4, 4)))
    subjects, skips = load_acdc(tmp_path / "acdc", GridSpec(64, 3.0))
    assert [s.subject for s in subjects] == ["patient001", "patient002"] and skips == []
    for s in subjects:
        assert [v.phase for v in s.volumes] == ["ED", "ES"]
        for v in s.volumes:
            present = set(np.unique(v.native_label).tolist())
            assert present == {0, 1, 2, 3}
            # every structure survives resampling onto the 3 mm grid, in the same place
            for value in ACDC_CLASSES:
                native = _centroid_world(v.native_label, v.native_planes, value)
                grid = _centroid_world(v.label, v.grids, value)
                assert np.linalg.norm(native - grid) < 3.0, (s.subject, v.phase, value)
        ed, es = (float((v.native_label == 3).sum()) for v in s.volumes)
        assert es < ed                                  # the LV blood pool contracts


def test_phantom_knee_cohort(tmp_path: Path) -> None:
    from anatplane_dist.sources.phantom.knee_writer import KneeCohortConfig, write_knee_cohort

    write_knee_cohort(tmp_path / "knee", KneeCohortConfig(subjects=3, seed=1, matrix=(64, 64), slices=6))
    stacks, names, skips = load_knee(tmp_path / "knee", GridSpec(32, 4.0))
    assert len(stacks) == 3 and {"abnormal", "acl", "meniscus"} <= set(names)
    assert all(s.image.shape == (6, 32, 32) and np.isfinite(s.image).all() for s in stacks)
