"""Counters shared by the loader's worker processes, and rate-limited warnings.

Corrupt input must be skipped *and counted*, and the count must reach the training process
even though the skipping happens in DataLoader workers. Each worker owns one row of a shared
``RawArray`` (one writer per row, so no lock is needed); the training process sums the rows.
The array lives in shared memory created before the workers start, so it works with forked
and (while they are being spawned) spawned workers alike.
"""
from __future__ import annotations

import logging
import multiprocessing
import time
from dataclasses import dataclass

import torch.utils.data

log = logging.getLogger("anatplane_dist.data.stream")

FIELDS = ("shards", "tar_errors", "raw", "skipped", "samples")


def worker_slot() -> tuple[int, int]:
    """(worker id, number of workers) of the calling DataLoader worker; (0, 1) in the main process."""
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


@dataclass(frozen=True)
class StatsSnapshot:
    """Counter totals at one moment: shards opened, tar read errors, samples read from the tars
    (``raw``), samples that failed decoding (``skipped``) and samples delivered (``samples``)."""

    shards: int = 0
    tar_errors: int = 0
    raw: int = 0
    skipped: int = 0
    samples: int = 0

    def __sub__(self, other: "StatsSnapshot") -> "StatsSnapshot":
        return StatsSnapshot(*(getattr(self, f) - getattr(other, f) for f in FIELDS))

    @property
    def corrupt(self) -> int:
        """Everything that was dropped: tar-level errors plus samples that failed decoding."""
        return self.tar_errors + self.skipped


class StreamStats:
    """Per-worker counters in shared memory (see the module docstring)."""

    def __init__(self, num_workers: int, ctx: multiprocessing.context.BaseContext | None = None) -> None:
        ctx = ctx or multiprocessing.get_context()
        self.rows = max(1, num_workers)
        self._array = ctx.RawArray("q", self.rows * len(FIELDS))

    def add(self, field: str, n: int = 1) -> None:
        """Add ``n`` to ``field`` in the calling worker's row."""
        worker, _ = worker_slot()
        self._array[(worker % self.rows) * len(FIELDS) + FIELDS.index(field)] += n

    def get(self, field: str) -> int:
        """The calling worker's own value of ``field``."""
        worker, _ = worker_slot()
        return int(self._array[(worker % self.rows) * len(FIELDS) + FIELDS.index(field)])

    def snapshot(self) -> StatsSnapshot:
        """Totals over all workers."""
        n = len(FIELDS)
        return StatsSnapshot(*(int(sum(self._array[r * n + i] for r in range(self.rows))) for i in range(n)))


class RateLimitedWarner:
    """Warn the first time each kind of problem is seen, then at most once per ``interval_s``.

    A corrupt shard read by every epoch would otherwise print thousands of identical lines;
    the suppressed count is reported with the next message so nothing is hidden.
    """

    def __init__(self, interval_s: float = 60.0) -> None:
        self.interval_s = interval_s
        self._seen: set[str] = set()
        self._last = 0.0
        self._suppressed = 0

    def __call__(self, kind: str, message: str) -> None:
        now = time.monotonic()
        if kind in self._seen and now - self._last < self.interval_s:
            self._suppressed += 1
            return
        extra = f" ({self._suppressed} similar warnings suppressed)" if self._suppressed else ""
        self._seen.add(kind)
        self._last = now
        self._suppressed = 0
        worker, _ = worker_slot()
        log.warning("stream worker %d: %s%s", worker, message, extra)


class CountRaw:
    """Pipeline stage right after the tar reader: counts the samples it yields."""

    def __init__(self, stats: StreamStats) -> None:
        self.stats = stats

    def __call__(self, src):
        for sample in src:
            self.stats.add("raw")
            yield sample


class CountingHandler:
    """webdataset exception handler: count the error, warn (rate-limited) and keep going."""

    def __init__(self, stats: StreamStats, warner: RateLimitedWarner) -> None:
        self.stats = stats
        self.warner = warner

    def __call__(self, exn: BaseException) -> bool:
        self.stats.add("tar_errors")
        self.warner(type(exn).__name__, f"skipped unreadable tar data: {type(exn).__name__}: {exn}")
        return True
