"""Enhanced (multi-frame) MR DICOM: one file, many frames, geometry per frame.

An Enhanced MR Image (SOP class 1.2.840.10008.5.1.4.1.1.4.1) holds a whole series -- or
several stacks -- in one file; each frame's ImagePositionPatient, ImageOrientationPatient and
PixelSpacing sit in its Per-Frame Functional Groups item (Plane Position / Plane Orientation /
Pixel Measures), or, when the same for every frame, in the Shared Functional Groups.  Reading
the top-level tags, as for a classic single-frame file, would give one plane (or none) for
all frames, so this reader resolves each frame's own geometry and splits the file into its
stacks (``StackID``) and, within a stack, into slices (one per distinct plane, its frames the
temporal positions) that the other readers use like any other slices.
"""
from __future__ import annotations

import gzip
import io
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from anatplane_dist.core.geometry import GeometryError, Plane, plane_from_dicom
from anatplane_dist.sources.base import Frame, ReaderError, Slice, Study
from anatplane_dist.sources.dicom_read import (
    group_by_plane,
    list_dicom_files,
    relative_reason,
    relpath,
    scan_headers,
    slice_from_group,
    split_stray_frames,
)

__all__ = ["ENHANCED_MR", "EnhancedFrame", "read_enhanced_frames", "is_enhanced", "slices_from_enhanced",
           "folder_slices"]

ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"


@dataclass(frozen=True)
class EnhancedFrame:
    """One frame of a multi-frame file: its index in the pixel data and its own geometry."""

    index: int
    plane: Plane
    stack_id: str
    in_stack_position: int | None
    temporal_index: int | None
    slope: float
    intercept: float


def _read(path: str | os.PathLike, pixels: bool) -> pydicom.Dataset:
    path = Path(path)
    try:
        if path.suffix.lower() == ".gz":
            with gzip.open(path, "rb") as fh:
                return pydicom.dcmread(io.BytesIO(fh.read()), stop_before_pixels=not pixels)
        return pydicom.dcmread(str(path), stop_before_pixels=not pixels)
    except Exception as exc:  # noqa: BLE001 -- pydicom/gzip raise many types for damaged files
        raise ReaderError(f"{path.name}: not a readable DICOM file ({type(exc).__name__}: {exc})") from exc


def is_enhanced(path: str | os.PathLike) -> bool:
    """True for a multi-frame file with per-frame functional groups (header read only)."""
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True,
                             specific_tags=["SOPClassUID", "NumberOfFrames", "PerFrameFunctionalGroupsSequence"])
    except Exception:  # noqa: BLE001 -- the classic reader reports unreadable files
        return False
    return str(ds.get("SOPClassUID", "")) == ENHANCED_MR or "PerFrameFunctionalGroupsSequence" in ds


def _group(item: Any, shared: Any, keyword: str) -> Any:
    """The first item of functional group ``keyword``: per-frame first, then shared."""
    for src in (item, shared):
        if src is not None and keyword in src and len(src[keyword].value):
            return src[keyword].value[0]
    return None


class _FrameGeometry:
    """The attributes ``plane_from_dicom`` reads, gathered from the functional groups."""

    def __init__(self, pos: Any, ori: Any, meas: Any, rows: int, cols: int) -> None:
        self.ImagePositionPatient = getattr(pos, "ImagePositionPatient", None)
        self.ImageOrientationPatient = getattr(ori, "ImageOrientationPatient", None)
        self.PixelSpacing = getattr(meas, "PixelSpacing", None)
        self.Rows, self.Columns = rows, cols


def read_enhanced_frames(path: str | os.PathLike, ds: pydicom.Dataset | None = None) -> list[EnhancedFrame]:
    """One ``EnhancedFrame`` (plane geometry, stack, position, rescale) per frame of ``path``
    (a ``.gz`` is read through gzip).

    Raises:
        ReaderError: not a multi-frame file, or a frame whose geometry is missing or invalid
            (the message names the frame).
    """
    ds = ds if ds is not None else _read(path, pixels=False)
    name = Path(path).name
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    n = int(ds.get("NumberOfFrames", 0) or 0)
    if per_frame is None or n < 1:
        raise ReaderError(f"{name}: not a multi-frame file with per-frame functional groups")
    if len(per_frame) != n:
        raise ReaderError(f"{name}: {len(per_frame)} per-frame items for NumberOfFrames={n}")
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    rows, cols = int(ds.Rows), int(ds.Columns)
    out = []
    for i, item in enumerate(per_frame):
        geo = _FrameGeometry(_group(item, shared, "PlanePositionSequence"),
                             _group(item, shared, "PlaneOrientationSequence"),
                             _group(item, shared, "PixelMeasuresSequence"), rows, cols)
        try:
            plane = plane_from_dicom(geo, f"{name} frame {i + 1}")
        except GeometryError as exc:
            raise ReaderError(str(exc)) from exc
        content = _group(item, None, "FrameContentSequence")
        pvt = _group(item, shared, "PixelValueTransformationSequence")
        out.append(EnhancedFrame(
            index=i, plane=plane, stack_id=str(getattr(content, "StackID", "") or "1"),
            in_stack_position=_int(getattr(content, "InStackPositionNumber", None)),
            temporal_index=_int(getattr(content, "TemporalPositionIndex", None)),
            slope=float(getattr(pvt, "RescaleSlope", 1.0) or 1.0),
            intercept=float(getattr(pvt, "RescaleIntercept", 0.0) or 0.0)))
    return out


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _same(a: Plane, b: Plane) -> bool:
    return bool(np.allclose(a.origin, b.origin, atol=1e-3) and np.allclose(a.row_dir, b.row_dir, atol=1e-4)
                and np.allclose(a.col_dir, b.col_dir, atol=1e-4) and np.allclose(a.spacing, b.spacing, atol=1e-4))


def slices_from_enhanced(path: Path, view: str, series: str, study: Study) -> list[Slice]:
    """The slices of one multi-frame file: split by stack (``<series>#stack<id>`` when the file
    holds several), one slice per distinct plane whose frames are its time points; problems
    become skips on ``study``, never exceptions."""
    rel = relpath(path, study.root)
    try:
        ds = _read(path, pixels=False)
        frames = read_enhanced_frames(path, ds)
    except ReaderError as exc:
        study.skip(str(exc), rel, "file")
        return []
    for_uid = str(ds.get("FrameOfReferenceUID", "") or "")
    series_uid = str(ds.get("SeriesInstanceUID", "") or "")
    stacks = sorted({f.stack_id for f in frames})
    out: list[Slice] = []
    for sid in stacks:
        groups: list[list[EnhancedFrame]] = []
        for f in (f for f in frames if f.stack_id == sid):
            g = next((g for g in groups if _same(g[0].plane, f.plane)), None)
            if g is None:
                groups.append([f])
            else:
                g.append(f)
        name = series if len(stacks) == 1 else f"{series}#stack{sid}"
        for g in groups:
            g.sort(key=lambda f: (f.temporal_index is None, f.temporal_index or 0, f.index))
            out.append(Slice(view=view, series=name, plane=g[0].plane,
                             frames=[Frame(path=rel, index=t) for t in range(len(g))],
                             frame_of_reference=for_uid, series_uid=f"{series_uid}#{sid}" if len(stacks) > 1 else series_uid,
                             loader=partial(_load_frames, str(path), tuple((f.index, f.slope, f.intercept) for f in g))))
    return out


def _load_frames(path: str, picks: tuple[tuple[int, float, float], ...]) -> np.ndarray:
    """The picked frames of ``path`` as float32 (n, rows, cols), rescaled per frame."""
    ds = _read(path, pixels=True)
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 -- truncated or undecodable pixel data
        raise ReaderError(f"{Path(path).name}: cannot decode pixel data ({type(exc).__name__}: {exc})") from exc
    arr = arr.reshape((-1,) + arr.shape[-2:])
    return np.stack([arr[i].astype(np.float32) * s + b for i, s, b in picks])


def folder_slices(view: str, folder: Path, study: Study) -> list[Slice]:
    """Every slice of one series folder: classic single-frame files grouped by plane (each file
    parsed once), and each Enhanced multi-frame file split into its stacks and slices.
    An unreadable or empty folder is a ``series`` skip on ``study`` (no slices)."""
    try:
        files = list_dicom_files(folder, study=study)
    except ReaderError as exc:          # one unreadable series folder costs that series only
        study.skip(relative_reason(str(exc), study.root), relpath(folder, study.root), "series")
        return []
    multi: list[Path] = []
    headers = scan_headers(files, study, keep_pixels=True, multiframe=multi)
    out = [slice_from_group(view, folder.name, g, study.root) for g in split_stray_frames(group_by_plane(headers), study)]
    for f in multi:
        out.extend(slices_from_enhanced(f, view, folder.name, study))
    if not out:
        study.skip("series folder holds no readable DICOM image", relpath(folder, study.root), "series")
    return out
