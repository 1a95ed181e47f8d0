"""Enhanced MR multi-frame DICOM: per-frame geometry from the functional groups (nibabel's
Philips MPRAGE test file: 176 frames), and the reader splitting a file into its stacks."""
from __future__ import annotations

import gzip
import io
import os
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest

from anatplane_dist.sources import viewdirs
from anatplane_dist.sources.base import ReaderError
from anatplane_dist.sources.enhanced import is_enhanced, read_enhanced_frames

MPRAGE = Path(os.path.dirname(nibabel.__file__)) / "nicom" / "tests" / "data" / "philips_mprage.dcm.gz"
needs_mprage = pytest.mark.skipif(not MPRAGE.is_file(), reason=f"{MPRAGE} not shipped by this nibabel")


@needs_mprage
def test_philips_mprage_gives_one_plane_per_frame():
    frames = read_enhanced_frames(MPRAGE)
    assert len(frames) == 176
    first = frames[0].plane
    # the values of the first frame's own functional groups, not the top-level tags
    np.testing.assert_allclose(first.origin, [92.7090416119899, -125.12766968458, 136.495256863534])
    np.testing.assert_allclose(first.row_dir, [-0.0022011068649, 0.99788552522659, -0.0649590045213], atol=1e-9)
    np.testing.assert_allclose(first.spacing, [1.0, 1.0])
    assert tuple(first.shape) == (256, 256)
    # a 3D volume: parallel frames, 1 mm apart along the normal, in stack order
    pos = np.array([f.plane.origin @ first.normal for f in frames])
    np.testing.assert_allclose(np.abs(np.diff(pos)), 1.0, atol=1e-3)
    assert [f.in_stack_position for f in frames] == list(range(1, 177))
    assert {f.stack_id for f in frames} == {"1"}
    assert frames[0].slope == pytest.approx(2.10793650793650)


def _mprage(tmp_path: Path, stacks: int = 1, frames: int = 12) -> Path:
    """The MPRAGE file cut to ``frames`` frames (and split into ``stacks`` StackIDs), uncompressed."""
    ds = pydicom.dcmread(io.BytesIO(gzip.open(MPRAGE).read()))
    arr = ds.pixel_array[:frames]
    ds.PerFrameFunctionalGroupsSequence = ds.PerFrameFunctionalGroupsSequence[:frames]
    for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        item.FrameContentSequence[0].StackID = str(1 + i * stacks // frames)
    ds.NumberOfFrames = frames
    ds.PixelData = arr.tobytes()
    path = tmp_path / "subj" / "study" / "sagittal_3" / "IM-0001.dcm"
    path.parent.mkdir(parents=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path


@needs_mprage
@pytest.mark.parametrize("stacks", [1, 2])
def test_reader_splits_a_multiframe_file_into_its_stacks_and_slices(tmp_path: Path, stacks: int):
    path = _mprage(tmp_path, stacks=stacks)
    assert is_enhanced(path)
    study = viewdirs.read_study(tmp_path / "subj", root=tmp_path)
    slices = study.views["sagittal"]
    assert len(slices) == 12 and not study.skipped
    assert len({s.series for s in slices}) == stacks
    if stacks == 2:
        assert {s.series for s in slices} == {"sagittal_3#stack1", "sagittal_3#stack2"}
    ds = pydicom.dcmread(str(path))
    by_origin = {tuple(np.round(f.plane.origin, 4)): f.index for f in read_enhanced_frames(path)}
    for s in slices[:3]:
        pix = s.load()
        assert pix.shape == (1, 256, 256)
        k = by_origin[tuple(np.round(s.plane.origin, 4))]
        np.testing.assert_allclose(pix[0], ds.pixel_array[k] * 2.10793650793650, rtol=1e-6)


def test_classic_file_is_not_multiframe(tmp_path: Path):
    p = tmp_path / "x.dcm"
    p.write_bytes(b"not dicom")
    assert not is_enhanced(p)
    with pytest.raises(ReaderError, match="not a readable DICOM"):
        read_enhanced_frames(p)


@needs_mprage
def test_dsbcc_reader_reads_a_multiframe_series_too(tmp_path: Path):
    from anatplane_dist.sources import dsbcc

    path = _mprage(tmp_path, stacks=1, frames=10)
    sax = path.parent.parent / "sax_5"
    path.parent.rename(sax)
    study = dsbcc.read_study(tmp_path / "subj", root=tmp_path)
    assert len(study.views["sax"]) == 10
    assert not [s for s in study.skipped if s.level not in ("channel",)]
