"""The built-in data: the heart phantom and its shards, made on first use.

A config names it explicitly with ``data.shards: builtin:heart-phantom`` (the tiny preset
does); :func:`resolve_builtin` turns that into the shard folder, generating the phantom and
sharding it on the tiny grid when the folder is absent. The cache lives in
``$ANATPLANE_CACHE`` or ``./runs/demo-data``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from anatplane_dist.core.atomic import atomic_write_text
from anatplane_dist.core.errors import AnatplaneError

BUILTIN_PREFIX = "builtin:"
BUILTIN_SETS = ("heart-phantom",)
DEMO_CACHE_ENV = "ANATPLANE_CACHE"


def demo_data_dir() -> Path:
    """Where the built-in phantom and its shards live: ``$ANATPLANE_CACHE`` or ``./runs/demo-data``."""
    return Path(os.environ.get(DEMO_CACHE_ENV, "runs/demo-data"))


def is_builtin(spec: object) -> bool:
    return isinstance(spec, str) and spec.startswith(BUILTIN_PREFIX)


def ensure_demo_shards(root: Path, subjects: int = 6) -> Path:
    """Generate the heart phantom and shard it on the tiny grid (64² at 3 mm) if absent."""
    from anatplane_dist.cli import main as anatplane

    shards = root / "shards"
    if (shards / "manifest.json").exists():
        from anatplane_dist.shards.manifest import SEAL, merge_parts

        if SEAL not in json.loads((shards / "manifest.json").read_text()):
            merge_parts(shards)     # made before manifests were sealed: its part records re-make it
        return shards
    phantom = root / "phantom"
    if not (phantom / ".complete").exists():
        rc = anatplane(["phantom", "heart", "--subjects", str(subjects), "--out", str(phantom), "--seed", "0"])
        if rc:
            raise AnatplaneError(f"anatplane phantom heart failed with exit code {rc}")
        atomic_write_text(phantom / ".complete", "ok\n")
    rc = anatplane(["shard", "--profile", "heart", "--input", str(phantom), "--out", str(shards),
                    "--grid", "64", "--spacing", "3.0", "--val-fraction", "0.25", "--workers", "1",
                    "--shard-size", "128"])
    if rc:
        raise AnatplaneError(f"anatplane shard failed with exit code {rc}")
    return shards


def resolve_builtin(spec: str) -> Path:
    """``builtin:heart-phantom`` → its shard folder, made now if absent (call on one rank)."""
    name = spec[len(BUILTIN_PREFIX):]
    if name not in BUILTIN_SETS:
        raise AnatplaneError(f"data.shards={spec}: unknown built-in data set; available: "
                             + ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_SETS))
    return ensure_demo_shards(demo_data_dir())
