"""Small schema-conformant shard sets for tests and loader benchmarks, written with real tars.

The content follows a fixed pattern so readers can check what they got back: the key is
``<prefix><shard:02d>_ser_s000_f<index:03d>``; line 0 is invalid (NaN row, ``valid = 0``)
when ``index % 3 == 0``; the location is absent (NaN) for odd ``index`` and equals
``shard * 100 + index`` otherwise; lines are unit-normal ``(a, b, c)``. ``corrupt`` replaces
members of chosen samples (e.g. garbage bytes) to exercise the skip-and-count path.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import webdataset as wds


def sample_key(prefix: str, shard: int, index: int) -> str:
    """The ``__key__`` of sample ``index`` in shard ``shard`` (schema form, no dots)."""
    return f"{prefix}{shard:02d}_ser_s000_f{index:03d}"


def all_keys(prefix: str, sizes: list[int]) -> set[str]:
    """Every key a shard set written with these ``sizes`` holds."""
    return {sample_key(prefix, s, i) for s, n in enumerate(sizes) for i in range(n)}


def make_sample(prefix: str, shard: int, index: int, rng: np.random.Generator, size: tuple[int, int],
                k: int) -> dict[str, Any]:
    """One sample in the shard schema (float16 image, float32 lines/loc, uint8 valid, meta.json)."""
    theta = rng.uniform(0, np.pi, size=k)
    lines = np.stack([np.cos(theta), np.sin(theta), rng.uniform(-size[1] / 2, size[1] / 2, size=k)],
                     axis=1).astype(np.float32)
    valid = np.ones(k, dtype=np.uint8)
    if index % 3 == 0:
        lines[0], valid[0] = np.nan, 0
    loc = np.array(np.nan if index % 2 else float(shard * 100 + index), dtype=np.float32)
    return {"__key__": sample_key(prefix, shard, index),
            "image.npy": (rng.random(size, dtype=np.float32) * (index + 1)).astype(np.float16),
            "lines.npy": lines, "valid.npy": valid, "loc.npy": loc,
            "meta.json": {"subject": f"{prefix}{shard:02d}", "frame": index}}


def write_shards(root: str | os.PathLike, sizes: list[int], *, prefix: str = "train", size: int | tuple[int, int] = 8,
                 k: int = 2, seed: int = 0, sizes_json: bool = True,
                 corrupt: Mapping[tuple[int, int], Mapping[str, Any]] | None = None) -> str:
    """Write ``<prefix>-NNNNNN.tar`` shards with ``sizes[i]`` samples each; return the brace pattern.

    Also writes ``sizes.json`` (unless ``sizes_json`` is false) and a ``manifest.json``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    shape = (size, size) if isinstance(size, int) else tuple(size)
    rng = np.random.default_rng(seed)
    table = {}
    for s, n in enumerate(sizes):
        name = f"{prefix}-{s:06d}.tar"
        with wds.TarWriter(str(root / name)) as writer:
            for i in range(n):
                sample = make_sample(prefix, s, i, rng, shape, k)
                sample.update((corrupt or {}).get((s, i), {}))
                writer.write(sample)
        table[name] = n
    if sizes_json:
        (root / "sizes.json").write_text(json.dumps(table))
    (root / "manifest.json").write_text(json.dumps({"shards": sorted(table), "synthetic": True}))
    return str(root / f"{prefix}-{{000000..{len(sizes) - 1:06d}}}.tar")
