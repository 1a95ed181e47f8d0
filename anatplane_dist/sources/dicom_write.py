"""Write standard MR Image DICOM files (pydicom) for a plane and its pixels.

Used by the phantoms and by tests that need real files with exact geometry.  What it writes
is a valid MR Image IOD (checked with ``dciodvfy`` in the tests where dicom3tools exists):
patient/study/series/frame-of-reference/equipment/image modules with the mandatory tags.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, MRImageStorage

from anatplane_dist.core.atomic import atomic_path
from anatplane_dist.core.geometry import Plane

__all__ = ["SeriesInfo", "deterministic_uid", "write_mr_image", "format_ds"]

_UID_ROOT = "1.2.826.0.1.3680043.10.1432."   # a private-style root for generated data


def deterministic_uid(*parts: object) -> str:
    """A valid UID derived from ``parts`` (same inputs -> same UID, so phantoms are reproducible)."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).hexdigest()
    return (_UID_ROOT + str(int(digest[:30], 16)))[:64]


def format_ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters) holding ``value`` as precisely as fits."""
    for digits in range(10, 0, -1):
        s = f"{value:.{digits}g}"
        if len(s) <= 16:
            return s
    raise ValueError(f"cannot format {value} as DS")


@dataclass(frozen=True)
class SeriesInfo:
    """Identity of the series a file belongs to."""

    patient_id: str
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    series_number: int
    series_description: str
    slice_thickness: float = 8.0
    study_date: str = "20260101"
    body_part: str = "HEART"
    laterality: str = ""            # "L" / "R" for paired body parts (knee)
    patient_position: str = "HFS"


def write_mr_image(path: str | os.PathLike, pixels: np.ndarray, plane: Plane, series: SeriesInfo,
                   *, instance_number: int, sop_uid: str | None = None,
                   trigger_time_ms: float | None = None, bits_stored: int = 12) -> Path:
    """Write one 2D MR image, atomically.

    Args:
        pixels: (rows, cols) array; stored as unsigned ``bits_stored``-bit integers (values
            are clipped to that range, never wrapped).
        plane: geometry of the image (single plane; shape must equal ``pixels.shape``).
    """
    pixels = np.asarray(pixels)
    if tuple(pixels.shape) != tuple(int(s) for s in plane.shape):
        raise ValueError(f"pixels {pixels.shape} do not match plane shape {plane.shape.tolist()}")
    path = Path(path)
    sop_uid = sop_uid or deterministic_uid(series.series_uid, instance_number)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    # patient + study
    ds.PatientName = f"Phantom^{series.patient_id}"
    ds.PatientID = series.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = series.study_uid
    ds.StudyDate = series.study_date
    ds.StudyTime = "120000"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    # series + equipment + frame of reference
    ds.Modality = "MR"
    ds.SeriesInstanceUID = series.series_uid
    ds.SeriesNumber = series.series_number
    ds.SeriesDescription = series.series_description
    ds.FrameOfReferenceUID = series.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "anatplane_dist phantom"
    ds.BodyPartExamined = series.body_part
    ds.PatientPosition = series.patient_position
    if series.laterality:
        ds.Laterality = series.laterality
    # image
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = int(instance_number)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.ContentDate = series.study_date
    ds.ContentTime = "120000"
    ds.AcquisitionNumber = 1
    ds.ScanningSequence = "GR"
    ds.SequenceVariant = "SS"
    ds.ScanOptions = "CG" if trigger_time_ms is not None else ""   # cardiac gating
    ds.MRAcquisitionType = "2D"
    ds.RepetitionTime = "3.0"
    ds.EchoTime = "1.5"
    ds.EchoTrainLength = 1
    ds.MagneticFieldStrength = "1.5"
    ds.SliceThickness = format_ds(series.slice_thickness)
    if trigger_time_ms is not None:
        ds.TriggerTime = format_ds(trigger_time_ms)
    ds.ImagePositionPatient = [format_ds(v) for v in plane.origin]
    ds.ImageOrientationPatient = [format_ds(v) for v in np.concatenate([plane.row_dir, plane.col_dir])]
    ds.PixelSpacing = [format_ds(plane.spacing[0]), format_ds(plane.spacing[1])]
    ds.SliceLocation = format_ds(float(plane.origin @ plane.normal))
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    top = (1 << bits_stored) - 1
    data = np.clip(np.rint(np.nan_to_num(pixels.astype(np.float64))), 0, top).astype(np.uint16)
    ds.PixelData = data.tobytes()
    ds.WindowCenter = format_ds(float(np.percentile(data, 50)) + 1)
    ds.WindowWidth = format_ds(max(1.0, float(np.percentile(data, 99.5) - np.percentile(data, 0.5))))
    now = _dt.datetime(2026, 1, 1)
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    with atomic_path(path) as tmp:
        pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
    return path
