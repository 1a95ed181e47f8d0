"""What a worker process runs: read one study, build and encode its samples.

Kept apart from the writer so that a spawned worker imports only numpy/scipy/pydicom and the
reader (not webdataset, which pulls in torch: seconds per worker start).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from anatplane_dist.shards.profiles import ShardConfig
from anatplane_dist.shards.samples import StudySamples, study_samples
from anatplane_dist.sources.base import Skip

__all__ = ["SubjectTask", "process_subject", "resolve_reader", "list_subjects"]


def resolve_reader(name: str) -> ModuleType:
    """``dsbcc`` -> ``anatplane_dist.sources.dsbcc``; a dotted name is imported as given."""
    module = name if "." in name else f"anatplane_dist.sources.{name}"
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ValueError(f"reader {name!r}: cannot import {module} ({exc})") from exc


def list_subjects(reader: ModuleType, root: Path) -> list[str]:
    """Subject ids of ``root``: the reader's ``list_subjects`` if it has one, else the sorted
    non-hidden sub-folders (both the DSBCC and the knee layouts are one folder per subject).

    A dangling symbolic link counts as a subject too, so that it gets its study-level record
    ("study unreadable") instead of vanishing from the listing."""
    if hasattr(reader, "list_subjects"):
        return sorted(reader.list_subjects(root))
    return sorted(p.name for p in Path(root).iterdir() if not p.name.startswith((".", "_"))
                  and (p.is_dir() or (p.is_symlink() and not p.exists())))


@dataclass(frozen=True)
class SubjectTask:
    """What a worker needs to shard one subject (picklable, small)."""

    reader: str
    root: str
    subject: str
    cfg: ShardConfig


def process_subject(task: SubjectTask) -> StudySamples:
    """Read one study and build its samples; any failure becomes a recorded study skip."""
    try:
        reader = resolve_reader(task.reader)
        study = reader.read_study(Path(task.root) / task.subject, root=Path(task.root))
    except Exception as exc:  # a study that cannot be read is recorded, the data set goes on
        return StudySamples(task.subject, skipped=[Skip(task.subject, f"study unreadable: {type(exc).__name__}: "
                                                                      f"{exc}", task.subject, "study")])
    try:
        return study_samples(study, task.cfg)
    except Exception as exc:  # defensive: study_samples already isolates slices
        return StudySamples(task.subject, skipped=list(study.skipped) + [
            Skip(task.subject, f"study left out: {type(exc).__name__}: {exc}", task.subject, "study")])
