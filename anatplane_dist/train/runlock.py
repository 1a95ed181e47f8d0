"""One writer per run directory: an exclusive lock held for the whole life of the trainer.

``<run_dir>/.lock`` is locked with ``fcntl.lockf`` (POSIX record locks). What the OS
promises: on a local file system the kernel releases the lock when the holder dies (even by
SIGKILL), so a crash never leaves a stale lock. On NFS (v3 through lockd/statd, v4 natively)
POSIX locks are cluster-wide and are recovered when the holder's node reboots; a holder whose
node hangs keeps the lock until the server's lease/grace expiry. On Lustre they are
cluster-wide only when the client mounts with ``-o flock`` (``localflock`` makes them
node-local; with neither, locking fails and this module says so). The holder's host, pid and
start time are written into the lock file after it is taken, so a refused second trainer can
name who holds it.
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys
from pathlib import Path

from anatplane_dist.core.errors import AnatplaneError

LOCK_NAME = ".lock"


class RunLockedError(AnatplaneError):
    """Another process owns this run directory."""


class RunLock:
    """``with RunLock(run_dir):`` — exclusive ownership of ``run_dir`` (rank 0 of a job takes it)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise RunLockedError(f"run dir {self.path.parent} is in use by {holder(self.path)}; "
                                     "wait for it to finish or use another --run-dir") from None
            raise RunLockedError(f"cannot lock {self.path} ({e.strerror}): this file system offers no "
                                 "POSIX locks (Lustre: mount with -o flock)") from None
        info = {"host": socket.gethostname(), "pid": os.getpid(),
                "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "command": " ".join(sys.argv)[:500]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Unlock (the holder info stays: it is only read while the lock is held)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.lockf(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> "RunLock":
        return self.acquire() if self._fd is None else self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder(lock_path: Path) -> str:
    """``host pid N since T`` of the process holding ``lock_path`` (as it recorded itself)."""
    try:
        info = json.loads(lock_path.read_text() or "{}")
        return f"host {info['host']} pid {info['pid']} since {info['since']} ({info.get('command', '')})"
    except (OSError, ValueError, KeyError):
        return "another process (no holder information recorded yet)"
