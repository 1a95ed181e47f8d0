"""Analytic knee anatomy (PD-weighted contrast) and its sagittal/coronal/axial prescription.

Anatomy lives in knee coordinates ``(m, a, s)`` in mm: ``m`` towards the medial side, ``a``
anterior, ``s`` superior, origin at the centre of the joint line.  A right knee's medial side is
the patient's left (+x in LPS), a left knee's the patient's right, so the map to LPS is a
reflection for one side: the images of a left and a right knee are mirror images, as in real
data.  Bones are bright (fatty marrow) with a dark cortex; cartilage intermediate; menisci,
ligaments and tendons dark; fat bright; fluid fairly bright.

Labels (MRNet-like): an ACL tear interrupts the ligament's mid-substance with fluid, a meniscal
tear puts a bright oblique cleft through the posterior horn of the medial meniscus, and an
effusion (also "abnormal") distends the suprapatellar recess.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from anatplane_dist.core.geometry import Plane
from anatplane_dist.sources.phantom.prescribe import make_plane
from anatplane_dist.sources.phantom.render import (
    Bullet,
    Canvas,
    Capsule,
    Ellipsoid,
    Points,
    PointsLike,
    as_points,
    bias_field,
    occupancy,
    plane_points,
    random_waves,
    rician,
    rotation,
    texture,
    to_12bit,
)

__all__ = ["KneeAnatomy", "sample_knee", "prescribe_knee_views", "render_knee_slice", "with_pathology", "KNEE_VIEWS"]

KNEE_VIEWS = ("sagittal", "coronal", "axial")
_EDGE = 0.6
_I3 = np.eye(3)
_UP = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])     # Bullet axis 0 along +s
_DOWN = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # Bullet axis 0 along -s


def _ell(c, r) -> Ellipsoid:
    return Ellipsoid(np.asarray(c, float), _I3, np.asarray(r, float))


def _cap(p0, p1, r) -> Capsule:
    return Capsule(np.asarray(p0, float), np.asarray(p1, float), float(r))


@dataclass(frozen=True)
class KneeAnatomy:
    """One knee.

    Attributes:
        side: "R" or "L" (DICOM Laterality).
        centre: LPS position of the joint centre; basis: rows = LPS directions of (m, a, s).
        size: global scale of the bones; acl_tear, meniscus_tear, effusion: the pathology.
    """

    side: str
    centre: np.ndarray
    basis: np.ndarray
    size: float
    acl_tear: bool
    meniscus_tear: bool
    effusion: bool
    intensities: dict[str, float] = field(repr=False)
    noise: float = 0.03
    waves: tuple[np.ndarray, np.ndarray] = field(default=(np.zeros((0, 3)), np.zeros(0)), repr=False)

    @property
    def abnormal(self) -> bool:
        return self.acl_tear or self.meniscus_tear or self.effusion

    def to_local(self, points: np.ndarray) -> np.ndarray:
        """LPS points -> knee coordinates (m, a, s), divided by ``size`` (unit-size anatomy)."""
        return ((points - self.centre) @ self.basis.T) / self.size

    def to_world(self, local: np.ndarray) -> np.ndarray:
        return self.centre + (np.asarray(local, float) * self.size) @ self.basis

    def acl(self) -> Capsule:
        """The ACL (knee coordinates): lateral femoral condyle notch wall -> anterior tibial spine."""
        return _cap((-9.0, -15.0, 17.0), (-3.0, 9.0, -2.5), 4.2)

    def render(self, points: PointsLike) -> Canvas:
        """Noise-free PD intensities at LPS ``points`` (..., 3)."""
        it = self.intensities
        loc = as_points(points).frame(self.centre, self.basis)
        q = Points(loc.x / self.size, loc.y / self.size, loc.z / self.size)
        m, a, s = q.x, q.y, q.z
        cv = Canvas(q.shape)
        occ = lambda sd: occupancy(sd, _EDGE)   # noqa: E731 -- every solid shares the edge width
        # soft tissues: subcutaneous fat, muscle, popliteal and Hoffa fat, joint fluid
        limb = _ell((0, -2, 0), (58, 52, 900))
        sd_limb = limb.sdf(q)
        cv.paint(occ(sd_limb), it["fat"])
        # muscle inside the fat layer, except in front of the joint (patellar tendon, fat)
        muscle = np.maximum(sd_limb + 8.0, -np.maximum(18.0 - a, np.abs(s - 5.0) - 40.0))
        cv.paint(occ(muscle), it["muscle"])
        cv.paint(occ(_ell((0, -38, 0), (27, 16, 48)).sdf(q)), it["fat"])
        cv.paint(occ(_ell((0, 25, 2), (24, 10, 16)).sdf(q)), it["fat"])
        recess = _ell((0, 22, 50), (26, 9.0 if self.effusion else 3.5, 20))
        cv.paint(occ(recess.sdf(q)), it["fluid"])
        if self.effusion:
            cv.paint(occ(_ell((0, -22, 6), (30, 5, 14)).sdf(q)), it["fluid"])
        cv.paint(occ(_cap((3, -40, 150), (3, -40, -150), 4.0).sdf(q)), it["vessel"])
        # femur
        med = _ell((20, -8, 21), (14, 26, 18)).sdf(q)
        lat = _ell((-20, -6, 21), (13, 24, 18)).sdf(q)
        troch = _ell((0, 9, 31), (30, 16, 20)).sdf(q)
        meta = np.maximum(Bullet(np.array([0.0, -5.0, 30.0]), _UP, np.array([42.0, 31.0, 22.0])).sdf(q), 22.0 - s)
        shaft = _cap((0, -2, 40), (0, -2, 300), 15.0).sdf(q)
        artic = np.minimum(np.minimum(med, lat), troch)
        femur = np.minimum(np.minimum(artic, meta), shaft)
        cv.paint(occ(np.maximum(artic - 2.5, s - 34.0)), it["cartilage"])
        cv.paint(occ(femur), it["cortex"])
        cv.paint(occ(femur + 1.8), it["marrow"])
        # tibia and fibula
        plateau = np.maximum(Bullet(np.array([0.0, -3.0, -9.0]), _DOWN, np.array([32.0, 38.0, 27.0])).sdf(q), s + 3.0)
        tshaft = _cap((0, -4, -30), (0, -4, -300), 16.0).sdf(q)
        spines = np.minimum(_ell((5, -3, -3), (3.5, 6, 4.5)).sdf(q), _ell((-5, -2, -3), (3.5, 6, 4.5)).sdf(q))
        tuber = _ell((0, 19, -32), (12, 9, 14)).sdf(q)
        tibia = np.minimum(np.minimum(plateau, tshaft), np.minimum(spines, tuber))
        ring = np.hypot(m / 36.0, (a + 3.0) / 25.0)
        tcart = np.maximum.reduce([(ring - 1.0) * 25.0, s + 0.5, -(s + 3.5), 6.0 - np.abs(m)])
        cv.paint(occ(tcart), it["cartilage"])
        cv.paint(occ(tibia), it["cortex"])
        cv.paint(occ(tibia + 1.8), it["marrow"])
        fib = np.minimum(_ell((-31, -16, -30), (8, 8, 9)).sdf(q), _cap((-32, -16, -30), (-34, -16, -300), 7.0).sdf(q))
        cv.paint(occ(fib), it["cortex"])
        cv.paint(occ(fib + 1.5), it["marrow"])
        # patella with its cartilage, tendons
        pat = _ell((0, 38, 33), (21, 9, 18)).sdf(q)
        cv.paint(occ(np.maximum(pat - 3.0, a - 36.0)), it["cartilage"])
        cv.paint(occ(pat), it["cortex"])
        cv.paint(occ(pat + 1.8), it["marrow"])
        for p0, p1, r in (((0, 42, 16), (0, 25, -30), 4.0), ((0, 36, 50), (0, 30, 120), 5.0),
                          ((38, -2, 28), (36, -2, -45), 2.0), ((-37, -6, 24), (-33, -15, -24), 2.0)):
            cv.paint(occ(_cap(p0, p1, r).sdf(q)), it["ligament"])
        # menisci: C-shaped wedges on each plateau, open towards the notch
        for mc, sign in ((19.0, 1.0), (-19.0, -1.0)):
            ac = -4.0
            r = np.hypot((m - mc) / 17.0, (a - ac) / 21.0)
            h = 7.5 * np.clip((r - 0.5) / 0.5, 0.0, 1.0)
            inner = (m - mc) * sign < 0
            sd = np.maximum.reduce([(r - 1.0) * 17.0, (0.5 - r) * 17.0, -0.5 - s, s - (-0.5 + h),
                                    np.where(inner, 7.0 - np.abs(a - ac), -1e3)])
            cv.paint(occ(sd), it["meniscus"])
            if sign > 0 and self.meniscus_tear:
                # oblique cleft through the posterior horn, reaching the tibial surface
                cleft = np.maximum.reduce([np.abs((s - 2.5) - 0.45 * (a - (ac - 15.0))) - 0.9, sd - 0.3,
                                           a - (ac - 6.0)])
                cv.paint(occ(cleft), it["fluid"])
        # cruciate ligaments
        acl = self.acl()
        if self.acl_tear:
            d = acl.p1 - acl.p0
            for t0, t1 in ((0.0, 0.3), (0.72, 1.0)):
                cv.paint(occ(_cap(acl.p0 + t0 * d, acl.p0 + t1 * d, 5.0).sdf(q)), it["ligament"] * 1.8)
            cv.paint(occ(_ell(acl.p0 + 0.51 * d, (7, 7, 8)).sdf(q)), it["fluid"])
        else:
            cv.paint(occ(acl.sdf(q)), it["ligament"])
        pcl = np.minimum(_cap((7, -4, 15), (4, -20, 7), 5.0).sdf(q), _cap((4, -20, 7), (1, -25, -12), 5.0).sdf(q))
        cv.paint(occ(pcl), it["ligament"])
        return cv


def sample_knee(rng: np.random.Generator, *, acl_tear: bool | None = None, meniscus_tear: bool | None = None,
                effusion: bool | None = None, side: str | None = None) -> KneeAnatomy:
    """A random knee; pathology drawn at MRNet-like rates unless given."""
    side = side or ("R" if rng.random() < 0.5 else "L")
    sgn = 1.0 if side == "R" else -1.0
    base = np.array([[sgn, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]])   # rows: m, a, s in LPS
    tilt = rotation(rng.normal(size=3), np.deg2rad(rng.uniform(0.0, 6.0)))
    basis = base @ tilt.T
    centre = np.array([-sgn * rng.uniform(80.0, 110.0), rng.uniform(-10.0, 10.0), rng.uniform(-20.0, 20.0)])
    acl_tear = bool(rng.random() < 0.25) if acl_tear is None else acl_tear
    meniscus_tear = bool(rng.random() < 0.35) if meniscus_tear is None else meniscus_tear
    effusion = bool(rng.random() < 0.2) if effusion is None else effusion
    jit = lambda x: float(x * rng.uniform(0.9, 1.1))   # noqa: E731
    intensities = {"fat": jit(0.95), "marrow": jit(0.78), "muscle": jit(0.33), "cartilage": jit(0.55),
                   "fluid": jit(0.72), "ligament": jit(0.08), "cortex": jit(0.05), "meniscus": jit(0.05),
                   "vessel": jit(0.5)}
    return KneeAnatomy(side=side, centre=centre, basis=basis, size=float(rng.uniform(0.9, 1.1)), acl_tear=acl_tear,
                       meniscus_tear=meniscus_tear, effusion=effusion, intensities=intensities,
                       noise=float(rng.uniform(0.015, 0.035)), waves=random_waves(rng, 10, (12.0, 50.0)))


def prescribe_knee_views(knee: KneeAnatomy, rng: np.random.Generator, matrix: int, n_slices: int
                         ) -> dict[str, Plane]:
    """Sagittal, coronal and axial stacks (batch Planes, in acquisition order) for ``knee``.

    Planned like at the scanner: sagittal along the femoral condyles, coronal parallel to the
    posterior condylar line, axial perpendicular to the shaft, each with a small random
    obliquity and its own field of view; the stack direction (sign of the normal) is random.
    """
    mx, ax, sx = knee.basis                      # LPS directions of m, a, s
    spec = {"sagittal": (mx, sx, 100.0), "coronal": (ax, sx, 90.0), "axial": (sx, -ax, 100.0)}
    centre_local = {"sagittal": (0.0, 0.0, 10.0), "coronal": (0.0, -2.0, 10.0), "axial": (0.0, 0.0, 8.0)}
    views: dict[str, Plane] = {}
    for name in KNEE_VIEWS:
        normal, up, extent = spec[name]
        normal = rotation(up, np.deg2rad(rng.uniform(-8.0, 8.0))) @ normal
        normal = rotation(np.cross(normal, up), np.deg2rad(rng.uniform(-3.0, 3.0))) @ normal
        if rng.random() < 0.5:
            normal = -normal
        fov = float(rng.uniform(140.0, 160.0))
        spacing = fov / matrix
        centre = knee.to_world(centre_local[name]) + rng.uniform(-4.0, 4.0, size=3)
        gap = extent * knee.size / max(n_slices - 1, 1)
        angle = np.deg2rad(rng.uniform(-3.0, 3.0))
        steps = (np.arange(n_slices) - 0.5 * (n_slices - 1)) * gap
        # anterior at the top of axial images, superior at the top of the others
        up_world = knee.basis[1] if name == "axial" else np.array([0.0, 0.0, 1.0])
        views[name] = Plane.stack([make_plane(centre + t * normal, normal, up_world, angle, spacing,
                                              (matrix, matrix)) for t in steps])
    return views


def render_knee_slice(knee: KneeAnatomy, plane: Plane, thickness: float, rng: np.random.Generator,
                      scale: float = 2000.0, samples: int | None = None) -> np.ndarray:
    """12-bit pixels (rows, cols) of one slice: ``samples`` sub-planes across ``thickness``
    averaged (partial volume of a thick slice), then coil shading and Rician noise.

    By default one sub-plane per ~2 mm of thickness (1 to 3): thin slices need no averaging,
    and the rendering cost is proportional to the number of sub-planes.
    """
    if samples is None:
        samples = int(np.clip(np.ceil(thickness / 2.0), 1, 3))
    pts = as_points(plane_points(plane))
    acc = np.zeros(pts.shape)
    offsets = (np.arange(samples) - 0.5 * (samples - 1)) * (thickness / max(samples, 1))
    for off in offsets:
        acc += knee.render(pts.shifted(off * plane.normal)).image
    img = acc / len(offsets)
    coil = knee.centre + 60.0 * knee.basis[1]
    bias = bias_field(pts, coil[None], np.array([120.0]), np.array([0.5]))
    img = img * bias * texture(pts, *knee.waves, amplitude=0.03)
    return to_12bit(rician(img, knee.noise, rng), scale)


def with_pathology(knee: KneeAnatomy, **changes: bool) -> KneeAnatomy:
    """The same knee with other labels (for tests and figures)."""
    return dataclasses.replace(knee, **changes)
