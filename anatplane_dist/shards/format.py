"""The shard sample format read back: member bytes -> checked numpy arrays (``shards/FORMAT.md``).

The sharder writes samples (:mod:`.samples`, sealed by :mod:`.seal`); this module is the one
reader of them, used by the training stream's workers (:mod:`anatplane_dist.data.decode`),
``anatplane shard --verify`` and the tools (:mod:`.reader`), so what verifies is what trains.
A sample that breaks the schema raises :class:`SampleError` with the reason; the stream counts
and skips it instead of stopping.

Two layouts are read:

* ``anatplane-shard/2`` (what ``anatplane shard`` writes): ``image.npy`` + ``meta.json``, the
  targets inside ``meta.json`` and the whole sample sealed by a crc32 (:mod:`.seal`) that is
  checked **before** anything else is parsed: a changed byte in either member is a
  ``"checksum"`` skip, counted like any corrupt member, and never reaches the model;
* ``anatplane-shard/1``: ``image.npy``, ``lines.npy``, ``valid.npy``, ``loc.npy`` (no checksum;
  written by releases before the seal; see FORMAT.md for who may still hold such shards).

Both give the same per-sample fields. Numpy only: no torch in the sharder's processes.
"""
from __future__ import annotations

import io
import json
from typing import Any, Mapping

import numpy as np
import numpy.lib.format as npformat

from anatplane_dist.shards.manifest import ShardFacts, sample_fact_error
from anatplane_dist.shards.seal import seal_error

__all__ = ["SampleError", "decode_sample", "load_npy", "wanted_member", "REQUIRED", "REQUIRED_V1"]

#: members of a format-1 sample (the arrays as separate ``.npy`` members, no checksum)
REQUIRED_V1 = ("image.npy", "lines.npy", "valid.npy", "loc.npy")
#: members of a format-2 sample (targets and checksum in ``meta.json``)
REQUIRED = ("image.npy", "meta.json")
_WANTED = tuple(set(REQUIRED_V1) | set(REQUIRED))


class SampleError(ValueError):
    """A sample that does not follow the shard schema.

    ``reason`` is a short category (``"npy"``, ``"missing"``, ``"shape"``, ...) so warnings can be
    rate-limited per kind of problem; the message names the sample and the detail.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def wanted_member(fname: str) -> bool:
    """Tar member filter: read only the members a batch can need."""
    return fname.endswith(_WANTED)


_MAGIC = b"\x93NUMPY"
#: parsed ``.npy`` headers by their bytes: every sample of a shard set has the same few headers,
#: and numpy parses each one with ``ast.literal_eval`` (a third of the decode time otherwise)
_HEADERS: dict[bytes, tuple[tuple[int, ...], bool, np.dtype]] = {}


def _parse_header(data: bytes, end: int, major: int) -> tuple[tuple[int, ...], bool, np.dtype]:
    fp = io.BytesIO(data[:end])
    npformat.read_magic(fp)
    read = npformat.read_array_header_1_0 if major == 1 else npformat.read_array_header_2_0
    return read(fp)


def load_npy(data: bytes, name: str = "array") -> np.ndarray:
    """Parse ``.npy`` bytes without copying the payload (``np.load`` on a BytesIO copies it).

    The result is a read-only view of ``data``.

    Raises:
        SampleError: not an ``.npy``, an object dtype (pickles are never loaded) or truncated data.
    """
    if len(data) < 10 or data[:6] != _MAGIC:
        raise SampleError("npy", f"{name}: not a valid .npy (no NUMPY magic)")
    major = data[6]
    if major == 3:  # utf-8 field names: rare, no public header reader, take numpy's own path
        try:
            return np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, EOFError, OSError) as exn:
            raise SampleError("npy", f"{name}: not a valid .npy ({exn})") from None
    if major not in (1, 2):
        raise SampleError("npy", f"{name}: unsupported .npy format version {major}")
    start = 10 if major == 1 else 12
    offset = start + int.from_bytes(data[8:start], "little")
    header = data[start:offset]
    parsed = _HEADERS.get(header)
    if parsed is None:
        try:
            parsed = _parse_header(data, offset, major)
        except (ValueError, EOFError, OSError) as exn:
            raise SampleError("npy", f"{name}: not a valid .npy ({exn})") from None
        if len(_HEADERS) < 1024:
            _HEADERS[header] = parsed
    shape, fortran, dtype = parsed
    if dtype.hasobject:
        raise SampleError("npy", f"{name}: object arrays are not allowed")
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) - offset < count * dtype.itemsize:
        raise SampleError("truncated", f"{name}: truncated .npy ({len(data) - offset} of "
                          f"{count * dtype.itemsize} data bytes)")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)


def _all_finite(x: np.ndarray) -> bool:
    """``np.isfinite(x).all()``, but float16 via its exponent bits (numpy's f16 isfinite is ~30x slower)."""
    if x.dtype == np.float16:
        return not ((x.view(np.uint16) & 0x7C00) == 0x7C00).any()
    return bool(np.isfinite(x).all())


def decode_sample(raw: Mapping[str, Any], expect: ShardFacts | None = None) -> dict[str, Any]:
    """Check one raw sample against the schema and return the per-sample batch fields.

    Invalid lines become zero rows with ``valid = 0``; an absent location becomes ``loc = 0``
    with ``loc_valid = 0``. A ``valid`` flag set on a non-finite line is a schema violation
    (a sharder bug would otherwise turn into made-up targets), so the sample is rejected.
    With ``expect`` (the manifest's facts) a sample of another grid, channel count, spacing or
    channel order is rejected too: one shard copied in from another sharding is a counted skip,
    never a batch that cannot be collated or a silent mix of spacings.

    Raises:
        SampleError: missing member, wrong dtype/shape, non-finite image, inconsistent flags,
            facts that differ from ``expect`` (reason ``"facts"``).
    """
    key = raw.get("__key__", "?")
    meta: dict[str, Any] = {}
    if "lines.npy" in raw:
        image, lines, valid, loc = _arrays_v1(raw, key)
    else:
        image, lines, valid, loc, meta = _arrays_v2(raw, key)
    if image.ndim != 2 or image.dtype.kind != "f" or 0 in image.shape:
        raise SampleError("shape", f"{key}: image must be a non-empty float (H, W) array, got {image.dtype} {image.shape}")
    if lines.ndim != 2 or lines.shape[1] != 3 or lines.dtype.kind != "f":
        raise SampleError("shape", f"{key}: lines must be float (K, 3), got {lines.dtype} {lines.shape}")
    if valid.shape != (lines.shape[0],) or valid.dtype.kind not in "uib":
        raise SampleError("shape", f"{key}: valid must be integer ({lines.shape[0]},), got {valid.dtype} {valid.shape}")
    if loc.size != 1 or loc.dtype.kind != "f":
        raise SampleError("shape", f"{key}: loc must be a float scalar, got {loc.dtype} {loc.shape}")
    if expect is not None:
        why = sample_fact_error(meta, image.shape, lines.shape[0], expect)
        if why:
            raise SampleError("facts", f"{key}: {why}")
    if not _all_finite(image):
        raise SampleError("nonfinite", f"{key}: image has non-finite values")
    flags = valid.astype(bool)
    finite = np.isfinite(lines).all(axis=1)
    if (flags & ~finite).any():
        raise SampleError("flags", f"{key}: valid flag set on a non-finite line (rows {np.flatnonzero(flags & ~finite).tolist()})")
    loc_value = float(loc.reshape(()))
    loc_ok = bool(np.isfinite(loc_value))
    return {
        "image": image,  # z-scored per batch in collate
        "lines": np.where(flags[:, None], lines, 0).astype(np.float32),
        "valid": flags.astype(np.float32),
        "loc": np.float32(loc_value if loc_ok else 0.0),
        "loc_valid": np.float32(loc_ok),
        "key": str(key),
    }


def _arrays_v1(raw: Mapping[str, Any], key: str) -> tuple[np.ndarray, ...]:
    missing = [m for m in REQUIRED_V1 if m not in raw]
    if missing:
        raise SampleError("missing", f"{key}: missing member(s) {missing}")
    return tuple(load_npy(raw[m], f"{key}.{m}") for m in REQUIRED_V1)


def _arrays_v2(raw: Mapping[str, Any], key: str) -> tuple[np.ndarray, ...]:
    """Checksum first, then the targets out of ``meta.json`` (see the module docstring)."""
    missing = [m for m in REQUIRED if m not in raw]
    if missing:
        raise SampleError("missing", f"{key}: missing member(s) {missing}")
    image_b, meta_b = raw["image.npy"], raw["meta.json"]
    bad = seal_error(image_b, meta_b)
    if bad:
        raise SampleError("checksum", f"{key}: {bad}")
    try:
        meta = json.loads(meta_b)
        rows = meta["lines"]
        valid = np.array([bool(r["valid"]) for r in meta["references"]], dtype=np.uint8)
        value = meta["location"]["value"]
        lines = np.array([[np.nan] * 3 if r is None else r for r in rows], dtype=np.float32).reshape(len(rows), -1)
        loc = np.array(np.nan if value is None else value, dtype=np.float32)
    except (ValueError, KeyError, TypeError) as exn:
        raise SampleError("meta", f"{key}: meta.json without valid targets ({type(exn).__name__}: {exn})") from None
    if len(rows) != len(valid) or any((r is None) == bool(v) for r, v in zip(rows, valid)):
        raise SampleError("flags", f"{key}: meta.json lines and references[].valid disagree")
    return load_npy(image_b, f"{key}.image.npy"), lines, valid, loc, meta
