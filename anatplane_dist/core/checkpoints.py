"""Atomic checkpoint directories and the newest-complete lookup.

Layout under ``<run_dir>/checkpoints/``: ``step_00000123.tmp/`` while being written (by every
rank for DeepSpeed), renamed by rank 0 to ``step_00000123/`` after a barrier, and then a
``COMPLETE`` marker written last. Anything without the marker (a kill during the save, a
full disk) is ignored by :func:`find_latest_complete`, which both the trainer (``resume:
auto``) and the SLURM launcher use, so the two can never disagree about which checkpoint
is "latest".

The marker is a signed manifest: the sha256 of every file of the checkpoint, and an HMAC of
that list under a per-user key kept outside the run dir (:func:`checkpoint_key`).
:func:`verify` checks both before anything is loaded, so a file changed, added or removed
after the save (disk corruption, or someone who can write the run dir but not the user's
home) refuses the checkpoint before DeepSpeed's ``torch.load(weights_only=False)`` ever
unpickles it.

The fp32 weight exports inside a checkpoint (``fp32/<part>.safetensors``) are written by
:func:`anatplane_dist.core.weights.export_fp32`: the weights file format has one home.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any, Mapping

from anatplane_dist.core.atomic import atomic_write_bytes, atomic_write_json, fsync_dir
from anatplane_dist.core.errors import AnatplaneError
from anatplane_dist.core.hashing import sha256_file

COMPLETE = "COMPLETE"
META = "meta.json"
MARKER_FORMAT = "anatplane-checkpoint/2"
#: where the signing key lives unless ``$ANATPLANE_CHECKPOINT_KEY`` names another file
DEFAULT_KEY_FILE = Path("~/.config/anatplane/checkpoint.key")
KEY_ENV = "ANATPLANE_CHECKPOINT_KEY"
REFUSED = "refused"
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


def is_unsigned(ckpt_dir: Path) -> bool:
    """A marker of the older format (empty or without the signed file list)."""
    try:
        doc = json.loads((ckpt_dir / COMPLETE).read_text() or "{}")
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("format") != MARKER_FORMAT and "hmac" not in doc


def latest_verified(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint whose files match its signed marker (publish and export
    read weights only from one; a newer one that fails is skipped, and the caller may say so)."""
    for cand in list_complete(run_dir):
        try:
            verify(cand)
        except CheckpointVerifyError:
            continue
        return cand
    return None


def tmp_dir(run_dir: str | os.PathLike, step: int) -> Path:
    return checkpoints_root(run_dir) / f"{step_name(step)}.tmp"


def prepare_tmp(run_dir: str | os.PathLike, step: int) -> Path:
    """Rank 0: an empty ``step_N.tmp/`` (a leftover from a killed save is removed first)."""
    tmp = tmp_dir(run_dir, step)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


class CheckpointVerifyError(AnatplaneError):
    """A checkpoint's files do not match its signed marker (or it has none): never load it."""


class CheckpointLoadError(AnatplaneError, RuntimeError):
    """A checkpoint directory could not be restored into this model / optimiser."""


def checkpoint_key(create: bool = False) -> bytes | None:
    """The per-user HMAC key (32 random bytes, mode 0600), or None when absent and not ``create``.

    It lives outside every run dir (``~/.config/anatplane/checkpoint.key`` or the file named
    by ``$ANATPLANE_CHECKPOINT_KEY``), so write access to a shared run dir is not enough to
    forge a marker. On a cluster, $HOME is the same on every node.
    """
    path = Path(os.environ.get(KEY_ENV) or DEFAULT_KEY_FILE).expanduser()
    if not path.is_file():
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
            f.flush()
            os.fsync(f.fileno())
        try:  # link(2) is an atomic exclusive create: two jobs creating it at once keep the first key
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    key = path.read_bytes()
    if len(key) != 32:
        raise CheckpointVerifyError(f"{path}: a checkpoint key is 32 bytes, this file has {len(key)}; "
                                    f"move it away (a new key is made on the next save)")
    return key


def _listing(ckpt_dir: Path) -> dict[str, str]:
    """sha256 of every file under ``ckpt_dir`` except the marker, by relative posix path."""
    return {p.relative_to(ckpt_dir).as_posix(): sha256_file(p)
            for p in sorted(ckpt_dir.rglob("*")) if p.is_file() and p.name != COMPLETE}


def _signature(files: Mapping[str, str], key: bytes) -> str:
    body = json.dumps(dict(sorted(files.items())), separators=(",", ":")).encode()
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def write_marker(ckpt_dir: Path) -> Path:
    """The signed ``COMPLETE`` marker: every file's sha256 and their HMAC (written last)."""
    files = _listing(ckpt_dir)
    key = checkpoint_key(create=True)
    return atomic_write_json(ckpt_dir / COMPLETE, {"format": MARKER_FORMAT, "files": files,
                                                   "hmac": _signature(files, key)})


def verify(ckpt_dir: Path) -> None:
    """Check every file of ``ckpt_dir`` against its signed marker; raise naming the first problem.

    Raises:
        CheckpointVerifyError: no marker, a marker of an older format (unsigned), a key that is
            not this user's, a signature mismatch, or a file missing, added or changed.
    """
    marker = ckpt_dir / COMPLETE
    try:
        doc = json.loads(marker.read_text() or "{}")
    except (OSError, ValueError) as e:
        raise CheckpointVerifyError(f"{ckpt_dir}: unreadable {COMPLETE} marker ({e})") from e
    if doc.get("format") != MARKER_FORMAT:
        raise CheckpointVerifyError(
            f"{ckpt_dir}: {COMPLETE} has no signed file list (written by an older version); its files "
            f"cannot be verified. Start a new run from its weights with train.init_from={ckpt_dir / 'fp32'}")
    files = doc.get("files") or {}
    key = checkpoint_key()
    if key is None or not hmac.compare_digest(_signature(files, key), str(doc.get("hmac", ""))):
        where = os.environ.get(KEY_ENV) or DEFAULT_KEY_FILE
        raise CheckpointVerifyError(
            f"{ckpt_dir}: the marker's signature does not match this user's key ({where}): it was "
            "written by another user or key, or edited. Resume as the user who wrote it, or start a "
            f"new run with train.init_from={ckpt_dir / 'fp32'}")
    actual = {p.relative_to(ckpt_dir).as_posix() for p in ckpt_dir.rglob("*") if p.is_file() and p.name != COMPLETE}
    missing, extra = sorted(set(files) - actual), sorted(actual - set(files))
    if missing or extra:
        raise CheckpointVerifyError(f"{ckpt_dir}: files {'missing: ' + ', '.join(missing) if missing else ''}"
                                    f"{'; ' if missing and extra else ''}"
                                    f"{'not in the signed list: ' + ', '.join(extra) if extra else ''}")
    for rel, digest in files.items():
        if sha256_file(ckpt_dir / rel) != digest:
            raise CheckpointVerifyError(f"{ckpt_dir}: {rel} differs from the sha256 recorded at save time")


def finalize(tmp: Path) -> Path:
    """Rank 0, after every rank has written: the signed marker inside ``.tmp``, then the rename.

    The rename is the commit: a kill before it leaves a ``.tmp`` (removed at the next start), a
    kill after it a complete checkpoint. Never replaces an existing checkpoint of the same step
    (a run resumed from an older checkpoint moves refused newer ones aside first, :func:`set_aside`).
    """
    final = tmp.with_name(tmp.name[: -len(".tmp")])
    if final.exists():
        raise FileExistsError(f"{final} exists; refusing to replace a checkpoint")
    write_marker(tmp)
    fsync_dir(tmp)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    return final


def unmarked(run_dir: str | os.PathLike) -> list[Path]:
    """``step_N`` dirs without a marker (renamed by an older version, killed before its marker)."""
    root = checkpoints_root(run_dir)
    return [p for p in sorted(root.iterdir()) if p.is_dir() and step_of(p) is not None
            and not (p / COMPLETE).is_file()] if root.is_dir() else []


def set_aside(ckpt_dir: Path, reason: str) -> Path:
    """Move a refused checkpoint to ``checkpoints/refused/`` with a note (kept, never deleted)."""
    dest_root = ckpt_dir.parent / REFUSED
    dest_root.mkdir(exist_ok=True)
    dest = dest_root / ckpt_dir.name
    n = 1
    while dest.exists():
        dest, n = dest_root / f"{ckpt_dir.name}.{n}", n + 1
    os.replace(ckpt_dir, dest)
    atomic_write_bytes(dest / "REFUSED.txt", (reason.strip() + "\n").encode())
    fsync_dir(dest_root)
    return dest


def has_checkpoints(run_dir: str | os.PathLike) -> bool:
    """Any ``step_N`` dir (complete or not) under the run's checkpoints."""
    root = checkpoints_root(run_dir)
    return root.is_dir() and any(step_of(p) is not None or p.name.endswith(".tmp") for p in root.iterdir())


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
