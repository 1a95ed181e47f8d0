"""Plane geometry in patient space: the source of every pretext label.

One convention everywhere (DICOM, LPS, millimetres):

* ``origin`` is the centre of pixel (row 0, col 0) (ImagePositionPatient);
* ``row_dir`` (IOP[0:3]) is the direction of increasing **column** index (image x);
* ``col_dir`` (IOP[3:6]) is the direction of increasing **row** index (image y);
* ``spacing = (d_row, d_col)`` (PixelSpacing order: between rows, then between columns);
* pixel (row i, col j) sits at ``origin + j * d_col * row_dir + i * d_row * col_dir``;
* normal ``n = row_dir x col_dir``.

A line in an image is ``(a, b, c)`` with ``a*x + b*y + c = 0`` (x = column, y = row) and
``a**2 + b**2 = 1``, so ``|a*x + b*y + c|`` is a distance in pixels on an isotropic grid.

Every function accepts leading batch dimensions (a ``Plane`` may hold many planes at once),
so a whole study, or a whole shard, is labelled with a handful of numpy calls and no Python
loop per pair.  The paper's official route solved each pair symbolically (~86 ms/pair); the
closed form below is a dot product.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "GeometryError", "Plane", "plane_from_dicom", "plane_from_nifti", "intersection_lines",
    "clip_lines", "target_grid", "resample_to_grid", "stack_positions", "heart_locations",
    "symmetric_locations", "render_heatmaps", "line_angle_deg", "ANATOMICAL_APEX_LPS", "RAS_TO_LPS",
]

#: In LPS the LV apex lies left (+x), anterior (-y) and inferior (-z) of the base.
ANATOMICAL_APEX_LPS = np.array([1.0, -1.0, -1.0]) / np.sqrt(3.0)

_UNIT_TOL = 1e-3     # |r| and |c| must be 1 within this (DICOM writers round to ~6 digits)
_ORTHO_TOL = 1e-3    # |r . c| must be below this


class GeometryError(ValueError):
    """Geometry that cannot describe an image plane (missing, degenerate or inconsistent)."""


@dataclass(frozen=True)
class Plane:
    """One or many image planes with their pixel grids (leading dims are batch dims).

    Attributes:
        origin: (..., 3) LPS mm position of the centre of pixel (0, 0).
        row_dir: (..., 3) unit vector along increasing column index.
        col_dir: (..., 3) unit vector along increasing row index.
        spacing: (..., 2) mm between rows, mm between columns.
        shape: (..., 2) rows, columns.
    """

    origin: np.ndarray
    row_dir: np.ndarray
    col_dir: np.ndarray
    spacing: np.ndarray
    shape: np.ndarray

    def __post_init__(self) -> None:
        for name in ("origin", "row_dir", "col_dir", "spacing"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float64))
        object.__setattr__(self, "shape", np.asarray(self.shape, dtype=np.int64))

    # -- derived quantities -------------------------------------------------------------
    @property
    def normal(self) -> np.ndarray:
        """Unit normal ``row_dir x col_dir`` (..., 3)."""
        n = np.cross(self.row_dir, self.col_dir)
        return n / np.linalg.norm(n, axis=-1, keepdims=True)

    @property
    def center(self) -> np.ndarray:
        """World position of the image centre (..., 3) (between pixels for even sizes)."""
        half = (self.shape - 1) / 2.0
        return (self.origin + (half[..., 1] * self.spacing[..., 1])[..., None] * self.row_dir
                + (half[..., 0] * self.spacing[..., 0])[..., None] * self.col_dir)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return self.origin.shape[:-1]

    def __getitem__(self, idx: Any) -> "Plane":
        return Plane(self.origin[idx], self.row_dir[idx], self.col_dir[idx],
                     self.spacing[idx], self.shape[idx])

    def __len__(self) -> int:
        if not self.batch_shape:
            raise TypeError("a single Plane has no length")
        return self.batch_shape[0]

    @staticmethod
    def stack(planes: Sequence["Plane"]) -> "Plane":
        """Batch several planes into one ``Plane`` with a leading dimension."""
        return Plane(*(np.stack([getattr(p, f) for p in planes]) for f in
                       ("origin", "row_dir", "col_dir", "spacing", "shape")))

    def affine(self) -> np.ndarray:
        """(..., 4, 4) matrix mapping homogeneous ``(col, row, 0, 1)`` to LPS mm."""
        m = np.zeros(self.batch_shape + (4, 4))
        m[..., :3, 0] = self.row_dir * self.spacing[..., 1:2]
        m[..., :3, 1] = self.col_dir * self.spacing[..., 0:1]
        m[..., :3, 2] = self.normal
        m[..., :3, 3] = self.origin
        m[..., 3, 3] = 1.0
        return m

    def pixel_to_world(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """World points (..., 3) of pixel coordinates (broadcast against the batch)."""
        rows = np.asarray(rows, dtype=np.float64)[..., None]
        cols = np.asarray(cols, dtype=np.float64)[..., None]
        return (self.origin + cols * self.spacing[..., 1:2] * self.row_dir
                + rows * self.spacing[..., 0:1] * self.col_dir)

    def world_to_pixel(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, col, out-of-plane distance in mm) of world points (..., 3)."""
        d = np.asarray(points, dtype=np.float64) - self.origin
        col = np.einsum("...k,...k->...", d, self.row_dir) / self.spacing[..., 1]
        row = np.einsum("...k,...k->...", d, self.col_dir) / self.spacing[..., 0]
        off = np.einsum("...k,...k->...", d, self.normal)
        return row, col, off

    def to_dict(self) -> dict[str, list]:
        """JSON-ready geometry (what shard metadata stores)."""
        return {"origin": self.origin.tolist(), "row_dir": self.row_dir.tolist(),
                "col_dir": self.col_dir.tolist(), "spacing": self.spacing.tolist(),
                "shape": self.shape.tolist()}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Plane":
        return Plane(d["origin"], d["row_dir"], d["col_dir"], d["spacing"], d["shape"])


# -- constructors with validation -------------------------------------------------------

def _validated(origin: Any, iop: Any, spacing: Any, shape: Any, what: str) -> Plane:
    try:
        o = np.asarray(origin, dtype=np.float64).reshape(3)
    except (TypeError, ValueError) as exc:
        raise GeometryError(f"{what}: ImagePositionPatient must be 3 numbers, got {origin!r}") from exc
    try:
        iop = np.asarray(iop, dtype=np.float64).reshape(6)
    except (TypeError, ValueError) as exc:
        raise GeometryError(f"{what}: ImageOrientationPatient must be 6 numbers, got {iop!r}") from exc
    try:
        sp = np.asarray(spacing, dtype=np.float64).reshape(2)
    except (TypeError, ValueError) as exc:
        raise GeometryError(f"{what}: PixelSpacing must be 2 numbers, got {spacing!r}") from exc
    if not (np.all(np.isfinite(o)) and np.all(np.isfinite(iop)) and np.all(np.isfinite(sp))):
        raise GeometryError(f"{what}: non-finite geometry value")
    if np.any(sp <= 0):
        raise GeometryError(f"{what}: PixelSpacing must be positive, got {sp.tolist()}")
    r, c = iop[:3], iop[3:]
    nr, nc = np.linalg.norm(r), np.linalg.norm(c)
    if abs(nr - 1) > _UNIT_TOL or abs(nc - 1) > _UNIT_TOL:
        raise GeometryError(f"{what}: direction cosines are not unit vectors (|r|={nr:.4f}, |c|={nc:.4f})")
    if abs(float(r @ c)) > _ORTHO_TOL:
        raise GeometryError(f"{what}: direction cosines are not orthogonal (r.c={float(r @ c):.4f})")
    shp = np.asarray(shape, dtype=np.int64).reshape(2)
    if np.any(shp < 1):
        raise GeometryError(f"{what}: image shape must be positive, got {shp.tolist()}")
    # re-normalise the tiny rounding of DICOM decimal strings
    return Plane(o, r / nr, c / nc, sp, shp)


def plane_from_dicom(ds: Any, what: str | None = None) -> Plane:
    """Plane of a DICOM image (a pydicom ``Dataset`` or any object with the same attributes).

    Raises:
        GeometryError: a tag is missing, malformed, or describes no valid plane.
    """
    what = what or str(getattr(ds, "filename", "DICOM dataset"))
    missing = [t for t in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                           "Rows", "Columns") if getattr(ds, t, None) in (None, "")]
    if missing:
        raise GeometryError(f"{what}: missing geometry tag(s) {', '.join(missing)}")
    return _validated(ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing,
                      (int(ds.Rows), int(ds.Columns)), what)


#: the one RAS <-> LPS map (NIfTI affines are RAS, this package is LPS); its own inverse
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
RAS_TO_LPS.setflags(write=False)


def plane_from_nifti(affine: np.ndarray, shape: Sequence[int], index: int | np.ndarray,
                     axis: int = 2) -> Plane:
    """Plane(s) of slice(s) ``index`` along voxel ``axis`` of a NIfTI volume.

    The 2D image of a slice is ``np.take(data, index, axis)``: its first remaining voxel axis
    is the image row, the second the image column.  The affine maps voxels to RAS; it is
    converted to LPS here, once, so nothing downstream knows NIfTI existed.
    """
    a = RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)
    in_plane = [ax for ax in range(3) if ax != axis]
    row_ax, col_ax = in_plane
    col_vec, row_vec = a[:3, row_ax], a[:3, col_ax]       # row index moves along col_dir
    d_row, d_col = np.linalg.norm(col_vec), np.linalg.norm(row_vec)
    if d_row <= 0 or d_col <= 0:
        raise GeometryError("NIfTI affine has a zero voxel size")
    idx = np.asarray(index, dtype=np.float64)
    vox = np.zeros(idx.shape + (4,))
    vox[..., axis] = idx
    vox[..., 3] = 1.0
    origin = (vox @ a.T)[..., :3]
    b = idx.shape
    iop = np.concatenate([row_vec / d_col, col_vec / d_row])
    _validated(origin.reshape(-1, 3)[0] if origin.size else np.zeros(3), iop, (d_row, d_col),
               (shape[row_ax], shape[col_ax]), "NIfTI affine")
    return Plane(origin, np.broadcast_to(row_vec / d_col, b + (3,)),
                 np.broadcast_to(col_vec / d_row, b + (3,)),
                 np.broadcast_to([d_row, d_col], b + (2,)),
                 np.broadcast_to([shape[row_ax], shape[col_ax]], b + (2,)))


# -- intersection lines ----------------------------------------------------------------

def intersection_lines(image: Plane, reference: Plane, *, min_angle_deg: float = 5.0,
                       min_visible_px: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Where ``reference`` planes cut ``image`` planes, in the image's pixel frame.

    Closed form: a pixel ``x(row, col)`` of the image lies on the reference plane when
    ``n_ref . (x - o_ref) = 0``, i.e. ``a*col + b*row + c = 0`` with
    ``a = d_col (n_ref . r)``, ``b = d_row (n_ref . c)``, ``c = n_ref . (o - o_ref)``.

    Args:
        image, reference: broadcastable batches of planes.
        min_angle_deg: planes closer to parallel than this give no line (``valid`` False).
        min_visible_px: a line whose visible part inside the image is shorter than this many
            pixels is invalid (a corner-clipping line has no reliable direction).

    Returns:
        lines (..., 3) normalised ``(a, b, c)`` (NaN where invalid) and valid (...,) bool.
    """
    n_ref = reference.normal
    a = image.spacing[..., 1] * np.einsum("...k,...k->...", n_ref, image.row_dir)
    b = image.spacing[..., 0] * np.einsum("...k,...k->...", n_ref, image.col_dir)
    c = np.einsum("...k,...k->...", n_ref, image.origin - reference.origin)
    a, b, c = np.broadcast_arrays(a, b, c)
    norm = np.hypot(a, b)
    # sin(angle between planes) = |projection of n_ref on the image plane|
    sin_angle = np.hypot(np.einsum("...k,...k->...", n_ref, image.row_dir),
                         np.einsum("...k,...k->...", n_ref, image.col_dir))
    parallel = sin_angle < np.sin(np.deg2rad(min_angle_deg))
    with np.errstate(invalid="ignore", divide="ignore"):
        lines = np.stack([a, b, c], axis=-1) / norm[..., None]
    shape = np.broadcast_to(image.shape, lines.shape[:-1] + (2,))
    lines = np.where(parallel[..., None], np.nan, lines)
    _, _, length = clip_lines(lines, shape)
    valid = ~parallel & (length >= min_visible_px)
    lines = np.where(valid[..., None], lines, np.nan)
    return lines, valid


def clip_lines(lines: np.ndarray, shape: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip lines to the image rectangle (pixel edges, ``[-0.5, W-0.5] x [-0.5, H-0.5]``).

    Returns:
        p0, p1 (..., 2) endpoints as (x, y) (NaN when the line misses), and the visible
        length (...,) in pixels (0 when it misses).
    """
    lines = np.asarray(lines, dtype=np.float64)
    shape = np.asarray(shape, dtype=np.float64)
    a, b, c = lines[..., 0], lines[..., 1], lines[..., 2]
    px, py = -a * c, -b * c                 # foot of the perpendicular from (0, 0)
    dx, dy = -b, a                          # unit direction
    lo = np.full(a.shape, -np.inf)
    hi = np.full(a.shape, np.inf)
    with np.errstate(invalid="ignore", divide="ignore"):
        for p, d, extent in ((px, dx, shape[..., 1]), (py, dy, shape[..., 0])):
            lo_edge, hi_edge = -0.5, extent - 0.5
            moving = np.abs(d) > 1e-12
            t0 = np.where(moving, (lo_edge - p) / np.where(moving, d, 1), -np.inf)
            t1 = np.where(moving, (hi_edge - p) / np.where(moving, d, 1), np.inf)
            tmin, tmax = np.minimum(t0, t1), np.maximum(t0, t1)
            inside = moving | ((p >= lo_edge) & (p <= hi_edge))
            lo = np.maximum(lo, np.where(inside, tmin, np.inf))
            hi = np.minimum(hi, np.where(inside, tmax, -np.inf))
    ok = np.isfinite(lo) & np.isfinite(hi) & (hi > lo) & np.isfinite(a)
    length = np.where(ok, hi - lo, 0.0)
    lo, hi = np.where(ok, lo, 0.0), np.where(ok, hi, 0.0)
    p0 = np.stack([px + lo * dx, py + lo * dy], axis=-1)
    p1 = np.stack([px + hi * dx, py + hi * dy], axis=-1)
    p0 = np.where(ok[..., None], p0, np.nan)
    p1 = np.where(ok[..., None], p1, np.nan)
    return p0, p1, length


def line_angle_deg(lines: np.ndarray) -> np.ndarray:
    """Direction of a line in degrees in [0, 180), measured from the +x (column) axis."""
    lines = np.asarray(lines, dtype=np.float64)
    return np.mod(np.degrees(np.arctan2(lines[..., 0], -lines[..., 1])), 180.0)


# -- model grid ---------------------------------------------------------------------------

def target_grid(plane: Plane, size: int | tuple[int, int], spacing: float) -> Plane:
    """The model's isotropic grid of ``size`` pixels at ``spacing`` mm, centred on the image.

    It is a ``Plane`` in its own right, so lines computed on it are exact (no rasterise-then-
    resample step) and pixels are resampled onto it with the same geometry.
    """
    rows, cols = (size, size) if np.isscalar(size) else size
    half_r, half_c = (rows - 1) / 2.0, (cols - 1) / 2.0
    origin = (plane.center - (half_c * spacing) * plane.row_dir - (half_r * spacing) * plane.col_dir)
    b = plane.batch_shape
    return Plane(origin, plane.row_dir, plane.col_dir, np.broadcast_to([spacing, spacing], b + (2,)),
                 np.broadcast_to([rows, cols], b + (2,)))


def resample_to_grid(image: np.ndarray, source: Plane, grid: Plane, order: int = 1,
                     cval: float = 0.0) -> np.ndarray:
    """Resample ``image`` ((rows, cols) or (frames, rows, cols)) from ``source`` onto ``grid``.

    Both planes must be coplanar (``grid`` made by :func:`target_grid`); pixel centres map to
    pixel centres, so lines computed on ``grid`` land exactly on the resampled anatomy.
    Outside the source field of view the result is ``cval``.
    """
    if source.batch_shape or grid.batch_shape:
        raise ValueError("resample_to_grid takes single planes")
    # grid pixel (i, j) -> world -> source pixel (row, col): an affine map
    corners = grid.pixel_to_world(np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0]))
    r, c, _ = source.world_to_pixel(corners)
    offset = np.array([r[0], c[0]])
    matrix = np.array([[r[1] - r[0], r[2] - r[0]], [c[1] - c[0], c[2] - c[0]]])
    img = np.asarray(image, dtype=np.float32)
    out_shape = tuple(int(s) for s in grid.shape)
    if img.ndim == 2:
        # a grid from target_grid shares the source axes: the map is a diagonal scaling, and
        # scipy's separable path for a 1-D matrix is ~1.7x faster than the general one
        if abs(matrix[0, 1]) < 1e-12 and abs(matrix[1, 0]) < 1e-12:
            matrix = np.diag(matrix)
        return ndimage.affine_transform(img, matrix, offset, output_shape=out_shape, order=order,
                                        mode="constant", cval=cval)
    if img.ndim == 3:
        m3 = np.eye(3)
        m3[1:, 1:] = matrix
        return ndimage.affine_transform(img, m3, np.concatenate([[0.0], offset]),
                                        output_shape=(img.shape[0],) + out_shape, order=order,
                                        mode="constant", cval=cval)
    raise ValueError(f"image must be 2D or 3D, got shape {img.shape}")


# -- stacks and relative locations ------------------------------------------------------------

def _stack_normal(stack: Plane) -> np.ndarray:
    n = stack.normal.reshape(-1, 3)
    ref = n[0]
    aligned = n * np.sign(n @ ref)[:, None]          # flip any slice written with the opposite IOP
    m = aligned.mean(axis=0)
    return m / np.linalg.norm(m)


def stack_positions(stack: Plane, direction: np.ndarray | None = None) -> np.ndarray:
    """Signed position ``s = n . o`` (mm) of each slice of a parallel stack (N,).

    ``direction`` fixes the axis and its sign; by default the mean slice normal.
    Order slices with ``np.argsort`` of this, never by InstanceNumber or by z alone.
    """
    n = _stack_normal(stack) if direction is None else np.asarray(direction, float) / np.linalg.norm(direction)
    return stack.origin.reshape(-1, 3) @ n


def heart_locations(stack: Plane, *, min_extent_mm: float = 1e-3,
                    long_axis: np.ndarray | None = None) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Relative base (0) -> apex (1) location of every SAX slice, distance-based.

    The stack axis is oriented so that ``n . (+1, -1, -1) > 0`` (the apex is left, anterior and
    inferior of the base in LPS).  When ``long_axis`` (e.g. the common line of the 2CH and 4CH
    planes) is given, its angle to the stack axis is reported as a consistency check.

    Returns:
        (locations (N,) or None when the stack has fewer than two distinct positions,
        info dict with the rule used, the axis, the extent and any long-axis angle).
    """
    n = _stack_normal(stack)
    if n @ ANATOMICAL_APEX_LPS < 0:
        n = -n
    s = stack_positions(stack, n)
    extent = float(s.max() - s.min()) if s.size else 0.0
    info: dict[str, Any] = {"rule": "heart: n.(+1,-1,-1)>0 points base->apex; l=(s-min)/(max-min)",
                            "axis": n.tolist(), "extent_mm": extent}
    if long_axis is not None:
        la = np.asarray(long_axis, float)
        la = la / np.linalg.norm(la)
        info["long_axis_angle_deg"] = float(np.degrees(np.arccos(min(1.0, abs(float(la @ n))))))
    if s.size < 2 or extent < min_extent_mm:
        info["reason"] = "fewer than two distinct slice positions"
        return None, info
    return (s - s.min()) / extent, info


def symmetric_locations(stack: Plane, *, min_extent_mm: float = 1e-3) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Knee rule: ``l = |2t - 1|``, ``t`` the distance-based position in the stack.

    Symmetric about the stack centre, so left and right knees (whose stacks run in opposite
    anatomical directions) get the same targets.  Our reading of the paper's Eq. sym_loc.
    """
    s = stack_positions(stack)
    extent = float(s.max() - s.min()) if s.size else 0.0
    info: dict[str, Any] = {"rule": "symmetric: l=|2t-1|, t=(s-min)/(max-min)", "extent_mm": extent}
    if s.size < 2 or extent < min_extent_mm:
        info["reason"] = "fewer than two distinct slice positions"
        return None, info
    t = (s - s.min()) / extent
    return np.abs(2.0 * t - 1.0), info


# -- heatmaps --------------------------------------------------------------------------------

def render_heatmaps(lines: np.ndarray, valid: np.ndarray, shape: tuple[int, int],
                    sigma_px: float) -> np.ndarray:
    """Gaussian ridge ``exp(-d^2 / 2 sigma^2)`` of each line; invalid channels are all zero.

    Args:
        lines: (..., K, 3) normalised lines; valid: (..., K).
        shape: (H, W) of the grid the lines live on.
    Returns:
        (..., K, H, W) float32.  The torch renderer in ``losses`` must match this one.
    """
    lines = np.asarray(lines, dtype=np.float64)
    valid = np.asarray(valid, dtype=bool)
    h, w = shape
    y = np.arange(h, dtype=np.float64)[:, None]
    x = np.arange(w, dtype=np.float64)[None, :]
    safe = np.where(valid[..., None], lines, 0.0)
    d = (safe[..., 0, None, None] * x + safe[..., 1, None, None] * y + safe[..., 2, None, None])
    heat = np.exp(-(d * d) / (2.0 * sigma_px * sigma_px))
    return np.where(valid[..., None, None], heat, 0.0).astype(np.float32)
