"""Atomic file writes and small shared helpers of the phantom writers.

Every output appears complete or not at all (tmp file + ``os.replace``), so an interrupted
generation never leaves a truncated file that a reader would then have to make sense of.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

import numpy as np

from anatplane_dist.core.atomic import atomic_path, atomic_write_json
from anatplane_dist.core.errors import AnatplaneError

__all__ = ["PhantomError", "check_sizes", "check_target", "claim_target", "merge_truth", "save_nifti",
           "parse_range", "subject_rng", "map_subjects"]


class PhantomError(AnatplaneError, ValueError):
    """A phantom request that cannot be honoured (sizes, counts, a target holding other data)."""

T = TypeVar("T")


def save_nifti(path: str | os.PathLike, data: np.ndarray, affine_ras: np.ndarray,
               zooms: Sequence[float] | None = None) -> Path:
    """Write a NIfTI-1 file atomically (the tmp keeps the ``.nii.gz`` suffix so it is compressed)."""
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, affine_ras)
    img.header.set_xyzt_units("mm", "msec")
    if zooms is not None:
        img.header.set_zooms(tuple(float(z) for z in zooms))
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def merge_truth(path: str | os.PathLike, header: dict[str, Any], list_key: str,
                records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Write ground truth ``{**header, list_key: records}`` merged with what ``path`` holds.

    A cohort can be generated in chunks (``--first-index``); each chunk adds its subjects to
    the table instead of replacing it.  Entries are keyed by ``index``; a subject written again
    replaces its old entry.  A file of another kind/seed is replaced, not merged.  Chunks must
    not write into one folder at the same time (the read-modify-write is not locked).

    Returns:
        the merged records, sorted by index.
    """
    path = Path(path)
    merged: dict[int, dict[str, Any]] = {}
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = {}
        if all(old.get(k) == v for k, v in header.items()):
            merged = {int(r["index"]): r for r in old.get(list_key, [])}
    merged.update({int(r["index"]): r for r in records})
    out = [merged[i] for i in sorted(merged)]
    atomic_write_json(path, {**header, list_key: out})
    return out


def claim_target(out: str | os.PathLike, header: dict[str, Any], *, overwrite: bool = False,
                 truth_file: str = "phantom.json") -> None:
    """Refuse to write into ``out`` unless it is empty, a phantom of the same recipe, or ``overwrite``.

    Writers replace same-named subject folders wholesale, and real cohorts use the same names
    (DSBCC folders are numbers), so a mistyped ``--out`` would delete data. A folder whose
    ``phantom.json`` has the same ``header`` (kind, layout, seed) is one this recipe wrote, and
    extending or rewriting it is what ``--first-index`` chunks do. On acceptance the header is
    written first, so an interrupted generation leaves a folder that a rerun recognises.
    """
    check_target(out, header, overwrite=overwrite, truth_file=truth_file)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    list_key = "patients" if header.get("layout") == "acdc" else "subjects"
    merge_truth(out / truth_file, header, list_key, [])


def check_target(out: str | os.PathLike, header: dict[str, Any], *, overwrite: bool = False,
                 truth_file: str = "phantom.json") -> None:
    """:func:`claim_target`'s refusal without writing anything (to check every target first)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PhantomError(f"{out} is a file, not a folder")
    entries = [p for p in out.iterdir() if not p.name.startswith((".staging-", ".old-"))] if out.is_dir() else []
    if entries and not overwrite:
        truth = out / truth_file
        try:
            old = json.loads(truth.read_text()) if truth.is_file() else None
        except (OSError, ValueError):
            old = None
        if not isinstance(old, dict) or any(old.get(k) != v for k, v in header.items()):
            what = ", ".join(f"{k} {v}" for k, v in header.items())
            found = ("a phantom of another recipe" if isinstance(old, dict)
                     else f"{len(entries)} entries not written by a phantom")
            raise PhantomError(f"{out} is not empty ({found}; wanted {what}): refusing to replace what is "
                               f"there; choose an empty folder or pass --overwrite")


def parse_range(text: str | int | Sequence[int]) -> tuple[int, int]:
    """``"128"`` -> (128, 128); ``"160-256"`` -> (160, 256); already a pair -> itself."""
    if isinstance(text, (int, np.integer)):
        return int(text), int(text)
    if not isinstance(text, str):
        lo, hi = (int(x) for x in text)
    else:
        parts = text.replace(":", "-").split("-")
        if len(parts) == 1:
            lo = hi = int(parts[0])
        elif len(parts) == 2:
            lo, hi = int(parts[0]), int(parts[1])
        else:
            raise ValueError(f"expected N or MIN-MAX, got {text!r}")
    if lo < 1 or hi < lo:
        raise ValueError(f"invalid range {lo}-{hi}")
    return lo, hi


def check_sizes(what: str, *, count: int, matrix: tuple[int, int], frames: tuple[int, int] | None = None,
                min_frames: int = 1, slices: int | None = None) -> None:
    """Reject sizes that cannot make a meaningful data set, with a message naming the field."""
    if count < 1:
        raise PhantomError(f"{what}: subject count must be >= 1, got {count}")
    if not (8 <= matrix[0] <= matrix[1] <= 1024):
        raise PhantomError(f"{what}: matrix range must satisfy 8 <= min <= max <= 1024, got {matrix}")
    if frames is not None and not (min_frames <= frames[0] <= frames[1] <= 512):
        raise PhantomError(f"{what}: frame range must satisfy {min_frames} <= min <= max <= 512, got {frames}")
    if slices is not None and slices < 2:
        raise PhantomError(f"{what}: a stack needs at least 2 slices, got {slices}")


def subject_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    """Independent generator per (seed, subject, purpose): a subject does not depend on which
    other subjects are generated, or in which process, so cohorts can be made in parallel."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index), int(stream)]))


def map_subjects(fn: Callable[[int], T], indices: Iterable[int], workers: int, desc: str) -> list[T]:
    """``[fn(i) for i in indices]`` with a tqdm bar, in ``workers`` processes when > 1."""
    from tqdm import tqdm

    indices = list(indices)
    # the bar is closed before an error (or Ctrl-C) propagates, so the error is the last line printed
    with tqdm(total=len(indices), desc=desc, unit="subject") as bar:
        if workers <= 1:
            out = []
            for i in indices:
                out.append(fn(i))
                bar.update()
            return out
        with ProcessPoolExecutor(max_workers=workers) as pool:
            out = []
            for r in pool.map(fn, indices):
                out.append(r)
                bar.update()
            return out
