"""Plan the cardiac views from the anatomy, the way a technologist does at the scanner.

* SAX stack: perpendicular to the long axis (up to a small prescription tilt), parallel
  slices from the base (mitral plane) to beyond the apex, 8-10 mm apart.
* 4CH: a plane containing the long axis and cutting through the RV (it holds ``u`` and ``v``).
* 2CH: a plane containing the long axis, roughly perpendicular to the 4CH.
Every view gets a random in-plane rotation of its image axes and its own pixel spacing, and
the sign of the SAX normal is random (stacks are written apex->base as often as base->apex),
so that readers and the location rule cannot lean on a convention.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anatplane_dist.core.geometry import Plane
from anatplane_dist.sources.phantom.heart import HeartAnatomy
from anatplane_dist.sources.phantom.render import rotation

__all__ = ["HeartViews", "make_plane", "prescribe_heart_views"]


@dataclass(frozen=True)
class HeartViews:
    """The prescribed planes of one subject.

    Attributes:
        sax: stack of N parallel planes ordered base -> apex (batch Plane).
        ch2, ch4: single planes.
        sax_t: distance (mm) of each SAX slice centre from the base along the true long axis.
        gap: slice spacing of the SAX stack (mm).
    """

    sax: Plane
    ch2: Plane
    ch4: Plane
    sax_t: np.ndarray
    gap: float


def make_plane(centre: np.ndarray, normal: np.ndarray, up_hint: np.ndarray, angle_rad: float,
               spacing: float, shape: tuple[int, int]) -> Plane:
    """A plane of ``shape`` pixels centred on ``centre`` with unit ``normal`` (= row x col).

    ``up_hint`` projected into the plane points to the top of the image (decreasing row) before
    the in-plane rotation by ``angle_rad``.
    """
    n = np.asarray(normal, float) / np.linalg.norm(normal)
    up = np.asarray(up_hint, float) - (np.asarray(up_hint, float) @ n) * n
    if np.linalg.norm(up) < 1e-6:                      # hint along the normal: pick any in-plane axis
        up = np.cross(n, [1.0, 0.0, 0.0] if abs(n[0]) < 0.9 else [0.0, 1.0, 0.0])
    col = -up / np.linalg.norm(up)                    # increasing row goes down
    col = rotation(n, angle_rad) @ col
    row = np.cross(col, n)                           # row x col == n
    rows, cols = shape
    origin = (np.asarray(centre, float) - ((cols - 1) / 2.0) * spacing * row
              - ((rows - 1) / 2.0) * spacing * col)
    return Plane(origin, row, col, np.array([spacing, spacing]), np.array([rows, cols]))


def _tilted(axis: np.ndarray, rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """``axis`` tilted by up to ``max_deg`` towards a random perpendicular direction."""
    perp = np.cross(axis, rng.normal(size=3))
    return rotation(perp, np.deg2rad(rng.uniform(0.0, max_deg))) @ axis


def prescribe_heart_views(anatomy: HeartAnatomy, rng: np.random.Generator, matrix: int,
                          *, n_slices: int | None = None, sax_tilt_deg: float = 6.0,
                          lax_error_deg: float = 1.5, lax_offset_mm: float = 1.0,
                          inplane_rot_deg: float = 180.0) -> HeartViews:
    """Prescribe SAX, 2CH and 4CH planes for ``anatomy`` (``matrix`` x ``matrix`` pixels).

    Args:
        n_slices: SAX slice count; default chosen to cover base -> apex (clipped to 8..14).
        sax_tilt_deg: largest angle between the SAX normal and the true long axis.
        lax_error_deg, lax_offset_mm: how far the LAX planes may miss the long axis (small:
            the technologist aims through the apex and the mitral-valve centre).
        inplane_rot_deg: in-plane image axis rotation is uniform in +-this.
    """
    u, v = anatomy.axes[0], anatomy.axes[1]
    gap = float(rng.uniform(8.0, 10.0))
    span = anatomy.length + anatomy.wall_apex
    n = int(np.clip(np.round(span / gap) + 1, 8, 14)) if n_slices is None else int(n_slices)
    t0 = -float(rng.uniform(0.0, 0.4)) * gap            # first slice at/just above the mitral plane
    normal = _tilted(u, rng, sax_tilt_deg)
    # slices step along the stack normal from the base; record where each meets the true axis
    t_mid = t0 + 0.5 * (n - 1) * gap / float(normal @ u)
    # image centre: near the axis, nudged towards the RV and off by a few mm (as positioned by eye)
    mid = anatomy.lv_centre(t_mid) + 0.25 * anatomy.r_endo * v + rng.uniform(-6.0, 6.0, size=3)
    mid = mid - ((mid - anatomy.lv_centre(t_mid)) @ normal) * normal     # stack centre stays on the axis
    steps = (np.arange(n) - 0.5 * (n - 1)) * gap
    sign = 1.0 if rng.random() < 0.5 else -1.0
    angle = np.deg2rad(rng.uniform(-inplane_rot_deg, inplane_rot_deg))
    sp_sax = float(rng.uniform(1.2, 1.8))
    up = np.array([0.0, -1.0, 0.0])                    # anterior at the top before rotation
    sax = Plane.stack([make_plane(mid + s * normal, sign * normal, up, angle, sp_sax, (matrix, matrix))
                       for s in steps])
    # where each slice plane meets the true long axis (line base + t u)
    base = anatomy.base
    sax_t = ((sax.origin - base) @ normal) / float(u @ normal)

    def lax(direction_in_plane: np.ndarray) -> Plane:
        nrm = np.cross(u, direction_in_plane)
        nrm = _tilted(nrm / np.linalg.norm(nrm), rng, lax_error_deg)
        centre = anatomy.lv_centre(0.5 * (anatomy.length - 45.0)) + 0.3 * anatomy.r_endo * direction_in_plane
        centre = centre + rng.uniform(-lax_offset_mm, lax_offset_mm) * nrm
        flip = 1.0 if rng.random() < 0.5 else -1.0
        rot = np.deg2rad(rng.uniform(-inplane_rot_deg, inplane_rot_deg))
        sp = float(rng.uniform(1.2, 1.8))
        return make_plane(centre, flip * nrm, -u, rot, sp, (matrix, matrix))

    d4 = rotation(u, np.deg2rad(rng.uniform(-8.0, 8.0))) @ v
    d2 = rotation(u, np.deg2rad(90.0 + rng.uniform(-12.0, 12.0))) @ v
    ch4 = lax(d4)
    ch2 = lax(d2)
    return HeartViews(sax=sax, ch2=ch2, ch4=ch4, sax_t=sax_t, gap=gap)
