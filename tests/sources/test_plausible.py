"""Finite but absurd geometry, caught at the smallest wrong unit (real DICOM edited with pydicom)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from anatplane_dist.shards.profiles import BUILTIN_PROFILES, ShardConfig
from anatplane_dist.shards.samples import study_samples
from anatplane_dist.sources import dsbcc

CFG = ShardConfig(profile=BUILTIN_PROFILES["heart"], grid=16, spacing=4.0)


def locations(study) -> dict[str, float]:
    """series -> location of its samples, as the sharder writes them."""
    import json
    out = {}
    for s in study_samples(study, CFG).samples:
        meta = json.loads(s.members["meta.json"])
        out[meta["series"]] = meta["location"]["value"]
    return out


def shift_series(folder: Path, offset_mm: np.ndarray, kit, only: int | None = None) -> list[Path]:
    files = sorted(folder.glob("*.dcm"))
    for i, f in enumerate(files):
        if only is None or i == only:
            pos = np.array(pydicom.dcmread(f).ImagePositionPatient, float) + offset_mm
            kit.edit_dicom(f, ImagePositionPatient=[f"{v:.6f}" for v in pos])
    return files


def test_absurd_position_of_one_frame_costs_that_frame_only(tmp_path, kit):
    kit.write_heart_study(tmp_path, "S")
    f = sorted((tmp_path / "S/study/sax_12").glob("*.dcm"))[1]
    kit.edit_dicom(f, ImagePositionPatient=["1e300", "0", "0"])
    st = dsbcc.read_study(tmp_path / "S")
    (rec,) = st.skipped
    assert rec.level == "file" and rec.path.endswith(f.name) and "implausible ImagePositionPatient" in rec.reason
    assert len(st.views["sax"]) == 5
    locs = locations(st)
    assert locs == pytest.approx({"sax_14": 0.0, "sax_13": 0.25, "sax_12": 0.5, "sax_11": 0.75, "sax_10": 1.0},
                                 abs=1e-6)


@pytest.mark.parametrize("spacing", [["1e-5", "1e-5"], ["400", "400"]])
def test_absurd_pixel_spacing_is_a_file_record(tmp_path, kit, spacing):
    kit.write_heart_study(tmp_path, "S")
    f = sorted((tmp_path / "S/study/sax_10").glob("*.dcm"))[0]
    kit.edit_dicom(f, PixelSpacing=spacing)
    st = dsbcc.read_study(tmp_path / "S")
    (rec,) = st.skipped
    assert rec.level == "file" and "implausible PixelSpacing" in rec.reason


@pytest.mark.parametrize("where", ["in_plane", "along_axis"])
def test_slice_far_off_its_stack_is_left_out_with_a_record(tmp_path, kit, where):
    kit.write_heart_study(tmp_path, "S")
    st0 = dsbcc.read_study(tmp_path / "S")
    sax10 = next(s for s in st0.views["sax"] if s.series == "sax_10")
    offset = 300.0 * (sax10.plane.row_dir if where == "in_plane" else kit.LONG_AXIS)
    shift_series(tmp_path / "S/study/sax_10", offset, kit)
    st = dsbcc.read_study(tmp_path / "S")
    out = study_samples(st, CFG)
    recs = [s for s in out.skipped if s.level == "slice"]
    assert len(recs) == 1 and "sax_10" in recs[0].path and "off" in recs[0].reason
    import json
    locs = {json.loads(s.members["meta.json"])["series"]: json.loads(s.members["meta.json"])["location"]["value"]
            for s in out.samples}
    assert locs == pytest.approx({"sax_14": 0.0, "sax_13": 1 / 3, "sax_12": 2 / 3, "sax_11": 1.0}, abs=1e-6)


def test_cine_frame_with_its_own_geometry_is_a_file_record(tmp_path, kit):
    kit.write_heart_study(tmp_path, "S")
    files = shift_series(tmp_path / "S/study/sax_12", 3.0 * kit.LONG_AXIS, kit, only=2)
    st = dsbcc.read_study(tmp_path / "S")
    (rec,) = st.skipped
    assert rec.level == "file" and rec.path.endswith(files[2].name) and "inconsistent frames" in rec.reason
    sax = st.views["sax"]
    assert len(sax) == 5 and [len(s.frames) for s in sax if s.series == "sax_12"] == [2]
