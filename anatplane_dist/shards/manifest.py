"""Shard-set metadata: per-part records, and their merge into sizes/manifest/skipped.

Every run writes one part record (``_parts/part-<i>-of-<N>.json``); a single-machine run is
part 0 of 1 and merges itself.  The merge is the only writer of the three files readers use:

* ``sizes.json``: ``{shard file name: sample count}`` (the convention WebDataset users know);
* ``manifest.json``: profile and config (+ hash), input root, package version, per-split shard
  lists and counts, per-shard sha256 and size, ``subject -> split``, and the facts a trainer
  needs without opening a tar (``num_channels``, ``channels``, ``grid``, ``spacing_mm``:
  :func:`read_shard_facts`);
* ``skipped.jsonl``: one JSON object per input left out or partially used, with its reason.

It refuses to combine parts made with different configs or subject lists, incomplete parts,
or an incomplete set of parts: a merged manifest always describes one coherent shard set.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from anatplane_dist import __version__
from anatplane_dist.core.atomic import atomic_write_json
from anatplane_dist.core.errors import AnatplaneError

__all__ = ["MergeError", "part_path", "write_part", "merge_parts", "PARTS_DIR", "ShardFacts",
           "ShardFactsError", "read_shard_facts", "shard_facts_of_config"]

PARTS_DIR = "_parts"
MANIFEST = "manifest.json"


class MergeError(AnatplaneError):
    """Part records that cannot form one shard set (with the specific reason)."""


class ShardFactsError(AnatplaneError):
    """No manifest, or one that does not state the facts, or shard sets that disagree."""


@dataclass(frozen=True)
class ShardFacts:
    """What a consumer of a shard set needs to know before opening any tar.

    Attributes:
        num_channels: K, the number of reference views (heatmap channels, rows of ``lines``).
        grid: model grid size in pixels (square: every image is ``(grid, grid)``).
        spacing_mm: model grid spacing in mm.
        channels: the reference views in channel order (e.g. ``("2ch", "4ch")``).
        manifest_sha256: sha256 of the ``manifest.json`` bytes (several shard folders: sha256 of
            their manifests' sha256s, joined by newlines in the order first listed), so a run can
            record exactly which shard set it trained on.
    """

    num_channels: int
    grid: int
    spacing_mm: float
    channels: tuple[str, ...]
    manifest_sha256: str


def shard_facts_of_config(config: dict[str, Any]) -> dict[str, Any]:
    """The explicit ``manifest.json`` keys for a sharder config (``ShardConfig.to_dict()``)."""
    channels = list(config["profile"]["references"])
    return {"num_channels": len(channels), "channels": channels, "grid": int(config["grid"]),
            "spacing_mm": float(config["spacing"])}


def _manifest_folders(shards: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The shard folders named by a folder, a manifest path, or a list of shard paths (in order)."""
    if isinstance(shards, (str, os.PathLike)):
        p = Path(shards)
        return [p.parent if p.name == MANIFEST or p.suffix == ".tar" else p]
    folders: list[Path] = []
    for url in shards:
        url = str(url)
        if "://" in url or url.startswith("pipe:"):
            raise ShardFactsError(f"shard {url!r} is not a local file: its {MANIFEST} cannot be read here; "
                                  "pass the local shard folder instead")
        folder = Path(url).parent
        if folder not in folders:
            folders.append(folder)
    if not folders:
        raise ShardFactsError("no shards given: cannot read their manifest")
    return folders


def _facts_of(folder: Path) -> tuple[dict[str, Any], str]:
    path = folder / MANIFEST
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ShardFactsError(f"{path}: not found; a shard folder gets its {MANIFEST} once "
                              "`anatplane shard` (or `--merge` of all parts) completed") from None
    except OSError as exc:
        raise ShardFactsError(f"{path}: unreadable ({exc.strerror or exc})") from None
    try:
        manifest = json.loads(raw)
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        raise ShardFactsError(f"{path}: not a shard manifest ({exc})") from None
    try:
        facts = {"num_channels": int(manifest["num_channels"]), "grid": int(manifest["grid"]),
                 "spacing_mm": float(manifest["spacing_mm"]), "channels": tuple(manifest.get("channels", ()))}
    except (KeyError, TypeError, ValueError):
        raise ShardFactsError(f"{path}: does not state num_channels, grid and spacing_mm (written by an older "
                              "anatplane shard? re-run it, or `anatplane shard --merge`, to rewrite it)") from None
    if facts["num_channels"] < 1 or facts["grid"] < 1 or not facts["spacing_mm"] > 0:
        raise ShardFactsError(f"{path}: implausible facts {facts}")
    return facts, hashlib.sha256(raw).hexdigest()


def read_shard_facts(shards: str | os.PathLike | Sequence[str | os.PathLike]) -> ShardFacts:
    """K, grid and spacing of a shard set, from its ``manifest.json`` alone (no tar opened).

    Args:
        shards: a shard folder (or its ``manifest.json``, or one ``.tar`` in it), or a list of
            local shard paths (their folders' manifests are read; they must agree).

    Raises:
        ShardFactsError (an ``AnatplaneError``): a manifest missing, unreadable or without the
            facts, remote shard URLs, or shard folders with different channels/grid/spacing.
    """
    folders = _manifest_folders(shards)
    read = [(f, *_facts_of(f)) for f in folders]
    first_folder, first, sha = read[0]
    for folder, facts, _ in read[1:]:
        if facts != first:
            raise ShardFactsError(f"shard sets disagree: {first_folder} has {first}, {folder} has {facts}; "
                                  "one run trains on one grid and channel layout")
    if len(read) > 1:
        sha = hashlib.sha256("\n".join(r[2] for r in read).encode()).hexdigest()
    return ShardFacts(num_channels=first["num_channels"], grid=first["grid"], spacing_mm=first["spacing_mm"],
                      channels=first["channels"], manifest_sha256=sha)


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
        **shard_facts_of_config(first["config"]),
        "splits": splits, "shards": shards, "subjects": dict(sorted(subjects.items())),
        "subject_samples": dict(sorted(subject_samples.items())),
        "counts": {"subjects": len(subjects), "subjects_with_samples": sum(v > 0 for v in subject_samples.values()),
                   "samples": sum(s["count"] for s in shards), "shards": len(shards), "skipped": len(skipped)},
    }
    atomic_write_json(out_dir / "sizes.json", {s["name"]: s["count"] for s in shards})
    atomic_write_json(out_dir / "skipped.jsonl", skipped, lines=True)
    atomic_write_json(out_dir / "manifest.json", manifest)
    return manifest
