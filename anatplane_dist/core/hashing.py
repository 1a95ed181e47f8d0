"""The package's two digests: a file's sha256, and the fingerprint of a JSON-able value.

File digests seal shards (``manifest.json``), checkpoints (the signed ``COMPLETE`` marker) and
published versions (``SHA256SUMS``); fingerprints name cached work (a shard configuration, an
experiment arm or cell, a subject split) so a changed input is never served a stale result.
Both live here so that every seal and every cache key is computed the same way.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any

CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike, chunk: int = CHUNK) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks (hashlib releases the GIL: threads scale)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def json_fingerprint(obj: Any, length: int = 16, *, compact: bool = False) -> str:
    """First ``length`` hex digits of the sha256 of ``obj`` as canonical JSON (sorted keys,
    non-JSON values by ``str``). ``compact`` drops the spaces after separators: the form shard
    configurations have always been hashed in, kept so existing shard sets still resume."""
    separators = (",", ":") if compact else None
    blob = json.dumps(obj, sort_keys=True, default=str, separators=separators).encode()
    return hashlib.sha256(blob).hexdigest()[:length]
