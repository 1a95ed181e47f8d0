"""Target-task data: ACDC-format segmentation volumes and labelled knee stacks, on the model grid.

Fine-tuning must show the encoder what pretraining showed it: 2D slices resampled onto the
same isotropic grid (size and mm spacing) and normalised the same way
(:mod:`anatplane_dist.core.intensity`).  Segmentation labels are resampled with nearest neighbour;
the native label volumes are kept so that metrics are computed at native resolution, not on
the (coarser or finer) model grid.

Bad inputs (a frame without ground truth, unreadable files, label values outside the task's
classes, a subject without labels) become :class:`~anatplane_dist.sources.base.Skip` records;
loading only fails as a whole when nothing usable is left.
"""
from __future__ import annotations

import csv
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import nibabel as nib
import numpy as np
import torch

from anatplane_dist.core.errors import AnatplaneError
from anatplane_dist.core.geometry import GeometryError, Plane, plane_from_nifti, resample_to_grid, target_grid
from anatplane_dist.core.intensity import robust_rescale
from anatplane_dist.data.decode import zscore_
from anatplane_dist.sources.base import ReaderError, Skip, Slice, Study, subject_folders
from anatplane_dist.sources.nifti import load_nifti_volume

__all__ = [
    "FinetuneDataError", "GridSpec", "SegVolume", "SegSubject", "KneeStack", "ACDC_CLASSES",
    "load_acdc", "load_acdc_subject", "read_info_cfg", "slice_to_grid", "read_labels_csv",
    "stack_from_study", "load_knee",
]

#: ACDC label values -> structure names (0 is background).
ACDC_CLASSES: dict[int, str] = {1: "RV", 2: "MYO", 3: "LV"}

_FRAME_RE = re.compile(r"^(?P<subject>.+)_frame(?P<frame>\d+)\.nii(\.gz)?$")


class FinetuneDataError(AnatplaneError, ValueError):
    """A target-task data set with nothing usable in it (the message says why)."""


@dataclass(frozen=True)
class GridSpec:
    """The model grid: ``size`` x ``size`` pixels at ``spacing`` mm (as in pretraining)."""

    size: int
    spacing: float

    def __post_init__(self) -> None:
        if self.size < 8 or self.spacing <= 0:
            raise ValueError(f"invalid model grid: size={self.size}, spacing={self.spacing}")


@dataclass
class SegVolume:
    """One labelled frame (e.g. ED) of one subject, slice-first.

    Attributes:
        image: (S, size, size) float32 on the model grid, normalised like pretraining.
        label: (S, size, size) uint8 on the model grid (nearest neighbour).
        native_label: (S, rows, cols) uint8 ground truth as stored.
        native_planes / grids: (S,) batched planes of the native slices and of their grids.
        voxel_mm: (slice, row, col) spacing of the native volume, for HD95.
    """

    subject: str
    phase: str
    image: np.ndarray
    label: np.ndarray
    native_label: np.ndarray
    native_planes: Plane
    grids: Plane
    voxel_mm: tuple[float, float, float]
    source: str


@dataclass
class SegSubject:
    subject: str
    volumes: list[SegVolume]
    info: dict[str, str] = field(default_factory=dict)


@dataclass
class KneeStack:
    """One labelled knee stack: (S, size, size) float32 on the model grid + its labels."""

    subject: str
    view: str
    image: np.ndarray
    labels: dict[str, int]


# -- shared slice preparation ----------------------------------------------------------------

def slice_to_grid(pixels: np.ndarray, plane: Plane, grid: GridSpec,
                  label: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, Plane]:
    """One native slice ((rows, cols), or (frames, rows, cols) of which the first is kept)
    -> normalised image (and nearest-neighbour label) on the model grid.

    Order matters and mirrors the shards and the stream: robust rescale on the native pixels
    of all frames (the zero padding outside the field of view must not shift the
    percentiles), resample (linear), then z-score the image the model sees.
    """
    g = target_grid(plane, grid.size, grid.spacing)
    scaled = robust_rescale(pixels)
    if scaled.ndim == 3:
        scaled = scaled[0]
    img = resample_to_grid(scaled, plane, g, order=1, cval=0.0).astype(np.float32)
    img = zscore_(torch.from_numpy(img[None]))[0].numpy()       # the stream's own z-score
    lab = None
    if label is not None:
        lab = resample_to_grid(label.astype(np.float32), plane, g, order=0, cval=0.0)
        lab = np.rint(lab).astype(np.uint8)
    return img, lab, g


# -- ACDC -------------------------------------------------------------------------------------

def read_info_cfg(path: Path) -> dict[str, str]:
    """``Info.cfg`` (``key: value`` lines, e.g. ``ED: 1``, ``ES: 12``, ``Group: NOR``)."""
    out: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip()
    return out


def _phase_names(info: dict[str, str]) -> dict[int, str]:
    names: dict[int, str] = {}
    for key in ("ED", "ES"):
        try:
            names[int(info[key])] = key
        except (KeyError, ValueError):
            pass
    return names


def _load_3d(path: Path) -> tuple[np.ndarray, np.ndarray]:
    return load_nifti_volume(path)


def _load_volume(root: Path, subject: str, phase: str, image_path: Path, gt_path: Path,
                 grid: GridSpec, num_classes: int) -> SegVolume:
    data, affine = _load_3d(image_path)
    gt, gt_affine = _load_3d(gt_path)
    rel = str(image_path.relative_to(root))
    if gt.shape != data.shape:
        raise ReaderError(f"{rel}: ground truth shape {gt.shape} != image shape {data.shape}")
    if not np.allclose(gt_affine, affine, atol=1e-3):
        raise ReaderError(f"{rel}: ground truth affine differs from the image affine")
    gtf = np.asarray(gt, dtype=np.float64)
    if not np.all(np.isfinite(gtf)) or np.any(np.abs(gtf - np.rint(gtf)) > 1e-3):
        raise ReaderError(f"{rel}: ground truth holds non-integer values")
    labels = np.rint(gtf).astype(np.int64)
    bad = sorted(set(np.unique(labels).tolist()) - set(range(num_classes)))
    if bad:
        raise ReaderError(f"{rel}: ground truth label values {bad} outside 0..{num_classes - 1}")
    n = data.shape[2]
    planes = plane_from_nifti(affine, data.shape, np.arange(n), axis=2)
    imgs, labs, grids = [], [], []
    for k in range(n):
        img, lab, g = slice_to_grid(np.asarray(data[:, :, k], dtype=np.float32), planes[k], grid,
                                    label=labels[:, :, k])
        imgs.append(img)
        labs.append(lab)
        grids.append(g)
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    return SegVolume(subject=subject, phase=phase, image=np.stack(imgs), label=np.stack(labs),
                     native_label=np.moveaxis(labels, 2, 0).astype(np.uint8),
                     native_planes=planes, grids=Plane.stack(grids),
                     voxel_mm=(float(zooms[2]), float(zooms[0]), float(zooms[1])), source=rel)


def load_acdc_subject(root: Path, subject_dir: Path, grid: GridSpec, num_classes: int = 4
                      ) -> tuple[SegSubject | None, list[Skip]]:
    """Every labelled frame of one ACDC subject folder (``patientXXX_frameYY`` + ``_gt``)."""
    subject = subject_dir.name
    skips: list[Skip] = []
    info_path = subject_dir / "Info.cfg"
    info = read_info_cfg(info_path) if info_path.is_file() else {}
    if not info:
        skips.append(Skip(subject, "no Info.cfg: frames named by number, not ED/ES",
                          str(info_path.relative_to(root)), "study"))
    phases = _phase_names(info)
    volumes: list[SegVolume] = []
    for image_path in sorted(subject_dir.iterdir()):
        m = _FRAME_RE.match(image_path.name)
        if not m or image_path.name.endswith(("_gt.nii.gz", "_gt.nii")):
            continue
        rel = str(image_path.relative_to(root))
        suffix = ".nii.gz" if image_path.name.endswith(".gz") else ".nii"
        gt_path = image_path.with_name(image_path.name[: -len(suffix)] + "_gt" + suffix)
        if not gt_path.is_file():
            skips.append(Skip(subject, "frame without ground truth (_gt) file", rel, "file"))
            continue
        frame = int(m.group("frame"))
        phase = phases.get(frame, f"frame{frame:02d}")
        try:
            volumes.append(_load_volume(root, subject, phase, image_path, gt_path, grid, num_classes))
        except (ReaderError, GeometryError, OSError, nib.filebasedimages.ImageFileError,
                EOFError, ValueError, zlib.error) as exc:
            skips.append(Skip(subject, f"{type(exc).__name__}: {exc}", rel, "file"))
    if not volumes:
        skips.append(Skip(subject, "no usable labelled frame", subject, "study"))
        return None, skips
    return SegSubject(subject, volumes, info), skips


def load_acdc(root: str | Path, grid: GridSpec, num_classes: int = 4,
              subjects: Iterable[str] | None = None) -> tuple[list[SegSubject], list[Skip]]:
    """All labelled subjects under an ACDC-format root (``<root>/patientXXX/...``), sorted.

    Raises:
        FinetuneDataError: the root is missing or holds no usable labelled frame.
    """
    root = Path(root)
    if not root.is_dir():
        raise FinetuneDataError(f"segmentation data root {root} is not a directory")
    wanted = set(subjects) if subjects is not None else None
    out: list[SegSubject] = []
    skips: list[Skip] = []
    for d in subject_folders(root):
        if wanted is not None and d.name not in wanted:
            continue
        subj, sk = load_acdc_subject(root, d, grid, num_classes)
        skips.extend(sk)
        if subj is not None:
            out.append(subj)
    if not out:
        raise FinetuneDataError(f"{root}: no usable labelled ACDC frame "
                                f"(expected <root>/patientXXX/patientXXX_frameYY.nii.gz + _gt); "
                                f"{len(skips)} skip(s): {[s.reason for s in skips[:3]]}")
    return out, skips


# -- knee classification ----------------------------------------------------------------------

def read_labels_csv(path: str | Path) -> tuple[dict[str, dict[str, int]], list[str], list[Skip]]:
    """``subject,<label>,<label>...`` with 0/1 values -> ({subject: {label: 0|1}}, names, skips).

    A row with a missing or non-binary value is skipped (recorded), not guessed.
    """
    path = Path(path)
    if not path.is_file():
        raise FinetuneDataError(f"label table {path} not found")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "subject" not in reader.fieldnames:
            raise FinetuneDataError(f"{path}: first row must be a header with a 'subject' column")
        names = [f for f in reader.fieldnames if f != "subject"]
        if not names:
            raise FinetuneDataError(f"{path}: no label columns besides 'subject'")
        table: dict[str, dict[str, int]] = {}
        skips: list[Skip] = []
        for i, row in enumerate(reader, start=2):
            subject = (row.get("subject") or "").strip()
            if not subject:
                skips.append(Skip("", f"row {i}: empty subject", path.name, "study"))
                continue
            try:
                vals = {n: int(str(row[n]).strip()) for n in names}
            except (TypeError, ValueError):
                skips.append(Skip(subject, f"row {i}: non-integer label", path.name, "study"))
                continue
            if any(v not in (0, 1) for v in vals.values()):
                skips.append(Skip(subject, f"row {i}: labels must be 0 or 1, got {vals}", path.name, "study"))
                continue
            if subject in table:
                skips.append(Skip(subject, f"row {i}: duplicate subject (first row kept)", path.name, "study"))
                continue
            table[subject] = vals
    return table, names, skips


def stack_from_study(study: Study, view: str, grid: GridSpec) -> np.ndarray:
    """The ``view`` stack of a study as (S, size, size) normalised slices on the model grid.

    The first frame of each slice is used (knee series are not cine), rescaled with the
    percentiles of all its frames as the sharder does.  Slices come in the order the reader
    gives (sorted by position along the stack normal).

    Raises:
        ReaderError: the study has no such view.
    """
    slices: list[Slice] = study.views.get(view, [])
    if not slices:
        raise ReaderError(f"{study.subject}: no '{view}' stack (views: {sorted(study.views)})")
    out = []
    for sl in slices:
        img, _, _ = slice_to_grid(sl.load(), sl.plane, grid)
        out.append(img)
    return np.stack(out).astype(np.float32)


def load_knee(root: str | Path, grid: GridSpec, view: str = "sagittal",
              labels_csv: str | Path | None = None) -> tuple[list[KneeStack], list[str], list[Skip]]:
    """Labelled knee stacks: ``<root>/<subject>/<series>/*.dcm`` read by the knee reader,
    labels from ``<root>/labels.csv`` (or ``labels_csv``).

    Only subjects with a label row are read; a subject folder without one, and a labelled
    subject without a folder or without the view, is skipped and recorded.

    Raises:
        FinetuneDataError: nothing usable.
    """
    from anatplane_dist.sources import knee as knee_reader  # imported here: pydicom only when needed

    root = Path(root)
    if not root.is_dir():
        raise FinetuneDataError(f"classification data root {root} is not a directory")
    table, names, skips = read_labels_csv(labels_csv or root / "labels.csv")
    skips += [Skip(d.name, "no row in the label table: not used", d.name, "study")   # never vanish unreported
              for d in subject_folders(root) if d.name not in table]
    stacks: list[KneeStack] = []
    # only labelled subjects are read; a labelled one without a folder comes back as a skip
    for study in knee_reader.iter_studies(root, subjects=sorted(table)):
        skips.extend(study.skipped)
        try:
            image = stack_from_study(study, view, grid)
        except (ReaderError, GeometryError, OSError, ValueError) as exc:
            skips.append(Skip(study.subject, f"{type(exc).__name__}: {exc}", study.subject, "study"))
            continue
        stacks.append(KneeStack(study.subject, view, image, table[study.subject]))
    if not stacks:
        raise FinetuneDataError(f"{root}: no usable labelled '{view}' stack; "
                                f"{len(skips)} skip(s): {[s.reason for s in skips[:3]]}")
    stacks.sort(key=lambda s: s.subject)
    return stacks, names, skips
