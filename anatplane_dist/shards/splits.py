"""Subject-level train/val split and the 1/N partition of subjects between parts.

The split of a subject depends only on ``(seed, subject id)`` through a hash, so adding or
removing other subjects never moves it, every machine of a multi-part run agrees without
talking to the others, and a subject is never in both splits.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

__all__ = ["subject_hash", "assign_splits", "part_subjects", "parse_part"]


def subject_hash(subject: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by ``(seed, subject)`` (sha256; not Python's salted hash)."""
    digest = hashlib.sha256(f"{seed}:{subject}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def assign_splits(subjects: Sequence[str], val_fraction: float, seed: int) -> dict[str, str]:
    """``subject -> "train" | "val"``: val when the subject's hash is below ``val_fraction``.

    A tiny cohort could end up with no val subject at all; when ``val_fraction > 0`` and there
    are at least two subjects, the subject with the smallest hash then goes to val (so a demo
    always has a validation split).
    """
    hashes = {s: subject_hash(s, seed) for s in subjects}
    out = {s: ("val" if h < val_fraction else "train") for s, h in hashes.items()}
    if val_fraction > 0 and len(subjects) >= 2 and "val" not in out.values():
        out[min(hashes, key=lambda s: (hashes[s], s))] = "val"
    if len(subjects) >= 2 and "train" not in out.values():
        out[max(hashes, key=lambda s: (hashes[s], s))] = "train"
    return out


def part_subjects(subjects: Sequence[str], part: int, parts: int) -> list[str]:
    """The ``part``-th of ``parts`` interleaved slices of the sorted subject list (balanced)."""
    return [s for i, s in enumerate(sorted(subjects)) if i % parts == part]


def parse_part(text: str) -> tuple[int, int]:
    """``"i/N"`` -> ``(i, N)`` with ``0 <= i < N``."""
    try:
        i_s, n_s = text.split("/")
        i, n = int(i_s), int(n_s)
    except ValueError as exc:
        raise ValueError(f"--part must look like i/N (e.g. 0/4), got {text!r}") from exc
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--part {text}: need 0 <= i < N")
    return i, n
