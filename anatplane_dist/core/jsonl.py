"""JSON-lines files that only grow: metrics, run history, the sharder's journal, job records.

One rule for all of them. A writer killed mid-line leaves a *torn* last line; the next append
first ends it with a newline, so the fragment stays a line of its own instead of corrupting
the new row, and every reader skips lines that do not parse as a JSON object. An append is one
``write`` on an ``O_APPEND`` descriptor, so concurrent appenders of short rows never interleave.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping


def append_jsonl(path: str | os.PathLike, row: Mapping[str, Any], *, durable: bool = False,
                 sort_keys: bool = False) -> None:
    """Append ``row`` as one line; ``durable`` fsyncs it (a journal that a resume trusts)."""
    line = (json.dumps(row, sort_keys=sort_keys) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size:
            with open(path, "rb") as fh:       # a torn last line from a kill: end it first
                fh.seek(size - 1)
                if fh.read(1) != b"\n":
                    line = b"\n" + line
        os.write(fd, line)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


def iter_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Every JSON object line of ``path`` in order (none when absent); torn or foreign lines skipped."""
    path = Path(path)
    if not path.is_file():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            yield row


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """:func:`iter_jsonl` as a list."""
    return list(iter_jsonl(path))
