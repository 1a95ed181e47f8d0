"""Write a labelled cardiac cohort in the ACDC layout (NIfTI via nibabel).

``<out>/patientXXX/``: ``patientXXX_4d.nii.gz`` (rows, cols, slices, frames),
``patientXXX_frameYY.nii.gz`` + ``patientXXX_frameYY_gt.nii.gz`` for the ED and ES frames
(labels 1 RV, 2 MYO, 3 LV), and ``Info.cfg`` (ED, ES, Group, Height, NbFrame, Weight).

The volume is the phantom's SAX stack: voxel ``(i, j, k)`` is pixel (row ``i``, col ``j``) of
slice ``k``, and the affine (RAS, as NIfTI wants) is built from the same planes, so
``geometry.plane_from_nifti(affine, shape, k)`` gives back slice ``k``'s plane exactly.
Masks come from the same solids that made the pixels, so they always agree with the image.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anatplane_dist.core.atomic import atomic_write_text, staged_dir
from anatplane_dist.core.geometry import RAS_TO_LPS, Plane
from anatplane_dist.sources.phantom.heart import GROUPS, render_cine, sample_heart
from anatplane_dist.sources.phantom.io import (
    check_sizes,
    claim_target,
    map_subjects,
    merge_truth,
    save_nifti,
    subject_rng,
)
from anatplane_dist.sources.phantom.prescribe import prescribe_heart_views

__all__ = ["AcdcCohortConfig", "truth_header", "stack_affine_ras", "write_acdc_patient", "write_acdc_cohort"]



@dataclass(frozen=True)
class AcdcCohortConfig:
    """What to generate; ``matrix``/``frames`` are (min, max) ranges drawn per patient."""

    patients: int = 5
    seed: int = 0
    matrix: tuple[int, int] = (128, 128)
    frames: tuple[int, int] = (20, 20)
    first_index: int = 1
    workers: int = 1

    def __post_init__(self) -> None:
        # ED and ES must be different frames
        check_sizes("ACDC cohort", count=self.patients, matrix=self.matrix, frames=self.frames, min_frames=2)


def stack_affine_ras(stack: Plane) -> np.ndarray:
    """NIfTI affine (RAS) of a parallel, evenly spaced stack (batch ``Plane``), slice axis 2.

    Raises:
        ValueError: the planes are not parallel with a constant step (no single affine exists).
    """
    o = stack.origin
    step = o[1] - o[0] if len(o) > 1 else stack.normal[0] * 8.0
    if len(o) > 2 and not np.allclose(np.diff(o, axis=0), step, atol=1e-4):
        raise ValueError("slices are not evenly spaced: no NIfTI affine describes them")
    if not (np.allclose(stack.row_dir, stack.row_dir[0]) and np.allclose(stack.col_dir, stack.col_dir[0])):
        raise ValueError("slices are not parallel with the same in-plane axes")
    a = np.eye(4)
    a[:3, 0] = stack.col_dir[0] * stack.spacing[0, 0]     # voxel axis 0 = image row
    a[:3, 1] = stack.row_dir[0] * stack.spacing[0, 1]     # voxel axis 1 = image column
    a[:3, 2] = step
    a[:3, 3] = o[0]
    return RAS_TO_LPS @ a


def write_acdc_patient(out: str | Path, index: int, cfg: AcdcCohortConfig) -> dict[str, Any]:
    """Generate and write ``patient{index:03d}``; returns its record (JSON-ready)."""
    name = f"patient{index:03d}"
    rng = subject_rng(cfg.seed, index, 2)
    group = GROUPS[(index - 1) % len(GROUPS)]
    anatomy = sample_heart(rng, group)
    matrix = int(rng.integers(cfg.matrix[0], cfg.matrix[1] + 1))
    n_frames = int(rng.integers(cfg.frames[0], cfg.frames[1] + 1))
    views = prescribe_heart_views(anatomy, rng, matrix)
    scale = float(rng.uniform(300.0, 1200.0))
    sax = views.sax
    n = len(sax)
    image = np.zeros((matrix, matrix, n, n_frames), dtype=np.int16)
    labels = np.zeros((matrix, matrix, n, n_frames), dtype=np.uint8)
    for k in range(n):
        px, lab = render_cine(anatomy, sax[k], n_frames, subject_rng(cfg.seed, index, 3000 + k), scale=scale)
        image[:, :, k, :] = np.moveaxis(px, 0, -1)
        labels[:, :, k, :] = np.moveaxis(lab, 0, -1)
    affine = stack_affine_ras(sax)
    zooms = (float(sax.spacing[0, 0]), float(sax.spacing[0, 1]), views.gap)
    ed, es = 0, anatomy.es_frame(n_frames)
    with staged_dir(Path(out) / name, replace=True) as pdir:
        save_nifti(pdir / f"{name}_4d.nii.gz", image, affine, zooms + (anatomy.rr_ms / n_frames,))
        for f in (ed, es):
            save_nifti(pdir / f"{name}_frame{f + 1:02d}.nii.gz", image[..., f], affine, zooms)
            save_nifti(pdir / f"{name}_frame{f + 1:02d}_gt.nii.gz", labels[..., f], affine, zooms)
        height = float(rng.uniform(150.0, 195.0))
        weight = float(rng.uniform(50.0, 110.0))
        atomic_write_text(pdir / "Info.cfg", f"ED: {ed + 1}\nES: {es + 1}\nGroup: {group}\nHeight: {height:.1f}\n"
                                             f"NbFrame: {n_frames}\nWeight: {weight:.1f}\n")
    return {"patient": name, "index": index, "group": group, "ed": ed + 1, "es": es + 1, "n_frames": n_frames,
            "slices": n, "base": anatomy.base.tolist(), "long_axis": anatomy.u.tolist(),
            "sax_t_mm": views.sax_t.tolist()}


def truth_header(cfg: AcdcCohortConfig) -> dict[str, Any]:
    """What ``phantom.json`` of an ACDC-layout cohort starts with (the recipe a rerun may extend)."""
    return {"kind": "heart", "layout": "acdc", "seed": cfg.seed}


def write_acdc_cohort(out: str | Path, cfg: AcdcCohortConfig, *, overwrite: bool = False) -> list[dict[str, Any]]:
    """Write ``cfg.patients`` patients under ``out`` (+ ground truth ``out/phantom.json``)."""
    out = Path(out)
    claim_target(out, truth_header(cfg), overwrite=overwrite)   # never over someone else's data
    indices = range(cfg.first_index, cfg.first_index + cfg.patients)
    records = map_subjects(functools.partial(write_acdc_patient, out, cfg=cfg), indices, cfg.workers, "acdc")
    merge_truth(out / "phantom.json", truth_header(cfg), "patients", records)
    return records
