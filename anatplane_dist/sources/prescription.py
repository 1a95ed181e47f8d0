"""Prescribe anatomy-oriented views from landmarks of a 3D volume, as a scanner operator does.

A prescription turns a few landmarks (LPS mm) into exact plane geometry:

* ``heart``: apex, mitral-valve centre (``mitral``), two RV insertion points (``rv_ant``,
  ``rv_inf``) -> a SAX stack perpendicular to the long axis (mitral -> apex) from base to apex,
  a 4CH plane holding the long axis and the RV (the midpoint of the insertions), and a 2CH
  plane holding the long axis, parallel to the septum (the insertion-to-insertion line).
* ``brain``: AC, PC and a mid-sagittal point (``midsag``) -> an axial stack parallel to the
  AC-PC line and perpendicular to the mid-sagittal plane, the mid-sagittal plane (through AC,
  PC and ``midsag``) and a coronal plane perpendicular to AC-PC through the AC.
* ``generic``: a stack normal and centre, and reference planes each given by three points or
  by a point and a normal.

Landmarks come from a per-subject YAML/JSON file (:func:`landmarks_from_file`) or from a label
map as centroids of named labels (:func:`landmarks_from_labels`), so nothing is clicked by hand.
What a prescription holds is declared in a profile YAML (:class:`ViewPrescription`); the
geometry is built by :func:`prescribe`.  Views are named by the profile (``sax``/``2ch``/``4ch``,
``axial``/``sagittal``/``coronal``, or anything for ``generic``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from anatplane_dist.core.errors import AnatplaneError
from anatplane_dist.core.geometry import RAS_TO_LPS, GeometryError, Plane
from anatplane_dist.sources.reslice import plane_through

__all__ = ["PrescriptionError", "ViewPrescription", "prescribe", "landmarks_from_file",
           "landmarks_from_labels", "LANDMARKS", "KINDS"]

KINDS = ("heart", "brain", "generic")
#: landmarks each kind needs (generic takes its geometry from the prescription itself)
LANDMARKS = {"heart": ("apex", "mitral", "rv_ant", "rv_inf"), "brain": ("ac", "pc", "midsag"), "generic": ()}


class PrescriptionError(AnatplaneError, GeometryError):
    """Landmarks, a prescription or a volume cohort that define no valid planes (one line: the
    message says which)."""


@dataclass(frozen=True)
class ViewPrescription:
    """How to cut views out of a volume (the ``prescription`` block of a volume profile YAML).

    Attributes:
        kind: ``heart``, ``brain`` or ``generic``.
        stack_view / reference_views: view names (stack first; references in channel order).
        n_slices: slices of the stack; ``stack_range_mm``: (first, last) stack position relative
            to the anatomical origin of the kind (heart: from the mitral centre towards the apex;
            when None the stack spans mitral -> apex; brain: along the axial normal (superior
            positive) from the AC-PC plane; generic: along ``stack_normal`` from ``stack_center``).
        matrix, spacing_mm: image size (pixels, square) and in-plane pixel spacing.
        stack_normal, stack_center, references: generic only (LPS); ``references`` maps a view
            name to ``{points: [p1, p2, p3]}`` or ``{point: p, normal: n}``; a point may be the
            name of a landmark.
    """

    kind: str
    stack_view: str = ""
    reference_views: tuple[str, ...] = ()
    n_slices: int = 10
    stack_range_mm: tuple[float, float] | None = None
    matrix: int = 128
    spacing_mm: float = 1.5
    stack_normal: tuple[float, float, float] | None = None
    stack_center: tuple[float, float, float] | str | None = None
    references: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise PrescriptionError(f"prescription.kind must be one of {KINDS}, got {self.kind!r}")
        defaults = {"heart": ("sax", ("2ch", "4ch")), "brain": ("axial", ("sagittal", "coronal"))}
        if self.kind in defaults:
            stack, refs = defaults[self.kind]
            object.__setattr__(self, "stack_view", self.stack_view or stack)
            object.__setattr__(self, "reference_views", tuple(self.reference_views) or refs)
        else:
            if self.stack_normal is None or self.stack_center is None or len(self.references) < 1:
                raise PrescriptionError("generic prescription: needs stack_normal, stack_center and references")
            object.__setattr__(self, "stack_view", self.stack_view or "stack")
            object.__setattr__(self, "reference_views", tuple(self.references))
        if self.n_slices < 2 or self.matrix < 8 or not self.spacing_mm > 0:
            raise PrescriptionError("prescription: n_slices >= 2, matrix >= 8, spacing_mm > 0")
        if self.stack_range_mm is not None:
            object.__setattr__(self, "stack_range_mm", tuple(float(v) for v in self.stack_range_mm))

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "ViewPrescription":
        known = {f.name for f in fields(ViewPrescription)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise PrescriptionError(f"prescription: unknown key(s) {unknown}; known: {sorted(known)}")
        d = dict(d)
        if "reference_views" in d:
            d["reference_views"] = tuple(d["reference_views"])
        return ViewPrescription(**d)


def _unit(v: np.ndarray, what: str) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    n = float(np.linalg.norm(v))
    if not np.isfinite(n) or n < 1e-6:
        raise PrescriptionError(f"{what}: degenerate direction (landmarks coincide or are collinear)")
    return v / n


def _point(landmarks: Mapping[str, Any], name: str) -> np.ndarray:
    if name not in landmarks:
        raise PrescriptionError(f"landmark {name!r} missing (have: {sorted(landmarks)})")
    p = np.asarray(landmarks[name], dtype=np.float64)
    if p.shape != (3,) or not np.all(np.isfinite(p)):
        raise PrescriptionError(f"landmark {name!r}: expected three finite coordinates, got {landmarks[name]!r}")
    return p


def _plane(center: np.ndarray, normal: np.ndarray, up: np.ndarray, rx: ViewPrescription) -> Plane:
    """A square plane centred on ``center`` with unit ``normal``; ``up`` (projected) points to
    the top of the image, so rows run against it."""
    up = up - (up @ normal) * normal
    col = -_unit(up, "in-plane up direction")
    row = np.cross(col, normal)                       # row x col == normal
    return plane_through(center, row, col, rx.spacing_mm, rx.matrix)


def _stack(center0: np.ndarray, normal: np.ndarray, up: np.ndarray, positions: np.ndarray,
           rx: ViewPrescription) -> Plane:
    return Plane.stack([_plane(center0 + t * normal, normal, up, rx) for t in positions])


def prescribe(rx: ViewPrescription, landmarks: Mapping[str, Any] | None = None) -> dict[str, Plane]:
    """Planes of every view: ``{stack_view: batched Plane (n_slices,), ref: Plane, ...}``.

    Stack slices are ordered along the stack normal (heart: base -> apex; brain: inferior ->
    superior; generic: along ``stack_normal``).
    """
    lm = dict(landmarks or {})
    if rx.kind == "heart":
        return _heart(rx, lm)
    if rx.kind == "brain":
        return _brain(rx, lm)
    return _generic(rx, lm)


def _heart(rx: ViewPrescription, lm: dict[str, Any]) -> dict[str, Plane]:
    apex, mitral = _point(lm, "apex"), _point(lm, "mitral")
    rv_ant, rv_inf = _point(lm, "rv_ant"), _point(lm, "rv_inf")
    u = _unit(apex - mitral, "long axis (mitral -> apex)")
    length = float(np.linalg.norm(apex - mitral))
    septum = rv_inf - rv_ant
    septum = _unit(septum - (septum @ u) * u, "septum (RV insertion line) projected off the long axis")
    rv = 0.5 * (rv_ant + rv_inf) - mitral
    rv = _unit(rv - (rv @ u) * u, "RV direction (insertion midpoint) projected off the long axis")
    lo, hi = rx.stack_range_mm if rx.stack_range_mm is not None else (0.0, length)
    positions = np.linspace(lo, hi, rx.n_slices)
    up = np.array([0.0, -1.0, 0.0])                    # anterior at the top of SAX images
    if abs(up @ u) > 0.95:
        up = np.array([0.0, 0.0, 1.0])
    centre = 0.5 * (mitral + apex)
    sax, ch2, ch4 = rx.stack_view, *rx.reference_views[:2]
    return {sax: _stack(mitral, u, up, positions, rx),
            ch4: _plane(centre, _unit(np.cross(u, rv), "4CH normal"), -u, rx),
            ch2: _plane(centre, _unit(np.cross(u, septum), "2CH normal"), -u, rx)}


def _brain(rx: ViewPrescription, lm: dict[str, Any]) -> dict[str, Plane]:
    ac, pc, ms = _point(lm, "ac"), _point(lm, "pc"), _point(lm, "midsag")
    a = _unit(pc - ac, "AC -> PC line")                # posterior
    lr = _unit(np.cross(a, ms - ac), "mid-sagittal plane (midsag point on the AC-PC line?)")
    sup = np.cross(lr, a)                              # in the mid-sagittal plane, perpendicular to AC-PC
    if sup @ (ms - ac) < 0:                            # the mid-sagittal point lies superior of AC-PC
        sup, lr = -sup, -lr
    lo, hi = rx.stack_range_mm if rx.stack_range_mm is not None else (-40.0, 60.0)
    positions = np.linspace(lo, hi, rx.n_slices)
    mid = 0.5 * (ac + pc)
    axial, sagittal, coronal = rx.stack_view, *rx.reference_views[:2]
    return {axial: _stack(mid, sup, -a, positions, rx),          # anterior at the top
            sagittal: _plane(mid + 20.0 * sup, lr, sup, rx),       # superior at the top
            coronal: _plane(ac + 20.0 * sup, a, sup, rx)}


def _generic(rx: ViewPrescription, lm: dict[str, Any]) -> dict[str, Plane]:
    def at(v: Any) -> np.ndarray:          # a point, or the name of a landmark
        return _point(lm, v) if isinstance(v, str) else np.asarray(v, dtype=np.float64)

    n = _unit(np.asarray(rx.stack_normal, dtype=np.float64), "stack_normal")
    c = at(rx.stack_center)
    lo, hi = rx.stack_range_mm if rx.stack_range_mm is not None else (-(rx.n_slices - 1) * 2.5, (rx.n_slices - 1) * 2.5)
    helper = np.array([0.0, 0.0, 1.0]) if abs(n[2]) < 0.9 else np.array([0.0, -1.0, 0.0])
    out = {rx.stack_view: _stack(c, n, helper, np.linspace(lo, hi, rx.n_slices), rx)}
    for name, ref in rx.references.items():
        if "points" in ref:
            p = np.stack([at(q) for q in ref["points"]]) if len(ref["points"]) == 3 else np.zeros((0, 3))
            if p.shape != (3, 3):
                raise PrescriptionError(f"reference {name}: points must be three 3D points")
            normal = _unit(np.cross(p[1] - p[0], p[2] - p[0]), f"reference {name} (collinear points)")
            centre = p.mean(axis=0)
        elif "point" in ref and "normal" in ref:
            normal = _unit(np.asarray(ref["normal"], dtype=np.float64), f"reference {name} normal")
            centre = at(ref["point"])
        else:
            raise PrescriptionError(f"reference {name}: give points: [p1, p2, p3] or point + normal")
        # the reference's image centre: the point of the plane nearest to the stack centre
        centre = c - ((c - centre) @ normal) * normal
        up = n if abs(n @ normal) < 0.9 else helper
        out[name] = _plane(centre, normal, up, rx)
    return out


# -- where landmarks come from -------------------------------------------------------------------

def landmarks_from_file(path: str | Path) -> dict[str, np.ndarray]:
    """Landmarks from a YAML or JSON mapping ``name: [x, y, z]``, in LPS mm unless the file
    says ``space: RAS`` (NIfTI/MNI coordinates), converted here once."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) if path.suffix.lower() in (".yaml", ".yml") else json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PrescriptionError(f"landmarks {path}: cannot read ({exc})") from exc
    if not isinstance(raw, dict):
        raise PrescriptionError(f"landmarks {path}: expected a mapping name: [x, y, z]")
    space = str(raw.pop("space", "LPS")).upper()
    if space not in ("LPS", "RAS"):
        raise PrescriptionError(f"landmarks {path}: space must be LPS or RAS, got {space}")
    out = {}
    for k, v in raw.items():
        p = _point(raw, k)
        out[str(k)] = p * np.diag(RAS_TO_LPS)[:3] if space == "RAS" else p
    return out


def landmarks_from_labels(labels: np.ndarray, affine_ras: np.ndarray,
                          named: Mapping[str, int | Sequence[int]]) -> dict[str, np.ndarray]:
    """LPS centroids of named labels of a label volume (``name: value`` or a list of values,
    whose union is taken): landmarks without hand clicking."""
    labels = np.asarray(labels)
    aff = np.asarray(affine_ras, dtype=np.float64)
    out = {}
    for name, values in named.items():
        vals = [int(values)] if np.isscalar(values) else [int(v) for v in values]
        idx = np.argwhere(np.isin(labels, vals))
        if idx.size == 0:
            raise PrescriptionError(f"landmark {name!r}: label value(s) {vals} absent from the label map")
        centroid = idx.mean(axis=0)
        ras = aff[:3, :3] @ centroid + aff[:3, 3]
        out[str(name)] = ras * np.diag(RAS_TO_LPS)[:3]
    return out

