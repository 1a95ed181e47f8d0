"""Shard-set metadata: per-part records, and their merge into sizes/manifest/skipped.

Every run writes one part record (``_parts/part-<i>-of-<N>.json``); a single-machine run is
part 0 of 1 and merges itself.  The merge is the only writer of the three files readers use:

* ``sizes.json``: ``{shard file name: sample count}`` (the convention WebDataset users know);
* ``manifest.json``: profile and config (+ hash), input root, package version, per-split shard
  lists and counts, per-shard sha256 and size, ``subject -> split``;
* ``skipped.jsonl``: one JSON object per input left out or partially used, with its reason.

It refuses to combine parts made with different configs or subject lists, incomplete parts,
or an incomplete set of parts: a merged manifest always describes one coherent shard set.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import __version__
from ..atomic import atomic_write_json

__all__ = ["MergeError", "part_path", "write_part", "merge_parts", "PARTS_DIR"]

PARTS_DIR = "_parts"


class MergeError(RuntimeError):
    """Part records that cannot form one shard set (with the specific reason)."""


def part_path(out_dir: Path, part: int, parts: int) -> Path:
    return Path(out_dir) / PARTS_DIR / f"part-{part:04d}-of-{parts:04d}.json"


def write_part(out_dir: Path, record: dict[str, Any]) -> Path:
    """Atomically write one part's record (shards, subjects, skipped, counts)."""
    part, parts = record["part"]
    path = part_path(out_dir, part, parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, dict(record, package_version=__version__))
    return path


def merge_parts(out_dir: Path) -> dict[str, Any]:
    """Combine all part records of ``out_dir`` into ``sizes.json``, ``manifest.json`` and
    ``skipped.jsonl``; returns the manifest.

    Raises:
        MergeError: no parts, parts of different configs / subject lists / part counts, a part
            missing or incomplete, or a listed shard missing on disk.
    """
    out_dir = Path(out_dir)
    files = sorted((out_dir / PARTS_DIR).glob("part-*-of-*.json"))
    if not files:
        raise MergeError(f"{out_dir}: no part records under {PARTS_DIR}/ (nothing was sharded here)")
    recs = [json.loads(f.read_text()) for f in files]
    counts = {r["part"][1] for r in recs}
    if len(counts) > 1:
        raise MergeError(f"{out_dir}: parts of different part counts {sorted(counts)} in one folder")
    for key, what in (("config_hash", "configs"), ("subjects_hash", "subject lists")):
        values = {r[key] for r in recs}
        if len(values) > 1:
            detail = ", ".join(f"part {r['part'][0]}: {r[key]}" for r in recs)
            raise MergeError(f"{out_dir}: parts made with different {what} ({detail}); refusing to merge")
    n_parts = counts.pop()
    have = sorted(r["part"][0] for r in recs)
    missing = sorted(set(range(n_parts)) - set(have))
    if missing:
        raise MergeError(f"{out_dir}: part(s) {missing} of {n_parts} not written yet; run them, then merge")
    recs.sort(key=lambda r: r["part"][0])
    bad = [f"part {r['part'][0]}: {r.get('error') or 'incomplete'}" for r in recs if not r["complete"]]
    if bad:
        raise MergeError(f"{out_dir}: incomplete part(s), re-run them (they resume): {'; '.join(bad)}")

    shards = [s for r in recs for s in r["shards"]]
    absent = [s["name"] for s in shards if not (out_dir / s["name"]).is_file()]
    if absent:
        raise MergeError(f"{out_dir}: shard(s) listed but missing: {absent[:5]}")
    subjects: dict[str, str] = {}
    subject_samples: dict[str, int] = {}
    for r in recs:
        subjects.update(r["subjects"])
        subject_samples.update(r["subject_samples"])
    splits: dict[str, dict[str, Any]] = {}
    for name in ("train", "val"):
        names = [s["name"] for s in shards if s["split"] == name]
        subj = sorted(s for s, sp in subjects.items() if sp == name)
        splits[name] = {"shards": names, "samples": sum(s["count"] for s in shards if s["split"] == name),
                        "subjects": len(subj), "subjects_with_samples": sum(subject_samples.get(s, 0) > 0
                                                                           for s in subj)}
    skipped = [s for r in recs for s in r["skipped"]]
    first = recs[0]
    manifest = {
        "format": first["config"]["format"], "package_version": __version__,
        "profile": first["config"]["profile"], "config": first["config"], "config_hash": first["config_hash"],
        "subjects_hash": first["subjects_hash"], "input_root": first["input_root"], "parts": n_parts,
        "splits": splits, "shards": shards, "subjects": dict(sorted(subjects.items())),
        "subject_samples": dict(sorted(subject_samples.items())),
        "counts": {"subjects": len(subjects), "subjects_with_samples": sum(v > 0 for v in subject_samples.values()),
                   "samples": sum(s["count"] for s in shards), "shards": len(shards), "skipped": len(skipped)},
    }
    atomic_write_json(out_dir / "sizes.json", {s["name"]: s["count"] for s in shards})
    atomic_write_json(out_dir / "skipped.jsonl", skipped, lines=True)
    atomic_write_json(out_dir / "manifest.json", manifest)
    return manifest
