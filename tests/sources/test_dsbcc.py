"""DSBCC reader on real DICOM trees: clean studies and every known kind of mess."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from anatplane_dist.core.geometry import Plane, heart_locations, stack_positions
from anatplane_dist.sources import dsbcc
from anatplane_dist.sources.dicom_read import load_pixels
from anatplane_dist.sources.reslice import plane_through


def _reasons(study, level=None) -> list[str]:
    return [s.reason for s in study.skipped if level is None or s.level == level]


def test_clean_studies(dsbcc_root: Path, kit):
    studies = list(dsbcc.iter_studies(dsbcc_root))
    assert [s.subject for s in studies] == ["S000", "S001"]
    st = studies[0]
    assert st.skipped == [] and st.meta["missing_views"] == []
    assert sorted(st.views) == ["2ch", "4ch", "sax"]
    sax = st.views["sax"]
    # folders are numbered apex-first; the stack comes base -> apex
    assert [s.series for s in sax] == ["sax_14", "sax_13", "sax_12", "sax_11", "sax_10"]
    stack = Plane.stack([s.plane for s in sax])
    loc, info = heart_locations(stack)
    np.testing.assert_allclose(loc, [0, 0.25, 0.5, 0.75, 1.0], atol=1e-6)
    np.testing.assert_allclose(st.meta["sax_axis"], kit.LONG_AXIS, atol=1e-6)
    expected = kit.sax_planes(5)
    for s, p in zip(sax, expected):
        np.testing.assert_allclose(s.plane.origin, p.origin, atol=1e-5)
    # cine order by TriggerTime although InstanceNumbers were written in reverse
    first = sax[0]
    assert [f.trigger_time for f in first.frames] == [0.0, 40.0, 80.0]
    assert [f.index for f in first.frames] == [0, 1, 2]
    assert first.frames[0].path.startswith("S000/study/sax_14/")
    pixels = first.load()
    assert pixels.shape == (3, 24, 24) and pixels.dtype == np.float32
    for f in range(3):
        np.testing.assert_array_equal(pixels[f], kit.stored(kit.image_of(expected[0], f)))
    assert [s.series for s in st.views["2ch"]] == ["2ch_3"]
    assert [s.series for s in st.views["4ch"]] == ["4ch_4"]
    assert len({s.frame_of_reference for v in st.views.values() for s in v}) == 1


def test_each_file_is_parsed_once(dsbcc_root: Path, kit):
    """The scan keeps every file's pixels encoded: slices load with the files gone, and give
    the same pixels as a load from the files."""
    st = dsbcc.read_study(dsbcc_root / "S000")
    sax = st.views["sax"]
    from_files = [np.stack([load_pixels(dsbcc_root / f.path) for f in s.frames]) for s in sax]
    shutil.rmtree(dsbcc_root / "S000")
    for s, expected in zip(sax, from_files):
        np.testing.assert_array_equal(s.load(), expected)
    assert st.views["2ch"][0].load().shape == (len(st.views["2ch"][0].frames), 24, 24)


def test_iteration_is_lazy_and_subjects_filter(dsbcc_root: Path):
    it = dsbcc.iter_studies(dsbcc_root, subjects=["S001", "nobody"])
    first = next(it)
    assert first.subject == "S001" and first.views
    shutil.rmtree(dsbcc_root / "S000")        # not requested: never touched
    ghost = next(it)
    assert ghost.subject == "nobody" and ghost.views == {}
    assert [(s.level, s.reason) for s in ghost.skipped] == [("study", "subject folder not found")]
    assert list(it) == []


def test_missing_view_keeps_the_others(tmp_path: Path, kit):
    kit.write_heart_study(tmp_path, "S", views=("sax", "4ch"))
    st = dsbcc.read_study(tmp_path / "S")
    assert sorted(st.views) == ["4ch", "sax"] and st.meta["missing_views"] == ["2ch"]
    assert len(st.views["sax"]) == 5


def test_duplicated_position_keeps_later_acquisition(tmp_path: Path, kit):
    kit.write_heart_study(tmp_path, "S")
    plane = kit.sax_planes(5)[2]                      # the position of folder sax_12
    kit.write_series(tmp_path / "S/study/sax_20", [plane], kit.series_info("S", "sax_20", 20))
    st = dsbcc.read_study(tmp_path / "S")
    assert [s.series for s in st.views["sax"]] == ["sax_14", "sax_13", "sax_20", "sax_11", "sax_10"]
    (skip,) = st.skipped
    assert skip.level == "slice" and skip.path.startswith("S/study/sax_12/")
    assert skip.reason.startswith("duplicated slice position: sax_12 (3 frame(s), 24x24) dropped, sax_20")


def test_several_positions_in_one_sax_folder(tmp_path: Path, kit):
    planes = kit.sax_planes(5)
    study = tmp_path / "S/study"
    kit.write_series(study / "sax_7", planes[3:], kit.series_info("S", "sax_7", 7))
    kit.write_series(study / "sax_8", planes[:3][::-1], kit.series_info("S", "sax_8", 8))
    st = dsbcc.read_study(tmp_path / "S")
    sax = st.views["sax"]
    assert [s.series for s in sax] == ["sax_8", "sax_8", "sax_8", "sax_7", "sax_7"]
    for s, p in zip(sax, planes):
        np.testing.assert_allclose(s.plane.origin, p.origin, atol=1e-5)
        assert len(s.frames) == 3
    s = stack_positions(Plane.stack([x.plane for x in sax]), kit.LONG_AXIS)
    assert np.all(np.diff(s) > 7.9)
    assert st.meta["missing_views"] == ["2ch", "4ch"] and st.skipped == []


def test_inconsistent_frame_size_in_one_series(tmp_path: Path, kit):
    kit.write_heart_study(tmp_path, "S")
    center = kit.sax_planes(5)[2].center
    odd = plane_through(center, kit.sax_planes(1)[0].row_dir, kit.sax_planes(1)[0].col_dir, 3.0, 16)
    kit.write_series(tmp_path / "S/study/sax_12", [odd], kit.series_info("S", "sax_12", 12), frames=1,
                     first_instance=50)
    st = dsbcc.read_study(tmp_path / "S")
    mid = st.views["sax"][2]
    assert mid.series == "sax_12" and len(mid.frames) == 3 and mid.plane.shape.tolist() == [24, 24]
    (skip,) = st.skipped
    assert skip.reason.startswith("inconsistent frames in one series") and "16x16" in skip.reason


def _rotation(axis: np.ndarray, deg: float) -> np.ndarray:
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    t = np.radians(deg)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def test_geometry_sanity_checks(tmp_path: Path, kit):
    """A tilted 'sax' folder, a '2ch' folder holding a SAX-like plane, a '4ch' in another
    frame of reference and an unknown folder: each skipped with its reason."""
    kit.write_heart_study(tmp_path, "S")
    study = tmp_path / "S/study"
    base = kit.sax_planes(1)[0]
    rot = _rotation(base.col_dir, 30.0)
    tilted = plane_through(base.center + 30 * kit.LONG_AXIS, rot @ base.row_dir, base.col_dir, 2.0, 24)
    kit.write_series(study / "sax_30", [tilted], kit.series_info("S", "sax_30", 30))
    near_parallel = plane_through(base.center, _rotation(base.col_dir, 12.0) @ base.row_dir, base.col_dir, 2.0, 24)
    kit.write_series(study / "2ch_9", [near_parallel], kit.series_info("S", "2ch_9", 9))
    kit.write_series(study / "4ch_2", [kit.lax_plane("4ch")],
                     kit.series_info("S", "4ch_2", 2, frame_of_reference="1.2.3.4"))
    kit.write_series(study / "localizer_1", [base], kit.series_info("S", "localizer_1", 1))
    st = dsbcc.read_study(tmp_path / "S")
    assert [s.series for s in st.views["sax"]] == ["sax_14", "sax_13", "sax_12", "sax_11", "sax_10"]
    assert [s.series for s in st.views["2ch"]] == ["2ch_3"]
    assert [s.series for s in st.views["4ch"]] == ["4ch_4"]
    by_path = {s.path.split("/")[2]: s for s in st.skipped}
    assert sorted(by_path) == ["2ch_9", "4ch_2", "localizer_1", "sax_30"]
    assert "SAX plane normal disagrees with the SAX stack by 30.0 deg" in by_path["sax_30"].reason
    assert "2ch folder but its plane is nearly parallel to the SAX stack (12.0 deg" in by_path["2ch_9"].reason
    assert "another frame of reference (1.2.3.4)" in by_path["4ch_2"].reason
    assert by_path["localizer_1"].level == "series"


def test_several_lax_candidates_in_folder_order(tmp_path: Path, kit):
    kit.write_heart_study(tmp_path, "S")
    lax = kit.lax_plane("2ch")
    other = plane_through(lax.center + 6.0 * lax.normal, lax.row_dir, lax.col_dir, 2.5, 24)
    kit.write_series(tmp_path / "S/study/2ch_1", [other], kit.series_info("S", "2ch_1", 1))
    kit.write_series(tmp_path / "S/study/2ch_5", [lax], kit.series_info("S", "2ch_5", 5))  # same plane as 2ch_3
    st = dsbcc.read_study(tmp_path / "S")
    assert [s.series for s in st.views["2ch"]] == ["2ch_1", "2ch_3"]
    assert [s.reason.split(":")[0] for s in st.skipped] == ["duplicated slice position"]


def test_one_slice_stack(tmp_path: Path, kit):
    kit.write_heart_study(tmp_path, "S", n_sax=1)
    st = dsbcc.read_study(tmp_path / "S")
    assert len(st.views["sax"]) == 1
    assert [(s.level, s.reason) for s in st.skipped] == [
        ("channel", "SAX stack has a single slice position: no relative-location target")]
    loc, info = heart_locations(st.views["sax"][0].plane[None])
    assert loc is None and "fewer than two" in info["reason"]


def test_bad_files_inside_a_series(tmp_path: Path, kit):
    kit.write_heart_study(tmp_path, "S")
    folder = tmp_path / "S/study/sax_11"
    files = sorted(folder.glob("*.dcm"))
    data = files[0].read_bytes()
    files[0].write_bytes(data[: len(data) // 2])                     # truncated
    import pydicom
    ds = pydicom.dcmread(files[1])
    del ds.ImagePositionPatient                                        # missing geometry
    ds.save_as(files[1], enforce_file_format=True)
    (folder / "garbage.dcm").write_bytes(b"\x00" * 300)
    st = dsbcc.read_study(tmp_path / "S")
    sl = next(s for s in st.views["sax"] if s.series == "sax_11")
    assert len(sl.frames) == 1 and sl.load().shape == (1, 24, 24)
    reasons = {s.path.rsplit("/", 1)[1]: s.reason for s in st.skipped}
    assert "truncated" in reasons[files[0].name]
    assert "missing geometry tag(s) ImagePositionPatient" in reasons[files[1].name]
    assert "not a DICOM file" in reasons["garbage.dcm"]
    assert all(not r.startswith("/") and str(tmp_path) not in r for r in reasons.values())


def test_nothing_usable_does_not_stop_iteration(tmp_path: Path, kit):
    root = tmp_path / "root"
    (root / "A/study/sax_1").mkdir(parents=True)
    (root / "A/study/sax_1/x.dcm").write_text("not dicom")
    (root / "A/study/2ch_2").mkdir()
    (root / "B").mkdir()                                               # no study folder, nothing inside
    (root / "B" / "stray.dcm").write_bytes(b"")                        # not in a series folder
    kit.write_heart_study(root, "C")
    studies = list(dsbcc.iter_studies(root))
    assert [s.subject for s in studies] == ["A", "B", "C"]
    a, b, c = studies
    assert a.views == {} and b.views == {} and len(c.views["sax"]) == 5
    assert [s.level for s in a.skipped] == ["file", "series", "series", "study"]
    assert _reasons(b) == ["file outside a series folder (sax_<n>/2ch_<n>/4ch_<n>)", "no usable series in this study"]


def test_nan_pixels_surface_as_reader_error_at_load(tmp_path: Path, kit):
    import pydicom

    from anatplane_dist.sources.base import ReaderError
    kit.write_heart_study(tmp_path, "S", n_sax=2)
    f = sorted((tmp_path / "S/study/sax_10").glob("*.dcm"))[0]
    ds = pydicom.dcmread(f)
    ds["RescaleIntercept"] = pydicom.DataElement(0x00281052, "DS", "inf", validation_mode=0)
    ds.save_as(f, enforce_file_format=True)
    st = dsbcc.read_study(tmp_path / "S")
    with pytest.raises(ReaderError, match="RescaleIntercept is not finite"):
        next(s for s in st.views["sax"] if s.series == "sax_10").load()


def _mutate_first(folder: Path, kit, **changes) -> None:
    kit.edit_dicom(sorted(folder.glob("*.dcm"))[0], **changes)


def test_every_bad_input_in_one_data_set(tmp_path: Path, kit):
    """One subject per known problem: iterating the data set and loading every slice never
    raises anything but a specific ReaderError, and every problem is named somewhere."""
    from anatplane_dist.sources.base import ReaderError
    root = tmp_path / "ds"
    expected: dict[str, str] = {}

    def subject(name: str, why: str, **kw) -> Path:
        expected[name] = why
        kit.write_heart_study(root, name, n_sax=kw.get("n_sax", 3), frames=2, views=kw.get("views", ("sax", "2ch", "4ch")))
        return root / name / "study"

    f = sorted((subject("truncated", "truncated pixel data") / "sax_11").glob("*.dcm"))[0]
    f.write_bytes(f.read_bytes()[:-40])
    _mutate_first(subject("no_geometry", "missing geometry tag(s) PixelSpacing") / "sax_11", kit, PixelSpacing=None)
    _mutate_first(subject("non_unit", "not unit vectors") / "sax_11", kit,
                  ImageOrientationPatient=["0.9", "0", "0", "0", "1", "0"])
    _mutate_first(subject("non_orthogonal", "not orthogonal") / "sax_11", kit,
                  ImageOrientationPatient=["1", "0", "0", "0.3", "0.9539392", "0"])
    _mutate_first(subject("zero_spacing", "PixelSpacing must be positive") / "sax_11", kit, PixelSpacing=["0", "0"])
    subject("missing_view", "", views=("sax", "2ch"))
    dup = subject("duplicated", "duplicated slice position")
    kit.write_series(dup / "sax_30", [kit.sax_planes(3)[1]], kit.series_info("duplicated", "sax_30", 30), frames=2)
    multi = subject("two_positions", "", n_sax=0)
    kit.write_series(multi / "sax_5", kit.sax_planes(3), kit.series_info("two_positions", "sax_5", 5), frames=2)
    subject("one_slice", "single slice position", n_sax=1)
    first = sorted((subject("nan_pixels", "non-finite (NaN/inf) pixel") / "sax_11").glob("*.dcm"))[0]
    kit.to_float_pixels_with_nan(first, pydicom.dcmread(first).pixel_array, 5, 5)
    (root / "garbage" / "study" / "sax_1").mkdir(parents=True)
    (root / "garbage" / "study" / "sax_1" / "x.dcm").write_bytes(b"\xff" * 500)
    expected["garbage"] = "no usable series"

    seen = {}
    for st in dsbcc.iter_studies(root):
        messages = [s.reason for s in st.skipped]
        for slices in st.views.values():
            for s in slices:
                try:
                    s.load()
                except ReaderError as exc:
                    messages.append(str(exc))
        seen[st.subject] = (st, messages)
    assert sorted(seen) == sorted(expected)
    for name, why in expected.items():
        st, messages = seen[name]
        if why:
            assert any(why in m for m in messages), (name, messages)
        else:
            assert messages == [], (name, messages)
    assert seen["missing_view"][0].meta["missing_views"] == ["4ch"]
    assert len(seen["two_positions"][0].views["sax"]) == 3
    assert len(seen["duplicated"][0].views["sax"]) == 3
