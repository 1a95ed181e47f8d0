"""dicom_read: headers, geometry, pixels and grouping on real files written with pydicom."""
from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path

import numpy as np
import pydicom
import pytest

from anatplane_dist.sources.base import ReaderError, Study
from anatplane_dist.sources.dicom_read import (
    group_by_plane,
    iter_subjects,
    list_dicom_files,
    load_frames,
    load_pixels,
    read_header,
    scan_headers,
)
from anatplane_dist.sources.dicom_write import write_mr_image


@pytest.fixture()
def one_file(tmp_path: Path, kit) -> Path:
    plane = kit.sax_planes(1)[0]
    return write_mr_image(tmp_path / "a.dcm", kit.image_of(plane), plane, kit.series_info("S", "sax_1", 1),
                          instance_number=7, trigger_time_ms=123.5)


def test_header_round_trip(one_file: Path, kit):
    plane = kit.sax_planes(1)[0]
    h = read_header(one_file)
    np.testing.assert_allclose(h.plane.origin, plane.origin, atol=1e-6)
    np.testing.assert_allclose(h.plane.row_dir, plane.row_dir, atol=1e-8)
    np.testing.assert_allclose(h.plane.col_dir, plane.col_dir, atol=1e-8)
    np.testing.assert_array_equal(h.plane.shape, plane.shape)
    np.testing.assert_allclose(h.plane.spacing, plane.spacing)
    assert h.instance_number == 7 and h.trigger_time == pytest.approx(123.5)
    assert h.frame_of_reference and h.series_uid and h.sop_uid


def test_pixels_round_trip_and_rescale(one_file: Path, kit):
    expected = kit.stored(kit.image_of(kit.sax_planes(1)[0]))
    np.testing.assert_array_equal(load_pixels(one_file), expected)
    kit.edit_dicom(one_file, RescaleSlope="0.5", RescaleIntercept="-100")
    got = load_pixels(one_file)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected * 0.5 - 100, rtol=1e-6)


def test_not_dicom_and_empty(tmp_path: Path):
    txt = tmp_path / "notes.dcm"
    txt.write_text("this is not DICOM\n" * 20)
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    for p in (txt, empty):
        with pytest.raises(ReaderError, match="not a DICOM file"):
            read_header(p)
    with pytest.raises(ReaderError, match="cannot read file"):
        read_header(tmp_path / "missing.dcm")


@pytest.mark.parametrize("cut, match", [(100, r"truncated pixel data \(\d+ of 1152 bytes"),
                                        (1300, "no pixel data element: truncated file")])
def test_truncated(one_file: Path, cut: int, match: str):
    """Header-only read, single full read and pixel load all name the truncation."""
    data = one_file.read_bytes()
    one_file.write_bytes(data[:-cut])
    for read in (read_header, partial(read_header, keep_pixels=True), load_pixels):
        with pytest.raises(ReaderError, match=match):
            read(one_file)


def test_kept_pixels_decode_without_the_file(one_file: Path, kit):
    """A full read keeps the pixels encoded; loading them needs no second read of the file."""
    expected = kit.stored(kit.image_of(kit.sax_planes(1)[0]))
    h = read_header(one_file, keep_pixels=True)
    lean = read_header(one_file)
    assert lean.pixels is None
    assert (h.sop_uid, h.instance_number, h.trigger_time) == (lean.sop_uid, lean.instance_number, lean.trigger_time)
    np.testing.assert_array_equal(h.plane.origin, lean.plane.origin)
    assert isinstance(h.pixels.PixelData, bytes) and len(h.pixels.PixelData) == expected.size * 2
    one_file.unlink()
    frames = load_frames([h, h])
    np.testing.assert_array_equal(frames, np.stack([expected, expected]))
    assert getattr(h.pixels, "_pixel_array", None) is None      # still encoded bytes, nothing cached
    with pytest.raises(ReaderError, match="cannot read file"):   # no kept pixels: read from the file
        load_frames([dataclasses.replace(h, pixels=None)])


def test_kept_pixels_rescale(one_file: Path, kit):
    expected = kit.stored(kit.image_of(kit.sax_planes(1)[0]))
    kit.edit_dicom(one_file, RescaleSlope="0.5", RescaleIntercept="-100")
    np.testing.assert_allclose(load_frames([read_header(one_file, keep_pixels=True)])[0],
                               expected * 0.5 - 100, rtol=1e-6)


@pytest.mark.parametrize("changes, match", [
    ({"ImageOrientationPatient": None}, "missing geometry tag.*ImageOrientationPatient"),
    ({"PixelSpacing": None, "ImagePositionPatient": None}, "missing geometry tag.*ImagePositionPatient.*PixelSpacing"),
    ({"ImageOrientationPatient": ["1.2", "0", "0", "0", "1", "0"]}, "not unit vectors"),
    ({"ImageOrientationPatient": ["1", "0", "0", "0.5", "0.8660254", "0"]}, "not orthogonal"),
    ({"PixelSpacing": ["0", "1.5"]}, "PixelSpacing must be positive"),
    ({"ImageOrientationPatient": ["1", "0", "0", "0", "1"]}, "ImageOrientationPatient must be 6 numbers"),
])
def test_bad_geometry(one_file: Path, changes: dict, match: str, kit):
    kit.edit_dicom(one_file, **changes)
    with pytest.raises(ReaderError, match=match):
        read_header(one_file)


def test_nan_float_pixels(tmp_path: Path, one_file: Path, kit):
    """Float Pixel Data (7FE0,0008) with a NaN: a specific error, not NaNs in a shard."""
    kit.to_float_pixels_with_nan(one_file, kit.image_of(kit.sax_planes(1)[0]), 3, 4)
    read_header(one_file)      # the header is fine: only the pixels are bad
    kept = read_header(one_file, keep_pixels=True)
    with pytest.raises(ReaderError, match="1 non-finite"):
        load_pixels(one_file)
    with pytest.raises(ReaderError, match="a.dcm: 1 non-finite"):
        load_frames([kept])


def test_nan_rescale_slope(one_file: Path):
    ds = pydicom.dcmread(one_file)
    ds["RescaleSlope"] = pydicom.DataElement(0x00281053, "DS", "NaN", validation_mode=0)
    ds.save_as(one_file, enforce_file_format=True)
    with pytest.raises(ReaderError, match="RescaleSlope is not finite"):
        load_pixels(one_file)
    with pytest.raises(ReaderError, match="RescaleSlope is not finite"):
        load_frames([read_header(one_file, keep_pixels=True)])


def test_frames_ordered_by_trigger_time_then_instance(tmp_path: Path, kit):
    plane = kit.sax_planes(1)[0]
    info = kit.series_info("S", "sax_1", 1)
    # instance numbers disagree with trigger times; two frames share a trigger time
    spec = [(1, 80.0), (2, 0.0), (3, 40.0), (5, 40.0), (4, 40.0)]
    for inst, tt in spec:
        write_mr_image(tmp_path / f"z{inst}.dcm", kit.image_of(plane, inst), plane, info,
                       instance_number=inst, trigger_time_ms=tt)
    study = Study("S", tmp_path, {})
    groups = group_by_plane(scan_headers(list_dicom_files(tmp_path), study))
    assert len(groups) == 1 and not study.skipped
    assert [h.instance_number for h in groups[0]] == [2, 3, 4, 5, 1]
    assert all(h.pixels is not None for h in groups[0])         # the scan read each file once, whole
    frames = load_frames(groups[0])
    assert frames.shape == (5, 24, 24)
    np.testing.assert_array_equal(frames[0], kit.stored(kit.image_of(plane, 2)))
    np.testing.assert_array_equal(load_frames([h.path for h in groups[0]]), frames)


def test_grouping_splits_positions_and_sizes(tmp_path: Path, kit):
    planes = kit.sax_planes(2)
    info = kit.series_info("S", "sax_1", 1)
    small = kit.sax_planes(1, shape=16)[0]
    files = [write_mr_image(tmp_path / f"a{i}.dcm", kit.image_of(p), p, info, instance_number=i)
             for i, p in enumerate([planes[0], planes[1], planes[0], planes[1], small], start=1)]
    # a copy of a file (same SOPInstanceUID) is one image, recorded once
    (tmp_path / "copy.dcm").write_bytes(files[0].read_bytes())
    (tmp_path / "broken.dcm").write_bytes(b"DICM")
    (tmp_path / "info.json").write_text("{}")          # not a DICOM candidate at all
    study = Study("S", tmp_path, {})
    groups = group_by_plane(scan_headers(list_dicom_files(tmp_path), study))
    assert [len(g) for g in groups] == [2, 2, 1]
    assert groups[2][0].plane.shape.tolist() == [16, 16]
    reasons = sorted((s.path, s.reason.split(" (")[0]) for s in study.skipped)
    assert reasons == [("broken.dcm", "broken.dcm: not a DICOM file"),
                       ("copy.dcm", "duplicate SOPInstanceUID " + pydicom.dcmread(files[0]).SOPInstanceUID)]


def test_iter_subjects_records_a_study_that_raises(tmp_path: Path):
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()

    def read(subject_dir: Path, root: Path) -> Study:
        if subject_dir.name == "b":
            raise RuntimeError("disk on fire")
        return Study(subject_dir.name, root, {"x": []})

    got = [(s.subject, [(k.level, k.reason) for k in s.skipped]) for s in iter_subjects(tmp_path, None, read)]
    assert got == [("a", []), ("b", [("study", "study could not be read (RuntimeError: disk on fire)")]), ("c", [])]


@pytest.mark.filterwarnings("ignore:Invalid value for VR IS")
def test_raw_tag_fast_path_agrees_with_pydicom(tmp_path, kit):
    """Every value RawTags parses equals pydicom's own conversion, on real files (explicit and
    implicit VR little endian), and anything it is unsure of falls back to pydicom."""
    import pydicom
    from pydicom.uid import ImplicitVRLittleEndian

    from anatplane_dist.sources.rawtags import _VR, RawTags

    files = kit.write_series(tmp_path / "s", kit.sax_planes(2), kit.series_info("S", "s", 7), frames=2)
    implicit = pydicom.dcmread(files[1])
    implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    implicit.save_as(files[1], enforce_file_format=True)
    kit.edit_dicom(files[2], InstanceNumber="12.0", TriggerTime=None)
    for f in files:
        fast, slow = RawTags(pydicom.dcmread(f)), pydicom.dcmread(f)
        for kw in _VR:
            want = slow.get(kw)
            got = fast.get(kw)
            if isinstance(want, pydicom.multival.MultiValue):
                assert [float(v) for v in want] == got, kw
            else:
                assert (want is None and got is None) or got == want, (kw, got, want)
