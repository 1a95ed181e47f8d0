"""Analytic shapes evaluated at world points, painted into MR-like intensities.

Every phantom is a list of soft solids (ellipsoids, capsules, half-spaces) in LPS mm.  An image
is made by evaluating them at the world positions of a plane's pixels
(``Plane.pixel_to_world``), so any plane can be imaged and the geometry of what is drawn is
exact.  Edges are soft (a logistic of an approximate signed distance, ~1 mm wide) to mimic
partial volume; without it every boundary would alias into a staircase that no scanner makes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...geometry import Plane

__all__ = ["Ellipsoid", "Bullet", "Capsule", "occupancy", "halfspace", "Canvas", "bias_field", "rician",
           "to_12bit", "texture", "random_waves", "plane_points", "rotation", "orthonormal_frame"]


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


@dataclass(frozen=True)
class Ellipsoid:
    """Solid ellipsoid: ``centre`` (3,), ``axes`` (3, 3) rows = unit semi-axis directions,
    ``radii`` (3,) semi-axis lengths in mm."""

    centre: np.ndarray
    axes: np.ndarray
    radii: np.ndarray

    def sdf(self, points: np.ndarray, grow: float = 0.0) -> np.ndarray:
        """First-order signed distance (mm, negative inside) to the surface grown by ``grow`` mm.

        ``(rho - 1) / |grad rho|`` with ``rho`` the ellipsoidal radius: exact for spheres,
        within a few per cent near the surface of the moderately eccentric shapes used here.
        """
        return self._sdf_local(self.local(points), grow)

    def _sdf_local(self, q: np.ndarray, grow: float) -> np.ndarray:
        r = np.asarray(self.radii, float) + grow
        s = q / r
        rho = np.sqrt(np.sum(s * s, axis=-1))
        g = np.sqrt(np.sum((s / r) ** 2, axis=-1))
        safe = np.maximum(rho, 1e-9)
        return np.where(rho > 1e-9, (rho - 1.0) / np.maximum(g / safe, 1e-12), -float(np.min(r)))

    def local(self, points: np.ndarray) -> np.ndarray:
        """Points in the ellipsoid's own frame (mm along each semi-axis direction)."""
        return (points - self.centre) @ self.axes.T


class Bullet(Ellipsoid):
    """Half-ellipsoid cap (towards +axis 0) on an elliptic cylinder running towards -axis 0.

    The shape of a ventricle: about cylindrical from the base to mid-cavity, then tapering to
    the apex; a plain ellipsoid tapers from the base and makes mid-ventricular slices too small.
    Cut it at the base with a :func:`halfspace`.
    """

    def sdf(self, points: np.ndarray, grow: float = 0.0) -> np.ndarray:
        q = self.local(points)
        q[..., 0] = np.maximum(q[..., 0], 0.0)
        return self._sdf_local(q, grow)


@dataclass(frozen=True)
class Capsule:
    """Segment ``p0``-``p1`` swept by a sphere of ``radius`` (ligaments, tendons, vessels)."""

    p0: np.ndarray
    p1: np.ndarray
    radius: float

    def sdf(self, points: np.ndarray, grow: float = 0.0) -> np.ndarray:
        d = np.asarray(self.p1, float) - np.asarray(self.p0, float)
        t = np.clip(((points - self.p0) @ d) / float(d @ d), 0.0, 1.0)
        closest = self.p0 + t[..., None] * d
        return np.linalg.norm(points - closest, axis=-1) - (self.radius + grow)

    def param(self, points: np.ndarray) -> np.ndarray:
        """Position along the segment (0 at ``p0``, 1 at ``p1``; unclipped)."""
        d = np.asarray(self.p1, float) - np.asarray(self.p0, float)
        return ((points - self.p0) @ d) / float(d @ d)


def occupancy(sdf: np.ndarray, edge_mm: float) -> np.ndarray:
    """Soft inside-ness in [0, 1] of a signed distance (partial-volume edge of ``edge_mm``)."""
    return 1.0 / (1.0 + np.exp(np.clip(sdf / edge_mm, -40.0, 40.0)))


def halfspace(points: np.ndarray, point: np.ndarray, normal: np.ndarray, edge_mm: float) -> np.ndarray:
    """Soft occupancy of ``{x : normal . (x - point) >= 0}``."""
    n = np.asarray(normal, float) / np.linalg.norm(normal)
    return occupancy(-((points - point) @ n), edge_mm)


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


def bias_field(points: np.ndarray, coils: np.ndarray, widths: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """Smooth multiplicative receive-coil sensitivity, a function of *world* position.

    Defined in patient space (not per image) so that two planes crossing each other see the
    same shading along their common line, as with a real coil.
    """
    log_b = np.zeros(points.shape[:-1])
    for c, w, g in zip(coils, widths, gains):
        d2 = np.sum((points - c) ** 2, axis=-1)
        log_b += g * np.exp(-d2 / (2.0 * w * w))
    return np.exp(log_b - np.mean(gains) * 0.5)


def texture(points: np.ndarray, wavevectors: np.ndarray, phases: np.ndarray, amplitude: float) -> np.ndarray:
    """Multiplicative tissue heterogeneity ``1 + amp * mean_k sin(k . x + phi_k)`` (world-fixed).

    Flat tissue classes look synthetic; a few random plane waves of 1-4 cm wavelength give
    the slow in-organ signal variation of real images at the cost of a handful of dot products.
    """
    acc = np.zeros(points.shape[:-1])
    for k, phi in zip(wavevectors, phases):
        acc += np.sin(points @ k + phi)
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
