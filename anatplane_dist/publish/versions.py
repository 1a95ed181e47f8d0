"""Publishing pretrained weights to a shared filesystem as verified, immutable versions.

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

import fcntl
import hashlib
import json
import os
import re
import sys
import uuid
from pathlib import Path
from typing import Any

import yaml

from anatplane_dist.core import checkpoints as ckpt
from anatplane_dist.core import weights
from anatplane_dist.core.atomic import (
    FILE_MODE,
    copy_durable,
    fsync_dir,
    rename_noreplace,
    staged_dir,
    write_durable,
)
from anatplane_dist.core.errors import AnatplaneError, DiskFullError
from anatplane_dist.core.hashing import sha256_file
from anatplane_dist.publish.card import CARD, build_card, manifest_copy_name, manifests_of
from anatplane_dist.publish.readme import render_readme
from anatplane_dist.shards.manifest import read_manifest

__all__ = ["PublishError", "VerificationError", "publish", "verify", "parse_sums", "list_versions",
           "update_latest", "resolve_version", "rename_noreplace", "SUMS", "LATEST", "STAGING_PREFIX"]

SUMS = "SHA256SUMS"
LATEST = "latest"
STAGING_PREFIX = ".staging-"


class PublishError(AnatplaneError, RuntimeError):
    """A run cannot be published (no complete checkpoint, bad weights, bad name)."""


class VerificationError(AnatplaneError, RuntimeError):
    """A published version is partial or does not match its checksums: do not use it."""


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


class _PublishLock:
    """``flock`` on ``<name dir>/.publish.lock``: serialises updates of the ``latest`` pointer."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> "_PublishLock":
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: Any) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


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
    # of the content, not the file bytes: the same weights are the same version whichever
    # container the run wrote (safetensors does not fix the order of its metadata on disk)
    weights_hash = hashlib.sha256("".join(
        f"{weights.content_digest(loaded[p])}{p}" for p in sorted(parts)).encode()).hexdigest()
    version = f"step{step:08d}-{weights_hash[:10]}"
    final = name_dir / version
    try:
        with staged_dir(final, prefix=STAGING_PREFIX) as staging:
            _write_version(staging, run_dir, ck, name, version, sources, loaded, parts, step)
    except FileExistsError:
        # same weights already published (a re-run or a racing publisher): keep theirs
        verify(final)
    except DiskFullError:   # the target is full, not the run: say which, and that nothing changed there
        raise DiskFullError(f"no space left on device publishing to {final}: nothing was published "
                            f"({LATEST} and earlier versions of {name_dir} are unchanged); free space "
                            "there and rerun") from None
    update_latest(name_dir)
    return final


def _write_version(staging: Path, run_dir: Path, ck: Path, name: str, version: str,
                   sources: dict[str, Path], loaded: dict[str, dict[str, Any]],
                   parts: dict[str, dict[str, Any]], step: int) -> None:
    """Every file of a version, ``SHA256SUMS`` last (its presence marks a whole version)."""
    for part, src in sources.items():
        dst = staging / f"{part}{weights.SUFFIX}"
        if src.suffix == weights.SUFFIX:
            copy_durable(src, dst)
        else:  # a run from before safetensors: published as safetensors all the same
            obj = loaded[part]
            weights.save_part(dst, obj["state_dict"], part=part, model_config_yaml=obj["model_config"],
                              num_channels=obj["num_channels"], step=obj.get("step", step))
    if (run_dir / "config.yaml").is_file():
        copy_durable(run_dir / "config.yaml", staging / "config.yaml")
        manifests = manifests_of(yaml.safe_load((run_dir / "config.yaml").read_text()) or {})
    else:
        manifests = []
    for i, m in enumerate(manifests):  # the training data's record travels with the weights
        read_manifest(m.parent)         # sealed as the sharder wrote it: a hand-edited grid never reaches a card
        copy_durable(m, staging / manifest_copy_name(i))
    card = build_card(run_dir, ck, name, parts, manifests)
    card["version"] = version
    card["how_to_load"] = ("from anatplane_dist.publish import load_pretrained; "
                           "load_pretrained('.', part='encoder')  # from this folder")
    write_durable(staging / CARD, (json.dumps(card, indent=1, sort_keys=False, default=str) + "\n").encode())
    write_durable(staging / "README.md", render_readme(card).encode())
    sums = "".join(f"{sha256_file(staging / f)}  {f}\n"
                   for f in sorted(p.name for p in staging.iterdir()))
    write_durable(staging / SUMS, sums.encode())  # last: its presence marks a whole version


_VERSION_RE = re.compile(r"^step(\d+)-[0-9a-f]+$")


def list_versions(name_dir: Path) -> list[Path]:
    """Published versions (``step<N>-<hash>`` dirs holding SHA256SUMS), oldest step first."""
    found = [p for p in name_dir.iterdir()
             if _VERSION_RE.match(p.name) and p.is_dir() and not p.is_symlink() and (p / SUMS).is_file()]
    return sorted(found, key=lambda p: (int(_VERSION_RE.match(p.name).group(1)), (p / SUMS).stat().st_mtime))


def update_latest(name_dir: Path) -> Path | None:
    """Point ``latest`` at the highest-step version (atomic: new symlink, then rename over)."""
    with _PublishLock(name_dir / ".publish.lock"):
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
        fsync_dir(name_dir)
        return versions[-1]


def resolve_version(path_or_dir: str | os.PathLike) -> Path:
    """A version dir from: the version dir itself, ``<name dir>`` (via ``latest``), or a file in
    a version dir. The one resolver of ``load_pretrained``, ``finetune --pretrained``, ``export``
    and ``train.init_from``; a ``latest`` that leads outside its name dir is refused."""
    p = Path(path_or_dir)
    if p.is_file():
        p = p.parent
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    link = p / LATEST
    if link.is_symlink():
        target = os.readlink(link)
        # publish writes a bare version name; anything else (an absolute path, ``..``) would let a
        # shared models directory hand out weights from elsewhere, so it is not followed
        if os.sep in target or (os.altsep and os.altsep in target) or target in (".", "..") \
                or not (p / target).is_dir():
            raise PublishError(f"{link} points to {target!r}, not to a version in {p}: not followed "
                               f"(re-publish, or name a version directory)")
        p = p / target
    elif link.exists():
        raise PublishError(f"{link} is not a symlink to a version: not followed")
    return p
