"""Atomic, deterministic, resumable tar shards of one split.

* Atomic: a shard is written as ``<name>.tar.tmp`` and renamed (``os.replace``) only once it is
  complete, so a reader never sees a partial shard under a final name.
* Deterministic: members are written with ``webdataset.TarWriter`` in USTAR format with a fixed
  mtime, uid/gid 0, fixed user/group names and mode; the sample order is fixed by the caller.
  Same samples in, same bytes out.
* Resumable: after each rename a line goes to an append-only journal
  (``_state/<part>.jsonl``): the shard's name, count, sha256, size and the *resume point* (the
  position of the next sample: subject position in the split, sample offset in that subject).
  A re-run keeps the complete shards that precede the first missing *or changed* one (its
  sha256 is recomputed: a same-size edit is caught, not only a truncation) and restarts there.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import queue
import re
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable

from anatplane_dist.core.atomic import atomic_write_json, commit_file
from anatplane_dist.core.errors import AnatplaneError
from anatplane_dist.core.hashing import sha256_file
from anatplane_dist.core.jsonl import append_jsonl, read_jsonl
from anatplane_dist.shards.samples import Sample

if TYPE_CHECKING:                  # webdataset imports torch: seconds, only paid once a shard opens
    import webdataset as wds

__all__ = ["ShardRecord", "SplitWriter", "Journal", "ResumeState", "ResumeMismatch", "atomic_write_json",
           "TAR_MTIME"]

#: fixed tar header fields (reproducible shards); an int, since tarfile adds a 1 kB PAX header
#: to every member whose mtime is a float
TAR_MTIME = 0
_TAR_USER = "anatplane"


class ResumeMismatch(AnatplaneError):
    """The output folder holds shards of another configuration or another subject list."""


class _HashingFile:
    """Write-through file object that counts what goes through it and hashes it on a helper thread.

    sha256 was the largest single cost of the one writer that all sharder workers feed (about a
    third of its CPU time per sample, next to tar headers and writes); hashlib releases the GIL
    for buffers over 2 KiB, so a helper thread hashes while this thread builds tar headers and
    writes. The bytes are handed over in ~1 MiB batches (the tar stream arrives in 10 KiB
    records), in order, so the digest is that of the file.
    """

    BATCH = 1 << 20

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.size = 0
        self._sha = hashlib.sha256()
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._queue: queue.SimpleQueue[list[bytes] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._hash_batches, name="shard-sha256", daemon=True)
        self._thread.start()

    def _hash_batches(self) -> None:
        while (batch := self._queue.get()) is not None:
            for chunk in batch:
                self._sha.update(chunk)

    def write(self, data: bytes) -> int:
        chunk = data if isinstance(data, bytes) else bytes(data)   # the caller may reuse its buffer
        self._batch.append(chunk)
        self._batch_bytes += len(chunk)
        if self._batch_bytes >= self.BATCH:
            self._queue.put(self._batch)
            self._batch, self._batch_bytes = [], 0
        self.size += len(chunk)
        return self.fh.write(chunk)

    def flush(self) -> None:
        self.fh.flush()

    def hexdigest(self) -> str:
        """The sha256 of everything written (waits for the helper thread; call once, at the end)."""
        self.stop()
        return self._sha.hexdigest()

    def stop(self) -> None:
        """Hash what is pending and end the helper thread (also when the shard is dropped)."""
        if self._thread.is_alive():
            if self._batch:
                self._queue.put(self._batch)
                self._batch, self._batch_bytes = [], 0
            self._queue.put(None)
            self._thread.join()


@dataclass
class ShardRecord:
    """A complete shard (one journal line)."""

    name: str
    split: str
    index: int
    count: int
    sha256: str
    bytes: int
    end: tuple[int, int]            # resume point: (subject position in split, sample offset)
    type: str = "shard"


class SplitWriter:
    """Sequential shards ``<prefix>-%06d.tar`` holding ``shard_size`` samples each (the last: the rest)."""

    def __init__(self, out_dir: Path, prefix: str, split: str, shard_size: int, start_index: int,
                 on_complete: Callable[[ShardRecord], None], compress: str = "none") -> None:
        """``compress="gz"`` writes the tar stream through gzip (level 1, no name or time in the
        gzip header, so still deterministic); every tar reader detects it on open."""
        if compress not in ("none", "gz"):
            raise ValueError(f"compress must be 'none' or 'gz', got {compress!r}")
        self.compress = compress
        self._gz: gzip.GzipFile | None = None
        self.out_dir = Path(out_dir)
        self.prefix = prefix
        self.split = split
        self.shard_size = shard_size
        self.index = start_index
        self.on_complete = on_complete
        self._fh: BinaryIO | None = None
        self._hash: _HashingFile | None = None
        self._tar: "wds.TarWriter | None" = None
        self._count = 0

    def shard_name(self, index: int) -> str:
        return f"{self.prefix}-{index:06d}.tar"

    @property
    def _tmp(self) -> Path:
        return self.out_dir / (self.shard_name(self.index) + ".tmp")

    def add(self, sample: Sample, position: tuple[int, int]) -> None:
        """Append ``sample``, the ``position``-th of the split; a full shard is closed first."""
        if self._tar is not None and self._count >= self.shard_size:
            self._close(position)
        if self._tar is None:
            import webdataset as wds
            self._fh = open(self._tmp, "wb", buffering=1 << 20)   # one syscall per MiB, not per tar record
            self._hash = _HashingFile(self._fh)
            sink: Any = self._hash
            if self.compress == "gz":
                self._gz = gzip.GzipFile(filename="", mode="wb", compresslevel=1, fileobj=self._hash, mtime=0)
                sink = self._gz
            self._tar = wds.TarWriter(sink, encoder=False, compress=False, mtime=TAR_MTIME,
                                      user=_TAR_USER, group=_TAR_USER, mode=0o444)
            self._count = 0
        self._tar.write({"__key__": sample.key, **sample.members})
        self._count += 1

    def finish(self, end: tuple[int, int]) -> None:
        """Close the open shard (if any): ``end`` is the resume point after its last sample."""
        if self._tar is not None:
            self._close(end)

    def abort(self) -> None:
        """Drop the open shard: close it and delete the temporary file (no partial shard remains)."""
        try:
            if self._tar is not None:
                self._tar.close()
        except OSError:
            pass
        finally:
            if self._fh is not None:
                try:
                    self._fh.close()
                except OSError:
                    pass
            if self._hash is not None:
                self._hash.stop()
            self._tar = self._fh = self._hash = self._gz = None
            self._tmp.unlink(missing_ok=True)

    def _close(self, end: tuple[int, int]) -> None:
        assert self._tar is not None and self._fh is not None and self._hash is not None
        self._tar.close()              # writes the end-of-archive blocks through the hashing file
        if self._gz is not None:
            self._gz.close()           # gzip trailer (does not close the underlying file)
            self._gz = None
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        name = self.shard_name(self.index)
        commit_file(self._tmp, self.out_dir / name)
        rec = ShardRecord(name, self.split, self.index, self._count, self._hash.hexdigest(),
                          self._hash.size, (int(end[0]), int(end[1])))
        self._tar = self._fh = self._hash = None
        self.index += 1
        self._count = 0
        self.on_complete(rec)


@dataclass
class ResumeState:
    """What a previous run of the same part left that is kept."""

    shards: dict[str, list[ShardRecord]] = field(default_factory=dict)     # split -> complete, in order
    subjects: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # split -> subject records

    def end(self, split: str) -> tuple[int, int]:
        shards = self.shards.get(split) or []
        return tuple(shards[-1].end) if shards else (0, 0)

    def next_index(self, split: str) -> int:
        return len(self.shards.get(split) or [])


class Journal:
    """Append-only JSON-lines record of one part's progress (shards done, subjects done)."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = Path(path)
        self.header = dict(header, type="header")

    def load(self, out_dir: Path, prefixes: dict[str, str], overwrite: bool) -> ResumeState:
        """Read a previous journal, keep what is complete and consistent, delete the rest.

        Raises:
            ResumeMismatch: the journal belongs to another config or subject list (and not
                ``overwrite``).
        """
        state = ResumeState()
        records = self._read()
        if records and records[0].get("type") == "header":
            old = records[0]
            diff = [k for k in ("config_hash", "subjects_hash", "part") if old.get(k) != self.header.get(k)]
            if diff and not overwrite:
                raise ResumeMismatch(
                    f"{out_dir} holds shards made with a different {' and '.join(diff)} "
                    f"({', '.join(f'{k}: {old.get(k)} != {self.header.get(k)}' for k in diff)}); "
                    "use another --out or pass --overwrite to replace them")
            if diff:
                records = []
        for split, prefix in prefixes.items():
            shards = sorted((r for r in records if r.get("type") == "shard" and r.get("split") == split),
                            key=lambda r: r["index"])
            kept: list[ShardRecord] = []
            for r in shards:
                path = Path(out_dir) / r["name"]
                if r["index"] != len(kept) or not path.is_file() or path.stat().st_size != r["bytes"] \
                        or sha256_file(path) != r["sha256"]:
                    break
                r = {k: v for k, v in r.items() if k != "type"}
                kept.append(ShardRecord(**dict(r, end=tuple(r["end"]))))
            state.shards[split] = kept
            end_pos = state.end(split)[0]
            state.subjects[split] = [r for r in records if r.get("type") == "subject" and r.get("split") == split
                                     and r["pos"] < end_pos]
            _remove_stale(Path(out_dir), prefix, len(kept))
        self._rewrite(state)
        return state

    def append(self, record: dict[str, Any]) -> None:
        append_jsonl(self.path, record, durable=True, sort_keys=True)

    def shard_done(self, rec: ShardRecord) -> None:
        self.append(asdict(rec))

    def records(self) -> list[dict[str, Any]]:
        """Every complete line of the journal (header first)."""
        return self._read()

    def _read(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path)      # a line cut by a kill is skipped (the rewrite drops it)

    def _rewrite(self, state: ResumeState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows: list[dict[str, Any]] = [self.header]
        for split in state.shards:
            rows += [asdict(r) for r in state.shards[split]]
            rows += state.subjects[split]
        atomic_write_json(self.path, rows, lines=True)


def _remove_stale(out_dir: Path, prefix: str, first_stale: int) -> None:
    """Delete temporary shards and shards at or past ``first_stale`` of this ``prefix``."""
    pattern = re.compile(re.escape(prefix) + r"-(\d{6})\.tar(\.tmp)?$")
    for p in out_dir.iterdir():
        m = pattern.match(p.name)
        if m and (m.group(2) or int(m.group(1)) >= first_stale):
            p.unlink()
