"""Values written into job scripts: no control characters, ever.

submitit quotes shell metacharacters (``$()``, ``;``, backticks), but a newline ends the line a
value is on: ``--job-name $'x\\ntouch PWNED'`` would add a command to the sbatch script,
``--partition $'gpu\\n#SBATCH --uid=0'`` a directive. No legitimate name, path or SLURM value
contains a control character, so every value bound for a script is refused, not escaped.
"""
from __future__ import annotations

import unicodedata
from typing import Iterable

__all__ = ["control_char", "refuse_control_chars"]


def control_char(text: str) -> str | None:
    """The first control character of ``text`` (newline, carriage return, tab, NUL, DEL...), if any."""
    return next((c for c in text if unicodedata.category(c) == "Cc"), None)


def refuse_control_chars(values: Iterable[tuple[str, object]]) -> None:
    """Raise ``ValueError`` naming the option of the first ``(option, value)`` with a control character."""
    for flag, value in values:
        if value is None:
            continue
        bad = control_char(str(value))
        if bad is not None:
            raise ValueError(f"{flag} {str(value)!r} contains a control character ({bad!r}); it would be "
                             f"written into the sbatch script, where a line break starts a new command")
