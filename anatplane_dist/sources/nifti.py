"""Reader for NIfTI stacks: a 3D volume (or a 4D cine) as a stack of 2D slices with geometry.

Slice ``k`` along voxel ``axis`` is the image ``np.take(data, k, axis)``; its first remaining
voxel axis is the image row, the second the column (``geometry.plane_from_nifti``, which
converts the RAS affine to the package's LPS convention once).  A 4D image is a cine: frames
along axis 3 (ACDC's ``patientXXX_4d.nii.gz``).  Pixels are read per slice when ``load`` is
called (nibabel array-proxy slicing), so a study costs only its header until then.

Frames of reference: NIfTI has no FrameOfReferenceUID.  A slice gets ``nifti:<path>`` by
default -- its planes are comparable within the file only -- unless the caller knows that
several files share one scanner frame and passes ``frame_of_reference``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import nibabel as nib
import numpy as np

from anatplane_dist.core.geometry import GeometryError, plane_from_nifti
from anatplane_dist.sources.base import Frame, ReaderError, Slice, Study
from anatplane_dist.sources.dicom_read import relpath

__all__ = ["open_nifti", "load_nifti_volume", "read_nifti_stack", "read_study", "iter_studies", "nifti_stem",
           "view_of"]


def open_nifti(path: str | os.PathLike, what: str = "NIfTI file") -> "nib.Nifti1Image":
    """The one place a NIfTI file is opened: a damaged or missing file is one-line :class:`ReaderError`."""
    try:
        return nib.load(str(path))
    except Exception as exc:  # noqa: BLE001 -- nibabel raises many types for damaged files
        raise ReaderError(f"{path}: not a readable {what} ({type(exc).__name__}: {exc})") from None


def load_nifti_volume(path: str | os.PathLike, dtype: "np.typing.DTypeLike | None" = None,
                      what: str = "NIfTI file") -> tuple[np.ndarray, np.ndarray]:
    """(3D array, voxel->RAS affine) of a NIfTI file: trailing singleton axes dropped, a 2D image
    taken as one slice. Raises :class:`ReaderError` for anything else."""
    img = open_nifti(path, what)
    data = np.asarray(img.dataobj, dtype=dtype)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3:
        raise ReaderError(f"{Path(path).name}: expected a 3D volume, got shape {data.shape}")
    return data, np.asarray(img.affine, dtype=np.float64)


def nifti_stem(path: str | os.PathLike) -> str:
    """File name without ``.nii`` / ``.nii.gz`` (a series name without dots)."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def read_nifti_stack(path: str | os.PathLike, view: str, axis: int = 2, *, root: str | os.PathLike | None = None,
                     subject: str | None = None, frame_of_reference: str | None = None) -> Study:
    """One NIfTI file as a ``Study`` with one view: a stack of slices along ``axis``.

    Slices come in voxel-index order ``k = 0..n-1``, which is monotonic in position along the
    stack normal (``Study.meta["slice_index"]`` maps list position to ``k`` for label volumes).

    Raises:
        ReaderError: not a readable NIfTI, not 3D/4D, bad axis, or an affine that describes no
            valid planes (non-finite, zero voxel size, non-orthogonal axes).
    """
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    rel = relpath(path, root)
    try:
        img = open_nifti(path)
    except ReaderError as exc:
        raise ReaderError(str(exc).replace(str(path), str(rel), 1)) from None
    shape = tuple(int(s) for s in img.shape)
    if len(shape) not in (3, 4):
        raise ReaderError(f"{rel}: expected a 3D volume or a 4D cine, got shape {shape}")
    if axis not in (0, 1, 2):
        raise ReaderError(f"{rel}: slice axis must be 0, 1 or 2, got {axis}")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise ReaderError(f"{rel}: affine has non-finite values")
    n_slices = shape[axis]
    try:
        planes = plane_from_nifti(affine, shape[:3], np.arange(n_slices), axis=axis)
    except GeometryError as exc:
        raise ReaderError(f"{rel}: {exc}") from exc
    study = Study(subject=subject or nifti_stem(path), root=root, views={})
    orientation = _orientation_source(img)
    study.meta.update(slice_index=list(range(n_slices)), axis=axis, shape=list(shape), orientation=orientation,
                      affine_ras=affine.tolist())
    if orientation == "none":
        study.skip("NIfTI header has no qform/sform: planes are oriented only relative to this file",
                   rel, "channel")
    n_frames = shape[3] if len(shape) == 4 else 1
    series = nifti_stem(path)
    for_uid = frame_of_reference or f"nifti:{rel}"
    proxy = img.dataobj
    study.views[view] = [
        Slice(view=view, series=series, plane=planes[k],
              frames=[Frame(path=rel, index=t) for t in range(n_frames)],
              frame_of_reference=for_uid, series_uid="",
              loader=_SliceLoader(proxy, axis, k, len(shape), rel))
        for k in range(n_slices)
    ]
    return study


def view_of(path: str | os.PathLike) -> str:
    """The view a file holds, from its name: ``axial.nii.gz`` or ``<subject>_axial.nii.gz`` -> ``axial``."""
    return nifti_stem(path).rsplit("_", 1)[-1].lower()


def read_study(study_dir: str | os.PathLike, root: str | os.PathLike | None = None,
               subject: str | None = None, axis: int = 2) -> Study:
    """The sharder's entry point: one subject folder of NIfTI views, ``<subject>/<view>.nii.gz``
    (or ``<subject>_<view>.nii.gz``), each a 3D stack (or a 4D cine) sliced along ``axis``.

    The files of one subject folder are taken as one scanning session: they share the frame of
    reference ``nifti:<subject>`` (NIfTI records none), so their planes are compared with each
    other, never with another subject's.  A file that cannot be read, or a second file of the
    same view, is recorded as a skip; the rest of the study is still used.
    """
    study_dir = Path(study_dir)
    root = Path(root) if root is not None else study_dir.parent
    name = subject or study_dir.name
    study = Study(subject=name, root=root, views={})
    files = sorted(p for p in study_dir.iterdir() if p.is_file() and p.name.lower().endswith((".nii", ".nii.gz"))) \
        if study_dir.is_dir() else []
    for path in files:
        view = view_of(path)
        if view in study.views:
            study.skip(f"second file of view {view!r}: the first one ({study.views[view][0].frames[0].path}) is used",
                       relpath(path, root), "series")
            continue
        try:
            one = read_nifti_stack(path, view, axis, root=root, subject=name, frame_of_reference=f"nifti:{name}")
        except ReaderError as exc:
            study.skip(str(exc), relpath(path, root), "series")
            continue
        study.views.update(one.views)
        study.skipped.extend(one.skipped)
        study.meta.setdefault("files", {})[view] = one.meta
    if not study.views:
        study.skip("no readable NIfTI file (<subject>/<view>.nii.gz) in this subject folder", relpath(study_dir, root),
                   "study")
    return study


def iter_studies(root: str | os.PathLike, view: str, axis: int = 2, pattern: str = "**/*.nii*") -> Iterator[Study]:
    """Yield a ``Study`` per NIfTI file under ``root`` matching ``pattern`` (sorted), lazily.

    A file that cannot be read is yielded as an empty study with a study-level skip.
    """
    root = Path(root)
    for path in sorted(p for p in root.glob(pattern) if p.is_file()):
        try:
            yield read_nifti_stack(path, view, axis, root=root)
        except ReaderError as exc:
            study = Study(subject=nifti_stem(path), root=root, views={})
            study.skip(str(exc), relpath(path, root), "study")
            yield study


class _SliceLoader:
    """Reads one slice (all frames) through the array proxy: float32 (frames, rows, cols)."""

    def __init__(self, proxy, axis: int, index: int, ndim: int, rel: str) -> None:
        self.proxy, self.axis, self.index, self.ndim, self.rel = proxy, axis, index, ndim, rel

    def __call__(self) -> np.ndarray:
        slicer = [slice(None)] * self.ndim
        slicer[self.axis] = self.index
        try:
            # a copy: nibabel may hand out a read-only view of its cache, and the sharder
            # rescales slices in place
            data = np.array(self.proxy[tuple(slicer)], dtype=np.float32)
        except Exception as exc:  # noqa: BLE001 -- truncated .gz, short file, ...
            raise ReaderError(f"{self.rel}: cannot read slice {self.index} ({type(exc).__name__}: {exc})") from exc
        data = data[None] if self.ndim == 3 else np.moveaxis(data, -1, 0)
        bad = ~np.isfinite(data)
        if bad.any():
            raise ReaderError(f"{self.rel}: slice {self.index} has {int(bad.sum())} non-finite (NaN/inf) voxel(s)")
        return data


def _orientation_source(img) -> str:
    """Which header field the affine came from: ``"sform"``, ``"qform"``, ``"none"`` (voxel
    sizes only), or ``"header"`` for formats without the NIfTI codes (e.g. MGH)."""
    header = img.header
    if not hasattr(header, "get_sform"):
        return "header"
    if int(header.get_sform(coded=True)[1] or 0) > 0:
        return "sform"
    if int(header.get_qform(coded=True)[1] or 0) > 0:
        return "qform"
    return "none"
