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
from anatplane_dist.core.hashing import json_fingerprint

__all__ = ["MergeError", "part_path", "write_part", "merge_parts", "PARTS_DIR", "ShardFacts",
           "ShardFactsError", "read_shard_facts", "shard_facts_of_config", "seal_manifest", "manifest_seal_error",
           "read_manifest", "sample_fact_error", "check_shard_files", "SEAL"]

PARTS_DIR = "_parts"
MANIFEST = "manifest.json"
#: the manifest's own checksum: sha256 of the canonical JSON of every other key
SEAL = "seal"
#: format marker of sealed manifests; a sharder manifest (it has ``format``) without a seal is
#: from before seals or had its seal removed, and is refused until ``anatplane shard --merge``
#: rewrites it
_UNSEALED_HINT = "re-run `anatplane shard` (or `anatplane shard --merge`) to rewrite it"


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


def _seal_of(manifest: dict[str, Any]) -> str:
    return json_fingerprint({k: v for k, v in manifest.items() if k != SEAL}, length=64, compact=True)


def seal_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` with its seal: a hand edit (grid 64 -> 48, spacing 3.0 -> 1.0) then no longer
    passes as the sharder's word about the shards (verify, the trainer and publish check it)."""
    body = {k: v for k, v in manifest.items() if k != SEAL}
    return {**body, SEAL: _seal_of(body)}


def manifest_seal_error(manifest: dict[str, Any]) -> str | None:
    """Why ``manifest`` is not as the sharder wrote it, or None.

    Manifests without ``format`` are not the sharder's (hand-made test or benchmark sets) and
    carry no seal to check.
    """
    if SEAL not in manifest:
        return None if "format" not in manifest else f"has no seal (written before seals, or the seal was " \
                                                      f"removed); {_UNSEALED_HINT}"
    if manifest[SEAL] != _seal_of(manifest):
        return f"was changed after the sharder wrote it (its seal does not match); {_UNSEALED_HINT}"
    return None


def read_manifest(folder: str | os.PathLike) -> tuple[dict[str, Any], bytes]:
    """(manifest, its bytes) of a shard folder, seal checked.

    Raises:
        ShardFactsError: missing, unreadable, not a JSON object, or its seal does not match.
    """
    path = Path(folder) / MANIFEST
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
    why = manifest_seal_error(manifest)
    if why:
        raise ShardFactsError(f"{path} {why}")
    return manifest, raw


def sample_fact_error(meta: dict[str, Any], image_shape: tuple[int, ...], rows: int,
                      facts: "ShardFacts") -> str | None:
    """Why one sample does not belong to a shard set of ``facts`` (grid, spacing, channels), or None.

    ``meta`` is the sample's ``meta.json`` (format 2; ``{}`` for format 1, whose samples state
    only their shapes). Cheap: a few comparisons per sample.
    """
    g = facts.grid
    if tuple(image_shape) != (g, g):
        return f"image {tuple(image_shape)}, the manifest's grid is {g}x{g}"
    if rows != facts.num_channels:
        return f"{rows} reference channel(s), the manifest says {facts.num_channels}"
    grid = meta.get("grid") if isinstance(meta, dict) else None
    if isinstance(grid, dict) and grid.get("spacing") is not None:
        try:
            spacing = [float(v) for v in grid["spacing"]]
        except (TypeError, ValueError):
            return f"unreadable grid spacing {grid['spacing']!r}"
        if any(abs(v - facts.spacing_mm) > 1e-6 * max(1.0, facts.spacing_mm) for v in spacing):
            return f"grid spacing {spacing} mm, the manifest says {facts.spacing_mm} mm"
    channels = meta.get("channels") if isinstance(meta, dict) else None
    if channels is not None and facts.channels and tuple(channels) != tuple(facts.channels):
        return f"channels {list(channels)}, the manifest says {list(facts.channels)}"
    return None


def check_shard_files(urls: Sequence[str], *, sha256: bool = False) -> int:
    """Every shard file against its folder's manifest record, before any is streamed.

    Always: the shard is listed, and its size is the recorded one (one ``stat`` per shard: a
    shard copied in from another sharding, truncated, or replaced is refused here, naming it).
    With ``sha256`` (``data.verify: sha256``) its bytes are hashed too. Shards of folders whose
    manifest lists no shards (hand-made sets) are not checked; returns how many were.

    Raises:
        ShardFactsError: the first shard that is not what its manifest says.
    """
    from anatplane_dist.core.hashing import sha256_file

    records: dict[Path, dict[str, dict[str, Any]] | None] = {}
    checked = 0
    for url in urls:
        path = Path(url)
        folder = path.parent
        if folder not in records:
            manifest, _ = read_manifest(folder) if (folder / MANIFEST).is_file() else ({}, b"")
            listed = manifest.get("shards")
            records[folder] = ({str(r["name"]): r for r in listed if isinstance(r, dict) and "name" in r}
                               if isinstance(listed, list) and listed and isinstance(listed[0], dict) else None)
        table = records[folder]
        if table is None:
            continue
        rec = table.get(path.name)
        if rec is None:
            raise ShardFactsError(f"shard {path}: not listed in {folder / MANIFEST} (copied in from another "
                                  "shard set?); remove it or re-shard")
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise ShardFactsError(f"shard {path}: {exc.strerror or exc}") from None
        if "bytes" in rec and size != int(rec["bytes"]):
            raise ShardFactsError(f"shard {path}: {size} bytes, {folder / MANIFEST} says {rec['bytes']} "
                                  "(replaced, truncated or from another sharding); re-shard or restore it")
        if sha256 and "sha256" in rec and sha256_file(path) != rec["sha256"]:
            raise ShardFactsError(f"shard {path}: sha256 differs from {folder / MANIFEST} (data.verify: sha256); "
                                  "`anatplane shard --verify` lists every bad shard")
        checked += 1
    return checked


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
    manifest, raw = read_manifest(folder)
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
    manifest = seal_manifest(manifest)
    atomic_write_json(out_dir / "manifest.json", manifest)
    return manifest
