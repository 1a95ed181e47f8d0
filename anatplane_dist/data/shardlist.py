"""Which worker of which rank reads which shard, seeded explicitly per epoch.

webdataset's own shard stages take their seeds from the environment, the interpreter or the
DataLoader (its defaults changed across versions), so this stage is ours: every random choice
comes from ``derive_seed(seed, epoch, ...)`` over plain integers, which makes epoch ``e`` of a
resumed run read exactly what epoch ``e`` of the original run read.

The shard order of a *pass* is drawn from ``(seed, epoch, pass)`` only, so it is the same on
every rank; the list is then split by node (``rank::world``) and by worker
(``worker::num_workers``). Modes:

* ``"resample"``: each pass draws, with replacement and with the source weights, a multiple of
  ``world * num_workers`` shards, so every worker always has shards (any shard count works);
* ``"permute"``: each pass is a permutation of all shards (no repeats within a pass); needs at
  least ``world * num_workers`` shards;
* ``"once"``: the shards in spec order, one pass (exact validation).

Training streams never end (passes repeat); the stream cuts each worker's batches with
``with_epoch`` so every rank runs the same number of steps.
"""
from __future__ import annotations

import math
import multiprocessing
import random
from itertools import count, islice
from typing import Iterator, Literal, Sequence

import numpy as np
import torch.utils.data

from anatplane_dist.data.stats import StreamStats, worker_slot

Mode = Literal["resample", "permute", "once"]

SHARD_ORDER_TAG = 1
SAMPLE_SHUFFLE_TAG = 2


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from non-negative integers (numpy SeedSequence: same in every interpreter)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class SharedEpoch:
    """The current epoch in shared memory, read by DataLoader workers when an epoch starts.

    Persistent workers keep the dataset object they were started with, so a plain attribute
    set in the training process never reaches them; this shared value does.
    """

    def __init__(self, epoch: int = 0, ctx: multiprocessing.context.BaseContext | None = None) -> None:
        self._value = (ctx or multiprocessing.get_context()).RawValue("q", int(epoch))

    def set_value(self, epoch: int) -> None:
        """Set before ``iter(loader)`` of that epoch."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._value.value = int(epoch)

    def get_value(self) -> int:
        return int(self._value.value)


class ShardList(torch.utils.data.IterableDataset):
    """First pipeline stage: yields ``{"url": path}`` for the calling rank and worker."""

    def __init__(self, urls: Sequence[str], *, mode: Mode, rank: int, world_size: int, seed: int = 0,
                 epoch: SharedEpoch | None = None, probabilities: Sequence[float] | None = None,
                 stats: StreamStats | None = None, max_bad_samples: int = 10_000) -> None:
        super().__init__()
        if not urls:
            raise ValueError("no shards")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        if probabilities is not None and len(probabilities) != len(urls):
            raise ValueError("one probability per shard")
        self.urls = list(urls)
        self.mode = mode
        self.rank, self.world_size = rank, world_size
        self.seed = seed
        self.epoch = epoch
        self.probabilities = list(probabilities) if probabilities is not None else None
        self.stats = stats
        self.max_bad_samples = max_bad_samples

    def pass_order(self, epoch: int, pass_index: int, num_workers: int) -> list[str]:
        """The shard order of one pass, before the node/worker split (identical on all ranks)."""
        if self.mode == "once":
            return list(self.urls)
        rng = random.Random(derive_seed(self.seed, epoch, pass_index, SHARD_ORDER_TAG))
        if self.mode == "permute":
            order = list(self.urls)
            rng.shuffle(order)
            return order
        slots = self.world_size * num_workers
        length = math.ceil(len(self.urls) / slots) * slots
        return rng.choices(self.urls, weights=self.probabilities, k=length)

    def shards_for(self, epoch: int, pass_index: int, worker: int, num_workers: int) -> list[str]:
        """The shards one worker of this rank reads in one pass: split by node, then by worker."""
        order = self.pass_order(epoch, pass_index, num_workers)
        mine = islice(order, self.rank, None, self.world_size)
        return list(islice(mine, worker, None, num_workers))

    def __iter__(self) -> Iterator[dict[str, str]]:
        worker, num_workers = worker_slot()
        epoch = self.epoch.get_value() if self.epoch is not None else 0
        if self.mode == "permute" and len(self.urls) < self.world_size * num_workers:
            raise ValueError(f"{len(self.urls)} shards cannot feed {self.world_size} ranks x {num_workers} "
                             "workers without repeats: use resampled shards, fewer workers or more shards")
        passes = range(1) if self.mode == "once" else count()
        guard = _ProgressGuard(self, worker, epoch)
        for pass_index in passes:
            for url in self.shards_for(epoch, pass_index, worker, num_workers):
                if self.stats is not None:
                    if self.mode != "once":
                        guard.check()
                    self.stats.add("shards")
                yield {"url": url}


class _ProgressGuard:
    """Stops an endless training stream that can no longer produce a sample.

    Shards are read ahead of decoding (the shuffle buffer sits between), so "no good sample
    for a while" alone is normal at start-up. Two precise conditions instead: no sample at
    all read from the last ``3 * shards`` shards (every tar unreadable), or more than
    ``max_bad_samples`` samples read since the last good one (every sample failing to decode).
    """

    def __init__(self, shards: ShardList, worker: int, epoch: int) -> None:
        self.shards, self.worker, self.epoch = shards, worker, epoch
        self.patience = max(16, 3 * len(shards.urls))
        self.raw = self.good = -1
        self.shards_since_raw = 0
        self.raw_at_good = 0

    def check(self) -> None:
        stats = self.shards.stats
        raw, good = stats.get("raw"), stats.get("samples")
        self.shards_since_raw = 0 if raw != self.raw else self.shards_since_raw + 1
        if good != self.good:
            self.raw_at_good = raw
        self.raw, self.good = raw, good
        where = f"rank {self.shards.rank} worker {self.worker} epoch {self.epoch}"
        if self.shards_since_raw > self.patience:
            raise RuntimeError(f"{where}: no sample could be read from the last {self.shards_since_raw} "
                               "shards (every tar unreadable); see the warnings above")
        if raw - self.raw_at_good > self.shards.max_bad_samples:
            raise RuntimeError(f"{where}: no readable sample among the last {raw - self.raw_at_good} samples "
                               "read (every sample fails decoding); see the warnings above")
