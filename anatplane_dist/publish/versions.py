"""Publishing pretrained weights to a shared filesystem, and loading them back.

``publish(run_dir, to, name)`` takes the newest complete checkpoint of a run and makes it a
*version* under ``<to>/<name>/``:

1. everything is written into ``<to>/<name>/.staging-<uuid>/`` - on the destination
   filesystem, so the final step is a same-filesystem rename: fp32 part files (safetensors), the resolved
   ``config.yaml``, ``model_card.json``, ``README.md`` and, last, ``SHA256SUMS``;
2. the staging dir is renamed to ``<to>/<name>/<version>/`` with ``RENAME_NOREPLACE``, so an
   existing version is never overwritten and readers never see a half-written one.  The
   version is ``step<N>-<hash of the weights>``: publishing the same checkpoint twice (or two
   publishers racing on it) yields the same version, which the loser finds already there and
   verifies instead of writing a second copy;
3. ``<to>/<name>/latest`` (a relative symlink) is replaced atomically (new link + rename),
   under a lock, pointing at the version with the highest step.

Files are 0644 and directories 0755 (``mkstemp``-style 0600 files would be unreadable for the
group on a shared filesystem).  ``load_pretrained`` verifies ``SHA256SUMS``, refuses
partial or tampered versions, reads the safetensors parts (no pickle on the load path) and rebuilds the module from the
stored ``ModelConfig``.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import errno
import fcntl
import getpass
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import yaml

import anatplane_dist
from anatplane_dist.core import checkpoints as ckpt
from anatplane_dist.core import weights
from anatplane_dist.core.errors import AnatplaneError
from anatplane_dist.train.metrics import read_metrics

CARD_FORMAT = "anatplane-published/1"
SUMS = "SHA256SUMS"
CARD = "model_card.json"
LATEST = "latest"
STAGING_PREFIX = ".staging-"
#: parts every published version may hold, plus "full"; any other part a version lists loads too
LOADABLE_PARTS = (*weights.CORE_PARTS, "full")
FILE_MODE, DIR_MODE = 0o644, 0o755


class PublishError(AnatplaneError, RuntimeError):
    """A run cannot be published (no complete checkpoint, bad weights, bad name)."""


class VerificationError(AnatplaneError, RuntimeError):
    """A published version is partial or does not match its checksums: do not use it."""


# --------------------------------------------------------------------------- hashing
def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def parse_sums(text: str) -> dict[str, str]:
    """``sha256sum`` format (``<hex>  <name>``) -> {name: hex}; malformed lines are an error."""
    out = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name or "/" in name:
            raise VerificationError(f"{SUMS} line {n} is malformed: {line!r}")
        out[name] = digest
    return out


def verify(version_dir: str | os.PathLike) -> dict[str, str]:
    """Check that ``version_dir`` is a whole, untampered published version.

    Every file listed in SHA256SUMS must exist with that hash, and no other regular file may be
    present.  Returns {file: sha256}.  ``sha256sum -c SHA256SUMS`` does the same check by hand.
    """
    d = Path(version_dir)
    sums_path = d / SUMS
    if d.name.startswith(STAGING_PREFIX):
        raise VerificationError(f"{d} is a staging directory (a publish in progress or killed)")
    if not sums_path.is_file():
        raise VerificationError(f"{d} has no {SUMS}: not a published version, or a partial one")
    sums = parse_sums(sums_path.read_text())
    if CARD not in sums:
        raise VerificationError(f"{d}/{SUMS} does not cover {CARD}")
    present = {p.name for p in d.iterdir() if p.name != SUMS}
    missing = sorted(set(sums) - present)
    extra = sorted(present - set(sums))
    if missing:
        raise VerificationError(f"{d} is partial: missing {missing}")
    if extra:
        raise VerificationError(f"{d} holds files not covered by {SUMS}: {extra}")
    for name, digest in sums.items():
        actual = sha256_file(d / name)
        if actual != digest:
            raise VerificationError(f"{d / name}: checksum mismatch (expected {digest[:12]}..., "
                                    f"got {actual[:12]}...): the file was modified or corrupted")
    return sums


# --------------------------------------------------------------------------- filesystem
def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, FILE_MODE)


def _copy(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    with open(dst, "rb") as f:
        os.fsync(f.fileno())
    os.chmod(dst, FILE_MODE)


_RENAME_NOREPLACE = 1
try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _renameat2 = _libc.renameat2
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
except (OSError, AttributeError):  # not glibc / too old: fall back to rename(2)
    _renameat2 = None
_AT_FDCWD = -100


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; ``FileExistsError`` if ``dst`` exists (never replaced).

    Uses ``renameat2(RENAME_NOREPLACE)``; where the filesystem does not support it (some NFS),
    ``rename(2)`` of a directory still refuses a non-empty target, and version dirs are never
    empty, so the guarantee holds there too.
    """
    if _renameat2 is not None:
        rc = _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(errno.EEXIST, "already exists", str(dst))
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(src))
    if dst.exists() or dst.is_symlink():
        raise FileExistsError(errno.EEXIST, "already exists", str(dst))
    try:
        os.rename(src, dst)
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise FileExistsError(errno.EEXIST, "already exists", str(dst)) from e
        raise


class _Lock:
    """``flock`` on ``<name dir>/.publish.lock``: serialises updates of the ``latest`` pointer."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> "_Lock":
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: Any) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


# --------------------------------------------------------------------------- model card
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
    for row in read_metrics(run_dir):
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
    for row in read_metrics(run_dir):
        seen, rate = row.get("samples_seen"), row.get("samples_per_s")
        if not isinstance(seen, (int, float)) or not isinstance(rate, (int, float)) or rate <= 0:
            continue
        if prev is not None and seen > prev:
            total += (seen - prev) / rate
        prev = seen
    return (round(total, 3), "metrics.jsonl: sum of logged windows (samples / samples_per_s)") if total else (None, "not logged")


def _manifests(config: dict[str, Any]) -> list[Path]:
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
    manifests = _manifests(config or {}) if manifests is None else manifests
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


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _metrics(card: dict[str, Any]) -> dict[str, Any]:
    """The validation metrics of the card (``val/samples`` is a count, not a metric)."""
    return {k: v for k, v in card["pretext_metrics"].items() if k.startswith("val/") and k != "val/samples"}


def _front_matter(card: dict[str, Any]) -> list[str]:
    """Hugging Face-style YAML front matter (license, library, tags, datasets, metrics)."""
    data, mc = card.get("training_data") or {}, card["model_config"]
    tags = ["medical-imaging", "mri", "self-supervised", "anatomy-oriented-planes", f"backbone-{mc.get('name')}",
            "safetensors"]
    tags += [t for t in (data.get("profile"), "phantom" if data.get("phantom") else None) if t]
    if mc.get("name") == "nnunet":
        tags.append("nnunet")
    meta = {"license": "apache-2.0", "library_name": "anatplane_dist", "tags": tags,
            "datasets": [data["cohort"]] if data.get("cohort") else [],
            "metrics": sorted(k.removeprefix("val/") for k in _metrics(card)),
            "pipeline_tag": "image-feature-extraction"}
    return ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", ""]


def render_readme(card: dict[str, Any]) -> str:
    """The published README.md: a model card a person reads (what, on what, how well, how to
    load, the limits), paths relative to the published folder."""
    name, version, tr, src = card["name"], card.get("version", ""), card["training"], card["source"]
    data, mc = card.get("training_data") or {}, card["model_config"]
    metrics = _metrics(card)
    n_val = card["pretext_metrics"].get("val/samples")
    is_nnunet = mc.get("name") == "nnunet"
    lines = [*_front_matter(card), f"# {name} / {version}", "",
             f"Encoder{' + decoder' if 'decoder' in card['parts'] else ''} pretrained self-supervised from MRI "
             f"plane geometry (relative orientation heatmaps + relative slice location) with anatplane_dist "
             f"{card['package']['version']} (commit {card['package'].get('git_commit') or 'unknown'}).", "",
             "## Intended use", "",
             "Initialisation for fine-tuning on a target task with few labels (segmentation of the imaged anatomy,"
             " classification of stacks), with this package's fine-tuning"
             + (" or with nnU-Net's own trainer" if is_nnunet else "") + ". Not a segmentation or diagnosis model"
             " by itself: the heads predict pretext targets only.", "",
             "## Training data", ""]
    if data:
        split = ", ".join(f"{s} {v.get('subjects')} subjects / {v.get('samples')} samples"
                          for s, v in data.get("splits", {}).items())
        lines += [f"- cohort: `{data.get('cohort')}`" + (" (synthetic phantom)" if data.get("phantom") else ""),
                  f"- profile: {data.get('profile')}; input view {data.get('input_view')}; reference views "
                  f"{', '.join(data.get('reference_views') or [])}",
                  f"- {data.get('subjects')} subjects, {data.get('samples')} plane-pair samples; split: {split or 'n/a'}",
                  f"- model grid: {data.get('grid')} px at {_fmt(data.get('spacing_mm'))} mm",
                  f"- shard manifest: `{data.get('manifest')}` (copied here, sha256 in `SHA256SUMS`)", ""]
    else:
        lines += ["No shard manifest was reachable at publish time; see the config below.", ""]
    lines += ["## Pretext metrics (validation)", ""]
    if metrics:
        lines += [f"At step {card['pretext_metrics'].get('step')}"
                  + (f", on {n_val} validation samples" if n_val is not None else "") + ":", "",
                  "| metric | value |", "| --- | --- |",
                  *[f"| {k.removeprefix('val/')} | {_fmt(v)} |" for k, v in metrics.items()], ""]
    else:
        lines += ["None logged.", ""]
    lines += ["## Training", "",
              f"`{mc.get('name')}` backbone, {card['num_channels']} heatmap channels; {tr['steps']} optimiser steps,"
              f" global batch {tr['global_batch']}, world size {tr['world_size']}, backend {tr['backend']},"
              f" {tr['samples_seen']} samples"
              + (f", {tr['train_time_s']:.0f} s of training steps" if isinstance(tr.get("train_time_s"), (int, float))
                 else "") + f"; run `{src['run']}`, checkpoint `{src['checkpoint']}`.", "",
              "## Limitations", ""]
    if data.get("phantom"):
        lines += ["- Trained on analytic phantoms only: **not a clinical model**, not validated on patient data; "
                  "use it to test pipelines, or as a starting point that still needs real pretraining.", ""]
    lines += ["- Pretext tasks only: the encoder has never seen a segmentation or diagnosis label.",
              f"- Inputs must be on the pretraining grid ({data.get('grid')} px at {_fmt(data.get('spacing_mm'))} mm),"
              f" single-channel, intensity-normalised as the shards were." if data else
              "- Inputs must be on the pretraining grid, single-channel, intensity-normalised as the shards were.",
              "- Validation metrics are on the held-out subjects of the same cohort, not on other scanners or sites.",
              "", "## How to load", "", "Run these from this folder (or replace `.` by its path).", "",
              "With anatplane_dist (checks `SHA256SUMS`, rebuilds the network from the stored config):", "",
              "```python", "from anatplane_dist.publish import load_pretrained",
              'encoder = load_pretrained(".", part="encoder")', 'network = load_pretrained(".", part="full")',
              "```", "", "Fine-tune with few labels (this package's route; transfers encoder + decoder):", "",
              "```bash", "anatplane finetune seg --data ACDC_ROOT --pretrained . --out results/", "```", "",
              "Any safetensors reader (no pickle; architecture in the metadata):", "",
              "```python", "from safetensors import safe_open",
              'with safe_open("encoder.safetensors", "pt") as f:',
              '    meta = f.metadata()   # format, part, model_config (YAML), num_channels, step',
              "    tensors = {k: f.get_tensor(k) for k in f.keys()}", "```", ""]
    if is_nnunet:
        lines += ["nnU-Net (same plans as pretraining; every tensor but the seg layers is transferred):", "",
                  "```bash", "anatplane export --format nnunet . pretrained.pth",
                  "nnUNetv2_train DATASET 2d FOLD -pretrained_weights pretrained.pth", "```", ""]
    lines += ["## Files", "", "| file | tensors | parameters |", "| --- | --- | --- |",
              *[f"| `{p['file']}` | {p['tensors']} | {p['parameters']} |" for p in card["parts"].values()], "",
              *(["nnU-Net's conv blocks list each conv and norm tensor under two names (`conv`/`norm` and "
                 "`all_modules.N`), both stored, so these counts include each such tensor twice.", ""]
                if is_nnunet else []),
              "`model_card.json` holds all of the above as data; `sha256sum -c SHA256SUMS` checks every file.", "",
              "## Config", "", "The exact resolved config of the run (`config.yaml`):", "", "```yaml",
              yaml.safe_dump(card.get("config") or {}, sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- publish
def _check_name(name: str) -> str:
    if not name or name in (".", "..", LATEST) or "/" in name or name.startswith("."):
        raise PublishError(f"invalid publish name {name!r} (a single path component, not "
                           f"hidden, not {LATEST!r})")
    return name


def _load_part(path: Path) -> dict[str, Any]:
    try:
        obj = weights.load_weights(path)
    except (weights.WeightsFormatError, OSError) as e:
        raise PublishError(f"{path}: not a loadable {weights.WEIGHTS_FORMAT} weights file ({e})") from e
    sd = obj.get("state_dict")
    if not isinstance(sd, dict) or not sd:
        raise PublishError(f"{path}: empty state_dict")
    return obj


def _verify_reason(ck: Path) -> str:
    try:
        ckpt.verify(ck)
    except ckpt.CheckpointVerifyError as e:
        return str(e)
    return "verifies"


def publish(run_dir: str | os.PathLike, to: str | os.PathLike, name: str | None = None) -> Path:
    """Publish the newest complete checkpoint of ``run_dir`` as ``<to>/<name>/<version>/``.

    Returns the version directory.  Raises PublishError when the run has no complete
    checkpoint or its fp32 exports are missing or unreadable.
    """
    run_dir = Path(run_dir)
    ck = ckpt.latest_verified(run_dir)   # never re-certify a corrupted or tampered checkpoint
    newest = ckpt.find_latest_complete(run_dir)
    if ck is None and newest is not None and ckpt.is_unsigned(newest):
        # a run of an older version: nothing to verify against; its weights are read without pickle
        print(f"publish: {newest.name} has an unsigned marker (an older version wrote it): publishing "
              "it unverified", file=sys.stderr)
        ck = newest
    if ck is None:
        why = "" if newest is None else f"; {newest.name} does not verify: {_verify_reason(newest)}"
        raise PublishError(f"{run_dir}: no complete checkpoint that verifies (checkpoints/step_*/COMPLETE) "
                           f"to publish{why}")
    if ck != newest:
        print(f"publish: the newest checkpoint does not verify; publishing {ck.name}", file=sys.stderr)
    name = _check_name(name or run_dir.resolve().name)
    fp32 = ck / "fp32"
    sources = weights.find_parts(fp32)
    if "encoder" not in sources:
        raise PublishError(f"{ck}: no fp32/encoder{weights.SUFFIX} export")
    parts: dict[str, dict[str, Any]] = {}
    loaded: dict[str, dict[str, Any]] = {}
    for part, src in sources.items():
        obj = loaded[part] = _load_part(src)
        parts[part] = {"tensors": len(obj["state_dict"]),
                       "parameters": int(sum(t.numel() for t in obj["state_dict"].values())),
                       "model_config": obj["model_config"], "num_channels": obj["num_channels"]}
    step = int(ckpt.read_meta(ck).get("step", ckpt.step_of(ck) or 0))

    name_dir = Path(to) / name
    name_dir.mkdir(parents=True, exist_ok=True)
    for d in (Path(to), name_dir):
        try:
            os.chmod(d, os.stat(d).st_mode | 0o055)  # group/other may read and traverse
        except PermissionError:  # a shared parent owned by someone else: leave it
            pass
    staging = name_dir / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
    staging.mkdir(mode=DIR_MODE)
    try:
        for part, src in sources.items():
            dst = staging / f"{part}{weights.SUFFIX}"
            if src.suffix == weights.SUFFIX:
                _copy(src, dst)
            else:  # a run from before safetensors: published as safetensors all the same
                obj = loaded[part]
                weights.save_part(dst, obj["state_dict"], part=part, model_config_yaml=obj["model_config"],
                                  num_channels=obj["num_channels"], step=obj.get("step", step))
        if (run_dir / "config.yaml").is_file():
            _copy(run_dir / "config.yaml", staging / "config.yaml")
            manifests = _manifests(yaml.safe_load((run_dir / "config.yaml").read_text()) or {})
        else:
            manifests = []
        for i, m in enumerate(manifests):  # the training data's record travels with the weights
            _copy(m, staging / manifest_copy_name(i))
        # of the content, not the file bytes: the same weights are the same version whichever
        # container the run wrote (safetensors does not fix the order of its metadata on disk)
        weights_hash = hashlib.sha256("".join(
            f"{weights.content_digest(loaded[p])}{p}" for p in sorted(parts)).encode()).hexdigest()
        version = f"step{step:08d}-{weights_hash[:10]}"
        card = build_card(run_dir, ck, name, parts, manifests)
        card["version"] = version
        card["how_to_load"] = ("from anatplane_dist.publish import load_pretrained; "
                               "load_pretrained('.', part='encoder')  # from this folder")
        _write(staging / CARD, (json.dumps(card, indent=1, sort_keys=False, default=str) + "\n").encode())
        _write(staging / "README.md", render_readme(card).encode())
        sums = "".join(f"{sha256_file(staging / f)}  {f}\n"
                       for f in sorted(p.name for p in staging.iterdir()))
        _write(staging / SUMS, sums.encode())  # last: its presence marks a whole version
        os.chmod(staging, DIR_MODE)
        _fsync(staging)
        final = name_dir / version
        try:
            rename_noreplace(staging, final)
        except FileExistsError:
            # same weights already published (a re-run or a racing publisher): keep theirs
            verify(final)
            shutil.rmtree(staging, ignore_errors=True)
        _fsync(name_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    update_latest(name_dir)
    return final


_VERSION_RE = re.compile(r"^step(\d+)-[0-9a-f]+$")


def list_versions(name_dir: Path) -> list[Path]:
    """Published versions (``step<N>-<hash>`` dirs holding SHA256SUMS), oldest step first."""
    found = [p for p in name_dir.iterdir()
             if _VERSION_RE.match(p.name) and p.is_dir() and not p.is_symlink() and (p / SUMS).is_file()]
    return sorted(found, key=lambda p: (int(_VERSION_RE.match(p.name).group(1)), (p / SUMS).stat().st_mtime))


def update_latest(name_dir: Path) -> Path | None:
    """Point ``latest`` at the highest-step version (atomic: new symlink, then rename over)."""
    with _Lock(name_dir / ".publish.lock"):
        versions = list_versions(name_dir)
        if not versions:
            return None
        target = versions[-1].name
        link = name_dir / LATEST
        if link.is_symlink() and os.readlink(link) == target:
            return versions[-1]
        tmp = name_dir / f".latest-{uuid.uuid4().hex}"
        os.symlink(target, tmp)
        os.replace(tmp, link)
        _fsync(name_dir)
        return versions[-1]


# --------------------------------------------------------------------------- load
def resolve_version(path_or_dir: str | os.PathLike) -> Path:
    """A version dir from: the version dir itself, ``<name dir>`` (via ``latest``), or a file in
    a version dir."""
    p = Path(path_or_dir)
    if p.is_file():
        p = p.parent
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    if (p / LATEST).is_symlink() or (p / LATEST).exists():
        p = (p / LATEST).resolve()
    return p


def _network_of(version: Path, model_cfg: Any, num_channels: int) -> Any:
    """The network the published weights were trained in: built by their pretraining objective
    (a genesis decoder ends in image channels, SimCLR adds a projection head), read from the
    published ``config.yaml``; the multitask network when there is none (older versions)."""
    from anatplane_dist.model import build_model

    path = version / "config.yaml"
    if path.is_file():
        from anatplane_dist.objectives import get_objective
        from anatplane_dist.train.config import load_config
        cfg = load_config(path)
        # only the network is built: the loss's ridge width (which needs a spacing) plays no part
        return get_objective(cfg.objective, cfg.loss, grid_spacing_mm=cfg.loss.spacing_mm or 1.0).build_model(
            model_cfg, num_channels)
    return build_model(model_cfg, num_channels)


def load_pretrained(path_or_dir: str | os.PathLike, part: str = "encoder"):
    """Verified published weights -> ``torch.nn.Module`` ready for fine-tuning.

    ``part`` is ``encoder``, ``decoder``, ``location_head`` or ``full`` (the whole
    multitask network, with every published part loaded).  The module is rebuilt with
    :func:`anatplane_dist.model.build_model` from the stored ``ModelConfig``, in train mode.

    Raises:
        VerificationError: partial version, missing/extra files or a checksum mismatch.
        ValueError: unknown part, or a part this version does not contain.
    """
    from anatplane_dist.model import ModelConfig, load_parts

    version = resolve_version(path_or_dir)
    verify(version)
    card = json.loads((version / CARD).read_text())
    available = list(card.get("parts", {}))
    if part != "full" and part not in (*LOADABLE_PARTS, *available):
        raise ValueError(f"part must be one of {(*available, 'full')}, got {part!r}")
    wanted = available if part == "full" else [part]
    missing = [p for p in wanted if p not in available]
    if missing:
        raise ValueError(f"{version} has no {missing[0]} (published parts: {available})")
    loaded = {p: weights.load_part(version, p) for p in wanted}
    first = next(iter(loaded.values()))
    model = _network_of(version, ModelConfig.from_yaml(first["model_config"]), int(first["num_channels"]))
    load_parts(model, {p: obj["state_dict"] for p, obj in loaded.items()})
    model.train()
    return model if part == "full" else getattr(model, part)


# --------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="training run directory (its newest complete checkpoint)")
    parser.add_argument("--to", required=True, type=Path, help="destination root on the shared filesystem")
    parser.add_argument("--name", default=None, help="model name (default: the run dir's name)")


def run(args: argparse.Namespace) -> int:
    """Errors are AnatplaneErrors / OSErrors: ``anatplane_dist.cli`` prints one line and exits 2."""
    version = publish(args.run_dir, args.to, args.name)
    print(f"published {version}\nlatest -> {os.readlink(version.parent / LATEST)}\n"
          f"load: from anatplane_dist.publish import load_pretrained; "
          f"load_pretrained({str(version.parent)!r}, part='encoder')")
    return 0
