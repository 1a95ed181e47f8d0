"""Pseudo-acquisitions: prescribed view series cut out of 3D volumes, written as real files.

A *volume cohort* YAML lists 3D volumes (NIfTI), where each one's landmarks come from, its
optional tissue/label maps, and its role; a ``prescription`` block (``sources.prescription``)
says which views to cut.  Each volume is acquired ``poses`` times, as a scanner would: the
patient lies in a seeded random pose (rigid rotation and shift of the head/heart in scanner
space), the operator prescribes the views from the landmarks *as they now lie*, with a small
error (each view tilted and shifted a little, :class:`PoseSpec`), and the planes are sampled
out of the volume (``sources.reslice``).  The scanner-space geometry is written exactly
(ImagePositionPatient, ImageOrientationPatient, PixelSpacing) as DICOM series in the
``<subject>/study/<view>_<n>/`` layout (``sources.viewdirs`` reads it), so the sharder, its
targets and checks and ``anatplane inspect`` apply unchanged.  Labelled volumes are also
written as NIfTI stacks with ``_gt`` label stacks in the ACDC layout for fine-tuning.

Subjects: all poses of one volume are one *brain* (or heart).  A pose is written as subject
``<name>-p<NN>``; :func:`brain_of` maps it back, and callers must split by brain, never by
pose (a pose of a test brain in pretraining would leak the test anatomy).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import nibabel as nib
import numpy as np
import yaml

from anatplane_dist.core.atomic import atomic_path, atomic_write_text
from anatplane_dist.core.geometry import RAS_TO_LPS, Plane
from anatplane_dist.core.mapping import read_yaml_mapping
from anatplane_dist.sources.dicom_write import SeriesInfo, deterministic_uid, write_mr_image
from anatplane_dist.sources.nifti import open_nifti
from anatplane_dist.sources.phantom.render import rotation
from anatplane_dist.sources.prescription import (
    PrescriptionError,
    ViewPrescription,
    landmarks_from_file,
    landmarks_from_labels,
    prescribe,
)
from anatplane_dist.sources.reslice import reslice

__all__ = ["PoseSpec", "VolumeEntry", "VolumeCohort", "load_cohort", "Pose", "draw_pose", "acquire",
           "write_dicom_study", "write_labelled_stack", "brain_of", "anatomy_dirs", "ROLES", "build_cohort",
           "label_volume", "load_volume", "nifti_affine"]

ROLES = ("pretrain", "heldout", "labelled")
_POSE_RE = re.compile(r"^(?P<brain>.+)-p(?P<pose>\d+)$")


def anatomy_dirs() -> list[Path]:
    """Where ``anatomy:<file>`` paths are looked up: ``$ANATPLANE_ANATOMY_DIR``, then the
    repository's ``.cache/anatomy`` (what ``make anatomy`` fills)."""
    out = [Path(p) for p in os.environ.get("ANATPLANE_ANATOMY_DIR", "").split(os.pathsep) if p]
    out.append(Path(__file__).resolve().parents[2] / ".cache" / "anatomy")
    return out


def _resolve(path: str, base: Path) -> Path:
    if path.startswith("anatomy:"):
        name = path.split(":", 1)[1]
        for d in anatomy_dirs():
            if (d / name).is_file():
                return d / name
        raise PrescriptionError(f"{name}: not found in {[str(d) for d in anatomy_dirs()]} (run `make anatomy`)")
    p = Path(os.path.expandvars(path))
    return p if p.is_absolute() else base / p


@dataclass(frozen=True)
class PoseSpec:
    """Random patient pose (``rotate_deg`` about a random axis through the landmarks' centre,
    ``shift_mm`` per axis) and operator error per view (``jitter_deg`` tilt, ``jitter_mm``
    shift along the normal).  ``inplane_deg`` rotates each view's image axes about its normal
    by up to that much (0: the prescription's convention, e.g. anterior at the top of axial
    brain images, as scanners display them; 180: any in-plane orientation, as the cardiac
    phantom writes its views)."""
    rotate_deg: float = 12.0
    shift_mm: float = 10.0
    jitter_deg: float = 3.0
    jitter_mm: float = 2.0
    inplane_deg: float = 0.0


@dataclass(frozen=True)
class VolumeEntry:
    """One volume of a cohort (paths resolved)."""
    subject: str
    image: Path
    roles: tuple[str, ...]
    landmarks: dict[str, np.ndarray]
    labels: Path | None = None               # label map on the image grid
    label_map: dict[int, int] = field(default_factory=dict)   # source value -> class
    tissue: dict[int, Path] = field(default_factory=dict)     # class -> probability map (argmax > 0.5)
    rest_class: int | None = None            # class for voxels inside the image's non-zero mask and no tissue
    prescription: ViewPrescription | None = None              # per-volume override
    mask: Path | None = None                 # label map on the image grid: voxels outside ``mask_values`` -> 0
    mask_values: tuple[int, ...] = ()


@dataclass(frozen=True)
class VolumeCohort:
    name: str
    prescription: ViewPrescription
    pose: PoseSpec
    volumes: tuple[VolumeEntry, ...]
    profile: dict[str, Any]                  # the sharder profile (``shards.profiles.Profile`` fields)
    poses: dict[str, int]                    # poses per role
    seed: int = 0

    def with_role(self, role: str) -> list[VolumeEntry]:
        return [v for v in self.volumes if role in v.roles]


def load_cohort(path: str | Path) -> VolumeCohort:
    """Read a volume cohort YAML (every problem a one-line ``PrescriptionError``)."""
    path = Path(path)
    raw = read_yaml_mapping(path, "volume cohort", PrescriptionError)
    allowed = {"name", "prescription", "pose", "volumes", "profile", "poses", "seed", "base"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise PrescriptionError(f"volume cohort {path}: unknown key(s) {unknown}; known: {sorted(allowed)}")
    base = path.parent
    if "base" in raw:                   # a variant: another cohort file with some keys replaced
        parent = _resolve(str(raw.pop("base")), base)
        try:
            merged = yaml.safe_load(parent.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise PrescriptionError(f"volume cohort {path}: base {parent}: cannot read ({exc})") from exc
        merged.update(raw)
        raw, base = merged, parent.parent
    rx = ViewPrescription.from_dict(raw.get("prescription") or {})
    pose_raw = raw.get("pose") or {}
    bad = sorted(set(pose_raw) - {f.name for f in fields(PoseSpec)})
    if bad:
        raise PrescriptionError(f"volume cohort {path}: pose: unknown key(s) {bad}")
    volumes = tuple(_entry(v, base, i) for i, v in enumerate(raw.get("volumes") or []))
    if not volumes:
        raise PrescriptionError(f"volume cohort {path}: no volumes listed")
    poses = {r: 1 for r in ROLES}
    poses.update({str(k): int(v) for k, v in (raw.get("poses") or {}).items()})
    profile = dict(raw.get("profile") or {})
    profile.setdefault("name", str(raw.get("name") or path.stem))
    profile.setdefault("reader", "viewdirs")
    profile.setdefault("input_view", rx.stack_view)
    profile.setdefault("references", list(rx.reference_views))
    return VolumeCohort(name=str(raw.get("name") or path.stem), prescription=rx, pose=PoseSpec(**pose_raw),
                        volumes=volumes, profile=profile, poses=poses, seed=int(raw.get("seed", 0)))


def _entry(v: Any, base: Path, i: int) -> VolumeEntry:
    where = f"volumes[{i}]"
    if not isinstance(v, dict) or "subject" not in v or "image" not in v:
        raise PrescriptionError(f"{where}: needs subject and image")
    subject = str(v["subject"])
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.]*$", subject):
        raise PrescriptionError(f"{where}: subject {subject!r}: letters, digits, _ and . only")
    roles = v.get("role", "pretrain")
    roles = (roles,) if isinstance(roles, str) else tuple(roles)
    if not roles or set(roles) - set(ROLES):
        raise PrescriptionError(f"{where}: role must be among {ROLES}, got {roles}")
    image = _resolve(str(v["image"]), base)
    if not image.is_file():
        raise PrescriptionError(f"{where}: image {image} not found")
    labels = _resolve(str(v["labels"]["file"]), base) if v.get("labels") else None
    label_map = {int(a): int(b) for a, b in ((v.get("labels") or {}).get("map") or {}).items()}
    tissue = {int(c): _resolve(str(p), base) for c, p in (v.get("tissue") or {}).items()}
    lm_spec = v.get("landmarks") or {}
    landmarks: dict[str, np.ndarray] = {}
    if "file" in lm_spec:
        landmarks.update(landmarks_from_file(_resolve(str(lm_spec["file"]), base)))
    if "labels" in lm_spec:
        img = open_nifti(_resolve(str(lm_spec["labels"]), base))
        landmarks.update(landmarks_from_labels(np.asarray(img.dataobj), img.affine, lm_spec.get("named") or {}))
    rx = ViewPrescription.from_dict(v["prescription"]) if v.get("prescription") else None
    mask_spec = v.get("mask") or {}
    if mask_spec and not ("file" in mask_spec and mask_spec.get("values")):
        raise PrescriptionError(f"{where}: mask needs file and values (the label values kept)")
    mask = _resolve(str(mask_spec["file"]), base) if mask_spec else None
    return VolumeEntry(subject=subject, image=image, roles=roles, landmarks=landmarks, labels=labels,
                       label_map=label_map, tissue=tissue, rest_class=v.get("rest_class"), prescription=rx,
                       mask=mask, mask_values=tuple(int(x) for x in mask_spec.get("values", ())))


def brain_of(subject: str) -> str:
    """The volume a pose subject ``<name>-p<NN>`` was cut from (the subject itself otherwise)."""
    m = _POSE_RE.match(subject)
    return m.group("brain") if m else subject


# -- poses -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pose:
    """Rigid map volume -> scanner space: ``y = R (x - c) + c + t`` (LPS mm)."""
    rotation: np.ndarray
    centre: np.ndarray
    shift: np.ndarray

    def to_scanner(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x) - self.centre) @ self.rotation.T + self.centre + self.shift

    def plane_to_volume(self, p: Plane) -> Plane:
        """The same plane expressed in volume space (what to sample)."""
        rinv = self.rotation.T
        origin = (p.origin - self.centre - self.shift) @ rinv.T + self.centre
        return Plane(origin, p.row_dir @ rinv.T, p.col_dir @ rinv.T, p.spacing, p.shape)


def _random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    axis = rng.normal(size=3)
    return rotation(axis / np.linalg.norm(axis), np.deg2rad(rng.uniform(0.0, max_deg)))


def draw_pose(rng: np.random.Generator, centre: np.ndarray, spec: PoseSpec) -> Pose:
    return Pose(_random_rotation(rng, spec.rotate_deg), np.asarray(centre, float),
                rng.uniform(-spec.shift_mm, spec.shift_mm, size=3))


def _jitter(p: Plane, rng: np.random.Generator, spec: PoseSpec) -> Plane:
    """One view (or a whole stack, as a unit) tilted about its centre and shifted along its normal."""
    r = _random_rotation(rng, spec.jitter_deg)
    centre = p.center.reshape(-1, 3).mean(axis=0)
    n = p.normal.reshape(-1, 3)[0]
    if spec.inplane_deg > 0:            # image axes turned about the normal (geometry unchanged)
        r = r @ rotation(n, np.deg2rad(rng.uniform(-spec.inplane_deg, spec.inplane_deg)))
    shift = rng.uniform(-spec.jitter_mm, spec.jitter_mm) * n
    return Plane((p.origin - centre) @ r.T + centre + shift, p.row_dir @ r.T, p.col_dir @ r.T, p.spacing, p.shape)


def acquire(entry: VolumeEntry, rx: ViewPrescription, pose: Pose, rng: np.random.Generator,
            spec: PoseSpec) -> dict[str, tuple[Plane, Plane]]:
    """``view -> (scanner-space planes, the same planes in volume space)`` for one pose."""
    rx = entry.prescription or rx
    scanner_lm = {k: pose.to_scanner(v) for k, v in entry.landmarks.items()}
    if rx.kind == "generic":
        rx = _generic_in_scanner(rx, entry.landmarks, pose)
    planes = prescribe(rx, scanner_lm)
    out = {}
    for view, p in planes.items():
        pj = _jitter(p, rng, spec)
        out[view] = (pj, pose.plane_to_volume(pj))
    return out


def _generic_in_scanner(rx: ViewPrescription, lm: Mapping[str, np.ndarray], pose: Pose) -> ViewPrescription:
    """A generic prescription given in volume space (points may name landmarks), moved with the pose."""
    def pt(v: Any) -> list[float]:
        p = lm[v] if isinstance(v, str) else np.asarray(v, float)
        if isinstance(v, str) and v not in lm:
            raise PrescriptionError(f"generic prescription: landmark {v!r} missing")
        return pose.to_scanner(p).tolist()

    def vec(v: Any) -> list[float]:
        return (np.asarray(v, float) @ pose.rotation.T).tolist()

    refs = {}
    for name, ref in rx.references.items():
        if "points" in ref:
            refs[name] = {"points": [pt(p) for p in ref["points"]]}
        else:
            refs[name] = {"point": pt(ref["point"]), "normal": vec(ref["normal"])}
    return dataclasses.replace(rx, stack_normal=tuple(vec(rx.stack_normal)), stack_center=tuple(pt(rx.stack_center)),
                               references=refs)


def _landmark_centre(entry: VolumeEntry, img: nib.Nifti1Image) -> np.ndarray:
    if entry.landmarks:
        return np.mean(list(entry.landmarks.values()), axis=0)
    shape = np.asarray(img.shape[:3], float)
    ras = img.affine[:3, :3] @ ((shape - 1) / 2.0) + img.affine[:3, 3]
    return ras * np.array([-1.0, -1.0, 1.0])


# -- writing ---------------------------------------------------------------------------------

def write_dicom_study(out: Path, entry: VolumeEntry, rx: ViewPrescription, spec: PoseSpec, pose_index: int,
                      seed: int, data: np.ndarray, affine: np.ndarray) -> dict[str, Any]:
    """One pseudo-acquisition of ``entry`` as ``<out>/<subject>-pNN/study/<view>_<n>/*.dcm``;
    returns its record (pose, planes) for the ground truth file."""
    subject = f"{entry.subject}-p{pose_index:02d}"
    rng = np.random.default_rng([seed, _stable(entry.subject), pose_index])
    img = nib.Nifti1Image(data, affine)
    pose = draw_pose(rng, _landmark_centre(entry, img), spec)
    views = acquire(entry, rx, pose, rng, spec)
    top = float(np.percentile(data, 99.9)) or 1.0
    scale = 3000.0 / top * float(rng.uniform(0.7, 1.0))        # 12-bit range, scanner units differ
    study_uid = deterministic_uid("volumes", seed, subject, "study")
    for_uid = deterministic_uid("volumes", seed, subject, "frame-of-reference")
    record = {"subject": subject, "brain": entry.subject, "scale": scale, "pose": {"rotation": pose.rotation.tolist(),
              "centre": pose.centre.tolist(), "shift": pose.shift.tolist()}, "series": []}
    subject_dir = out / subject
    for number, (view, (scanner, volume)) in enumerate(views.items(), start=3):
        pixels = reslice(data, affine, volume, order=1) * scale
        series_uid = deterministic_uid("volumes", seed, subject, "series", number)
        stack = scanner if scanner.batch_shape else Plane.stack([scanner])
        pix = pixels if scanner.batch_shape else pixels[None]
        thickness = float(np.linalg.norm(stack.origin[1] - stack.origin[0])) if len(stack) > 1 else 3.0
        info = SeriesInfo(patient_id=entry.subject, study_uid=study_uid, series_uid=series_uid,
                          frame_of_reference_uid=for_uid, series_number=number, series_description=view,
                          slice_thickness=thickness, body_part="BRAIN" if rx.kind == "brain" else "HEART")
        for k in range(len(stack)):
            write_mr_image(subject_dir / "study" / f"{view}_{number}" / f"IM-{number:04d}-{k + 1:04d}.dcm",
                           pix[k], stack[k], info, instance_number=k + 1)
        record["series"].append({"folder": f"{view}_{number}", "view": view, "planes": stack.to_dict()})
    return record


def _stable(text: str) -> int:
    """A seed part fixed by ``text`` (not Python's salted ``hash``)."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def label_volume(entry: VolumeEntry, data: np.ndarray) -> np.ndarray | None:
    """The class map of a labelled volume on its image grid (uint8), or None."""
    if entry.labels is not None:
        src = np.asarray(open_nifti(entry.labels).dataobj)
        out = np.zeros(src.shape, np.uint8)
        for a, b in entry.label_map.items():
            out[src == a] = b
        return out
    if entry.tissue:
        probs = {c: np.asarray(open_nifti(p).dataobj, dtype=np.float32) for c, p in entry.tissue.items()}
        top = max(float(v.max()) for v in probs.values()) or 1.0
        classes = sorted(probs)
        stacked = np.stack([probs[c] / top for c in classes])
        best = np.argmax(stacked, axis=0)
        out = np.where(stacked.max(axis=0) > 0.5, np.asarray(classes, np.uint8)[best], 0).astype(np.uint8)
        if entry.rest_class is not None:
            out[(out == 0) & (data > 0)] = int(entry.rest_class)
        return out
    return None


def write_labelled_stack(out: Path, entry: VolumeEntry, rx: ViewPrescription, spec: PoseSpec, pose_index: int,
                         seed: int, data: np.ndarray, affine: np.ndarray, labels: np.ndarray) -> None:
    """Pose ``pose_index`` of ``entry``'s stack view as ``<out>/<subject>/<subject>_frameNN.nii.gz``
    and its ``_gt`` (nearest-neighbour labels): the ACDC layout ``finetune.data.load_acdc`` reads,
    one subject per volume, one frame per pose."""
    rng = np.random.default_rng([seed, _stable(entry.subject), 50_000 + pose_index])
    img = nib.Nifti1Image(data, affine)
    pose = draw_pose(rng, _landmark_centre(entry, img), spec)
    views = acquire(entry, rx, pose, rng, spec)
    stack_view = (entry.prescription or rx).stack_view
    scanner, volume = views[stack_view]
    pixels = reslice(data, affine, volume, order=1)                 # (S, rows, cols)
    lab = reslice(labels.astype(np.float32), affine, volume, order=0)
    # voxel (row i, col j, slice k) -> LPS: origin_0 + j dcol r + i drow c + k gap n
    ras = nifti_affine(scanner)
    subject_dir = out / entry.subject
    subject_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{entry.subject}_frame{pose_index + 1:02d}"
    for name, arr, dtype in ((f"{stem}.nii.gz", pixels, np.float32), (f"{stem}_gt.nii.gz", lab, np.uint8)):
        nii = nib.Nifti1Image(np.moveaxis(np.rint(arr) if dtype is np.uint8 else arr, 0, 2).astype(dtype), ras)
        nii.set_qform(ras, code=1)
        nii.set_sform(ras, code=1)
        with atomic_path(subject_dir / name) as tmp:
            nib.save(nii, str(tmp))
    atomic_write_text(subject_dir / "Info.cfg", f"Group: {entry.subject}\nNbFrame: {pose_index + 1}\n")


def nifti_affine(stack: Plane, thickness_mm: float = 1.0) -> np.ndarray:
    """The voxel -> RAS affine of a stack of parallel planes stored as ``data[row, col, slice]``
    (``geometry.plane_from_nifti``'s convention, axis 2); one plane gets ``thickness_mm``."""
    s = stack if stack.batch_shape else Plane.stack([stack])
    a = np.eye(4)
    a[:3, 0] = s.col_dir[0] * s.spacing[0, 0]
    a[:3, 1] = s.row_dir[0] * s.spacing[0, 1]
    a[:3, 2] = s.origin[1] - s.origin[0] if len(s) > 1 else s.normal[0] * thickness_mm
    a[:3, 3] = s.origin[0]
    return RAS_TO_LPS @ a


def load_volume(entry: VolumeEntry) -> tuple[np.ndarray, np.ndarray]:
    """The image (float32, 3D) and its affine; with a ``mask``, voxels outside the kept label
    values are zero (e.g. brain extraction, so every brain of a cohort looks alike)."""
    img = open_nifti(entry.image)
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise PrescriptionError(f"{entry.image}: expected a 3D volume, got shape {data.shape}")
    if entry.mask is not None:
        m = open_nifti(entry.mask)
        if tuple(m.shape[:3]) != data.shape or not np.allclose(m.affine, img.affine, atol=1e-3):
            raise PrescriptionError(f"{entry.mask}: mask grid differs from the image {entry.image}")
        data = np.where(np.isin(np.asarray(m.dataobj), entry.mask_values), data, 0.0).astype(np.float32)
    return data, np.asarray(img.affine, dtype=np.float64)


def build_cohort(cohort: VolumeCohort, out: str | Path, log: Any = print) -> dict[str, Path]:
    """Write every role of ``cohort`` under ``out`` (each part once: a ``.complete`` marker):

    * ``pretrain/``: ``poses['pretrain']`` DICOM pseudo-acquisitions of each pretraining volume;
    * ``heldout/``: ``poses['heldout']`` of each held-out volume (pretext error on unseen anatomy);
    * ``labelled/``: ``poses['labelled']`` NIfTI stacks + ``_gt`` of each labelled volume (ACDC
      layout, one subject per volume).
    Returns the folders written and ``profile.yaml`` (the sharder profile).
    """
    out = Path(out)
    paths = {"pretrain": out / "pretrain", "heldout": out / "heldout", "labelled": out / "labelled",
             "profile": out / "profile.yaml"}
    atomic_write_text(paths["profile"], yaml.safe_dump(cohort.profile, sort_keys=True))
    for role in ROLES:
        target = paths[role]
        if (target / ".complete").exists():
            continue
        entries = cohort.with_role(role)
        n = cohort.poses.get(role, 1)
        log(f"volumes: {role}: {len(entries)} volume(s) x {n} pose(s) -> {target}")
        records = []
        for entry in entries:
            data, affine = load_volume(entry)
            labels = label_volume(entry, data) if role == "labelled" else None
            if role == "labelled" and labels is None:
                raise PrescriptionError(f"{entry.subject}: labelled role needs labels or tissue maps")
            for k in range(n):
                if role == "labelled":
                    write_labelled_stack(target, entry, cohort.prescription, cohort.pose, k, cohort.seed,
                                         data, affine, labels)
                else:
                    records.append(write_dicom_study(target, entry, cohort.prescription, cohort.pose, k,
                                                     cohort.seed, data, affine))
        target.mkdir(parents=True, exist_ok=True)
        if records:
            atomic_write_text(target / "volumes.json", json.dumps({"cohort": cohort.name, "studies": records}) + "\n")
        atomic_write_text(target / ".complete", "ok\n")
    return paths
