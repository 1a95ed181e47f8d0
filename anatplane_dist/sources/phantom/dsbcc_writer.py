"""Write the cardiac cine phantom as DICOM in the Kaggle DSBCC layout.

``<out>/<subject>/study/{sax_<n>, 2ch_<n>, 4ch_<n>}/IM-<series>-<frame>.dcm``: one folder per
cine series, one shared FrameOfReferenceUID per study, deterministic UIDs, a TriggerTime per
frame.  With ``mess`` the subjects cycle through the known DSBCC problems (a missing 2CH, a
second 4CH, a duplicated slice position, two positions in one SAX folder) so that readers are
tested against them.  ``<out>/phantom.json`` holds the ground truth (long axis, what was
injected where) for tests; readers must ignore files at the root.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anatplane_dist.core.atomic import staged_dir
from anatplane_dist.core.geometry import Plane
from anatplane_dist.sources.dicom_write import SeriesInfo, deterministic_uid, write_mr_image
from anatplane_dist.sources.phantom.heart import GROUPS, HeartAnatomy, render_cine, sample_heart
from anatplane_dist.sources.phantom.io import (
    check_sizes,
    claim_target,
    map_subjects,
    merge_truth,
    subject_rng,
)
from anatplane_dist.sources.phantom.prescribe import HeartViews, prescribe_heart_views
from anatplane_dist.sources.phantom.render import rotation

__all__ = ["MESS_KINDS", "HeartCohortConfig", "write_heart_subject", "write_heart_cohort", "mess_kind"]

#: What ``mess`` injects, cycling over subjects (index 0 of the cycle stays clean).
MESS_KINDS = ("clean", "missing_2ch", "second_4ch", "duplicate_position", "two_positions_in_sax")
TRUTH_FILE = "phantom.json"


@dataclass(frozen=True)
class HeartCohortConfig:
    """What to generate.  ``matrix``/``frames`` are (min, max) ranges drawn per subject."""

    subjects: int = 3
    seed: int = 0
    matrix: tuple[int, int] = (128, 128)
    frames: tuple[int, int] = (20, 20)
    mess: bool = False
    first_index: int = 1
    workers: int = 1

    def __post_init__(self) -> None:
        check_sizes("heart cohort", count=self.subjects, matrix=self.matrix, frames=self.frames)


def mess_kind(index: int, cfg: HeartCohortConfig) -> str:
    """The DSBCC problem injected into subject ``index`` ('clean' without ``mess``)."""
    if not cfg.mess:
        return "clean"
    return MESS_KINDS[(index - cfg.first_index) % len(MESS_KINDS)]


def _rotate_about_axis(plane: Plane, point: np.ndarray, axis: np.ndarray, deg: float) -> Plane:
    """The same plane rotated about the line ``point + t axis`` (a repeated LAX acquisition)."""
    r = rotation(axis, np.deg2rad(deg))
    return Plane(point + r @ (plane.origin - point), r @ plane.row_dir, r @ plane.col_dir,
                 plane.spacing, plane.shape)


@dataclass(frozen=True)
class _Series:
    folder: str
    view: str
    number: int
    planes: tuple[Plane, ...]      # one per position held by the folder (2 for the mixed folder)


def _plan_series(views: HeartViews, kind: str, rng: np.random.Generator, anatomy: HeartAnatomy) -> list[_Series]:
    """Folders and series numbers of one study, with the injected mess."""
    n = len(views.sax)
    first = int(rng.integers(2, 12))
    series: list[_Series] = []
    if kind != "missing_2ch":
        series.append(_Series(f"2ch_{first}", "2ch", first, (views.ch2,)))
    series.append(_Series(f"4ch_{first + 1}", "4ch", first + 1, (views.ch4,)))
    order = list(range(n)) if rng.random() < 0.5 else list(range(n))[::-1]   # numbering base->apex or not
    sax_numbers = {k: first + 2 + j for j, k in enumerate(order)}
    mixed = int(rng.integers(1, n - 2)) if kind == "two_positions_in_sax" else None
    for k in range(n):
        if mixed is not None and k == mixed + 1:
            continue                                  # held by the mixed folder
        planes = (views.sax[k], views.sax[k + 1]) if k == mixed else (views.sax[k],)
        series.append(_Series(f"sax_{sax_numbers[k]}", "sax", sax_numbers[k], planes))
    top = first + 2 + n
    if kind == "second_4ch":
        again = _rotate_about_axis(views.ch4, anatomy.base, anatomy.u, float(rng.uniform(4.0, 9.0)))
        series.append(_Series(f"4ch_{top + 1}", "4ch", top + 1, (again,)))
    if kind == "duplicate_position":
        k = int(rng.integers(1, n - 1))
        series.append(_Series(f"sax_{top + 2}", "sax", top + 2, (views.sax[k],)))
    return series


def write_heart_subject(out: str | Path, index: int, cfg: HeartCohortConfig) -> dict[str, Any]:
    """Generate and write subject ``index``; returns its ground-truth record (JSON-ready)."""
    out = Path(out)
    subject = str(index)
    rng = subject_rng(cfg.seed, index, 0)
    group = GROUPS[int(rng.integers(len(GROUPS)))] if rng.random() < 0.3 else "NOR"
    anatomy = sample_heart(rng, group)
    matrix = int(rng.integers(cfg.matrix[0], cfg.matrix[1] + 1))
    n_frames = int(rng.integers(cfg.frames[0], cfg.frames[1] + 1))
    views = prescribe_heart_views(anatomy, rng, matrix)
    kind = mess_kind(index, cfg)
    plan = _plan_series(views, kind, rng, anatomy)
    study_uid = deterministic_uid("phantom-heart", cfg.seed, subject, "study")
    for_uid = deterministic_uid("phantom-heart", cfg.seed, subject, "frame-of-reference")
    rr = anatomy.rr_ms
    scale = float(rng.uniform(800.0, 2400.0))          # scanner units differ between studies
    record_series = []
    with staged_dir(out / subject, replace=True) as subject_dir:
        study_dir = subject_dir / "study"
        for s in plan:
            series_uid = deterministic_uid("phantom-heart", cfg.seed, subject, "series", s.number)
            thickness = min(8.0, views.gap) if s.view == "sax" else 8.0
            info = SeriesInfo(patient_id=f"DSBCC{index:04d}", study_uid=study_uid, series_uid=series_uid,
                              frame_of_reference_uid=for_uid, series_number=s.number,
                              series_description=s.view, slice_thickness=thickness)
            instance = 0
            for p_idx, plane in enumerate(s.planes):
                noise_rng = subject_rng(cfg.seed, index, 1000 + 10 * s.number + p_idx)
                pixels, _ = render_cine(anatomy, plane, n_frames, noise_rng, scale=scale)
                for f in range(n_frames):
                    instance += 1
                    write_mr_image(study_dir / s.folder / f"IM-{s.number:04d}-{instance:04d}.dcm", pixels[f], plane,
                                   info, instance_number=instance, trigger_time_ms=round(f * rr / n_frames, 2))
            record_series.append({"folder": s.folder, "view": s.view, "series_number": s.number,
                                  "series_uid": series_uid, "planes": [p.to_dict() for p in s.planes]})
    return {"subject": subject, "index": index, "group": group, "mess": kind, "n_frames": n_frames,
            "matrix": matrix, "rr_ms": rr, "es_frame": anatomy.es_frame(n_frames),
            "base": anatomy.base.tolist(), "long_axis": anatomy.u.tolist(), "rv_dir": anatomy.v.tolist(),
            "lv_length_mm": anatomy.length, "sax_t_mm": views.sax_t.tolist(), "sax_gap_mm": views.gap,
            "study_uid": study_uid, "frame_of_reference_uid": for_uid, "series": record_series}


def write_heart_cohort(out: str | Path, cfg: HeartCohortConfig, *, overwrite: bool = False) -> list[dict[str, Any]]:
    """Write ``cfg.subjects`` subjects under ``out`` and add them to the ground truth
    ``out/phantom.json``; returns the records of the subjects written by this call."""
    out = Path(out)
    claim_target(out, {"kind": "heart", "layout": "dsbcc", "seed": cfg.seed}, overwrite=overwrite)   # never over someone else's data
    indices = range(cfg.first_index, cfg.first_index + cfg.subjects)
    records = map_subjects(functools.partial(write_heart_subject, out, cfg=cfg), indices, cfg.workers, "heart")
    merge_truth(out / TRUTH_FILE, {"kind": "heart", "layout": "dsbcc", "seed": cfg.seed}, "subjects", records)
    return records
