"""What every reader yields: studies made of slices (a plane + lazily loaded frames).

Readers never load a data set: ``iter_studies`` yields one ``Study`` at a time, and a
``Slice`` reads its pixels only when ``load()`` is called.  Problems found while reading are
recorded as ``Skip`` entries on the study (and end up in the sharder's ``skipped.jsonl``);
they never abort the iteration over the data set.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from anatplane_dist.core.geometry import Plane

__all__ = ["Skip", "Frame", "Slice", "Study", "ReaderError", "subject_folders"]


def subject_folders(root: str | Path) -> list[Path]:
    """The subject folders of a data-set root, sorted by name: every directory not hidden.

    The one rule of every reader, loader and exporter: dot-folders are staging folders, editor
    or OS litter (``.ipynb_checkpoints``, ``.Trash``), never a subject.
    """
    return sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith("."))


class ReaderError(ValueError):
    """A file or series that cannot be used, with a specific reason."""


@dataclass(frozen=True)
class Skip:
    """One input left out (or partially used), and why.  JSON-ready via ``to_dict``."""

    subject: str
    reason: str
    path: str = ""          # relative to the dataset root
    level: str = "file"     # "study" | "series" | "slice" | "file" | "channel"

    def to_dict(self) -> dict[str, str]:
        return {"subject": self.subject, "level": self.level, "path": self.path, "reason": self.reason}


@dataclass(frozen=True)
class Frame:
    """One 2D image of a slice (a cine time point), with its provenance."""

    path: str                       # relative to the dataset root ('' for in-memory sources)
    index: int                      # frame index in time order (0..n-1)
    sop_uid: str = ""
    trigger_time: float | None = None


@dataclass
class Slice:
    """One plane position of one series: all its frames share this geometry.

    Attributes:
        view: canonical view name ("sax", "2ch", "4ch", "sagittal", "coronal", "axial", ...).
        series: series identifier (DSBCC folder name such as ``sax_12``, or a file name).
        plane: geometry (a single ``Plane``).
        frames: time-ordered frames.
        frame_of_reference: FrameOfReferenceUID; planes compare only within one.
        series_uid: SeriesInstanceUID ('' when unknown).
        loader: returns the pixels as float32 (n_frames, rows, cols); called by ``load``.
    """

    view: str
    series: str
    plane: Plane
    frames: list[Frame]
    frame_of_reference: str
    series_uid: str
    loader: Callable[[], np.ndarray] = field(repr=False)

    def load(self) -> np.ndarray:
        """Pixels as float32 (n_frames, rows, cols); raises ``ReaderError`` on bad pixels."""
        arr = np.asarray(self.loader(), dtype=np.float32)
        if arr.ndim == 2:
            arr = arr[None]
        expected = (len(self.frames), int(self.plane.shape[0]), int(self.plane.shape[1]))
        if arr.shape != expected:
            raise ReaderError(f"{self.series}: pixel array shape {arr.shape} != expected {expected}")
        return arr


@dataclass
class Study:
    """One subject's views.  ``views[name]`` is a list of slices; stacks are sorted by
    position (``geometry.stack_positions``), single-plane views keep every candidate in a
    deterministic order (the first is the one to use)."""

    subject: str
    root: Path
    views: dict[str, list[Slice]]
    skipped: list[Skip] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def skip(self, reason: str, path: str = "", level: str = "file") -> None:
        self.skipped.append(Skip(self.subject, reason, path, level))
