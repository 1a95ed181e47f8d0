"""Reader for cardiac cine studies in the Kaggle Data Science Bowl (DSBCC) layout.

Layout: ``<root>/<subject>/study/{sax_<n>, 2ch_<n>, 4ch_<n>}/*.dcm``, one folder per cine
series.  Real studies are messy (missing long-axis views, several 2CH/4CH series, the same
SAX position acquired twice, several positions in one SAX folder, a stray frame with another
matrix); every case is resolved by a fixed rule and recorded as a ``Skip``, never an
exception out of :func:`iter_studies`.

Views of a yielded ``Study``:

* ``"sax"``: one ``Slice`` per distinct position, sorted base -> apex along the stack axis
  oriented as in ``geometry.heart_locations`` (``n . (+1, -1, -1) > 0``);
* ``"2ch"``, ``"4ch"``: every usable candidate plane, the one to use first (lowest series
  folder number, then the candidate with most frames).

A view is present only when it has at least one slice; ``Study.meta["missing_views"]`` lists
the absent ones (the sharder decides whether the study is still useful).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from anatplane_dist.core.geometry import Plane, heart_locations, stack_positions
from anatplane_dist.sources.base import Slice, Study
from anatplane_dist.sources.dicom_read import (
    DICOM_SUFFIXES,
    angle_between_normals_deg,
    drop_coincident,
    iter_subjects,
    majority,
    relpath,
)
from anatplane_dist.sources.enhanced import folder_slices

__all__ = ["VIEWS", "iter_studies", "read_study"]

VIEWS = ("sax", "2ch", "4ch")
_FOLDER_RE = re.compile(r"^(sax|2ch|4ch)_(\d+)$", re.IGNORECASE)

#: a SAX slice tilted more than this from the stack's normal is not part of the stack
SAX_MAX_TILT_DEG = 10.0
#: a 2CH/4CH plane closer than this to the SAX planes cannot be a long-axis view
LAX_MIN_ANGLE_DEG = 30.0


def iter_studies(root: str | Path, subjects: Iterable[str] | None = None) -> Iterator[Study]:
    """Yield one ``Study`` per subject folder of ``root`` (sorted by name), lazily.

    ``subjects`` restricts (and orders) the subjects; a requested subject without a folder is
    yielded as an empty study with a study-level skip, so nothing is lost silently.
    """
    return iter_subjects(root, subjects, lambda d, r: read_study(d, root=r))


def read_study(study_dir: str | Path, root: str | Path | None = None,
               subject: str | None = None) -> Study:
    """Read one subject's files and build its views.

    Each file is parsed once: its header places it in a slice, its pixels are kept encoded
    and decoded only by ``Slice.load()`` (see ``dicom_read``).

    Args:
        study_dir: the subject folder (``<root>/<subject>``, holding ``study/``) or the
            ``study`` folder itself.
        root: data-set root that frame paths are made relative to (default: the parent of
            the subject folder).
        subject: subject id (default: the subject folder's name).
    """
    study_dir = Path(study_dir)
    if study_dir.name == "study" and not (study_dir / "study").is_dir():
        subject_dir, series_parent = study_dir.parent, study_dir
    else:
        subject_dir = study_dir
        series_parent = study_dir / "study" if (study_dir / "study").is_dir() else study_dir
    root = Path(root) if root is not None else subject_dir.parent
    study = Study(subject=subject or subject_dir.name, root=root, views={})

    folders: dict[str, list[tuple[int, Path]]] = {v: [] for v in VIEWS}
    for p in sorted(series_parent.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_symlink() and not p.exists():
            study.skip(f"dangling symbolic link (to {os.readlink(p)})", relpath(p, root),
                       "series" if _FOLDER_RE.match(p.name) else "file")
            continue
        if not p.is_dir():
            if p.suffix.lower() in DICOM_SUFFIXES:
                study.skip("file outside a series folder (sax_<n>/2ch_<n>/4ch_<n>)", relpath(p, root), "file")
            continue
        m = _FOLDER_RE.match(p.name)
        if m is None:
            study.skip(f"folder name is not sax_<n>, 2ch_<n> or 4ch_<n>: {p.name}", relpath(p, root), "series")
            continue
        folders[m.group(1).lower()].append((int(m.group(2)), p))
    for v in VIEWS:
        folders[v].sort()

    candidates = {v: _read_view(v, folders[v], study) for v in VIEWS}
    sax, sax_normal, sax_for = _build_sax_stack(candidates["sax"], study)
    if sax:
        study.views["sax"] = sax
        study.meta["sax_axis"] = sax_normal.tolist()
        study.meta["frame_of_reference"] = sax_for
        if len(sax) == 1:
            study.skip("SAX stack has a single slice position: no relative-location target",
                       Path(sax[0].frames[0].path).parent.as_posix(), "channel")
    for v in ("2ch", "4ch"):
        lax = _check_lax(v, candidates[v], sax_normal, sax_for, study)
        if lax:
            study.views[v] = lax
    study.meta["missing_views"] = [v for v in VIEWS if v not in study.views]
    if not study.views:
        study.skip("no usable series in this study", relpath(series_parent, root), "study")
    return study


def _read_view(view: str, folders: list[tuple[int, Path]], study: Study) -> list[tuple[int, Slice]]:
    """All slices of a view's folders (Enhanced multi-frame files split into theirs), each
    tagged with its folder number."""
    return [(number, s) for number, folder in folders for s in folder_slices(view, folder, study)]


def _build_sax_stack(tagged: list[tuple[int, Slice]], study: Study) -> tuple[list[Slice], np.ndarray | None, str | None]:
    """Parallel SAX slices in one frame of reference, one per position, sorted base -> apex."""
    if not tagged:
        return [], None, None
    slices = [s for _, s in tagged]
    frame_of_ref = majority([s.frame_of_reference for s in slices])
    same_for = [(n, s) for n, s in tagged if s.frame_of_reference == frame_of_ref]
    for _, s in tagged:
        if s.frame_of_reference != frame_of_ref:
            study.skip(f"SAX series in another frame of reference ({s.frame_of_reference or 'none'}) "
                       f"than the SAX stack ({frame_of_ref or 'none'})", s.frames[0].path, "slice")
    # the stack axis: the normal shared (within the tilt limit) by the most slices
    normals = [s.plane.normal for _, s in same_for]
    support = [sum(angle_between_normals_deg(n, m) <= SAX_MAX_TILT_DEG for m in normals) for n in normals]
    axis = normals[int(np.argmax(support))]
    members = [(n, s) for n, s in same_for if angle_between_normals_deg(s.plane.normal, axis) <= SAX_MAX_TILT_DEG]
    for _, s in same_for:
        ang = angle_between_normals_deg(s.plane.normal, axis)
        if ang > SAX_MAX_TILT_DEG:
            study.skip(f"SAX plane normal disagrees with the SAX stack by {ang:.1f} deg "
                       f"(limit {SAX_MAX_TILT_DEG:g})", s.frames[0].path, "slice")
    # preference among duplicates: most frames, then the later acquisition (a repeated
    # breath-hold usually replaces a failed one), then series UID for a total order
    members.sort(key=lambda t: (-len(t[1].frames), -t[0], t[1].series_uid, t[1].frames[0].path))
    kept = drop_coincident([s for _, s in members], study)
    stack = Plane.stack([s.plane for s in kept])
    # the same oriented axis the location targets use, so index order = base -> apex
    direction = np.asarray(heart_locations(stack)[1]["axis"])
    order = np.argsort(stack_positions(stack, direction), kind="stable")
    return [kept[i] for i in order], direction, frame_of_ref


def _check_lax(view: str, tagged: list[tuple[int, Slice]], sax_normal: np.ndarray | None,
               sax_for: str | None, study: Study) -> list[Slice]:
    """Long-axis candidates that are really long-axis planes of the SAX stack's frame."""
    ok: list[tuple[int, Slice]] = []
    for number, s in tagged:
        if sax_for is not None and s.frame_of_reference != sax_for:
            study.skip(f"{view} series in another frame of reference ({s.frame_of_reference or 'none'}) "
                       f"than the SAX stack ({sax_for or 'none'})", s.frames[0].path, "series")
            continue
        if sax_normal is not None:
            ang = angle_between_normals_deg(s.plane.normal, sax_normal)
            if ang < LAX_MIN_ANGLE_DEG:
                study.skip(f"{view} folder but its plane is nearly parallel to the SAX stack "
                           f"({ang:.1f} deg < {LAX_MIN_ANGLE_DEG:g})", s.frames[0].path, "series")
                continue
        ok.append((number, s))
    ok.sort(key=lambda t: (t[0], -len(t[1].frames), t[1].series_uid, t[1].frames[0].path))
    return drop_coincident([s for _, s in ok], study)

