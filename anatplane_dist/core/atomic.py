"""Atomic file writes: a reader sees a whole file or none, never a partial one.

Every writer in the package goes through here: a unique temporary file in the destination
directory (same filesystem, so the rename is atomic), fsync, permissions set for shared
filesystems (``0o644``: group and others can read what a job publishes), then ``os.replace``.
A killed writer leaves at worst a hidden ``.<name>.*.tmp`` file, never a truncated target.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json"]


@contextmanager
def atomic_path(path: str | os.PathLike, *, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is fsynced and renamed onto ``path``.

    For writers that want a file name (``torch.save``, ``pydicom.dcmwrite``, ``nib.save``,
    ``PIL.Image.save``).  The temporary name keeps ``path``'s suffixes, so libraries that choose
    the format from the extension (``.nii.gz``) still do.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp" + "".join(path.suffixes),
                                    dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path, mode=mode) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, *, mode: int = 0o644) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def json_safe(obj: Any) -> Any:
    """NaN/inf (an undefined HD95 or AUC) -> null, recursively, so the files are standard JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any, *, lines: bool = False, mode: int = 0o644) -> Path:
    """Write ``obj`` as indented, key-sorted JSON (or a list as JSON lines) atomically."""
    if lines:
        text = "".join(json.dumps(item, sort_keys=True) + "\n" for item in obj)
    else:
        text = json.dumps(obj, indent=1, sort_keys=True) + "\n"
    return atomic_write_text(path, text, mode=mode)
