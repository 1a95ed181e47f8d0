"""``anatplane export --format nnunet-dataset ACDC_ROOT NNUNET_RAW``: an ACDC-format cohort as
an nnU-Net raw dataset, so nnU-Net plans, preprocesses and trains on the same labelled frames
our fine-tuning uses.

Each labelled frame (``patientXXX/patientXXX_frameYY.nii.gz`` + ``_gt``) becomes one training
case ``patientXXX_frameYY``: ``imagesTr/<case>_0000.nii.gz`` and ``labelsTr/<case>.nii.gz``,
byte copies (nnU-Net wants image and label geometry identical; a copy cannot change it).  A
frame that nnU-Net would reject (no ground truth, shapes or affines that differ, non-integer
or out-of-range labels, unreadable file, a case name already exported from another folder) is
left out and reported, never a crash half-way; hidden folders are not subjects.
The dataset is built in a hidden staging folder and renamed into place, so nnU-Net never sees
a partial one; an existing dataset is not overwritten.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from anatplane_dist.core.atomic import atomic_write_json, copy_durable, staged_dir
from anatplane_dist.core.errors import AnatplaneError
from anatplane_dist.finetune.data import ACDC_CLASSES
from anatplane_dist.sources.base import subject_folders
from anatplane_dist.sources.nifti import open_nifti

__all__ = ["DatasetExportError", "DatasetExport", "export_acdc_dataset"]

_FRAME_RE = re.compile(r"^(?P<subject>.+)_frame(?P<frame>\d+)\.nii(\.gz)?$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")


class DatasetExportError(AnatplaneError):
    """No dataset can be written (bad id/name, no usable frame, the dataset exists)."""


@dataclass
class DatasetExport:
    """What was written: the dataset folder, its cases, and each frame left out with why."""

    path: Path
    cases: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _check_frame(image: Path, gt: Path, num_classes: int) -> str | None:
    """Why nnU-Net would refuse this image/label pair, or None."""
    try:
        img, lab = open_nifti(image), open_nifti(gt)
        if img.shape != lab.shape:
            return f"ground truth shape {lab.shape} != image shape {img.shape}"
        if not np.allclose(img.affine, lab.affine, atol=1e-3):
            return "ground truth affine differs from the image affine"
        values = np.asarray(lab.dataobj, dtype=np.float64)
    except (OSError, ValueError, EOFError, nib.filebasedimages.ImageFileError) as exc:
        return f"unreadable: {type(exc).__name__}: {exc}"
    if not np.all(np.isfinite(values)) or np.any(np.abs(values - np.rint(values)) > 1e-3):
        return "ground truth holds non-integer values"
    bad = sorted(set(np.unique(np.rint(values)).astype(int).tolist()) - set(range(num_classes)))
    return f"ground truth label values {bad} outside 0..{num_classes - 1}" if bad else None


def export_acdc_dataset(acdc_root: str | Path, nnunet_raw: str | Path, *, dataset_id: int = 501,
                        name: str = "ACDC") -> DatasetExport:
    """Write ``<nnunet_raw>/Dataset<id>_<name>/`` from ``acdc_root``; returns what was written.

    Raises:
        DatasetExportError: id/name nnU-Net cannot use, no usable labelled frame, or the
            dataset folder exists already.
    """
    root, raw = Path(acdc_root), Path(nnunet_raw)
    if not 1 <= dataset_id <= 999:
        raise DatasetExportError(f"--dataset-id {dataset_id}: nnU-Net dataset ids are 1..999")
    if not _NAME_RE.match(name):
        raise DatasetExportError(f"--dataset-name {name!r}: letters, digits, '_' and '-' only")
    if not root.is_dir():
        raise DatasetExportError(f"{root} is not a directory (an ACDC-format root: patientXXX/...)")
    final = raw / f"Dataset{dataset_id:03d}_{name}"
    if final.exists():
        raise DatasetExportError(f"{final} exists; nnU-Net datasets are not overwritten (remove it or use "
                                 f"another --dataset-id)")
    num_classes = len(ACDC_CLASSES) + 1
    pairs: list[tuple[str, Path, Path]] = []
    skipped: list[tuple[str, str]] = []
    source: dict[str, str] = {}            # case name -> the file it comes from (one case, one file)
    for subject in subject_folders(root):
        for image in sorted(subject.iterdir()):
            m = _FRAME_RE.match(image.name)
            if not m or "_gt." in image.name:
                continue
            suffix = ".nii.gz" if image.name.endswith(".gz") else ".nii"
            gt = image.with_name(image.name[: -len(suffix)] + "_gt" + suffix)
            rel = str(image.relative_to(root))
            why = "no ground truth (_gt) file" if not gt.is_file() else _check_frame(image, gt, num_classes)
            if why:
                skipped.append((rel, why))
            elif suffix != ".nii.gz":
                skipped.append((rel, "uncompressed .nii (the dataset's file_ending is .nii.gz)"))
            elif image.name[: -len(suffix)] in source:   # patient002/ and patient002_copy/: same case name
                skipped.append((rel, f"duplicate case {image.name[: -len(suffix)]} (already exported from "
                                     f"{source[image.name[: -len(suffix)]]}); a copy would overwrite it"))
            else:
                source[image.name[: -len(suffix)]] = rel
                pairs.append((image.name[: -len(suffix)], image, gt))
    if not pairs:
        raise DatasetExportError(f"{root}: no usable labelled frame (patientXXX/patientXXX_frameYY.nii.gz + _gt); "
                                 f"{len(skipped)} left out: {[w for _, w in skipped[:3]]}")
    raw.mkdir(parents=True, exist_ok=True)
    with staged_dir(final) as staging:
        for case, image, gt in pairs:
            copy_durable(image, staging / "imagesTr" / f"{case}_0000.nii.gz")
            copy_durable(gt, staging / "labelsTr" / f"{case}.nii.gz")
        atomic_write_json(staging / "dataset.json", {
            "name": name, "description": f"ACDC-format cohort {root.name}, exported by anatplane export",
            "channel_names": {"0": "cineMRI"},
            "labels": {"background": 0, **{v: k for k, v in ACDC_CLASSES.items()}},
            "numTraining": len(pairs), "file_ending": ".nii.gz",
        })
        if skipped:
            atomic_write_json(staging / "skipped.json", [{"file": f, "reason": w} for f, w in skipped])
    return DatasetExport(final, [c for c, _, _ in pairs], skipped)
