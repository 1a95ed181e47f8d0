"""Per-sample checksum: ``meta.json`` ends with the crc32 of every byte of the sample before it.

A sample of format ``anatplane-shard/2`` has two members, ``image.npy`` and ``meta.json``
(which holds the targets). The sharder *seals* the sample: ``meta.json`` is the compact JSON
of its fields with one last field ``"crc32": "<8 hex>"``, the CRC-32 of the image bytes
followed by the meta bytes up to (not including) ``,"crc32"``. So the checksum covers every
byte of both members except its own 8 digits, the meta stays plain JSON, and checking it costs
one ``zlib.crc32`` pass (~31 us for a 224^2 float16 image) and no re-serialisation.

Why crc32: the threat is bit rot and copy errors between the sharder and the loss, not an
adversary (the manifest's per-shard sha256 is the cryptographic check, ``anatplane shard
--verify``); crc32 is the cheapest check that catches every burst error up to 32 bits.
Shared by the writer (``shards.samples``) and the loader (``data.decode``).
"""
from __future__ import annotations

import json
import re
import zlib
from typing import Any

__all__ = ["FIELD", "seal_meta", "seal_body", "join_bodies", "dumps", "seal_error"]

FIELD = "crc32"
_TAIL_HEAD = b',"' + FIELD.encode() + b'":"'
_TAIL = re.compile(rb',"crc32":"([0-9a-f]{8})"\}\Z')
TAIL_LEN = len(_TAIL_HEAD) + 8 + 2


def _crc(image: bytes, body: bytes) -> int:
    return zlib.crc32(body, zlib.crc32(image))


def dumps(obj: dict[str, Any]) -> bytes:
    """The compact JSON every sealed ``meta.json`` uses (no NaN, UTF-8)."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()


def seal_meta(meta: dict[str, Any], image: bytes) -> bytes:
    """Compact JSON of ``meta`` (no NaN) with the sample's crc32 appended as its last field."""
    if not meta or FIELD in meta:
        raise ValueError(f"meta must be a non-empty dict without a {FIELD!r} field")
    return seal_body(dumps(meta)[:-1], image)


def join_bodies(common: bytes, own: dict[str, Any]) -> bytes:
    """``dumps(dict(common_dict, **own))[:-1]`` from ``common = dumps(common_dict)[:-1]``: the
    same bytes, but the fields shared by all frames of a slice are serialised once."""
    if FIELD in own:
        raise ValueError(f"{FIELD!r} is reserved")
    return common + b"," + dumps(own)[1:-1] if own else common


def seal_body(body: bytes, image: bytes) -> bytes:
    """Seal a compact JSON object given without its closing brace (see :func:`join_bodies`)."""
    return body + _TAIL_HEAD + b"%08x" % _crc(image, body) + b'"}'


def seal_error(image: bytes, meta: bytes) -> str:
    """``""`` when ``meta`` carries the checksum of ``image`` + itself, else what is wrong."""
    m = _TAIL.search(meta[-TAIL_LEN:])
    if m is None:
        return f"meta.json does not end with its {FIELD} field (not a sealed anatplane-shard/2 sample)"
    want = int(m.group(1), 16)
    got = _crc(image, meta[:-TAIL_LEN])
    if got != want:
        return f"checksum mismatch: crc32 of the sample is {got:08x}, meta.json says {want:08x}"
    return ""
