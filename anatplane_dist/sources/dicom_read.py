"""Reading DICOM files for the readers: lazy headers, geometry, pixels, series grouping.

Readers of whole data sets (``dsbcc``, ``knee``) parse every file exactly once: the scan that
groups a study's files into slices reads each whole file, and keeps, next to its header, the
Pixel Data *as stored* (the parsed dataset, pixels still encoded bytes; see
``DicomHeader.pixels``).  ``Slice.load()`` then decodes from memory instead of parsing the file
a second time -- measured as the largest cost of sharding besides resampling.  Decoding stays
lazy (one slice at a time), and the kept bytes live as long as the study: a study of a few
hundred images holds tens of MB at most, and the sharder drops it once written.  A header read
without pixels (``read_header(path)``, e.g. for inspection) loads from the file instead.

Every problem with one file becomes a ``ReaderError`` with the file and the reason, which the
reader turns into a recorded ``Skip`` -- one bad file never stops a scan.

Grouping rules shared by the readers live here too, so the DSBCC and knee readers apply the
same definition of "the same slice":

* files are grouped into slices by exact plane (series, position, orientation, spacing, size);
* frames of a slice are ordered by TriggerTime, then InstanceNumber, then file name;
* coincident planes (same orientation and position along the normal) are duplicates: the
  caller orders candidates by preference and the first one is kept, the others recorded.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, Sequence

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.pixels import pixel_array
from pydicom.uid import DeflatedExplicitVRLittleEndian

from anatplane_dist.core.geometry import GeometryError, Plane, plane_from_dicom
from anatplane_dist.sources.base import Frame, ReaderError, Slice, Study, subject_folders
from anatplane_dist.sources.plausible import frame_problem
from anatplane_dist.sources.rawtags import RawTags

__all__ = [
    "DicomHeader", "MultiFrameFile", "read_dataset", "read_header", "header_from_dataset", "load_pixels",
    "decode_pixels", "load_frames", "list_dicom_files", "scan_headers", "group_by_plane", "split_stray_frames",
    "slice_from_group",
    "angle_between_normals_deg", "drop_coincident", "majority", "relpath", "relative_reason", "iter_subjects",
]

#: file suffixes read as DICOM (files without a suffix are common in PACS exports)
DICOM_SUFFIXES = {".dcm", ".dicom", ".ima", ""}

_POS_TOL_MM = 0.01      # two origins closer than this are the same position (DS rounding)
_DIR_TOL = 1e-4         # direction cosines equal within this
_SPACING_TOL = 1e-4


class MultiFrameFile(ReaderError):
    """A file whose geometry is per frame (Enhanced MR): not one plane, read by ``sources.enhanced``."""


@dataclass(frozen=True)
class DicomHeader:
    """What the readers need from one image file.

    ``pixels`` is the whole parsed dataset with its Pixel Data still encoded (no decoded array
    is made or cached), kept by ``read_header(..., keep_pixels=True)`` so that the file is
    never parsed twice; None after a header-only read. The whole dataset, not a copy of its
    pixel groups: the header elements add a few kB per file, while slicing a copy cost about
    as much as the parse itself (``docs/performance.md``, Sharding).
    """

    path: Path
    plane: Plane
    frame_of_reference: str
    series_uid: str
    sop_uid: str
    series_number: int | None
    instance_number: int | None
    trigger_time: float | None
    pixels: pydicom.Dataset | None = field(default=None, repr=False, compare=False)

    @property
    def frame_sort_key(self) -> tuple:
        """Cine order: TriggerTime, then InstanceNumber, then file name (never name alone)."""
        return (self.trigger_time is None, self.trigger_time or 0.0,
                self.instance_number is None, self.instance_number or 0, self.path.name)


def read_dataset(path: str | os.PathLike, *, pixels: bool = False) -> pydicom.Dataset:
    """Parse one DICOM file (headers only unless ``pixels``).

    Both reads check that the pixels are all there (from the declared length of Pixel Data
    and the bytes present) -- pydicom silently returns a partial dataset for a file cut
    short, which would otherwise surface much later as "missing tag" or a decode error.

    Raises:
        ReaderError: the file is missing, not DICOM, truncated, or too damaged to parse.
    """
    path = Path(path)
    try:
        if pixels:
            ds = pydicom.dcmread(path)
            _check_pixel_data_read(ds, path)
            return ds
        with open(path, "rb") as fp:
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
            _check_pixel_data_complete(fp, ds, path)
            return ds
    except ReaderError:
        raise
    except InvalidDicomError as exc:
        raise ReaderError(f"{path}: not a DICOM file ({exc})") from exc
    except OSError as exc:
        raise ReaderError(f"{path}: cannot read file ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 -- pydicom raises many types on damaged files
        raise ReaderError(f"{path}: unreadable DICOM ({type(exc).__name__}: {exc})") from exc


_PIXEL_TAGS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN"}


def _check_pixel_data_complete(fp: BinaryIO, ds: pydicom.Dataset, path: Path) -> None:
    """After a ``stop_before_pixels`` read, ``fp`` sits on the Pixel Data element (pydicom
    rewinds to the stopping tag) or at the end of a file that has none."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and (syntax == DeflatedExplicitVRLittleEndian or not syntax.is_little_endian):
        return                      # positions are not byte offsets there; decoding will tell
    pos = fp.tell()
    size = os.fstat(fp.fileno()).st_size
    head = fp.read(12)
    if len(head) < 8:
        raise ReaderError(f"{path}: no pixel data element: truncated file (ends at byte {size}), "
                          "or not an image")
    tag = (int.from_bytes(head[0:2], "little"), int.from_bytes(head[2:4], "little"))
    if tag not in _PIXEL_TAGS:
        return
    if head[4:6] in _LONG_VRS:          # explicit VR: tag, VR, 2 reserved bytes, 4-byte length
        if len(head) < 12:
            raise ReaderError(f"{path}: truncated pixel data element header")
        length, start = int.from_bytes(head[8:12], "little"), pos + 12
    else:                               # implicit VR: tag, 4-byte length
        length, start = int.from_bytes(head[4:8], "little"), pos + 8
    if length != 0xFFFFFFFF and start + length > size:
        raise ReaderError(f"{path}: truncated pixel data ({max(0, size - start)} of {length} bytes present)")


def _check_pixel_data_read(ds: pydicom.Dataset, path: Path) -> None:
    """After a full read: the Pixel Data element exists and holds its declared length (pydicom
    keeps the declared length on the still-raw element, whatever the transfer syntax)."""
    tag = next((t for t in _PIXEL_TAGS if t in ds), None)
    if tag is None:
        raise ReaderError(f"{path}: no pixel data element: truncated file (ends at byte "
                          f"{path.stat().st_size}), or not an image")
    elem = ds.get_item(tag)
    if (isinstance(elem, RawDataElement) and elem.length != 0xFFFFFFFF
            and len(elem.value or b"") < elem.length):
        raise ReaderError(f"{path}: truncated pixel data ({len(elem.value or b'')} of {elem.length} bytes present)")


def _optional_float(ds: pydicom.Dataset | RawTags, keyword: str, path: Path) -> float | None:
    value = ds.get(keyword)
    if value in (None, ""):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError) as exc:
        raise ReaderError(f"{path}: {keyword} is not a number ({value!r})") from exc
    if not np.isfinite(out):
        raise ReaderError(f"{path}: {keyword} is not finite ({value!r})")
    return out


def _optional_int(ds: pydicom.Dataset | RawTags, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None     # a malformed InstanceNumber only loses a tie-breaker


def header_from_dataset(ds: pydicom.Dataset, path: str | os.PathLike, *, keep_pixels: bool = False) -> DicomHeader:
    """The ``DicomHeader`` of a parsed dataset (with its encoded pixel part if ``keep_pixels``:
    ``ds`` must then be a full read).

    Raises:
        ReaderError: geometry missing, invalid (the ``GeometryError`` text names the tag) or
            physically implausible (``plausible.frame_problem``), or a multi-frame object (the readers handle single-frame MR images only).
    """
    path = Path(path)
    if "PerFrameFunctionalGroupsSequence" in ds:   # geometry per frame: sources.enhanced reads it
        raise MultiFrameFile(f"{path}: Enhanced multi-frame object (per-frame geometry)")
    tags = RawTags(ds)       # the values below without pydicom's per-element conversion cost
    try:
        plane = plane_from_dicom(tags, what=str(path))
    except GeometryError as exc:
        raise ReaderError(str(exc)) from exc
    except (TypeError, ValueError) as exc:       # e.g. Rows holding garbage
        raise ReaderError(f"{path}: malformed geometry tag ({exc})") from exc
    implausible = frame_problem(plane)
    if implausible:
        raise ReaderError(f"{path}: {implausible}")
    frames = _optional_int(tags, "NumberOfFrames")
    if frames is not None and frames > 1:
        raise ReaderError(f"{path}: multi-frame object ({frames} frames) is not supported; "
                          "export single-frame images")
    return DicomHeader(
        path=path, plane=plane,
        frame_of_reference=str(tags.get("FrameOfReferenceUID", "") or ""),
        series_uid=str(tags.get("SeriesInstanceUID", "") or ""),
        sop_uid=str(tags.get("SOPInstanceUID", "") or ""),
        series_number=_optional_int(tags, "SeriesNumber"),
        instance_number=_optional_int(tags, "InstanceNumber"),
        trigger_time=_optional_float(tags, "TriggerTime", path),
        pixels=ds if keep_pixels else None,
    )


def read_header(path: str | os.PathLike, *, keep_pixels: bool = False) -> DicomHeader:
    """Header and geometry of one file: without its pixels (a few kB read), or, with
    ``keep_pixels``, from one full read that also keeps the encoded pixels for later decoding.

    Raises:
        ReaderError: unreadable, truncated or not DICOM; missing or invalid geometry.
    """
    return header_from_dataset(read_dataset(path, pixels=keep_pixels), path, keep_pixels=keep_pixels)


def load_pixels(path: str | os.PathLike) -> np.ndarray:
    """Pixels of one single-frame image as float32 (rows, cols) in stored-value units
    mapped through RescaleSlope/RescaleIntercept.

    Raises:
        ReaderError: unreadable or truncated pixel data, a shape that disagrees with
            Rows/Columns, a non-finite rescale, or NaN/inf pixel values (float pixel data).
    """
    path = Path(path)
    return decode_pixels(read_dataset(path, pixels=True), path)


def decode_pixels(ds: pydicom.Dataset, path: str | os.PathLike) -> np.ndarray:
    """What :func:`load_pixels` returns, from a dataset already in memory (a full read, or
    the encoded pixel part kept in ``DicomHeader.pixels``); ``path`` names it in errors.

    The decoded array is not cached on ``ds``: a kept pixel part stays encoded bytes.
    """
    path = Path(path)
    try:
        arr = pixel_array(ds)
    except Exception as exc:  # noqa: BLE001 -- truncated data, missing tags, unknown syntax
        raise ReaderError(f"{path}: cannot decode pixel data ({type(exc).__name__}: {exc})") from exc
    rows, cols = ds.get("Rows"), ds.get("Columns")
    if arr.ndim != 2 or (rows is not None and cols is not None and arr.shape != (int(rows), int(cols))):
        raise ReaderError(f"{path}: pixel array shape {arr.shape} is not Rows x Columns ({rows}, {cols})")
    slope = _optional_float(ds, "RescaleSlope", path)
    intercept = _optional_float(ds, "RescaleIntercept", path)
    out = arr.astype(np.float32)
    if slope is not None and slope != 1.0:
        out *= np.float32(slope)
    if intercept is not None and intercept != 0.0:
        out += np.float32(intercept)
    bad = ~np.isfinite(out)
    if bad.any():
        raise ReaderError(f"{path}: {int(bad.sum())} non-finite (NaN/inf) pixel value(s)")
    return out


def load_frames(sources: Sequence[DicomHeader | str | os.PathLike]) -> np.ndarray:
    """Frames of one slice as float32 (n_frames, rows, cols), in the order given.

    A source is a file path, or a ``DicomHeader``: decoded from its kept pixels when it has
    them (no file access), else from its file.
    """
    frames = [_load_one(s) for s in sources]
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        first = sources[0].path if isinstance(sources[0], DicomHeader) else sources[0]
        raise ReaderError(f"frames of one slice have different shapes {sorted(shapes)}: {first}")
    return np.stack(frames)


def _load_one(source: DicomHeader | str | os.PathLike) -> np.ndarray:
    if not isinstance(source, DicomHeader):
        return load_pixels(source)
    if source.pixels is None:
        return load_pixels(source.path)
    return decode_pixels(source.pixels, source.path)


def list_dicom_files(folder: Path, *, recursive: bool = False, study: Study | None = None) -> list[Path]:
    """Candidate DICOM files of a folder, sorted by path.

    Hidden entries and files with a known non-DICOM suffix (``.json``, ``.txt``, ...) are not
    candidates. Everything else is accounted for: with ``study``, a dangling symbolic link
    (``file``), an entry that cannot be examined (``file``), a sub-folder that cannot be listed,
    a folder link (not followed: loops) or a sub-folder of a non-recursive listing (``series``)
    each get a record there, and the rest of the folder is still listed.

    Raises:
        ReaderError: ``folder`` itself cannot be listed (the caller records it at its level:
            a series folder costs that series, never the study).
    """
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise ReaderError(f"{folder}: folder unreadable ({exc.strerror or type(exc).__name__}); "
                          "its files are not used") from exc
    out: list[Path] = []
    for e in entries:
        if e.name.startswith("."):
            continue
        path = Path(e.path)
        problem, level = "", "file"
        try:
            if e.is_dir(follow_symlinks=False):
                if not recursive:
                    problem, level = "sub-folder inside a series folder: not read", "series"
                else:
                    try:
                        out.extend(list_dicom_files(path, recursive=True, study=study))
                    except ReaderError as exc:
                        problem, level = str(exc), "series"
            elif e.is_symlink() and not os.path.exists(e.path):
                if path.suffix.lower() in DICOM_SUFFIXES:
                    problem = f"dangling symbolic link (to {os.readlink(e.path)}): no file to read"
            elif e.is_symlink() and e.is_dir():
                problem, level = f"symbolic link to a folder ({os.readlink(e.path)}): not followed", "series"
            elif e.is_file() and path.suffix.lower() in DICOM_SUFFIXES:
                out.append(path)
        except OSError as exc:
            problem = f"cannot examine this entry ({exc.strerror or type(exc).__name__})"
        if problem:
            if study is None:
                raise ReaderError(f"{path}: {problem}")
            study.skip(relative_reason(problem, study.root), relpath(path, study.root), level)
    return sorted(out)


def scan_headers(files: Iterable[Path], study: Study, *, keep_pixels: bool = True,
                 multiframe: list[Path] | None = None) -> list[DicomHeader]:
    """Headers of ``files``; unreadable ones and repeated SOPInstanceUIDs become skips on ``study``.

    With ``keep_pixels`` (the readers' scan) each file is read whole, once, and its encoded
    pixels are kept with its header for ``Slice.load()``; without, only headers are read.
    Enhanced multi-frame files go to ``multiframe`` when given (``enhanced.folder_slices``
    reads them), else they are skips too.
    """
    out: list[DicomHeader] = []
    seen: dict[str, Path] = {}
    for f in files:
        try:
            h = read_header(f, keep_pixels=keep_pixels)
        except MultiFrameFile as exc:
            if multiframe is not None:
                multiframe.append(f)
                continue
            study.skip(relative_reason(str(exc), study.root) + ": not read by this reader", relpath(f, study.root), "file")
            continue
        except ReaderError as exc:
            study.skip(relative_reason(str(exc), study.root), relpath(f, study.root), "file")
            continue
        if h.sop_uid and h.sop_uid in seen:
            study.skip(f"duplicate SOPInstanceUID {h.sop_uid} (same image as "
                       f"{relpath(seen[h.sop_uid], study.root)})", relpath(f, study.root), "file")
            continue
        seen[h.sop_uid] = f
        out.append(h)
    return out


#: per-component tolerance of the 14 numbers of :func:`_plane_vector`
_PLANE_TOL = np.array([_POS_TOL_MM] * 3 + [_DIR_TOL] * 6 + [_SPACING_TOL] * 2 + [0.5] * 2)


def _plane_vector(p: Plane) -> np.ndarray:
    """origin, row_dir, col_dir, spacing, shape as one vector: one comparison per pair instead
    of four ``np.allclose`` calls (measured as a tenth of the reader's time)."""
    return np.concatenate([p.origin, p.row_dir, p.col_dir, p.spacing, p.shape]).astype(np.float64)


def _same_plane(a: Plane, b: Plane) -> bool:
    return bool((np.abs(_plane_vector(a) - _plane_vector(b)) <= _PLANE_TOL).all())


def group_by_plane(headers: Sequence[DicomHeader]) -> list[list[DicomHeader]]:
    """Split headers into slices: one group per (series UID, exact plane), frames in cine order.

    Files of one folder that differ in size, spacing, orientation or position end up in
    different groups (a folder holding several positions gives several slices; a stray frame
    with another matrix gives its own group, which the duplicate rule then resolves).
    Groups come in the order of their first file by (InstanceNumber, name).
    """
    ordered = sorted(headers, key=lambda h: (h.instance_number is None, h.instance_number or 0, str(h.path)))
    groups: list[list[DicomHeader]] = []
    keys: list[tuple[str, np.ndarray]] = []
    for h in ordered:
        v = _plane_vector(h.plane)
        for g, (uid, gv) in zip(groups, keys):
            if uid == h.series_uid and (np.abs(gv - v) <= _PLANE_TOL).all():
                g.append(h)
                break
        else:
            groups.append([h])
            keys.append((h.series_uid, v))
    return [sorted(g, key=lambda h: h.frame_sort_key) for g in groups]


def split_stray_frames(groups: list[list[DicomHeader]], study: Study) -> list[list[DicomHeader]]:
    """Within one cine series folder, drop (with a ``file`` record each) frames whose geometry
    differs from the rest of their series.

    A folder may hold several positions (each with the full cine), so a plane of its own is
    not wrong by itself; but a plane holding at most half the frames of the series' longest
    cine is a frame (or a few) whose geometry changed: kept, it would be a slice of its own,
    with its own location target, next to the real one.
    """
    if len(groups) < 2:
        return groups
    cine = max(len(g) for g in groups)
    kept = []
    for g in groups:
        if 2 * len(g) <= cine:
            shape = f"{int(g[0].plane.shape[0])}x{int(g[0].plane.shape[1])}"
            for h in g:
                study.skip(f"inconsistent frames in one series: this frame's plane ({shape}, spacing "
                           f"{np.round(g[0].plane.spacing, 4).tolist()}) differs from the series' cine of {cine} "
                           f"frames per plane: left out", relpath(h.path, study.root), "file")
        else:
            kept.append(g)
    return kept


def slice_from_group(view: str, series: str, group: Sequence[DicomHeader], root: Path) -> Slice:
    """A lazily loaded ``Slice`` from one group made by :func:`group_by_plane` (decoded from
    the headers' kept pixels, or read from the files when the scan kept none)."""
    first = group[0]
    frames = [Frame(path=relpath(h.path, root), index=i, sop_uid=h.sop_uid, trigger_time=h.trigger_time)
              for i, h in enumerate(group)]
    return Slice(view=view, series=series, plane=first.plane, frames=frames,
                 frame_of_reference=first.frame_of_reference, series_uid=first.series_uid,
                 loader=partial(load_frames, tuple(group)))


def angle_between_normals_deg(n1: np.ndarray, n2: np.ndarray) -> float:
    """Unsigned angle between two plane normals in [0, 90] degrees (planes, not vectors)."""
    c = abs(float(np.dot(n1, n2)) / (np.linalg.norm(n1) * np.linalg.norm(n2)))
    return float(np.degrees(np.arccos(min(1.0, c))))


def drop_coincident(slices: Sequence[Slice], study: Study, *, tol_mm: float = 0.5,
                    max_angle_deg: float = 1.0) -> list[Slice]:
    """Keep the first of every set of coincident planes (same orientation within
    ``max_angle_deg``, same position along the normal within ``tol_mm``); record the others.

    The caller orders ``slices`` by preference, so which one survives is deterministic.
    """
    kept: list[Slice] = []
    for s in slices:
        n = s.plane.normal
        twin = next((k for k in kept if angle_between_normals_deg(n, k.plane.normal) <= max_angle_deg
                     and abs(float(n @ (s.plane.origin - k.plane.origin))) <= tol_mm), None)
        if twin is None:
            kept.append(s)
            continue
        same_series = twin.series == s.series and twin.series_uid == s.series_uid
        what = ("inconsistent frames in one series (same position, different size/spacing/"
                "orientation)" if same_series else "duplicated slice position")
        study.skip(f"{what}: {s.series} ({len(s.frames)} frame(s), {_shape(s)}) dropped, "
                   f"{twin.series} ({len(twin.frames)} frame(s), {_shape(twin)}) kept",
                   s.frames[0].path if s.frames else "", "slice")
    return kept


def iter_subjects(root: str | os.PathLike, subjects: Iterable[str] | None,
                  read_study: Callable[[Path, Path], Study]) -> Iterator[Study]:
    """Yield ``read_study(subject_dir, root)`` for each subject folder, sorted by name, lazily.

    The data-set loop of every DICOM reader: a requested subject without a folder, or a
    study whose reading raises, is yielded empty with a study-level skip -- one broken study
    never ends a scan of thousands, and nothing disappears without a record.
    """
    root = Path(root)
    if subjects is None:
        names = [p.name for p in subject_folders(root)]
    else:
        names = list(subjects)
    for name in names:
        subject_dir = root / name
        if not subject_dir.is_dir():
            study = Study(subject=name, root=root, views={})
            study.skip("subject folder not found", name, "study")
            yield study
            continue
        try:
            study = read_study(subject_dir, root)
        except Exception as exc:  # noqa: BLE001 -- see docstring
            study = Study(subject=name, root=root, views={})
            study.skip(f"study could not be read ({type(exc).__name__}: {exc})", name, "study")
        yield study


def majority(values: Sequence[str]) -> str | None:
    """Most frequent value; ties go to the one seen first (deterministic)."""
    if not values:
        return None
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    best = max(counts.values())
    return next(v for v in values if counts[v] == best)


def _shape(s: Slice) -> str:
    return f"{int(s.plane.shape[0])}x{int(s.plane.shape[1])}"


def relpath(path: Path, root: Path) -> str:
    """``path`` relative to the data-set root (POSIX), or as given when outside it."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def relative_reason(reason: str, root: Path) -> str:
    """Error text with the data-set root stripped, so skip records are portable."""
    prefix = str(root).rstrip(os.sep) + os.sep
    return reason.replace(prefix, "")
