"""Reader for prescribed-view studies: ``<root>/<subject>/study/<view>_<n>/*.dcm``, any view names.

The DSBCC layout (one folder per series, named ``<view>_<series number>``) with the view names
a profile declares (``axial_3``, ``sagittal_4``, ``coronal_5``, ...): what the pseudo-acquisitions
of ``sources.volumes`` write, and what a site exporting its own prescribed series can write.
A folder may also hold one Enhanced MR multi-frame file; it is split into its planes
(``sources.enhanced``).

Views of a yielded ``Study``: every view's slices in one frame of reference (the majority),
one per distinct position (duplicates recorded).  A view with several parallel positions is a
stack, sorted along ``geometry.heart_locations``' oriented axis (``n . (+1, -1, -1) > 0``), the
same axis the location target uses; a single-plane view keeps its candidates by folder number.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from anatplane_dist.core.geometry import Plane, heart_locations, stack_positions
from anatplane_dist.sources.base import Slice, Study
from anatplane_dist.sources.dicom_read import drop_coincident, iter_subjects, majority, relpath
from anatplane_dist.sources.enhanced import folder_slices

__all__ = ["iter_studies", "read_study"]

_FOLDER_RE = re.compile(r"^([A-Za-z0-9]+)_(\d+)$")


def iter_studies(root: str | Path, subjects: Iterable[str] | None = None) -> Iterator[Study]:
    """One ``Study`` per subject folder of ``root`` (sorted), lazily; see ``dicom_read.iter_subjects``."""
    return iter_subjects(root, subjects, lambda d, r: read_study(d, root=r))


def read_study(study_dir: str | Path, root: str | Path | None = None, subject: str | None = None) -> Study:
    """Read one subject folder (holding ``study/``, or the ``study`` folder itself)."""
    study_dir = Path(study_dir)
    subject_dir = study_dir.parent if study_dir.name == "study" else study_dir
    series_parent = subject_dir / "study" if (subject_dir / "study").is_dir() else subject_dir
    root = Path(root) if root is not None else subject_dir.parent
    study = Study(subject=subject or subject_dir.name, root=root, views={})
    tagged: dict[str, list[tuple[int, Slice]]] = {}
    for folder in sorted(p for p in series_parent.iterdir() if not p.name.startswith(".")):
        m = _FOLDER_RE.match(folder.name)
        if not folder.is_dir() or m is None:
            study.skip(f"not a <view>_<n> series folder: {folder.name}", relpath(folder, root), "series")
            continue
        view, number = m.group(1).lower(), int(m.group(2))
        for s in folder_slices(view, folder, study):
            tagged.setdefault(view, []).append((number, s))
    frame_of_ref = majority([s.frame_of_reference for t in tagged.values() for _, s in t])
    for view, items in sorted(tagged.items()):
        items = [(n, s) for n, s in items if _same_frame(s, frame_of_ref, study)]
        items.sort(key=lambda t: (t[0], -len(t[1].frames), t[1].series_uid, t[1].frames[0].path))
        kept = drop_coincident([s for _, s in items], study)
        if len(kept) > 1 and _parallel(kept):
            stack = Plane.stack([s.plane for s in kept])
            axis = np.asarray(heart_locations(stack)[1]["axis"])
            kept = [kept[i] for i in np.argsort(stack_positions(stack, axis), kind="stable")]
            study.meta[f"{view}_axis"] = axis.tolist()
        if kept:
            study.views[view] = kept
    study.meta["frame_of_reference"] = frame_of_ref
    if not study.views:
        study.skip("no usable series in this study", relpath(series_parent, root), "study")
    return study


def _same_frame(s: Slice, frame_of_ref: str | None, study: Study) -> bool:
    if s.frame_of_reference == frame_of_ref:
        return True
    study.skip(f"{s.view} series in another frame of reference ({s.frame_of_reference or 'none'}) "
               f"than the study ({frame_of_ref or 'none'})", s.frames[0].path, "series")
    return False


def _parallel(slices: list[Slice], max_deg: float = 10.0) -> bool:
    n0 = slices[0].plane.normal
    return all(abs(float(n0 @ s.plane.normal)) >= np.cos(np.deg2rad(max_deg)) for s in slices)
