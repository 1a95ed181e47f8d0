"""Small real DICOM trees with known geometry, written with ``dicom_write.write_mr_image``.

The geometry is a tiny synthetic "heart": a long axis ``L`` pointing left-anterior-inferior
(LPS), a SAX stack perpendicular to it and two long-axis planes containing it.  Pixel values
are a smooth function of the *world* position, so every plane shows the same underlying
field and tests can compare images across planes.  Sizes are tiny (24x24, 3 frames).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from anatplane_dist.core.geometry import Plane
from anatplane_dist.sources.dicom_write import SeriesInfo, deterministic_uid, write_mr_image
from anatplane_dist.sources.reslice import plane_through

LONG_AXIS = np.array([0.6, -0.5, -0.62])
LONG_AXIS = LONG_AXIS / np.linalg.norm(LONG_AXIS)
_U = np.cross(LONG_AXIS, [0.0, 0.0, 1.0])
_U = _U / np.linalg.norm(_U)
_V = np.cross(LONG_AXIS, _U)          # row=_U, col=_V -> normal _U x _V = LONG_AXIS


def field(points: np.ndarray, frame: int = 0) -> np.ndarray:
    """A smooth intensity field of LPS points (..., 3): values in ~[200, 3800]."""
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    return (2000 + 900 * np.sin(x / 13.0 + 0.3 * frame) * np.cos(y / 17.0)
            + 800 * np.sin(z / 11.0 + 0.5) + 0.5 * (x + y))


def image_of(plane: Plane, frame: int = 0) -> np.ndarray:
    rows, cols = (int(s) for s in plane.shape)
    rr, cc = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return field(plane.pixel_to_world(rr, cc), frame)


def sax_planes(n: int = 5, gap: float = 8.0, shape: int = 24, spacing: float = 2.0,
               center: np.ndarray | None = None) -> list[Plane]:
    """SAX planes from base (index 0) to apex (index n-1) along ``LONG_AXIS``."""
    c0 = np.zeros(3) if center is None else np.asarray(center, float)
    return [plane_through(c0 + (k - (n - 1) / 2) * gap * LONG_AXIS, _U, _V, spacing, shape) for k in range(n)]


def lax_plane(view: str, shape: int = 24, spacing: float = 2.5) -> Plane:
    """2CH (spanned by U and L) or 4CH (spanned by V and L) through the centre."""
    in_plane = _U if view == "2ch" else _V
    return plane_through(np.zeros(3), in_plane, -LONG_AXIS, spacing, shape)


def series_info(subject: str, folder: str, number: int, *, frame_of_reference: str | None = None) -> SeriesInfo:
    return SeriesInfo(patient_id=subject, study_uid=deterministic_uid(subject, "study"),
                      series_uid=deterministic_uid(subject, folder), series_number=number,
                      frame_of_reference_uid=frame_of_reference or deterministic_uid(subject, "for"),
                      series_description=folder)


def write_series(folder: Path, planes: list[Plane], info: SeriesInfo, *, frames: int = 3,
                 first_instance: int = 1, reverse_instances: bool = False) -> list[Path]:
    """Write every plane x frame of one cine series; returns the files in write order."""
    out = []
    n = len(planes) * frames
    k = 0
    for plane in planes:
        for f in range(frames):
            inst = first_instance + (n - 1 - k if reverse_instances else k)
            out.append(write_mr_image(folder / f"IM-{inst:04d}.dcm", image_of(plane, f), plane, info,
                                      instance_number=inst, trigger_time_ms=40.0 * f,
                                      sop_uid=deterministic_uid(info.series_uid, inst)))
            k += 1
    return out


def write_heart_study(root: Path, subject: str, *, n_sax: int = 5, frames: int = 3,
                      views: tuple[str, ...] = ("sax", "2ch", "4ch")) -> Path:
    """A clean DSBCC-layout study; SAX folders numbered apex-first so folder order != stack order."""
    study = root / subject / "study"
    if "sax" in views:
        planes = sax_planes(n_sax)
        for k, plane in enumerate(planes):
            number = 10 + (n_sax - 1 - k)          # apex gets the lowest folder number
            folder = f"sax_{number}"
            write_series(study / folder, [plane], series_info(subject, folder, number), frames=frames,
                         reverse_instances=True)
    for view, number in (("2ch", 3), ("4ch", 4)):
        if view in views:
            folder = f"{view}_{number}"
            write_series(study / folder, [lax_plane(view)], series_info(subject, folder, number), frames=frames)
    return root / subject


@pytest.fixture()
def dsbcc_root(tmp_path: Path) -> Path:
    """Two clean subjects in the DSBCC layout."""
    root = tmp_path / "dsbcc"
    for s in ("S001", "S000"):
        write_heart_study(root, s)
    return root


class Kit:
    """The helpers above, handed to tests as the ``kit`` fixture (test modules do not import
    conftest: two conftest modules of one session share that module name)."""

    LONG_AXIS = LONG_AXIS
    field = staticmethod(field)
    image_of = staticmethod(image_of)
    sax_planes = staticmethod(sax_planes)
    lax_plane = staticmethod(lax_plane)
    series_info = staticmethod(series_info)
    write_series = staticmethod(write_series)
    write_heart_study = staticmethod(write_heart_study)

    @staticmethod
    def edit_dicom(path: Path, **changes) -> Path:
        """Rewrite a DICOM file with some tags changed (``None`` deletes the tag)."""
        ds = pydicom.dcmread(path)
        for k, v in changes.items():
            if v is None:
                delattr(ds, k)
            else:
                setattr(ds, k, v)
        ds.save_as(path, enforce_file_format=True)
        return path

    @staticmethod
    def to_float_pixels_with_nan(path: Path, pixels: np.ndarray, row: int, col: int) -> Path:
        """Rewrite a file as Float Pixel Data (7FE0,0008) holding ``pixels`` with one NaN."""
        ds = pydicom.dcmread(path)
        arr = np.asarray(pixels, dtype=np.float32).copy()
        arr[row, col] = np.nan
        del ds.PixelData
        for k in ("BitsStored", "HighBit", "PixelRepresentation"):
            delattr(ds, k)
        ds.BitsAllocated = 32
        ds.FloatPixelData = arr.tobytes()
        ds.save_as(path, enforce_file_format=True)
        return path

    @staticmethod
    def stored(values: np.ndarray) -> np.ndarray:
        """What a 12-bit unsigned file stores for ``values`` (write_mr_image rounds and clips)."""
        return np.clip(np.rint(values), 0, 4095)


@pytest.fixture()
def kit() -> type[Kit]:
    return Kit
