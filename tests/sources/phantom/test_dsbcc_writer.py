"""The DSBCC-layout writer: real DICOM files, layout, determinism, the injected mess."""
from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom

from anatplane_dist.sources.phantom.dsbcc_writer import MESS_KINDS, write_heart_subject
from tests.sources.phantom.support import HEART_CFG, dciodvfy_errors

_FILE_RE = re.compile(r"^IM-(\d{4})-(\d{4})\.dcm$")


def _folders(out: Path, subject: str) -> dict[str, list[pydicom.Dataset]]:
    study = out / subject / "study"
    return {d.name: [pydicom.dcmread(f) for f in sorted(d.iterdir())] for d in sorted(study.iterdir())}


def _positions(dss: list[pydicom.Dataset]) -> set[tuple[float, ...]]:
    return {tuple(round(float(v), 3) for v in ds.ImagePositionPatient) for ds in dss}


def test_layout_uids_and_trigger_times(heart_cohort):
    out, records = heart_cohort
    assert [r["subject"] for r in records] == ["1", "2", "3", "4", "5"]
    for rec in records:
        folders = _folders(out, rec["subject"])
        assert set(folders) == {s["folder"] for s in rec["series"]}
        all_ds = [ds for dss in folders.values() for ds in dss]
        assert len({ds.FrameOfReferenceUID for ds in all_ds}) == 1
        assert len({ds.StudyInstanceUID for ds in all_ds}) == 1
        assert len({ds.SOPInstanceUID for ds in all_ds}) == len(all_ds)
        for name, dss in folders.items():
            assert re.match(r"^(sax|2ch|4ch)_\d+$", name)
            number = int(name.split("_")[1])
            files = sorted((out / rec["subject"] / "study" / name).iterdir())
            assert all(_FILE_RE.match(f.name) and int(_FILE_RE.match(f.name).group(1)) == number for f in files)
            assert {int(ds.SeriesNumber) for ds in dss} == {number}
            assert len({ds.SeriesInstanceUID for ds in dss}) == 1
            per_position = len(dss) // len(_positions(dss))
            assert per_position == rec["n_frames"]
            times = [float(ds.TriggerTime) for ds in dss[:per_position]]
            assert times[0] == 0.0 and np.all(np.diff(times) > 0) and times[-1] < rec["rr_ms"]
            ds = dss[0]
            assert ds.BitsStored == 12 and int(ds.pixel_array.max()) <= 4095
            assert ds.pixel_array.shape == (rec["matrix"], rec["matrix"])


def test_each_mess_kind_is_injected_as_described(heart_cohort):
    out, records = heart_cohort
    assert [r["mess"] for r in records] == list(MESS_KINDS)
    for rec in records:
        folders = _folders(out, rec["subject"])
        by_view = defaultdict(list)
        for name, dss in folders.items():
            by_view[name.split("_")[0]].append(dss)
        kind = rec["mess"]
        assert len(by_view["2ch"]) == (0 if kind == "missing_2ch" else 1)
        assert len(by_view["4ch"]) == (2 if kind == "second_4ch" else 1)
        n_positions = [len(_positions(dss)) for dss in by_view["sax"]]
        assert n_positions.count(2) == (1 if kind == "two_positions_in_sax" else 0)
        assert max(n_positions) <= 2
        sax_pos = [p for dss in by_view["sax"] for p in _positions(dss)]
        duplicated = len(sax_pos) - len(set(sax_pos))
        assert duplicated == (1 if kind == "duplicate_position" else 0)
        assert len(set(sax_pos)) == len(rec["sax_t_mm"])        # every prescribed position is on disk
    second = [r for r in records if r["mess"] == "second_4ch"][0]
    four = [s for s in second["series"] if s["view"] == "4ch"]
    n0, n1 = (np.cross(s["planes"][0]["row_dir"], s["planes"][0]["col_dir"]) for s in four)
    assert 3.0 < np.degrees(np.arccos(min(1.0, abs(float(n0 @ n1))))) < 10.0


def test_same_seed_same_bytes_other_seed_other_pixels_and_uids(tmp_path):
    cfg = dataclasses.replace(HEART_CFG, matrix=(32, 32), frames=(2, 2))
    a = write_heart_subject(tmp_path / "a", 3, cfg)
    b = write_heart_subject(tmp_path / "b", 3, cfg)
    c = write_heart_subject(tmp_path / "c", 3, dataclasses.replace(cfg, seed=cfg.seed + 1))
    assert a == b
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.dcm"))
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.dcm"))
    assert files_a == files_b and files_a
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert a["study_uid"] != c["study_uid"]
    pa = pydicom.dcmread(next((tmp_path / "a").rglob("sax_*/*.dcm"))).pixel_array
    pc = pydicom.dcmread(next((tmp_path / "c").rglob("sax_*/*.dcm"))).pixel_array
    assert pa.shape != pc.shape or not np.array_equal(pa, pc)


def test_subjects_do_not_depend_on_the_rest_of_the_cohort(tmp_path, heart_cohort):
    out, records = heart_cohort
    alone = write_heart_subject(tmp_path, 4, HEART_CFG)
    assert alone == records[3]


def test_files_pass_dciodvfy(heart_cohort):
    out, records = heart_cohort
    rec = records[0]
    for s in rec["series"][:3]:
        f = sorted((out / rec["subject"] / "study" / s["folder"]).iterdir())[1]
        assert dciodvfy_errors(f) == [], f


def test_worker_processes_write_the_same_cohort(tmp_path):
    from anatplane_dist.sources.phantom.dsbcc_writer import write_heart_cohort

    cfg = dataclasses.replace(HEART_CFG, subjects=2, matrix=(24, 24), frames=(2, 2))
    serial = write_heart_cohort(tmp_path / "serial", cfg)
    parallel = write_heart_cohort(tmp_path / "parallel", dataclasses.replace(cfg, workers=2))
    assert serial == parallel
    a = sorted(p.relative_to(tmp_path / "serial") for p in (tmp_path / "serial").rglob("*.dcm"))
    b = sorted(p.relative_to(tmp_path / "parallel") for p in (tmp_path / "parallel").rglob("*.dcm"))
    assert a == b
    assert all((tmp_path / "serial" / r).read_bytes() == (tmp_path / "parallel" / r).read_bytes() for r in a)


def test_sizes_that_make_no_data_set_are_refused():
    import pytest

    with pytest.raises(ValueError, match="matrix"):
        dataclasses.replace(HEART_CFG, matrix=(4, 4))
    with pytest.raises(ValueError, match="frame range"):
        dataclasses.replace(HEART_CFG, frames=(0, 3))
