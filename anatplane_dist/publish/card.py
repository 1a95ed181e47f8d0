"""The model card of a published version: what a user needs to trust and reuse the weights.

:func:`build_card` gathers it from the run (checkpoint meta, ``config.yaml``, ``metrics.jsonl``,
the shard manifests the config names); ``model_card.json`` stores it and
:mod:`anatplane_dist.publish.readme` renders it for people.
"""
from __future__ import annotations

import datetime as _dt
import getpass
import json
import socket
import subprocess
from pathlib import Path
from typing import Any

import yaml

import anatplane_dist
from anatplane_dist.core import checkpoints as ckpt
from anatplane_dist.core import weights
from anatplane_dist.core.hashing import sha256_file
from anatplane_dist.core.jsonl import iter_jsonl

__all__ = ["CARD", "CARD_FORMAT", "build_card", "last_validation", "training_time", "manifests_of",
           "manifest_copy_name"]

CARD_FORMAT = "anatplane-published/1"
CARD = "model_card.json"


#: the trainer's log (:class:`anatplane_dist.train.metrics.MetricsWriter`), read here without importing the trainer
METRICS = "metrics.jsonl"


def _git_commit() -> dict[str, Any]:
    """Commit of the package source, when it is a git checkout (else nulls, not an error)."""
    src = Path(anatplane_dist.__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        if sha.returncode != 0:
            return {"git_commit": None, "git_dirty": None}
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return {"git_commit": sha.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return {"git_commit": None, "git_dirty": None}


def last_validation(run_dir: Path, up_to_step: int | None = None) -> dict[str, Any]:
    """The last metrics row with ``val/...`` keys (at or before ``up_to_step``): step + val keys."""
    best: dict[str, Any] = {}
    for row in iter_jsonl(run_dir / METRICS):
        if not any(k.startswith("val/") for k in row):
            continue
        if up_to_step is not None and isinstance(row.get("step"), int) and row["step"] > up_to_step:
            continue
        best = {"step": row.get("step"), **{k: v for k, v in row.items() if k.startswith("val/")}}
    return best


def training_time(run_dir: Path, meta: dict[str, Any]) -> tuple[float | None, str]:
    """(seconds, how it was obtained).  The trainer's own total when meta.json has it; else the
    sum over metrics.jsonl windows of samples / samples_per_s (time in training steps, re-done
    steps after a requeue included; validation and checkpoint saves excluded)."""
    if isinstance(meta.get("train_time_s"), (int, float)):
        return float(meta["train_time_s"]), "meta.json train_time_s"
    total, prev = 0.0, None
    for row in iter_jsonl(run_dir / METRICS):
        seen, rate = row.get("samples_seen"), row.get("samples_per_s")
        if not isinstance(seen, (int, float)) or not isinstance(rate, (int, float)) or rate <= 0:
            continue
        if prev is not None and seen > prev:
            total += (seen - prev) / rate
        prev = seen
    return (round(total, 3), "metrics.jsonl: sum of logged windows (samples / samples_per_s)") if total else (None, "not logged")


def manifests_of(config: dict[str, Any]) -> list[Path]:
    """Each shard set's ``manifest.json`` named by the config's data patterns (sorted, unique)."""
    data = config.get("data") or {}
    patterns: list[str] = []
    for key in ("shards", "train_shards", "val_shards"):
        value = data.get(key)
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, dict):
                item = item.get("path")
            if isinstance(item, str) and item:
                patterns += [p for p in item.split("::") if p]
    found: set[Path] = set()
    for pattern in patterns:
        d = Path(pattern) if Path(pattern).is_dir() else Path(pattern.split("{")[0]).parent
        for cand in (d / "manifest.json", d.parent / "manifest.json"):
            if cand.is_file():
                found.add(cand.resolve())
                break
    return sorted(found)


def manifest_copy_name(i: int) -> str:
    """Name of the ``i``-th shard manifest inside a published version."""
    return "data_manifest.json" if i == 0 else f"data_manifest_{i}.json"


def _training_data(manifests: list[Path]) -> dict[str, Any]:
    """Cohort, views, counts and split of the (first) shard set, from its manifest."""
    if not manifests:
        return {}
    try:
        m = json.loads(manifests[0].read_text())
    except (OSError, ValueError):
        return {}
    profile = m.get("profile") if isinstance(m.get("profile"), dict) else {}
    root = Path(str(m.get("input_root") or ""))
    splits = {s: {k: v.get(k) for k in ("subjects", "samples")} for s, v in (m.get("splits") or {}).items()
              if isinstance(v, dict)}
    return {"cohort": root.name or None, "phantom": bool(root.name) and (root / "phantom.json").is_file(),
            "profile": profile.get("name"), "input_view": profile.get("input_view"),
            "reference_views": m.get("channels") or profile.get("references"),
            "grid": m.get("grid"), "spacing_mm": m.get("spacing_mm"),
            "subjects": (m.get("counts") or {}).get("subjects"), "samples": (m.get("counts") or {}).get("samples"),
            "splits": splits, "manifest": manifest_copy_name(0)}


def build_card(run_dir: Path, ck: Path, name: str, parts: dict[str, dict[str, Any]],
               manifests: list[Path] | None = None) -> dict[str, Any]:
    """The model card: what a user needs to trust and reuse the weights.  Every path in it is
    relative to the published folder (the run's own paths mean nothing on another machine)."""
    meta = ckpt.read_meta(ck)
    config_path = run_dir / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    manifests = manifests_of(config or {}) if manifests is None else manifests
    enc = parts["encoder"]
    train_s, train_src = training_time(run_dir, meta)
    data = _training_data(manifests)
    card = {
        "format": CARD_FORMAT,
        "name": name,
        "published_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "published_by": f"{getpass.getuser()}@{socket.gethostname()}",
        "source": {"run": run_dir.resolve().name, "checkpoint": ck.name,
                   "step": meta.get("step"), "epoch": meta.get("epoch"),
                   "samples_seen": meta.get("samples_seen")},
        "package": {"name": "anatplane_dist", "version": anatplane_dist.__version__, **_git_commit()},
        "model_config": yaml.safe_load(enc["model_config"]),
        "num_channels": enc["num_channels"],
        "config": config,
        "config_file": "config.yaml" if config_path.is_file() else None,
        "training_data": data,
        "data_manifests": [{"file": manifest_copy_name(i), "sha256": sha256_file(p)} for i, p in enumerate(manifests)],
        "pretext_metrics": last_validation(run_dir, meta.get("step")),
        "last_checkpoint_metrics": meta.get("metrics", {}),
        "training": {"world_size": meta.get("world_size"), "backend": meta.get("backend"),
                     "global_batch": meta.get("global_batch"), "steps": meta.get("step"),
                     "samples_seen": meta.get("samples_seen"),
                     "train_time_s": train_s, "train_time_source": train_src},
        "parts": {p: {"file": f"{p}{weights.SUFFIX}", "tensors": info["tensors"], "parameters": info["parameters"]}
                  for p, info in parts.items()},
    }
    if data.get("grid") and data.get("spacing_mm"):
        card["data_grid"] = {"size": int(data["grid"]), "spacing": float(data["spacing_mm"])}
    return card
