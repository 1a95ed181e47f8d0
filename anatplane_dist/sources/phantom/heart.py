"""Analytic cardiac anatomy in LPS mm: a thorax and a beating heart, SSFP-like contrast.

The heart lives in its own frame ``(u, v, w)``: ``u`` the long axis from the mitral-plane centre
(``base``) to the apex, ``v`` towards the RV (septal side), ``w = u x v``.  The LV is a
truncated ellipsoid with a myocardial wall, the RV a larger ellipsoid on the septal side minus
the LV (a crescent in short axis), the atria sit behind the base.  Contraction moves the base
towards the apex, narrows the cavities and thickens the wall (myocardial volume kept about
constant), so ED/ES masks and cine frames behave like the real thing.

Blood is bright, myocardium dark, fat bright, lungs black (balanced SSFP).  Labels follow
ACDC: 1 RV cavity, 2 LV myocardium, 3 LV cavity (papillary muscles included, as in ACDC).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from anatplane_dist.core.geometry import ANATOMICAL_APEX_LPS, Plane
from anatplane_dist.sources.phantom.render import (
    Bullet,
    Canvas,
    Capsule,
    Ellipsoid,
    PointsLike,
    as_points,
    bias_field,
    halfspace,
    occupancy,
    orthonormal_frame,
    plane_points,
    random_waves,
    rician,
    rotation,
    texture,
    to_12bit,
)

__all__ = ["GROUPS", "HeartAnatomy", "HeartSolids", "sample_heart", "render_cine", "LABEL_RV", "LABEL_MYO", "LABEL_LV"]

LABEL_RV, LABEL_MYO, LABEL_LV = 1, 2, 3
#: ACDC diagnostic groups; each shifts the shape/function parameters of the sampled heart.
GROUPS = ("NOR", "MINF", "DCM", "HCM", "RV")

_EDGE_MM = 0.9          # partial-volume edge width of every boundary
_NOMINAL_RV_DIR = np.array([-1.0, -1.0, 0.0]) / np.sqrt(2.0)   # RV: right and anterior of the LV


@dataclass(frozen=True)
class HeartSolids:
    """The heart's solids at one contraction state; ``tb`` is how far (mm) the base has
    descended towards the apex along ``u``."""

    tb: float
    endo: Bullet
    epi: Bullet
    rv: Bullet
    la: Ellipsoid
    ra: Ellipsoid
    papillary: tuple[Capsule, ...]
    aorta: Capsule


def _random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    axis = rng.normal(size=3)
    return rotation(axis, np.deg2rad(rng.uniform(0.0, max_deg)))


@dataclass(frozen=True)
class HeartAnatomy:
    """One subject's anatomy and function (all lengths mm, LPS).

    Attributes:
        base: centre of the mitral plane at end-diastole.
        axes: rows ``u`` (base -> apex), ``v`` (towards the RV), ``w = u x v``.
        length: LV cavity length base -> apex at ED.
        r_endo, ecc: ED cavity radius along ``v``; radius along ``w`` is ``r_endo * ecc``.
        wall, wall_apex: ED wall thickness (mid) and at the apex.
        ef: ejection fraction; long_short: longitudinal shortening at ES (fraction of length).
        rv_scale: RV size relative to normal; es_phase: ES as a fraction of the cycle.
        rr_ms: RR interval; group: ACDC group; intensities: tissue -> SSFP signal.
        body: thorax semi-axes (x, y) and centre y, fat thickness.
        coils, coil_widths, coil_gains: bias field (receive coil) parameters.
        lung_vessels: pulmonary vessels (bright dots and streaks in otherwise black lungs).
    """

    base: np.ndarray
    axes: np.ndarray
    length: float
    r_endo: float
    ecc: float
    wall: float
    wall_apex: float
    ef: float
    long_short: float
    rv_scale: float
    la_radius: float
    ra_radius: float
    es_phase: float
    rr_ms: float
    group: str
    body: tuple[float, float, float, float]
    intensities: dict[str, float] = field(repr=False)
    coils: np.ndarray = field(repr=False)
    coil_widths: np.ndarray = field(repr=False)
    coil_gains: np.ndarray = field(repr=False)
    noise: float = 0.03
    waves: tuple[np.ndarray, np.ndarray] = field(default=(np.zeros((0, 3)), np.zeros(0)), repr=False)
    lung_vessels: tuple[Capsule, ...] = field(default=(), repr=False)

    # -- frame and function ---------------------------------------------------------------
    @property
    def u(self) -> np.ndarray:
        return self.axes[0]

    @property
    def v(self) -> np.ndarray:
        return self.axes[1]

    @property
    def w(self) -> np.ndarray:
        return self.axes[2]

    @property
    def apex(self) -> np.ndarray:
        """Epicardial apex at ED."""
        return self.base + (self.length + self.wall_apex) * self.u

    def contraction(self, phase: float) -> float:
        """0 at ED (phase 0), 1 at ES (``es_phase``), smooth in between (fraction of cycle)."""
        p = float(phase) % 1.0
        if p <= self.es_phase:
            return 0.5 * (1.0 - np.cos(np.pi * p / self.es_phase))
        return 0.5 * (1.0 + np.cos(np.pi * (p - self.es_phase) / (1.0 - self.es_phase)))

    def es_frame(self, n_frames: int) -> int:
        """Index of the frame closest to end-systole (ED is frame 0)."""
        return int(round(self.es_phase * n_frames)) % n_frames

    def lv_centre(self, t: float) -> np.ndarray:
        """Point of the long axis at distance ``t`` mm from the base towards the apex."""
        return self.base + t * self.u

    def solids(self, c: float) -> HeartSolids:
        """The heart's solids at contraction ``c`` (0 = ED, 1 = ES)."""
        u, v, w = self.axes
        L = self.length
        tb = self.long_short * L * c                              # base descends to the apex
        k_es = np.sqrt((1.0 - self.ef) / (1.0 - self.long_short))   # ES/ED cavity radius ratio
        r_endo = self.r_endo * (1.0 - (1.0 - k_es) * c)
        r_epi0 = self.r_endo + self.wall
        cav = L - tb
        r_epi = np.sqrt(r_endo ** 2 + (r_epi0 ** 2 - self.r_endo ** 2) * L / cav)
        t_c = tb + 0.35 * cav                                      # cylindrical base half, tapered apex
        centre = self.base + t_c * u
        endo = Bullet(centre, self.axes, np.array([L - t_c, r_endo, r_endo * self.ecc]))
        apex_wall = self.wall_apex * (1.0 + 0.3 * c)
        epi = Bullet(centre, self.axes, np.array([L + apex_wall - t_c, r_epi, r_epi * self.ecc]))
        # RV: wraps the septal side; its free wall moves in during systole
        rs = self.rv_scale
        l_rv = 0.82 * L
        rv_c = self.base + (tb + 0.3 * l_rv) * u + 0.8 * r_epi0 * v
        rv_in = Bullet(rv_c, self.axes, np.array([0.7 * l_rv * (1 - 0.1 * c), 0.8 * r_epi0 * rs * (1 - 0.25 * c),
                                                     1.5 * r_epi0 * rs * (1 - 0.1 * c)]))
        # atria fill while the ventricles empty
        post = np.array([0.0, 1.0, 0.0]) - (np.array([0.0, 1.0, 0.0]) @ u) * u
        post /= np.linalg.norm(post)
        grow = 1.0 + 0.15 * c
        la_r = self.la_radius * grow
        la = Ellipsoid(self.base + (tb - 0.75 * la_r) * u + 0.35 * r_epi0 * post - 0.25 * r_epi0 * v,
                       self.axes, np.array([0.85 * la_r, la_r, 0.9 * la_r]))
        ra_r = self.ra_radius * grow
        ra = Ellipsoid(self.base + (tb - 0.7 * ra_r) * u + 1.25 * r_epi0 * v + 0.1 * r_epi0 * post,
                       self.axes, np.array([0.9 * ra_r, 0.9 * ra_r, ra_r]))
        # papillary muscles: antero-lateral and postero-medial, along the free wall
        paps = []
        for ang in (np.deg2rad(135.0), np.deg2rad(235.0)):
            d = np.cos(ang) * v + np.sin(ang) * w
            rho = 0.62 * r_endo
            paps.append(Capsule(self.base + (tb + 0.38 * cav) * u + rho * d,
                                self.base + (tb + 0.72 * cav) * u + 0.8 * rho * d, 3.2 * (1 + 0.25 * c)))
        # ascending aorta leaves the LV outflow between the atria
        ao_start = self.base + (tb - 2.0) * u + 0.35 * r_epi0 * v - 0.25 * r_epi0 * post
        ao_dir = 0.6 * np.array([0.0, 0.0, 1.0]) - 0.45 * u + 0.2 * v        # up, back from the base
        ao = Capsule(ao_start, ao_start + 55.0 * ao_dir / np.linalg.norm(ao_dir), 13.0)
        return HeartSolids(tb=float(tb), endo=endo, epi=epi, rv=rv_in, la=la, ra=ra, papillary=tuple(paps), aorta=ao)

    # -- rendering -------------------------------------------------------------------------
    def render_background(self, points: PointsLike) -> Canvas:
        """The static thorax (body, fat, muscle, lungs, liver, spine, descending aorta)."""
        it = self.intensities
        ax_, ay_, cy, fat = self.body
        points = as_points(points)
        cv = Canvas(points.shape)
        ex = np.eye(3)
        body = Ellipsoid(np.array([0.0, cy, 0.0]), ex, np.array([ax_, ay_, 900.0]))
        sd = body.sdf(points)
        cv.paint(occupancy(sd, _EDGE_MM), it["fat"])
        cv.paint(occupancy(sd + fat, _EDGE_MM), it["muscle"])
        cv.paint(occupancy(sd + fat + 14.0, _EDGE_MM), it["soft"])
        for sx, rx in ((-0.47, 0.40), (0.50, 0.37)):
            lung = Ellipsoid(np.array([sx * ax_, cy + 0.12 * ay_, 70.0]), ex, np.array([rx * ax_, 0.72 * ay_, 170.0]))
            cv.paint(occupancy(lung.sdf(points), _EDGE_MM), it["lung"])
        for vessel in self.lung_vessels:
            cv.paint(occupancy(vessel.sdf(points), _EDGE_MM), 0.45 * it["blood"])
        liver = Ellipsoid(np.array([-0.3 * ax_, cy + 0.05 * ay_, -150.0]), ex, np.array([0.6 * ax_, 0.72 * ay_, 85.0]))
        cv.paint(occupancy(liver.sdf(points), _EDGE_MM), it["liver"])
        ys = cy + 0.62 * ay_
        zs = np.array([0.0, 0.0, 400.0])
        vert = Capsule(np.array([0.0, ys, 0.0]) - zs, np.array([0.0, ys, 0.0]) + zs, 17.0)
        cv.paint(occupancy(vert.sdf(points), _EDGE_MM), it["bone"])
        canal = Capsule(np.array([0.0, ys + 27.0, 0.0]) - zs, np.array([0.0, ys + 27.0, 0.0]) + zs, 7.5)
        cv.paint(occupancy(canal.sdf(points), _EDGE_MM), it["csf"])
        dao = Capsule(np.array([24.0, ys - 24.0, 0.0]) - zs, np.array([24.0, ys - 24.0, 60.0]), 11.0)
        cv.paint(occupancy(dao.sdf(points), _EDGE_MM), it["blood"])
        sternum = Ellipsoid(np.array([0.0, cy - ay_ + fat + 9.0, 0.0]), ex, np.array([14.0, 6.0, 900.0]))
        cv.paint(occupancy(sternum.sdf(points), _EDGE_MM), it["bone"])
        return cv

    def render_heart(self, canvas: Canvas, points: PointsLike, c: float) -> Canvas:
        """Paint the heart at contraction ``c`` over ``canvas`` (modified and returned)."""
        it = self.intensities
        points = as_points(points)
        s = self.solids(c)
        u, tb = self.u, s.tb
        base_pt = self.base + tb * u
        below = halfspace(points, base_pt, u, _EDGE_MM)            # ventricles: t >= tb
        epi, endo, rv = s.epi, s.endo, s.rv
        sd_epi = epi.sdf(points)
        sd_rv = rv.sdf(points)
        # epicardial / atrioventricular-groove fat: a bright rim around the heart
        fat = occupancy(np.minimum(sd_epi - 3.0, sd_rv - 5.5), 1.5) * halfspace(points, base_pt - 14.0 * u, u, 3.0)
        canvas.paint(0.85 * fat, it["fat"])
        ao = s.aorta
        canvas.paint(occupancy(ao.sdf(points, 2.0), _EDGE_MM), it["myo"])
        canvas.paint(occupancy(ao.sdf(points), _EDGE_MM), it["blood"])
        for atrium in (s.la, s.ra):
            sd = atrium.sdf(points)
            canvas.paint(occupancy(sd - 2.0, _EDGE_MM), it["myo"])
            canvas.paint(occupancy(sd, _EDGE_MM), it["blood"])
        canvas.paint(occupancy(sd_rv - 3.5, _EDGE_MM) * below, it["myo"])                 # RV free wall
        canvas.paint(occupancy(sd_rv, _EDGE_MM) * below, it["blood"], LABEL_RV)
        canvas.paint(occupancy(sd_epi, _EDGE_MM) * below, it["myo"], LABEL_MYO)
        canvas.paint(occupancy(endo.sdf(points), _EDGE_MM) * below, it["blood"], LABEL_LV)
        for pap in s.papillary:
            canvas.paint(occupancy(pap.sdf(points), _EDGE_MM) * below, it["myo"])
        return canvas

    def render(self, points: PointsLike, phase: float) -> Canvas:
        """Noise-free intensities and ACDC labels at world ``points`` (..., 3), cardiac ``phase``."""
        points = as_points(points)
        return self.render_heart(self.render_background(points), points, self.contraction(phase))


def sample_heart(rng: np.random.Generator, group: str | None = None) -> HeartAnatomy:
    """A random but plausible subject; ``group`` (ACDC) biases size, wall and function."""
    group = group or "NOR"
    if group not in GROUPS:
        raise ValueError(f"unknown group {group!r}; expected one of {GROUPS}")
    u = _random_rotation(rng, 14.0) @ ANATOMICAL_APEX_LPS
    axes = orthonormal_frame(u, _NOMINAL_RV_DIR)
    axes = axes @ rotation(axes[0], np.deg2rad(rng.uniform(-15, 15))).T
    axes[1:] = (rotation(axes[0], np.deg2rad(rng.uniform(-15, 15))) @ axes[1:].T).T
    r_endo = rng.uniform(21.0, 26.0)
    wall = rng.uniform(7.5, 10.0)
    length = rng.uniform(68.0, 84.0)
    ef = rng.uniform(0.55, 0.68)
    rv_scale = rng.uniform(0.95, 1.08)
    if group == "DCM":
        r_endo, length, ef, wall = r_endo * 1.3, length * 1.12, rng.uniform(0.15, 0.35), wall * 0.8
    elif group == "HCM":
        wall, r_endo, ef = wall * 1.7, r_endo * 0.85, rng.uniform(0.65, 0.8)
    elif group == "MINF":
        ef, r_endo = rng.uniform(0.25, 0.42), r_endo * 1.12
    elif group == "RV":
        rv_scale = rng.uniform(1.3, 1.5)
    ax_, ay_ = rng.uniform(145.0, 180.0), rng.uniform(100.0, 125.0)
    cy = rng.uniform(0.0, 15.0)
    body = (ax_, ay_, cy, rng.uniform(8.0, 22.0))
    base = np.array([rng.uniform(0.0, 15.0), cy - rng.uniform(5.0, 20.0), rng.uniform(-5.0, 15.0)])
    jit = lambda x: float(x * rng.uniform(0.9, 1.1))   # noqa: E731 -- one-line tissue jitter
    intensities = {"blood": jit(1.0), "fat": jit(0.85), "myo": jit(0.2), "muscle": jit(0.22),
                   "soft": jit(0.32), "lung": jit(0.03), "liver": jit(0.3), "bone": jit(0.45), "csf": jit(0.8)}
    coils = np.array([[rng.uniform(-60, 60), cy - ay_ - 40.0, rng.uniform(-40, 40)],
                      [rng.uniform(-60, 60), cy + ay_ + 40.0, rng.uniform(-40, 40)]])
    return HeartAnatomy(
        base=base, axes=axes, length=length, r_endo=r_endo, ecc=rng.uniform(0.9, 1.08), wall=wall,
        wall_apex=rng.uniform(4.0, 6.0), ef=ef, long_short=rng.uniform(0.1, 0.17), rv_scale=rv_scale,
        la_radius=rng.uniform(18.0, 24.0), ra_radius=rng.uniform(18.0, 24.0), es_phase=rng.uniform(0.3, 0.4),
        rr_ms=rng.uniform(700.0, 1100.0), group=group, body=body, intensities=intensities, coils=coils,
        coil_widths=rng.uniform(90.0, 140.0, size=2), coil_gains=rng.uniform(0.3, 0.7, size=2),
        noise=rng.uniform(0.02, 0.045), waves=random_waves(rng, 10, (15.0, 60.0)),
        lung_vessels=_lung_vessels(rng, body))


def _lung_vessels(rng: np.random.Generator, body: tuple[float, float, float, float], n: int = 14
                  ) -> tuple[Capsule, ...]:
    """Short branches radiating from each hilum into the lung fields."""
    ax_, ay_, cy, _ = body
    out = []
    for k in range(n):
        side = -1.0 if k % 2 == 0 else 1.0
        hilum = np.array([side * 0.25 * ax_, cy + 0.1 * ay_, rng.uniform(-10.0, 40.0)])
        d = rng.normal(size=3) * np.array([0.6, 0.8, 1.0]) + np.array([side * 1.2, 0.0, 0.0])
        d /= np.linalg.norm(d)
        start = hilum + rng.uniform(20.0, 50.0) * d
        out.append(Capsule(start, start + rng.uniform(25.0, 60.0) * d, float(rng.uniform(1.5, 3.5))))
    return tuple(out)


def render_cine(anatomy: HeartAnatomy, plane: Plane, n_frames: int, rng: np.random.Generator,
                scale: float = 1800.0) -> tuple[np.ndarray, np.ndarray]:
    """A cine series of one plane: 12-bit pixels (F, rows, cols) uint16 and labels (F, rows, cols).

    The thorax is evaluated once per plane, the heart once per frame; the bias field (a
    function of world position) and Rician noise come last, as in an acquisition.
    """
    pts = as_points(plane_points(plane))
    background = anatomy.render_background(pts)
    bias = bias_field(pts, anatomy.coils, anatomy.coil_widths, anatomy.coil_gains)
    bias = bias * texture(pts, *anatomy.waves, amplitude=0.05)
    rows, cols = pts.shape
    pixels = np.empty((n_frames, rows, cols), dtype=np.uint16)
    labels = np.empty((n_frames, rows, cols), dtype=np.uint8)
    for f in range(n_frames):
        cv = Canvas((rows, cols))
        cv.image[...] = background.image
        cv.labels[...] = background.labels
        anatomy.render_heart(cv, pts, anatomy.contraction(f / n_frames))
        img = rician(cv.image * bias, anatomy.noise, rng)
        pixels[f] = to_12bit(img, scale)
        labels[f] = cv.labels
    return pixels, labels
