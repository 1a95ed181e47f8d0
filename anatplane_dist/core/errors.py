"""The package's one base exception and the exit codes every ``anatplane`` sub-command shares.

Every error a user can cause (bad config, missing input, a refused resume, a held lock) is an
:class:`AnatplaneError`; :func:`anatplane_dist.cli.main` turns it into one line on stderr and
its ``exit_code``, so no sub-command prints a traceback for bad input. Programming errors are
not AnatplaneErrors and still raise with a traceback.

Exit codes (the table in README.md, "Exit codes", is generated from :data:`EXIT_CODES`):
"""
from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit status of every sub-command and launcher."""
    OK = 0            #: the job did what it was asked
    CHECK_FAILED = 1  #: a check ran and found problems (e.g. ``shard --verify`` found bad shards)
    USAGE = 2         #: bad input, bad config, or a refusal (resume rules, run-dir lock); nothing written
    NONFINITE = 3     #: the loss became NaN/inf; stopped without saving, last checkpoint intact
    INTERRUPTED = 75  #: SIGTERM/SIGINT: a checkpoint was written; rerun the same command to resume
    CANCELLED = 130   #: Ctrl-C outside the trainer: stopped at once; finished outputs are kept, partial ones never appear


#: one line per exit code, for ``--help`` texts and the README table
EXIT_CODES: dict[int, str] = {
    ExitCode.OK: "success",
    ExitCode.CHECK_FAILED: "a check ran and found problems (the list is printed)",
    ExitCode.USAGE: "bad input, bad config or a refusal; the one-line message says which and why",
    ExitCode.NONFINITE: "non-finite loss; stopped without saving (the last complete checkpoint is intact)",
    ExitCode.INTERRUPTED: "stopped by SIGTERM/SIGINT after writing a checkpoint; rerun to resume",
    ExitCode.CANCELLED: "cancelled by Ctrl-C; what was finished is kept, nothing half-written is visible; rerun to continue",
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
