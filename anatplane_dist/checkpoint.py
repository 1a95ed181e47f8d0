"""Atomic checkpoint directories and the newest-complete lookup.

Layout under ``<run_dir>/checkpoints/``: ``step_00000123.tmp/`` while being written (by every
rank for DeepSpeed), renamed by rank 0 to ``step_00000123/`` after a barrier, and then a
``COMPLETE`` marker written last. Anything without the marker (a kill during the save, a
full disk) is ignored by :func:`find_latest_complete`, which both the trainer (``resume:
auto``) and the SLURM launcher use, so the two can never disagree about which checkpoint
is "latest".

The fp32 weight exports inside a checkpoint (``fp32/<part>.safetensors``) are written by
:func:`anatplane_dist.weights.export_fp32`: the weights file format has one home.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

from .atomic import atomic_write_bytes

COMPLETE = "COMPLETE"
META = "meta.json"
_STEP_RE = re.compile(r"^step_(\d{8,})$")


def checkpoints_root(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def step_of(path: Path) -> int | None:
    m = _STEP_RE.match(path.name)
    return int(m.group(1)) if m else None


def is_complete(path: Path) -> bool:
    return step_of(path) is not None and (path / COMPLETE).is_file()


def list_complete(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint dirs, newest first (by step number, not mtime)."""
    root = checkpoints_root(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and is_complete(p)]
    return sorted(found, key=lambda p: step_of(p) or -1, reverse=True)


def find_latest_complete(run_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint dir that has its ``COMPLETE`` marker, or None."""
    done = list_complete(run_dir)
    return done[0] if done else None


def tmp_dir(run_dir: str | os.PathLike, step: int) -> Path:
    return checkpoints_root(run_dir) / f"{step_name(step)}.tmp"


def prepare_tmp(run_dir: str | os.PathLike, step: int) -> Path:
    """Rank 0: an empty ``step_N.tmp/`` (a leftover from a killed save is removed first)."""
    tmp = tmp_dir(run_dir, step)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def finalize(tmp: Path) -> Path:
    """Rank 0, after every rank has written: rename ``.tmp`` away, then write the marker last."""
    final = tmp.with_name(tmp.name[: -len(".tmp")])
    if final.exists():  # a re-save of the same step (e.g. after resume) replaces the old one
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    atomic_write_bytes(final / COMPLETE, b"")
    _fsync_dir(final)
    return final


def prune(run_dir: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints; returns what was removed."""
    removed = []
    for old in list_complete(run_dir)[keep_last:]:
        (old / COMPLETE).unlink(missing_ok=True)  # incomplete first, so a crash mid-delete is safe
        shutil.rmtree(old, ignore_errors=True)
        removed.append(old)
    return removed


def remove_stale_tmp(run_dir: str | os.PathLike) -> list[Path]:
    """Rank 0 at start-up: ``*.tmp`` dirs are saves that a kill interrupted."""
    root = checkpoints_root(run_dir)
    stale = [p for p in root.glob("step_*.tmp") if p.is_dir()] if root.is_dir() else []
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def write_meta(ckpt_dir: Path, meta: Mapping[str, Any]) -> Path:
    """``meta.json``: step, epoch, samples_seen, data_seed, world_size, backend, metrics."""
    return atomic_write_bytes(ckpt_dir / META, json.dumps(dict(meta), indent=1, sort_keys=True).encode())


def read_meta(ckpt_dir: Path) -> dict[str, Any]:
    return json.loads((ckpt_dir / META).read_text())
