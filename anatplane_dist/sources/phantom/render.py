"""Analytic shapes evaluated at world points, painted into MR-like intensities.

Every phantom is a list of soft solids (ellipsoids, capsules, half-spaces) in LPS mm.  An image
is made by evaluating them at the world positions of a plane's pixels
(``Plane.pixel_to_world``), so any plane can be imaged and the geometry of what is drawn is
exact.  Edges are soft (a logistic of an approximate signed distance, ~1 mm wide) to mimic
partial volume; without it every boundary would alias into a staircase that no scanner makes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

from anatplane_dist.core.geometry import Plane

__all__ = ["Points", "as_points", "Ellipsoid", "Bullet", "Capsule", "occupancy", "halfspace", "Canvas",
           "bias_field", "rician", "to_12bit", "texture", "random_waves", "plane_points", "rotation",
           "orthonormal_frame"]


def rotation(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    """3x3 rotation matrix about ``axis`` (Rodrigues)."""
    k = np.asarray(axis, dtype=np.float64)
    k = k / np.linalg.norm(k)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * kx + (1 - np.cos(angle_rad)) * (kx @ kx)


def orthonormal_frame(u: np.ndarray, hint: np.ndarray) -> np.ndarray:
    """Rows ``(u, v, w)``: ``u`` normalised, ``v`` the part of ``hint`` orthogonal to it, ``w = u x v``."""
    u = np.asarray(u, float) / np.linalg.norm(u)
    v = np.asarray(hint, float) - (np.asarray(hint, float) @ u) * u
    v = v / np.linalg.norm(v)
    return np.stack([u, v, np.cross(u, v)])


class Points:
    """World points stored as three contiguous coordinate arrays (structure of arrays).

    Every solid is evaluated at ~10^4-10^5 points dozens of times per image; elementwise maths
    on contiguous x/y/z arrays is several times faster than reductions over a trailing axis of
    length 3, and this is where the phantoms spend their time.
    """

    __slots__ = ("x", "y", "z")

    def __init__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> None:
        self.x, self.y, self.z = x, y, z

    @property
    def shape(self) -> tuple[int, ...]:
        return self.x.shape

    def project(self, origin: np.ndarray, direction: np.ndarray) -> np.ndarray:
        """``direction . (p - origin)`` for every point."""
        o, d = np.asarray(origin, float), np.asarray(direction, float)
        return self.x * d[0] + self.y * d[1] + self.z * d[2] - float(o @ d)

    def frame(self, origin: np.ndarray, axes: np.ndarray) -> "Points":
        """Coordinates along the three rows of ``axes`` relative to ``origin``."""
        return Points(*(self.project(origin, axes[i]) for i in range(3)))

    def shifted(self, offset: np.ndarray) -> "Points":
        return Points(self.x + offset[0], self.y + offset[1], self.z + offset[2])



PointsLike = Union[np.ndarray, Points]


def as_points(points: PointsLike) -> Points:
    """(..., 3) array -> :class:`Points` (no copy when it already is one)."""
    if isinstance(points, Points):
        return points
    p = np.asarray(points, dtype=np.float64)
    return Points(np.ascontiguousarray(p[..., 0]), np.ascontiguousarray(p[..., 1]),
                  np.ascontiguousarray(p[..., 2]))


def _ellipsoid_sdf(q0: np.ndarray, q1: np.ndarray, q2: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """``(rho - 1) / |grad rho|`` in the ellipsoid's own frame (``rho`` the ellipsoidal radius)."""
    r0, r1, r2 = (float(r) for r in radii)
    s0, s1, s2 = q0 / r0, q1 / r1, q2 / r2
    rho = np.sqrt(s0 * s0 + s1 * s1 + s2 * s2)
    g = np.sqrt((s0 / r0) ** 2 + (s1 / r1) ** 2 + (s2 / r2) ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = (rho - 1.0) * rho / g
    return np.where(rho > 1e-9, d, -min(r0, r1, r2))


@dataclass(frozen=True)
class Ellipsoid:
    """Solid ellipsoid: ``centre`` (3,), ``axes`` (3, 3) rows = unit semi-axis directions,
    ``radii`` (3,) semi-axis lengths in mm."""

    centre: np.ndarray
    axes: np.ndarray
    radii: np.ndarray

    def sdf(self, points: PointsLike, grow: float = 0.0) -> np.ndarray:
        """First-order signed distance (mm, negative inside) to the surface grown by ``grow`` mm.

        ``(rho - 1) / |grad rho|`` with ``rho`` the ellipsoidal radius: exact for spheres,
        within a few per cent near the surface of the moderately eccentric shapes used here.
        """
        q = self.local(points)
        return _ellipsoid_sdf(q.x, q.y, q.z, np.asarray(self.radii, float) + grow)

    def local(self, points: PointsLike) -> Points:
        """Points in the ellipsoid's own frame (mm along each semi-axis direction)."""
        return as_points(points).frame(self.centre, self.axes)


class Bullet(Ellipsoid):
    """Half-ellipsoid cap (towards +axis 0) on an elliptic cylinder running towards -axis 0.

    The shape of a ventricle: about cylindrical from the base to mid-cavity, then tapering to
    the apex; a plain ellipsoid tapers from the base and makes mid-ventricular slices too small.
    Cut it at the base with a :func:`halfspace`.
    """

    def sdf(self, points: PointsLike, grow: float = 0.0) -> np.ndarray:
        q = self.local(points)
        return _ellipsoid_sdf(np.maximum(q.x, 0.0), q.y, q.z, np.asarray(self.radii, float) + grow)


@dataclass(frozen=True)
class Capsule:
    """Segment ``p0``-``p1`` swept by a sphere of ``radius`` (ligaments, tendons, vessels)."""

    p0: np.ndarray
    p1: np.ndarray
    radius: float

    def sdf(self, points: PointsLike, grow: float = 0.0) -> np.ndarray:
        p = as_points(points)
        p0 = np.asarray(self.p0, float)
        d = np.asarray(self.p1, float) - p0
        t = np.clip(p.project(p0, d) / float(d @ d), 0.0, 1.0)
        dx = p.x - p0[0] - t * d[0]
        dy = p.y - p0[1] - t * d[1]
        dz = p.z - p0[2] - t * d[2]
        return np.sqrt(dx * dx + dy * dy + dz * dz) - (self.radius + grow)


def occupancy(sdf: np.ndarray, edge_mm: float) -> np.ndarray:
    """Soft inside-ness in [0, 1] of a signed distance (partial-volume edge of ``edge_mm``)."""
    return 1.0 / (1.0 + np.exp(np.clip(sdf / edge_mm, -40.0, 40.0)))


def halfspace(points: PointsLike, point: np.ndarray, normal: np.ndarray, edge_mm: float) -> np.ndarray:
    """Soft occupancy of ``{x : normal . (x - point) >= 0}``."""
    n = np.asarray(normal, float) / np.linalg.norm(normal)
    return occupancy(-as_points(points).project(point, n), edge_mm)


class Canvas:
    """Intensity and label images painted back to front (later layers cover earlier ones).

    A layer with occupancy ``o`` blends ``img = img (1 - o) + value o``; the label becomes the
    layer's label where ``o > 0.5`` (``label=None`` leaves labels alone), so masks and pixels
    come from the same solids and always agree.
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.image = np.zeros(shape, dtype=np.float64)
        self.labels = np.zeros(shape, dtype=np.uint8)

    def paint(self, occ: np.ndarray, value: float | np.ndarray, label: int | None = None) -> None:
        self.image += (value - self.image) * occ
        if label is not None:
            self.labels[occ > 0.5] = label


def plane_points(plane: Plane) -> np.ndarray:
    """World positions (rows, cols, 3) of every pixel centre of a single plane."""
    rows, cols = (int(s) for s in plane.shape)
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return plane.pixel_to_world(r, c)


def bias_field(points: PointsLike, coils: np.ndarray, widths: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """Smooth multiplicative receive-coil sensitivity, a function of *world* position.

    Defined in patient space (not per image) so that two planes crossing each other see the
    same shading along their common line, as with a real coil.
    """
    p = as_points(points)
    log_b = np.zeros(p.shape)
    for c, w, g in zip(coils, widths, gains):
        d2 = (p.x - c[0]) ** 2 + (p.y - c[1]) ** 2 + (p.z - c[2]) ** 2
        log_b += g * np.exp(-d2 / (2.0 * w * w))
    return np.exp(log_b - np.mean(gains) * 0.5)


def texture(points: PointsLike, wavevectors: np.ndarray, phases: np.ndarray, amplitude: float) -> np.ndarray:
    """Multiplicative tissue heterogeneity ``1 + amp * mean_k sin(k . x + phi_k)`` (world-fixed).

    Flat tissue classes look synthetic; a few random plane waves of 1-4 cm wavelength give
    the slow in-organ signal variation of real images at the cost of a handful of dot products.
    """
    p = as_points(points)
    acc = np.zeros(p.shape)
    for k, phi in zip(wavevectors, phases):
        acc += np.sin(p.project(np.zeros(3), k) + phi)
    return 1.0 + amplitude * acc / np.sqrt(len(wavevectors))


def random_waves(rng: np.random.Generator, n: int = 6, wavelength_mm: tuple[float, float] = (12.0, 40.0)
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Wavevectors (n, 3) with random directions and wavelengths, and phases (n,)."""
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    k = d * (2 * np.pi / rng.uniform(*wavelength_mm, size=(n, 1)))
    return k, rng.uniform(0, 2 * np.pi, size=n)


def rician(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the image plus complex Gaussian noise (what a magnitude MR image carries)."""
    n1 = rng.normal(0.0, sigma, image.shape)
    n2 = rng.normal(0.0, sigma, image.shape)
    return np.sqrt((image + n1) ** 2 + n2 ** 2)


def to_12bit(image: np.ndarray, scale: float) -> np.ndarray:
    """Scale to scanner units and clip to the 12-bit range (uint16 values 0..4095)."""
    return np.clip(np.rint(image * scale), 0, 4095).astype(np.uint16)
