"""Atomic writes: a reader sees a whole file or folder or none, never a partial one.

Files: a unique temporary file in the destination directory (same filesystem, so the rename is
atomic), fsync, permissions set for shared filesystems (``0o644``: group and others can read
what a job publishes), then ``os.replace``. A killed writer leaves at worst a hidden
``.<name>.*.tmp`` file, never a truncated target.

Folders (:func:`staged_dir`): built under a hidden name beside the target, every file fsynced,
then renamed into place in one step: a published version, an exported nnU-Net dataset, a
phantom subject. Inside a staging folder files are written directly (:func:`write_durable`,
:func:`copy_durable`): the folder's rename is the commit. Checkpoints follow the same rule but
are written by every rank, so :mod:`anatplane_dist.core.checkpoints` commits them itself
(with :func:`fsync_dir` and a rename).
"""
from __future__ import annotations

import ctypes
import errno
import json
import math
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from anatplane_dist.core.errors import DiskFullError, is_disk_full

__all__ = ["atomic_path", "commit_file", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "json_safe",
           "staged_dir", "write_durable", "copy_durable", "fsync_dir", "rename_noreplace",
           "FILE_MODE", "DIR_MODE", "naming_target"]

FILE_MODE, DIR_MODE = 0o644, 0o755


@contextmanager
def naming_target(path: str | os.PathLike, what: str = "") -> Iterator[None]:
    """A full disk inside the block becomes one :class:`DiskFullError` naming ``path`` (the
    destination, not the source a copy was reading: ``shutil`` names both) and saying that
    nothing complete was replaced."""
    try:
        yield
    except DiskFullError:
        raise
    except (OSError, RuntimeError) as e:
        if not is_disk_full(e):
            raise
        raise DiskFullError(f"no space left on device writing {what + ' ' if what else ''}{path}; nothing complete "
                            "was replaced (writes are atomic): free space and rerun") from None


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
        with naming_target(path):
            yield tmp
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            commit_file(tmp, path, mode=mode)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def commit_file(tmp: str | os.PathLike, path: str | os.PathLike, *, mode: int = 0o644) -> Path:
    """Give an already written and fsynced ``tmp`` (same directory as ``path``) its final mode
    and rename it onto ``path``: the commit step of every atomic file, also of writers that
    stream into their temporary file over many calls (the shard writer)."""
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return Path(path)


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


# --------------------------------------------------------------------------- folders
def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory (its entries); filesystems that refuse it are left alone."""
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


def write_durable(path: str | os.PathLike, data: bytes, *, mode: int = FILE_MODE) -> None:
    """Write ``data`` and fsync it, in place: for files inside a :func:`staged_dir` folder."""
    with naming_target(path), open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, mode)


def copy_durable(src: str | os.PathLike, dst: str | os.PathLike, *, mode: int = FILE_MODE) -> None:
    """Copy ``src`` to ``dst`` and fsync it, in place: for files inside a :func:`staged_dir` folder."""
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    with naming_target(dst):
        shutil.copyfile(src, dst)
        with open(dst, "rb") as f:
            os.fsync(f.fileno())
    os.chmod(dst, mode)


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100
try:
    _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
except (OSError, AttributeError):  # not glibc / too old: fall back to rename(2)
    _renameat2 = None


def rename_noreplace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename ``src`` to ``dst``; ``FileExistsError`` if ``dst`` exists (never replaced).

    Uses ``renameat2(RENAME_NOREPLACE)``; where the filesystem does not support it (some NFS),
    ``rename(2)`` of a directory still refuses a non-empty target, and staged folders are never
    empty, so the guarantee holds there too.
    """
    src, dst = Path(src), Path(dst)
    if _renameat2 is not None:
        rc = _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(errno.EEXIST, "already exists", str(dst))
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(src))
    if dst.exists() or dst.is_symlink():
        raise FileExistsError(errno.EEXIST, "already exists", str(dst))
    try:
        os.rename(src, dst)
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise FileExistsError(errno.EEXIST, "already exists", str(dst)) from e
        raise


@contextmanager
def staged_dir(final: str | os.PathLike, *, replace: bool = False, prefix: str = ".staging-",
               mode: int = DIR_MODE) -> Iterator[Path]:
    """Yield an empty hidden folder beside ``final``; on success it is fsynced and renamed to ``final``.

    Readers skip dot-folders, so they see ``final`` complete or not at all. With ``replace``
    an existing ``final`` is swapped out (moved aside, then removed); without it the rename
    refuses an existing ``final`` with ``FileExistsError`` (the staging folder is removed).
    Any error inside the block removes the staging folder and re-raises.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.with_name(f"{prefix}{final.name}-{uuid.uuid4().hex[:12]}")
    staging.mkdir(mode=mode)
    try:
        yield staging
        os.chmod(staging, mode)
        fsync_dir(staging)
        if replace and final.exists():
            old = final.with_name(f".old-{final.name}-{uuid.uuid4().hex[:12]}")
            os.replace(final, old)
            os.replace(staging, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            rename_noreplace(staging, final)
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
