"""Offline sharder: studies -> WebDataset tar shards of plane pairs with precomputed targets.

``profiles`` (what to shard), ``samples`` (one study -> encoded samples), ``seal`` (the
per-sample crc32 the loader checks), ``writer`` (atomic, deterministic, resumable tars),
``manifest`` (part records, merge, ``read_shard_facts``), ``pipeline`` (the run), ``reader``
(a shard read back with tarfile), ``verify`` (``--verify``), ``cli`` (``anatplane shard``).
The sample schema is in ``shards/FORMAT.md``.
"""
from anatplane_dist.shards.profiles import BUILTIN_PROFILES, Profile, ShardConfig, load_profile

__all__ = ["Profile", "ShardConfig", "BUILTIN_PROFILES", "load_profile"]
