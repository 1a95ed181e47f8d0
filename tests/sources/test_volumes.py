"""Pseudo-acquisitions: resliced views written as DICOM come back from the reader with the
prescribed geometry; the sharder's lines on real anatomy agree with the pixels of both planes;
NIfTI view folders shard; the brain cohort builds from the installed real volumes."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from scipy import ndimage

from anatplane_dist.core.geometry import Plane
from anatplane_dist.shards.pipeline import shard_dataset
from anatplane_dist.shards.profiles import Profile, ShardConfig
from anatplane_dist.shards.reader import read_samples
from anatplane_dist.sources import nifti, viewdirs
from anatplane_dist.sources.prescription import ViewPrescription, prescribe
from anatplane_dist.sources.reslice import reslice
from anatplane_dist.sources.volumes import (
    Pose,
    PoseSpec,
    VolumeEntry,
    anatomy_dirs,
    brain_of,
    build_cohort,
    load_cohort,
    nifti_affine,
    write_dicom_study,
)

REPO = Path(__file__).resolve().parents[2]
COLIN27 = Path("/usr/share/mricron/templates/ch2.nii.gz")
MNI_LANDMARKS = REPO / "experiments" / "brain-real" / "mni-landmarks.yaml"
BRAIN_PROFILE = Profile(name="brain", reader="viewdirs", input_view="axial", references=("sagittal", "coronal"),
                        reference_pick="first", location="heart", stack_by="view")
needs_colin = pytest.mark.skipif(not COLIN27.is_file(), reason="Colin27 (Debian mricron-data) not installed: "
                                                              "run `make debs` as root")


def smooth_volume(shape=(60, 64, 56), seed=0) -> tuple[np.ndarray, np.ndarray]:
    noise = np.random.default_rng(seed).normal(size=shape)
    vol = ndimage.gaussian_filter(noise, sigma=3.0)
    vol = ((vol - vol.min()) / (vol.max() - vol.min()) * 200 + 20).astype(np.float32)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = -np.asarray(shape) + 1.0          # centred on 0
    return vol, aff


def synthetic_entry() -> VolumeEntry:
    lm = {"ac": np.array([0.0, -10.0, -5.0]), "pc": np.array([0.0, 15.0, -3.0]), "midsag": np.array([0.0, 0.0, 40.0])}
    return VolumeEntry(subject="synth", image=Path("unused"), roles=("pretrain",), landmarks=lm)


RX = ViewPrescription(kind="brain", n_slices=6, stack_range_mm=(-20, 30), matrix=40, spacing_mm=2.0)
POSE = PoseSpec(rotate_deg=15, shift_mm=8, jitter_deg=3, jitter_mm=2)


def test_resliced_series_reread_give_the_prescribed_geometry(tmp_path: Path):
    vol, aff = smooth_volume()
    rec = write_dicom_study(tmp_path, synthetic_entry(), RX, POSE, 0, 7, vol, aff)
    study = viewdirs.read_study(tmp_path / rec["subject"], root=tmp_path)
    assert not study.skipped and set(study.views) == {"axial", "sagittal", "coronal"}
    pose = Pose(np.asarray(rec["pose"]["rotation"]), np.asarray(rec["pose"]["centre"]), np.asarray(rec["pose"]["shift"]))
    for series in rec["series"]:
        written = Plane.from_dict(series["planes"])
        got = Plane.stack([s.plane for s in study.views[series["view"]]])
        if series["view"] == "axial":                  # the reader sorts along the oriented axis
            order = np.argsort(written.origin @ np.asarray(study.meta["axial_axis"]))
            written = written[order]
        np.testing.assert_allclose(got.origin, written.origin, atol=1e-4)
        np.testing.assert_allclose(got.row_dir, written.row_dir, atol=1e-7)
        np.testing.assert_allclose(got.col_dir, written.col_dir, atol=1e-7)
        np.testing.assert_allclose(got.spacing, written.spacing, atol=1e-9)
        # the pixels are the volume sampled where the plane lies in the posed patient
        expected = reslice(vol, aff, pose.plane_to_volume(written), order=1) * rec["scale"]
        pixels = np.stack([s.load()[0] for s in study.views[series["view"]]])
        np.testing.assert_allclose(pixels, np.clip(np.rint(expected), 0, 4095).reshape(pixels.shape), atol=1.0)


def test_pose_moves_the_geometry_not_the_anatomy():
    entry = synthetic_entry()
    from anatplane_dist.sources.volumes import acquire, draw_pose

    rng = np.random.default_rng(3)
    pose = draw_pose(rng, np.zeros(3), POSE)
    views = acquire(entry, RX, pose, rng, dataclasses.replace(POSE, jitter_deg=0.0, jitter_mm=0.0))
    scanner, volume = views["axial"]
    truth = prescribe(RX, entry.landmarks)["axial"]
    np.testing.assert_allclose(volume.origin, truth.origin, atol=1e-9)        # same anatomy sampled
    np.testing.assert_allclose(volume.normal, truth.normal, atol=1e-12)
    assert np.degrees(np.arccos(np.clip(scanner.normal[0] @ truth.normal[0], -1, 1))) > 0.5   # other geometry


def test_brain_of_maps_poses_to_their_volume():
    assert brain_of("colin27-p03") == "colin27" and brain_of("itk") == "itk"


def _line_profiles(sample: dict, ref_pixels: np.ndarray, ref_plane: Plane, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Intensities along the sharder's line k in the sample image and, at the same world points,
    in the reference image."""
    a, b, c = (float(v) for v in sample["lines"][k])
    grid = Plane.from_dict(sample["meta"]["grid"])
    n = int(grid.shape[0])
    t = np.linspace(-2 * n, 2 * n, 8 * n)
    x0, y0 = -a * c, -b * c                                  # foot of the line from the origin
    cols, rows = x0 + t * (-b), y0 + t * a
    inside = (cols >= 0) & (cols <= n - 1) & (rows >= 0) & (rows <= n - 1)
    cols, rows = cols[inside], rows[inside]
    img = np.asarray(sample["image"], np.float32)
    p1 = ndimage.map_coordinates(img, [rows, cols], order=1)
    world = grid.pixel_to_world(rows, cols)
    r2, c2, off = ref_plane.world_to_pixel(world)
    assert np.abs(off).max() < 1e-3                          # the line lies in the reference plane
    ok = (r2 >= 0) & (r2 <= ref_pixels.shape[0] - 1) & (c2 >= 0) & (c2 <= ref_pixels.shape[1] - 1)
    p2 = ndimage.map_coordinates(ref_pixels, [r2[ok], c2[ok]], order=1)
    return p1[ok], p2


@needs_colin
def test_sharder_lines_follow_the_common_line_of_real_anatomy(tmp_path: Path):
    """Colin27 resliced with a random pose: along every valid line the sharder wrote, the input
    image and the reference image see the same anatomy (intensity correlation > 0.9)."""
    img = nib.load(str(COLIN27))
    data, aff = np.asarray(img.dataobj, dtype=np.float32), img.affine
    from anatplane_dist.sources.prescription import landmarks_from_file

    entry = VolumeEntry(subject="colin27", image=COLIN27, roles=("pretrain",),
                        landmarks=landmarks_from_file(MNI_LANDMARKS))
    rx = ViewPrescription(kind="brain", n_slices=5, stack_range_mm=(-10, 40), matrix=96, spacing_mm=2.0)
    src = tmp_path / "in"
    write_dicom_study(src, entry, rx, POSE, 0, 0, data, aff)
    out = tmp_path / "shards"
    res = shard_dataset(src, out, ShardConfig(profile=BRAIN_PROFILE, grid=96, spacing=2.0, val_fraction=0.0))
    assert res.ok
    study = viewdirs.read_study(src / "colin27-p00", root=src)
    refs = {v: (study.views[v][0].load()[0], study.views[v][0].plane) for v in ("sagittal", "coronal")}
    samples = read_samples(next(out.glob("train-*.tar")))
    assert len(samples) == 5
    checked = 0
    for s in samples.values():
        for k, view in enumerate(BRAIN_PROFILE.references):
            if not s["valid"][k]:
                continue
            p1, p2 = _line_profiles(s, *refs[view], k)
            assert p1.size > 30
            r = float(np.corrcoef(p1, p2)[0, 1])
            assert r > 0.9, (s["meta"]["slice"], view, r)
            checked += 1
    assert checked >= 8


def test_nifti_view_folders_shard_real_samples(tmp_path: Path):
    """A NIfTI cohort (``<subject>/<view>.nii.gz`` sharing one session) shards samples with lines;
    before, a NIfTI profile sharded 0 samples (read_study needed a view)."""
    vol, aff = smooth_volume()
    views = prescribe(RX, synthetic_entry().landmarks)
    for subject in ("s1", "s2"):
        d = tmp_path / "in" / subject
        d.mkdir(parents=True)
        for name, planes in views.items():
            pix = reslice(vol, aff, planes)
            arr = np.moveaxis(pix if planes.batch_shape else pix[None], 0, 2)
            nib.save(nib.Nifti1Image(arr.astype(np.float32), nifti_affine(planes)), str(d / f"{subject}_{name}.nii.gz"))
    prof = dataclasses.replace(BRAIN_PROFILE, reader="nifti")
    study = nifti.read_study(tmp_path / "in" / "s1", root=tmp_path / "in")
    assert set(study.views) == {"axial", "sagittal", "coronal"}
    np.testing.assert_allclose(Plane.stack([s.plane for s in study.views["axial"]]).origin, views["axial"].origin, atol=1e-4)
    out = tmp_path / "shards"
    res = shard_dataset(tmp_path / "in", out, ShardConfig(profile=prof, grid=32, spacing=2.5, val_fraction=0.0))
    assert res.ok
    samples = {}
    for tar in out.glob("train-*.tar"):
        samples.update(read_samples(tar))
    assert len(samples) == 2 * RX.n_slices
    assert all(s["valid"].all() for s in samples.values())


def test_cohort_yaml_errors_are_one_line(tmp_path: Path):
    from anatplane_dist.sources.prescription import PrescriptionError

    p = tmp_path / "c.yaml"
    p.write_text("prescription: {kind: brain}\nvolumes: [{subject: a, image: /nonexistent.nii.gz}]\n")
    with pytest.raises(PrescriptionError, match="not found"):
        load_cohort(p)
    p.write_text("prescription: {kind: brain}\nvolumes: []\ncolour: red\n")
    with pytest.raises(PrescriptionError, match="unknown"):
        load_cohort(p)


def _anatomy_missing() -> str:
    names = ["mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz", "KmeansTest_T1UCharRaw.nii.gz"]
    found = [n for n in names if any((d / n).is_file() for d in anatomy_dirs())]
    return "" if len(found) == len(names) and COLIN27.is_file() else \
        f"real brains not installed (missing {sorted(set(names) - set(found))}): run `make anatomy`"


@pytest.mark.skipif(bool(_anatomy_missing()), reason=_anatomy_missing() or "ok")
def test_brain_real_cohort_builds_from_the_installed_volumes(tmp_path: Path):
    cohort = load_cohort(REPO / "experiments" / "brain-real" / "cohort.yaml")
    roles = {v.subject: v.roles for v in cohort.volumes}
    assert roles == {"colin27": ("pretrain",), "mni152": ("heldout", "labelled"), "itk": ("heldout", "labelled")}
    small = dataclasses.replace(cohort, poses={"pretrain": 1, "heldout": 1, "labelled": 1})
    paths = build_cohort(small, tmp_path, log=lambda *_: None)
    assert sorted(p.name for p in paths["pretrain"].iterdir() if p.is_dir()) == ["colin27-p00"]
    assert sorted(p.name for p in paths["heldout"].iterdir() if p.is_dir()) == ["itk-p00", "mni152-p00"]
    for brain in ("mni152", "itk"):
        gt = nib.load(str(paths["labelled"] / brain / f"{brain}_frame01_gt.nii.gz"))
        labels = np.asarray(gt.dataobj)
        counts = np.bincount(labels.ravel(), minlength=4)
        assert labels.max() <= 3 and (counts[1:] > 200).all(), (brain, counts)     # GM, WM, CSF present
    record = json.loads((paths["heldout"] / "volumes.json").read_text())
    assert {r["brain"] for r in record["studies"]} == {"mni152", "itk"}
    assert yaml.safe_load(paths["profile"].read_text())["reader"] == "viewdirs"


def test_heart_pseudo_acquisition_is_a_dsbcc_study(tmp_path: Path):
    """A heart prescription written from a volume is read by the DSBCC reader unchanged: the SAX
    stack base -> apex and both long-axis views."""
    from anatplane_dist.sources import dsbcc

    vol, aff = smooth_volume()
    lm = {"mitral": np.array([-5.0, -5.0, 10.0]), "apex": np.array([20.0, -30.0, -25.0]),
          "rv_ant": np.array([-20.0, -25.0, 5.0]), "rv_inf": np.array([-15.0, -5.0, -15.0])}
    entry = VolumeEntry(subject="heart", image=Path("unused"), roles=("pretrain",), landmarks=lm)
    rx = ViewPrescription(kind="heart", n_slices=6, matrix=40, spacing_mm=2.0)
    rec = write_dicom_study(tmp_path, entry, rx, POSE, 0, 0, vol, aff)
    study = dsbcc.read_study(tmp_path / rec["subject"], root=tmp_path)
    assert {v: len(s) for v, s in study.views.items()} == {"sax": 6, "2ch": 1, "4ch": 1}
    generic = viewdirs.read_study(tmp_path / rec["subject"], root=tmp_path)     # view names may start with a digit
    assert {v: len(s) for v, s in generic.views.items()} == {"sax": 6, "2ch": 1, "4ch": 1}
    assert not [s for s in study.skipped if s.level != "channel"]
    pose = Pose(np.asarray(rec["pose"]["rotation"]), np.asarray(rec["pose"]["centre"]), np.asarray(rec["pose"]["shift"]))
    apex, mitral = pose.to_scanner(lm["apex"]), pose.to_scanner(lm["mitral"])
    sax = Plane.stack([s.plane for s in study.views["sax"]])
    # sorted base -> apex: the first slice is the one nearest the (posed) mitral centre
    d = [abs(float(sax[k].world_to_pixel(mitral)[2])) for k in range(6)]
    assert int(np.argmin(d)) == 0 and abs(float(sax[5].world_to_pixel(apex)[2])) < POSE.jitter_mm + 60 * np.sin(np.deg2rad(POSE.jitter_deg)) + 1e-6


def test_cohort_variant_replaces_keys_and_rotates_views_in_plane(tmp_path: Path):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"prescription": {"kind": "brain"}, "pose": {"rotate_deg": 5},
                                    "volumes": [{"subject": "a", "image": str(MNI_LANDMARKS)}]}))
    (tmp_path / "sub").mkdir()
    variant = tmp_path / "sub" / "v.yaml"
    variant.write_text("base: ../base.yaml\npose: {rotate_deg: 5, inplane_deg: 180}\n")
    c = load_cohort(variant)
    assert c.pose.inplane_deg == 180 and [v.subject for v in c.volumes] == ["a"]
    from anatplane_dist.sources.volumes import acquire, draw_pose

    entry = synthetic_entry()
    spec = PoseSpec(rotate_deg=0, shift_mm=0, jitter_deg=0, jitter_mm=0, inplane_deg=180)
    rng = np.random.default_rng(0)
    truth = prescribe(RX, entry.landmarks)["axial"]
    angles = []
    for _ in range(12):
        turned = acquire(entry, RX, draw_pose(rng, np.zeros(3), spec), rng, spec)["axial"][0]
        np.testing.assert_allclose(turned.normal, truth.normal, atol=1e-9)      # same planes
        np.testing.assert_allclose(turned.center, truth.center, atol=1e-9)
        angles.append(np.degrees(np.arccos(np.clip(turned.row_dir[0] @ truth.row_dir[0], -1, 1))))
    assert max(angles) > 90 and min(angles) < 90                                # image axes turned both ways


def test_volumes_command_refuses_bad_input_in_one_line(tmp_path: Path, capsys):
    from anatplane_dist.cli import main

    bad = tmp_path / "c.yaml"
    bad.write_text("prescription: {kind: brain}\nvolumes: [{subject: a, image: /nonexistent.nii.gz}]\n")
    assert main(["volumes", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not found" in err[0]


def test_mask_keeps_only_the_named_labels(tmp_path: Path):
    vol, aff = smooth_volume(shape=(10, 12, 8))
    lab = np.zeros(vol.shape, np.uint8)
    lab[2:6, 3:9, 1:5] = 5
    lab[6:8, 3:9, 1:5] = 2
    nib.save(nib.Nifti1Image(vol, aff), str(tmp_path / "t1.nii.gz"))
    nib.save(nib.Nifti1Image(lab, aff), str(tmp_path / "lab.nii.gz"))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "prescription": {"kind": "brain"},
        "volumes": [{"subject": "a", "image": "t1.nii.gz", "mask": {"file": "lab.nii.gz", "values": [5]}}]}))
    from anatplane_dist.sources.volumes import load_volume

    data, _ = load_volume(load_cohort(tmp_path / "c.yaml").volumes[0])
    np.testing.assert_array_equal(data[lab == 5], vol[lab == 5])
    assert not data[lab != 5].any()
    nib.save(nib.Nifti1Image(lab[:-1], aff), str(tmp_path / "lab.nii.gz"))
    from anatplane_dist.sources.prescription import PrescriptionError

    with pytest.raises(PrescriptionError, match="grid differs"):
        load_volume(load_cohort(tmp_path / "c.yaml").volumes[0])
