"""Geometry that parses but cannot be a real acquisition, caught at the smallest wrong unit.

NaN and malformed tags are rejected where they are parsed; this module catches *finite but
absurd* geometry, which would otherwise flow into the targets: one frame at
``ImagePositionPatient = [1e300, 0, 0]`` becomes its own slice, and the location rule
``(s - min) / (max - min)`` then squeezes every other slice of the stack to ~0.

* a **frame** (one file) whose position or pixel spacing is outside physical bounds
  (:func:`frame_problem`; the reader records it at ``file`` level);
* a **slice** far off its stack's line of positions (:func:`stack_outliers`; robust: the
  line and the scale come from medians, so the outlier cannot hide itself);
* a cine **frame** whose geometry differs from the rest of its series (readers: fewer frames
  at that plane than the series' cine length; ``dicom_read.split_stray_frames``).

The bounds are deliberately loose (no scanner bore is 4 m wide; MR pixels are 0.05-20 mm):
they exist to stop numeric garbage, not to judge protocols.
"""
from __future__ import annotations

import numpy as np

from anatplane_dist.core.geometry import Plane

__all__ = ["MAX_ABS_POSITION_MM", "SPACING_RANGE_MM", "frame_problem", "stack_outliers",
           "OFF_LINE_FLOOR_MM", "GAP_FLOOR_MM", "ROBUST_FACTOR"]

#: |ImagePositionPatient| components beyond this are not a patient in a scanner (mm)
MAX_ABS_POSITION_MM = 2000.0
#: plausible pixel spacing (mm), both directions
SPACING_RANGE_MM = (0.01, 50.0)
#: a slice centre further than max(floor, factor x median) from its stack's line is an outlier
OFF_LINE_FLOOR_MM = 50.0
#: a slice further than max(floor, factor x median gap) from its nearest neighbour along the axis
GAP_FLOOR_MM = 50.0
ROBUST_FACTOR = 5.0


def frame_problem(plane: Plane) -> str:
    """Why one image's geometry is physically implausible ('' when it is plausible)."""
    origin = np.asarray(plane.origin, float)
    spacing = np.asarray(plane.spacing, float)
    if np.abs(origin).max() > MAX_ABS_POSITION_MM:
        return (f"implausible ImagePositionPatient {np.array2string(origin, precision=4)} "
                f"(a component beyond +-{MAX_ABS_POSITION_MM:g} mm)")
    lo, hi = SPACING_RANGE_MM
    if spacing.min() < lo or spacing.max() > hi:
        return f"implausible PixelSpacing {spacing.tolist()} mm (outside [{lo:g}, {hi:g}])"
    return ""


def stack_outliers(planes: Plane, axis: np.ndarray | None = None) -> dict[int, str]:
    """Slices of one stack (``planes`` batched, S >= 3) far off its line of positions.

    The line runs through the coordinate-wise median of the slice centres along ``axis``
    (default: the mean normal). A slice is an outlier when its centre is further from that
    line than ``max(OFF_LINE_FLOOR_MM, ROBUST_FACTOR * median offset)``, or when its nearest
    neighbour along the axis is further than ``max(GAP_FLOOR_MM, ROBUST_FACTOR * m)`` with ``m``
    the median over slices of that nearest-neighbour distance (robust already at 3 slices).
    Stacks of fewer than 3 slices have no robust reference and are returned unchecked.

    Returns:
        ``{index: reason}`` of the outliers.
    """
    centres = np.asarray(planes.center, float).reshape(-1, 3)
    n = len(centres)
    if n < 3:
        return {}
    if axis is None:
        normals = np.asarray(planes.normal, float).reshape(-1, 3)
        normals = normals * np.sign(normals @ normals[0])[:, None]
        axis = normals.mean(axis=0)
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    rel = centres - np.median(centres, axis=0)
    along = rel @ axis
    off = np.linalg.norm(rel - along[:, None] * axis, axis=1)
    out: dict[int, str] = {}
    limit = max(OFF_LINE_FLOOR_MM, ROBUST_FACTOR * float(np.median(off)))
    for i in np.flatnonzero(off > limit):
        out[int(i)] = f"slice centre {off[i]:.1f} mm off its stack's line of positions (limit {limit:.1f} mm)"
    order = np.argsort(along, kind="stable")
    s = along[order]
    gaps = np.diff(s)
    nearest = np.minimum(np.r_[np.inf, gaps], np.r_[gaps, np.inf])
    gap_limit = max(GAP_FLOOR_MM, ROBUST_FACTOR * float(np.median(nearest)))
    for j in np.flatnonzero(nearest > gap_limit):
        i = int(order[j])
        out.setdefault(i, f"slice {nearest[j]:.1f} mm along the stack axis from its nearest neighbour "
                          f"(limit {gap_limit:.1f} mm): off the stack")
    return out
