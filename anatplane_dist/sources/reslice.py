"""Cut image planes with exact DICOM-style geometry out of a 3D volume.

A real volume (a NIfTI file: atlas, CT, 3D MRI) becomes a source of anatomy-oriented plane
stacks: choose ``Plane`` objects (origin, direction cosines, spacing, matrix) in LPS and sample
the volume at their pixel centres.  Each resliced image then *is* the image a scanner would
have acquired with that prescription (up to interpolation), so intersection lines between
two resliced planes can be checked against the pixels themselves: both images sample the same
voxels along their common line.

Coordinates: the volume's affine maps voxel indices ``(i, j, k)`` to RAS millimetres (the
NIfTI convention); planes are LPS (the package convention), converted with :data:`anatplane_dist.core.geometry.RAS_TO_LPS`.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from anatplane_dist.core.geometry import RAS_TO_LPS, GeometryError, Plane

__all__ = ["reslice", "plane_through", "world_to_voxel"]

_SNAP = 1e-6       # voxel coordinates this close to an integer are exactly that integer


def plane_through(center: Sequence[float], row_dir: Sequence[float], col_dir: Sequence[float],
                  spacing: float | Sequence[float], shape: int | Sequence[int]) -> Plane:
    """A plane whose image centre is ``center`` (LPS mm), with orthonormalised directions.

    ``col_dir`` is made orthogonal to ``row_dir`` (Gram-Schmidt), so a prescription given as
    "through this point, spanned by these two anatomical directions" is always a valid plane.
    """
    r = np.asarray(row_dir, dtype=np.float64)
    r = r / np.linalg.norm(r)
    c = np.asarray(col_dir, dtype=np.float64)
    c = c - (c @ r) * r
    norm = np.linalg.norm(c)
    if norm < 1e-9:
        raise GeometryError("plane_through: row_dir and col_dir are parallel")
    c = c / norm
    sp = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (2,))
    shp = np.broadcast_to(np.asarray(shape, dtype=np.int64), (2,))
    half = (shp - 1) / 2.0
    origin = np.asarray(center, dtype=np.float64) - half[1] * sp[1] * r - half[0] * sp[0] * c
    return Plane(origin, r, c, sp.copy(), shp.copy())


def world_to_voxel(points_lps: np.ndarray, affine_ras: np.ndarray) -> np.ndarray:
    """Voxel coordinates (..., 3) of LPS points (..., 3) under a voxel->RAS affine."""
    a = RAS_TO_LPS @ np.asarray(affine_ras, dtype=np.float64)
    inv = np.linalg.inv(a)
    pts = np.asarray(points_lps, dtype=np.float64)
    return pts @ inv[:3, :3].T + inv[:3, 3]


def _volume_and_affine(volume: Any, affine: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if hasattr(volume, "dataobj") and hasattr(volume, "affine"):      # a nibabel image
        aff = volume.affine if affine is None else affine
        data = np.asarray(volume.dataobj, dtype=np.float32)
    else:
        if affine is None:
            raise ValueError("reslice: an array volume needs its voxel->RAS affine")
        aff, data = affine, np.asarray(volume, dtype=np.float32)
    aff = np.asarray(aff, dtype=np.float64)
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
        raise GeometryError(f"reslice: affine must be a finite 4x4 matrix, got shape {aff.shape}")
    if abs(np.linalg.det(aff[:3, :3])) < 1e-12:
        raise GeometryError("reslice: affine is singular (zero voxel size?)")
    if data.ndim != 3:
        raise ValueError(f"reslice: volume must be 3D, got shape {data.shape}")
    return data, aff


def reslice(volume: Any, affine: np.ndarray | None, plane: Plane, order: int = 1,
            cval: float = 0.0) -> np.ndarray:
    """Sample ``volume`` on the pixel centres of ``plane`` (one plane or a batch of same-size planes).

    Args:
        volume: a nibabel image (its affine is used when ``affine`` is None) or a 3D array.
        affine: voxel -> RAS 4x4 affine of the array (NIfTI convention).
        plane: LPS plane(s); a batch must share one matrix size.
        order: spline order for ``scipy.ndimage.map_coordinates`` (0 nearest, 1 linear, 3 cubic).
        cval: value outside the volume.

    Returns:
        float32 (..., rows, cols) image(s) with exactly the geometry of ``plane``.
    """
    data, aff = _volume_and_affine(volume, affine)
    shapes = plane.shape.reshape(-1, 2)
    if not np.all(shapes == shapes[0]):
        raise ValueError("reslice: planes of a batch must share one matrix size")
    rows, cols = int(shapes[0, 0]), int(shapes[0, 1])
    rr, cc = np.meshgrid(np.arange(rows, dtype=np.float64), np.arange(cols, dtype=np.float64), indexing="ij")
    b = plane.batch_shape
    world = plane[..., None, None, :].pixel_to_world(rr, cc)        # (..., rows, cols, 3)
    vox = world_to_voxel(world, aff)
    snapped = np.rint(vox)
    vox = np.where(np.abs(vox - snapped) < _SNAP, snapped, vox)
    coords = np.moveaxis(vox, -1, 0).reshape(3, -1)
    out = ndimage.map_coordinates(data, coords, order=order, mode="constant", cval=cval)
    return out.reshape(b + (rows, cols)).astype(np.float32)
