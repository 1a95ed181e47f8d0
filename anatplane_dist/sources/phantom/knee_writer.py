"""Write the knee phantom as fastMRI-like DICOM plus an MRNet-like label table.

``<out>/<subject>/series_<nnn>/IM-<series>-<slice>.dcm``: three single-frame stacks per study
(sagittal, coronal, axial) whose folder names and descriptions do *not* reveal the orientation
(readers must use the normals, as with real exports), Laterality R/L, one FrameOfReferenceUID
per study.  ``<out>/labels.csv`` holds ``subject,abnormal,acl,meniscus``; ``<out>/phantom.json``
the ground truth (which folder is which view) for tests.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anatplane_dist.core.atomic import atomic_write_text, staged_dir
from anatplane_dist.sources.dicom_write import SeriesInfo, deterministic_uid, write_mr_image
from anatplane_dist.sources.phantom.io import (
    check_sizes,
    claim_target,
    map_subjects,
    merge_truth,
    subject_rng,
)
from anatplane_dist.sources.phantom.knee import (
    KNEE_VIEWS,
    prescribe_knee_views,
    render_knee_slice,
    sample_knee,
)

__all__ = ["KneeCohortConfig", "write_knee_subject", "write_knee_cohort", "LABELS_FILE"]

LABELS_FILE = "labels.csv"


@dataclass(frozen=True)
class KneeCohortConfig:
    """What to generate; ``matrix`` is a (min, max) range drawn per subject."""

    subjects: int = 3
    seed: int = 0
    matrix: tuple[int, int] = (128, 128)
    slices: int = 20
    first_index: int = 1
    workers: int = 1

    def __post_init__(self) -> None:
        check_sizes("knee cohort", count=self.subjects, matrix=self.matrix, slices=self.slices)


def write_knee_subject(out: str | Path, index: int, cfg: KneeCohortConfig) -> dict[str, Any]:
    """Generate and write knee study ``index``; returns its record (JSON-ready)."""
    subject = f"knee{index:04d}"
    rng = subject_rng(cfg.seed, index, 10)
    knee = sample_knee(rng)
    matrix = int(rng.integers(cfg.matrix[0], cfg.matrix[1] + 1))
    views = prescribe_knee_views(knee, rng, matrix, cfg.slices)
    study_uid = deterministic_uid("phantom-knee", cfg.seed, subject, "study")
    for_uid = deterministic_uid("phantom-knee", cfg.seed, subject, "frame-of-reference")
    numbers = rng.permutation(len(KNEE_VIEWS)) + int(rng.integers(2, 6))   # folder numbers hide the view
    scale = float(rng.uniform(1500.0, 3000.0))
    series_records = []
    with staged_dir(Path(out) / subject, replace=True) as subject_dir:
        for v_idx, view in enumerate(KNEE_VIEWS):
            stack = views[view]
            number = int(numbers[v_idx])
            folder = f"series_{number:03d}"
            gap = float(np.linalg.norm(stack.origin[1] - stack.origin[0]))
            series_uid = deterministic_uid("phantom-knee", cfg.seed, subject, "series", number)
            info = SeriesInfo(patient_id=subject, study_uid=study_uid, series_uid=series_uid,
                              frame_of_reference_uid=for_uid, series_number=number, series_description="PD TSE",
                              slice_thickness=gap, body_part="KNEE", laterality=knee.side, patient_position="FFS")
            for k in range(len(stack)):
                img = render_knee_slice(knee, stack[k], gap, subject_rng(cfg.seed, index, 20000 + 1000 * number + k),
                                        scale=scale)
                write_mr_image(subject_dir / folder / f"IM-{number:04d}-{k + 1:04d}.dcm", img, stack[k], info,
                               instance_number=k + 1)
            series_records.append({"folder": folder, "view": view, "series_number": number, "series_uid": series_uid,
                                   "slices": len(stack), "normal": stack.normal[0].tolist()})
    return {"subject": subject, "index": index, "side": knee.side, "abnormal": int(knee.abnormal),
            "acl": int(knee.acl_tear), "meniscus": int(knee.meniscus_tear), "effusion": int(knee.effusion),
            "matrix": matrix, "study_uid": study_uid, "frame_of_reference_uid": for_uid, "series": series_records}


def write_knee_cohort(out: str | Path, cfg: KneeCohortConfig, *, overwrite: bool = False) -> list[dict[str, Any]]:
    """Write ``cfg.subjects`` knee studies under ``out`` and add them to ``labels.csv`` and
    ``phantom.json`` (a cohort can be written in chunks); returns this call's records."""
    out = Path(out)
    claim_target(out, {"kind": "knee", "layout": "fastmri", "seed": cfg.seed}, overwrite=overwrite)   # never over someone else's data
    indices = range(cfg.first_index, cfg.first_index + cfg.subjects)
    records = map_subjects(functools.partial(write_knee_subject, out, cfg=cfg), indices, cfg.workers, "knee")
    everyone = merge_truth(out / "phantom.json", {"kind": "knee", "layout": "fastmri", "seed": cfg.seed},
                           "subjects", records)
    rows = ["subject,abnormal,acl,meniscus"] + [f"{r['subject']},{r['abnormal']},{r['acl']},{r['meniscus']}"
                                                for r in everyone]
    atomic_write_text(out / LABELS_FILE, "\n".join(rows) + "\n")
    return records
