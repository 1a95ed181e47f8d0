"""Reader for knee MRI studies in a fastMRI-style DICOM layout.

Layout: ``<root>/<subject>/<series folders, any depth>/*.dcm``.  Folder and series names vary
between sites, so a series' view is taken from its geometry, not its name: the dominant LPS
component of the slice normal gives sagittal (x), coronal (y) or axial (z).  Each series is a
stack of single-frame slices sorted by position along its normal.

Views of a yielded ``Study``: ``"sagittal"``, ``"coronal"``, ``"axial"`` -> ``list[Slice]``
(one stack each).  Several series of one orientation: the one with most slices is kept, the
others are recorded as skipped.  Series in another frame of reference than the study's (the
one holding most slices) are skipped, since their planes cannot be compared.  The label table
(abnormal / ACL / meniscus) is read by the fine-tuning code, not here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from anatplane_dist.core.geometry import Plane, stack_positions
from anatplane_dist.sources.base import Slice, Study
from anatplane_dist.sources.dicom_read import (
    angle_between_normals_deg,
    drop_coincident,
    group_by_plane,
    iter_subjects,
    list_dicom_files,
    majority,
    relpath,
    scan_headers,
    slice_from_group,
)

__all__ = ["VIEWS", "classify_normal", "iter_studies", "read_study"]

VIEWS = ("sagittal", "coronal", "axial")
#: a normal whose dominant |component| is below this is too oblique to name (~41 deg off-axis)
MIN_DOMINANCE = 0.75
#: slices of one series tilted more than this from its first slice form another stack
MAX_TILT_DEG = 5.0


def classify_normal(normal: np.ndarray) -> str | None:
    """``"sagittal"``/``"coronal"``/``"axial"`` from the dominant LPS axis of a plane normal,
    or None when no axis dominates (a double-oblique series)."""
    n = np.abs(np.asarray(normal, dtype=np.float64))
    n = n / np.linalg.norm(n)
    k = int(np.argmax(n))
    return VIEWS[k] if n[k] >= MIN_DOMINANCE else None


def iter_studies(root: str | Path, subjects: Iterable[str] | None = None) -> Iterator[Study]:
    """Yield one ``Study`` per subject folder of ``root`` (sorted by name), lazily; a broken
    or missing subject is yielded empty with a study-level skip."""
    return iter_subjects(root, subjects, lambda d, r: read_study(d, root=r))


def read_study(subject_dir: str | Path, root: str | Path | None = None, subject: str | None = None) -> Study:
    """Read one subject's files once (pixels kept encoded until ``Slice.load()``); group,
    classify and sort its series."""
    subject_dir = Path(subject_dir)
    root = Path(root) if root is not None else subject_dir.parent
    study = Study(subject=subject or subject_dir.name, root=root, views={})
    headers = scan_headers(list_dicom_files(subject_dir, recursive=True, study=study), study, keep_pixels=True)

    # one stack per (folder, series UID, orientation): files are grouped by exact plane first
    stacks: dict[tuple[str, str], list[list[Slice]]] = {}
    for group in group_by_plane(headers):
        folder = group[0].path.parent
        # one image per position: extra images there (repeats, multi-echo) are duplicates;
        # the first in TriggerTime/InstanceNumber order is kept
        for h in group[1:]:
            study.skip(f"duplicated slice position in {folder.name}: kept {relpath(group[0].path, root)}",
                       relpath(h.path, root), "file")
        s = slice_from_group("", folder.name, group[:1], root)
        key = (relpath(folder, root), s.series_uid)
        runs = stacks.setdefault(key, [])
        for run in runs:                   # join the stack this slice is parallel to
            if angle_between_normals_deg(run[0].plane.normal, s.plane.normal) <= MAX_TILT_DEG:
                run.append(s)
                break
        else:
            runs.append([s])

    candidates: list[tuple[str, list[Slice]]] = []
    for (folder, _), runs in sorted(stacks.items()):
        for run in runs:
            view = classify_normal(run[0].plane.normal)
            if view is None:
                n = np.round(run[0].plane.normal, 3).tolist()
                study.skip(f"series too oblique to classify (normal {n})", folder, "series")
                continue
            for s in run:
                s.view = view
            candidates.append((folder, _sorted_stack(drop_coincident(run, study))))

    frame_of_ref = majority([s.frame_of_reference for _, run in candidates for s in run])
    chosen: dict[str, tuple[str, list[Slice]]] = {}
    for folder, run in sorted(candidates, key=lambda t: (-len(t[1]), t[0])):
        view = run[0].view
        if run[0].frame_of_reference != frame_of_ref:
            study.skip(f"{view} series in another frame of reference ({run[0].frame_of_reference or 'none'}) "
                       f"than the study ({frame_of_ref or 'none'})", folder, "series")
        elif view in chosen:
            kept_folder, kept = chosen[view]
            study.skip(f"another {view} series: {len(run)} slice(s) dropped, {kept_folder} with "
                       f"{len(kept)} slice(s) kept", folder, "series")
        else:
            chosen[view] = (folder, run)
    for view in VIEWS:
        if view in chosen:
            folder, run = chosen[view]
            study.views[view] = run
            if len(run) == 1:
                study.skip(f"{view} stack has a single slice: no relative-location target", folder, "channel")
    study.meta["missing_views"] = [v for v in VIEWS if v not in study.views]
    study.meta["frame_of_reference"] = frame_of_ref
    if not study.views:
        study.skip("no usable series in this study", relpath(subject_dir, root), "study")
    return study


def _sorted_stack(run: list[Slice]) -> list[Slice]:
    """Slices by position ``n . o`` along the stack's mean normal (never InstanceNumber)."""
    stack = Plane.stack([s.plane for s in run])
    order = np.argsort(stack_positions(stack), kind="stable")
    return [run[i] for i in order]
