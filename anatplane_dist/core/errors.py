"""The package's one base exception and the exit codes every ``anatplane`` sub-command shares.

Every error a user can cause (bad config, missing input, a refused resume, a held lock) is an
:class:`AnatplaneError`; :func:`anatplane_dist.cli.main` turns it into one line on stderr and
its ``exit_code``, so no sub-command prints a traceback for bad input. Programming errors are
not AnatplaneErrors and still raise with a traceback.

Exit codes (the table in README.md, "Exit codes", is generated from :data:`EXIT_CODES`):
"""
from __future__ import annotations

import errno
from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit status of every sub-command and launcher."""
    OK = 0            #: the job did what it was asked
    CHECK_FAILED = 1  #: a check ran and found problems (e.g. ``shard --verify`` found bad shards)
    USAGE = 2         #: bad input, bad config, or a refusal (resume rules, run-dir lock); nothing written
    NONFINITE = 3     #: the loss became NaN/inf; stopped without saving, last checkpoint intact
    INTERRUPTED = 75  #: SIGTERM/SIGINT: a checkpoint was written; rerun the same command to resume
    CANCELLED = 130   #: Ctrl-C outside the trainer: stopped at once; finished outputs kept, no partial one


#: one line per exit code, for ``--help`` texts and the README table
EXIT_CODES: dict[int, str] = {
    ExitCode.OK: "success",
    ExitCode.CHECK_FAILED: "a check ran and found problems (the list is printed)",
    ExitCode.USAGE: "bad input, bad config or a refusal; the one-line message says which and why",
    ExitCode.NONFINITE: "non-finite loss; stopped without saving (the last complete checkpoint is intact)",
    ExitCode.INTERRUPTED: "stopped by SIGTERM/SIGINT after writing a checkpoint; rerun to resume",
    ExitCode.CANCELLED: ("cancelled by Ctrl-C; what was finished is kept, nothing half-written is visible; "
                         "rerun to continue"),
}

__doc__ += "".join(f"\n- ``{int(code)}``: {text}" for code, text in EXIT_CODES.items())


class AnatplaneError(Exception):
    """Base of every error caused by the user's input or environment, not by a bug.

    ``exit_code`` is what the CLI exits with; subclasses override it where a different
    entry of :class:`ExitCode` applies.
    """
    exit_code: int = ExitCode.USAGE


def one_line(message: object) -> str:
    """Collapse a message to one line (multi-line library messages stay readable on stderr)."""
    return " ".join(str(message).split())


#: errno values that mean "the filesystem is full" (for this user: a quota counts the same)
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: what libraries that do not raise OSError say instead: torch's zip writer ("[enforce fail at
#: inline_container.cc] . unexpected pos", "file write failed", "basic_ios::clear: iostream error"),
#: safetensors, numpy
_DISK_FULL_TEXT = ("no space left on device", "disk quota exceeded", "unexpected pos", "file write failed",
                   "iostream error")


class DiskFullError(AnatplaneError):
    """A write failed for lack of space (ENOSPC/EDQUOT); the message says what was being written
    and what is intact (every writer is atomic, so what was complete before still is)."""


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is a full disk or an exceeded quota."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, DiskFullError):
            return True
        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
            return True
        if isinstance(e, (OSError, RuntimeError)) and any(t in str(e).lower() for t in _DISK_FULL_TEXT):
            return True
        e = e.__cause__ or e.__context__
    return False
