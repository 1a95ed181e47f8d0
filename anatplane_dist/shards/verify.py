"""``anatplane shard --verify DIR``: every shard against ``manifest.json``, every sample against its seal.

One pass per shard: the file is streamed through sha256 while ``tarfile`` reads it, so each
byte is read once; per sample the crc32 seal (``seal``) is checked too, which names the bad
samples inside a bad shard (and would catch a sample changed before its shard was hashed).
Shards are checked in parallel threads: sha256, crc32 and file reads release the GIL.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from tqdm import tqdm

from anatplane_dist.core.errors import AnatplaneError
from anatplane_dist.shards.manifest import MANIFEST, ShardFacts, manifest_seal_error, sample_fact_error
from anatplane_dist.shards.seal import seal_error

__all__ = ["ShardCheck", "verify_shard", "verify_dir"]


@dataclass
class ShardCheck:
    """What checking one shard found (``problems`` empty: the shard is what the manifest says)."""

    name: str
    samples: int = 0
    bad_samples: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class _HashingReader(io.RawIOBase):
    """Read-through file object that hashes and counts every byte read."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh, self.sha, self.size = fh, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = self.fh.readinto(b)
        if n:
            self.sha.update(memoryview(b)[:n])
            self.size += n
        return n or 0

    def drain(self) -> None:
        while block := self.fh.read(1 << 20):
            self.sha.update(block)
            self.size += len(block)


def _npy_shape(data: bytes) -> tuple[int, ...] | None:
    """The shape in an ``.npy`` header (the payload is not parsed), or None if it has none."""
    import numpy.lib.format as npformat

    try:
        fh = io.BytesIO(data)
        major, _ = npformat.read_magic(fh)
        read = npformat.read_array_header_1_0 if major == 1 else npformat.read_array_header_2_0
        return tuple(read(fh)[0])
    except (ValueError, EOFError, OSError):
        return None


def _fact_error(current: dict[str, bytes], facts: ShardFacts) -> str | None:
    """The sample against the manifest's grid, channels and spacing (after its seal passed)."""
    shape = _npy_shape(current.get("image.npy", b""))
    if shape is None:
        return "image.npy has no readable .npy header"
    if "meta.json" in current:
        try:
            meta = json.loads(current["meta.json"])
            rows = len(meta["lines"])
        except (ValueError, KeyError, TypeError):
            return "meta.json without lines"
    else:
        meta, lines = {}, _npy_shape(current.get("lines.npy", b""))
        rows = lines[0] if lines else -1
    return sample_fact_error(meta, shape, rows, facts)


def _check_samples(tf: tarfile.TarFile, check: ShardCheck, facts: ShardFacts | None = None) -> None:
    current: dict[str, bytes] = {}
    key = None

    def close() -> None:
        if key is None:
            return
        check.samples += 1
        why = None
        if "meta.json" in current and "lines.npy" not in current:      # format 2: sealed
            why = seal_error(current.get("image.npy", b""), current["meta.json"])
        if not why and facts is not None:
            why = _fact_error(current, facts)
        if why:
            check.bad_samples.append(f"{key}: {why}")

    for m in tf:
        if not m.isfile():
            continue
        k, _, fld = m.name.partition(".")
        if k != key:
            close()
            key, current = k, {}
        fh = tf.extractfile(m)
        current[fld] = fh.read() if fh is not None else b""
    close()


def verify_shard(folder: str | os.PathLike, record: dict[str, Any], facts: ShardFacts | None = None) -> ShardCheck:
    """Check one manifest shard record (``name``, ``sha256``, ``bytes``, ``count``) against the file,
    and with ``facts`` every sample against the manifest's grid, channels and spacing."""
    check = ShardCheck(record["name"])
    path = Path(folder) / record["name"]
    try:
        with open(path, "rb") as raw:
            reader = _HashingReader(raw)
            try:
                with tarfile.open(fileobj=io.BufferedReader(reader, 1 << 20), mode="r|*") as tf:
                    _check_samples(tf, check, facts)
            except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
                check.problems.append(f"unreadable tar data: {type(exc).__name__}: {exc}")
            reader.drain()
    except FileNotFoundError:
        check.problems.append("missing")
        return check
    except OSError as exc:
        check.problems.append(f"unreadable: {exc.strerror or exc}")
        return check
    if reader.size != record["bytes"]:
        check.problems.append(f"{reader.size} bytes, manifest says {record['bytes']}")
    if reader.sha.hexdigest() != record["sha256"]:
        check.problems.append(f"sha256 {reader.sha.hexdigest()[:16]}..., manifest says {record['sha256'][:16]}...")
    if not check.problems and check.samples != record["count"]:
        check.problems.append(f"{check.samples} samples, manifest says {record['count']}")
    if check.bad_samples:
        check.problems.append(f"{len(check.bad_samples)} sample(s) fail their checksum or the manifest's facts")
    return check


def verify_dir(folder: str | os.PathLike, *, workers: int = 4, progress: bool = True) -> list[ShardCheck]:
    """Check the manifest's seal and every shard it lists; results in manifest order, preceded
    by a ``manifest.json`` entry when the manifest itself has a problem.

    Raises:
        AnatplaneError: no readable ``manifest.json`` in ``folder``.
    """
    folder = Path(folder)
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        records = list(manifest["shards"])
    except FileNotFoundError:
        raise AnatplaneError(f"{folder}/manifest.json: not found (not a complete shard folder; "
                             "an unmerged --part run has none until --merge)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AnatplaneError(f"{folder}/manifest.json: unreadable ({type(exc).__name__}: {exc})") from None
    sealed = ShardCheck(MANIFEST)
    why = manifest_seal_error(manifest)
    if why:
        sealed.problems.append(why)
    facts = _facts(manifest, sealed)
    out: dict[str, ShardCheck] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, \
            tqdm(total=len(records), unit="shard", desc="verify", disable=not progress, dynamic_ncols=True) as bar:
        futures = [pool.submit(verify_shard, folder, r, facts) for r in records]
        for fut in as_completed(futures):
            c = fut.result()
            out[c.name] = c
            bar.update(1)
            bar.set_postfix(bad=sum(not x.ok for x in out.values()), refresh=False)
    return [sealed] * (not sealed.ok) + [out[r["name"]] for r in records]


def _facts(manifest: dict[str, Any], sealed: ShardCheck) -> ShardFacts | None:
    """The facts every sample is checked against; a manifest without them is a problem of its own."""
    try:
        return ShardFacts(num_channels=int(manifest["num_channels"]), grid=int(manifest["grid"]),
                          spacing_mm=float(manifest["spacing_mm"]),
                          channels=tuple(manifest.get("channels") or ()), manifest_sha256="")
    except (KeyError, TypeError, ValueError):
        sealed.problems.append("does not state num_channels, grid and spacing_mm: samples not checked against them")
        return None
