"""Knee anatomy, its prescription, and the fastMRI-like writer with its label table."""
from __future__ import annotations

import csv

import numpy as np
import pydicom
import pytest

from anatplane_dist.sources.phantom.knee import KNEE_VIEWS, prescribe_knee_views, sample_knee, with_pathology
from anatplane_dist.sources.phantom.prescribe import make_plane
from anatplane_dist.sources.phantom.render import plane_points
from tests.sources.phantom.support import KNEE_CFG, dciodvfy_errors


def _healthy(seed: int = 0, side: str | None = None):
    return sample_knee(np.random.default_rng(seed), acl_tear=False, meniscus_tear=False, effusion=False, side=side)


def _image(knee, plane):
    return knee.render(plane_points(plane)).image


def test_acl_tear_interrupts_the_ligament_and_changes_nothing_far_away():
    knee = _healthy(1)
    acl = knee.acl()
    d = acl.p1 - acl.p0
    # a plane containing the ligament (sagittal-ish), centred on its midpoint
    mid = knee.to_world(acl.p0 + 0.5 * d)
    along = knee.to_world(acl.p1) - knee.to_world(acl.p0)
    normal = np.cross(along, knee.basis[1])
    plane = make_plane(mid, normal, along, 0.0, 0.5, (96, 96))
    intact, torn = _image(knee, plane), _image(with_pathology(knee, acl_tear=True), plane)
    centre = (47, 48)
    assert intact[centre] < 0.2 < 0.5 < torn[centre]           # dark ligament -> bright fluid
    changed = np.abs(torn - intact) > 0.05
    assert changed.mean() < 0.25 and not changed[:5].any() and not changed[-5:].any()


def test_meniscus_tear_puts_a_cleft_in_the_medial_posterior_horn():
    knee = _healthy(2)
    horn = knee.to_world(np.array([19.0, -20.0, 3.5]))      # medial compartment, posterior horn
    plane = make_plane(horn, knee.basis[0], knee.basis[2], 0.0, 0.4, (80, 80))   # sagittal through it
    intact, torn = _image(knee, plane), _image(with_pathology(knee, meniscus_tear=True), plane)
    diff = torn - intact
    assert diff.max() > 0.4                                   # bright fluid where dark meniscus was
    rows, cols = np.nonzero(diff > 0.2)
    world = plane.pixel_to_world(rows, cols)
    local = knee.to_local(world) * knee.size
    assert np.all(local[:, 1] < -8.0)                        # only posterior (a < 0) tissue changed
    lateral = make_plane(knee.to_world(np.array([-19.0, -20.0, 3.5])), knee.basis[0], knee.basis[2], 0.0, 0.4,
                         (80, 80))
    np.testing.assert_allclose(_image(knee, lateral), _image(with_pathology(knee, meniscus_tear=True), lateral),
                               atol=1e-9)


def test_effusion_distends_the_suprapatellar_recess():
    knee = _healthy(3)
    plane = make_plane(knee.to_world(np.array([0.0, 20.0, 45.0])), knee.basis[0], knee.basis[2], 0.0, 0.5, (64, 64))
    dry, wet = _image(knee, plane), _image(with_pathology(knee, effusion=True), plane)
    assert (np.abs(wet - dry) > 0.2).sum() > 50


@pytest.mark.parametrize("seed", range(4))
def test_stacks_are_named_by_their_normal_and_evenly_spaced(seed):
    rng = np.random.default_rng(seed)
    knee = sample_knee(rng)
    views = prescribe_knee_views(knee, rng, 32, 7)
    for axis, name in enumerate(KNEE_VIEWS):
        st = views[name]
        n = st.normal
        assert np.all(np.abs(n[:, axis]) > 0.9), (name, n[0])
        steps = np.diff(st.origin @ n[0])
        assert np.allclose(steps, steps[0]) and abs(steps[0]) > 1.0
        assert np.allclose(n, n[0])


def test_left_and_right_knees_are_mirror_images():
    right, left = _healthy(4, "R"), _healthy(4, "L")
    medial = np.array([30.0, 0.0, 0.0])
    assert right.to_world(medial)[0] > right.centre[0] and left.to_world(medial)[0] < left.centre[0]
    assert right.centre[0] < 0 < left.centre[0]               # a right knee lies on the patient's right


def test_writer_layout_labels_and_tags(knee_cohort):
    out, records = knee_cohort
    with open(out / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["subject"] for r in rows] == [r["subject"] for r in records]
    for row, rec in zip(rows, records):
        assert set(row) == {"subject", "abnormal", "acl", "meniscus"}
        assert (int(row["acl"]), int(row["meniscus"]), int(row["abnormal"])) == (rec["acl"], rec["meniscus"],
                                                                               rec["abnormal"])
        assert rec["abnormal"] == int(rec["acl"] or rec["meniscus"] or rec["effusion"])
        folders = sorted(p.name for p in (out / rec["subject"]).iterdir())
        assert len(folders) == 3 and all(f.startswith("series_") for f in folders)
        for s in rec["series"]:
            files = sorted((out / rec["subject"] / s["folder"]).iterdir())
            assert len(files) == KNEE_CFG.slices
            dss = [pydicom.dcmread(f) for f in files]
            assert {ds.Laterality for ds in dss} == {rec["side"]}
            assert len({ds.FrameOfReferenceUID for ds in dss}) == 1 and dss[0].BodyPartExamined == "KNEE"
            assert s["view"] not in (dss[0].SeriesDescription.lower(), s["folder"])
            iop = np.asarray(dss[0].ImageOrientationPatient, float)
            normal = np.cross(iop[:3], iop[3:])
            assert int(np.argmax(np.abs(normal))) == KNEE_VIEWS.index(s["view"])
    assert len({rec["frame_of_reference_uid"] for rec in records}) == len(records)


def test_knee_files_pass_dciodvfy(knee_cohort):
    out, records = knee_cohort
    f = sorted((out / records[0]["subject"] / records[0]["series"][0]["folder"]).iterdir())[2]
    assert dciodvfy_errors(f) == []


def test_a_cohort_written_in_chunks_has_one_complete_label_table(tmp_path):
    import dataclasses

    from anatplane_dist.sources.phantom.knee_writer import write_knee_cohort

    cfg = dataclasses.replace(KNEE_CFG, subjects=1, matrix=(16, 16), slices=2)
    write_knee_cohort(tmp_path, cfg)
    write_knee_cohort(tmp_path, dataclasses.replace(cfg, first_index=2))
    again = write_knee_cohort(tmp_path, cfg)                          # rewriting subject 1 keeps one row
    lines = (tmp_path / "labels.csv").read_text().splitlines()
    assert [ln.split(",")[0] for ln in lines] == ["subject", "knee0001", "knee0002"]
    assert lines[1] == f"knee0001,{again[0]['abnormal']},{again[0]['acl']},{again[0]['meniscus']}"
