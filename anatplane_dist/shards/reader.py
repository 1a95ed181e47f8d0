"""Read a shard back with ``tarfile`` alone: samples grouped by key, checked and decoded.

For tools and tests that look at a shard outside the training stream (``--verify``, the
sharder's tests, benchmarks). The checks and the decoding are the loader's own
(:func:`anatplane_dist.shards.format.decode_sample`), so what this accepts is what trains.
"""
from __future__ import annotations

import json
import os
import tarfile
from typing import Any, Iterator

import numpy as np

__all__ = ["iter_raw_samples", "read_samples"]


def iter_raw_samples(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """``{"__key__": key, "<field>": bytes, ...}`` per sample, in tar order (members of a
    sample are consecutive, as WebDataset requires).

    Raises:
        tarfile.TarError / OSError: unreadable tar.
    """
    current: dict[str, Any] | None = None
    with tarfile.open(path) as tf:
        for m in tf:
            if not m.isfile():
                continue
            key, _, field = m.name.partition(".")
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            if current is None:
                current = {"__key__": key}
            fh = tf.extractfile(m)
            current[field] = fh.read() if fh is not None else b""
    if current is not None:
        yield current


def read_samples(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Every sample of one shard: ``key -> {image, lines, valid, loc, loc_valid, meta}`` as the
    loader decodes them, except that masked lines are NaN rows (as stored) instead of the
    batch's zero rows: float32 ``lines`` (K, 3), bool ``valid`` (K,), float ``loc`` (NaN when
    absent), float16 ``image``, plus the parsed ``meta.json``.

    Raises:
        anatplane_dist.shards.format.SampleError: a sample the loader would skip (checksum, schema).
    """
    from anatplane_dist.shards.format import decode_sample

    out: dict[str, dict[str, Any]] = {}
    for raw in iter_raw_samples(path):
        d = decode_sample(raw)
        meta = json.loads(raw["meta.json"]) if "meta.json" in raw else {}
        valid = d["valid"].astype(bool)
        out[raw["__key__"]] = {"image": np.asarray(d["image"]), "valid": valid,
                               "lines": np.where(valid[:, None], d["lines"], np.float32(np.nan)),
                               "loc": float(d["loc"]) if d["loc_valid"] else float("nan"), "meta": meta}
    return out
