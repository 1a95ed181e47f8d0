"""The WebDataset stream: shard tars -> decoded, batched samples for training and validation.

Training (:func:`make_train_loader`) reads an endless, epoch-seeded stream and cuts it into
*virtual epochs* of ``samples_per_epoch`` samples with the same number of steps on every rank:

    num_batches     = ceil(N / (B * world))          # steps one rank needs to cover N samples
    worker_batches  = ceil(num_batches / workers)    # each worker's share, cut with with_epoch
    steps_per_epoch = worker_batches * workers       # what every rank actually runs

Because the shard stream never ends (shards are resampled, or re-permuted pass after pass) each
worker always reaches its cut, so no rank runs short and no collective hangs at the end of an
epoch. The shard order is drawn from ``(seed, epoch)`` *before* the node split, the sample
shuffle from ``(seed, epoch, rank, worker)``; the epoch reaches persistent workers through a
:class:`SharedEpoch` set before each epoch (``loader.set_epoch(e)``), so a run resumed at epoch
``e`` sees exactly epoch ``e``'s batches again.

Validation (:func:`make_val_loader`) is an exact pass: shards in spec order, split by rank and
worker, each sample read once across all ranks, last batch partial. Ranks may get different
numbers of batches, so the validation loop must run **no collective per batch** (use the
unwrapped model, ``engine.module`` / ``ddp.module``, in eval mode) and reduce once after the
loop with ``dist.MetricSums``, which every rank calls; no rank waits on another's batches.

Corrupt input is skipped and counted, never fatal: unreadable tar data (``tar_errors``) and
samples that break the schema or fail their crc32 seal (``skipped``; the seal is checked before
anything else of a sample is parsed, ``data.decode``) are counted in shared memory across workers,
warned about once per kind (then rate-limited), and reported at the end of each epoch in
``loader.last_report``.
"""
from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.utils.data
import webdataset as wds

from anatplane_dist.data.config import DataConfig
from anatplane_dist.data.decode import collate
from anatplane_dist.data.shardlist import SAMPLE_SHUFFLE_TAG, ShardList, SharedEpoch, derive_seed
from anatplane_dist.data.shardspec import (
    all_urls,
    check_exist,
    parse_sources,
    read_sizes,
    shard_probabilities,
    total_samples,
)
from anatplane_dist.data.stats import (
    CountingHandler,
    CountRaw,
    RateLimitedWarner,
    StatsSnapshot,
    StreamStats,
    worker_slot,
)
from anatplane_dist.shards.format import SampleError, decode_sample, wanted_member
from anatplane_dist.shards.manifest import ShardFacts, check_shard_files

__all__ = ["DataConfig", "EpochPlan", "EpochReport", "SharedEpoch", "StreamLoader", "make_train_loader",
           "make_val_loader", "read_sizes", "total_samples"]     # MetricSums & co. live in dist.py

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochPlan:
    """Epoch arithmetic shared by all ranks (see the module docstring)."""

    requested_samples: int
    batch_size: int
    world_size: int
    num_workers: int

    @property
    def workers(self) -> int:
        return max(1, self.num_workers)

    @property
    def num_batches(self) -> int:
        return math.ceil(self.requested_samples / (self.batch_size * self.world_size))

    @property
    def worker_batches(self) -> int:
        return math.ceil(self.num_batches / self.workers)

    @property
    def steps_per_epoch(self) -> int:
        return self.worker_batches * self.workers

    @property
    def samples_per_epoch(self) -> int:
        """Samples all ranks together actually read per epoch (>= requested: rounded up)."""
        return self.steps_per_epoch * self.batch_size * self.world_size


@dataclass
class EpochReport:
    """What one pass over a loader produced: steps, samples and what was skipped."""

    epoch: int
    steps: int
    samples: int
    seconds: float
    stats: StatsSnapshot = field(default_factory=StatsSnapshot)


class StreamLoader:
    """A DataLoader plus its epoch, counters and expected length.

    Iterate it once per epoch; call :meth:`set_epoch` before. ``last_report`` holds the
    counts of the last pass; it is made when the pass yields its last expected batch (so a
    loop that takes exactly ``steps_per_epoch`` batches with ``next()`` gets it too), when the
    stream ends, or, for a pass the consumer left early, when the next pass starts. A training
    loader raises if a pass yields more or fewer than ``steps_per_epoch`` batches (equal steps
    on every rank is what keeps collectives from hanging, so a violation must not pass).
    """

    def __init__(self, dataloader: torch.utils.data.DataLoader, *, name: str, rank: int,
                 stats: StreamStats, epoch_state: SharedEpoch, plan: EpochPlan | None = None) -> None:
        self.dataloader = dataloader
        self.name = name
        self.rank = rank
        self.stats = stats
        self.epoch_state = epoch_state
        self.plan = plan
        self.last_report: EpochReport | None = None
        self._open: dict[str, Any] | None = None  # the pass in progress, not yet reported

    @property
    def steps_per_epoch(self) -> int | None:
        return None if self.plan is None else self.plan.steps_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the workers draw epoch ``epoch``'s shard order and sample shuffle."""
        self.epoch_state.set_value(epoch)

    def __len__(self) -> int:
        if self.plan is None:
            raise TypeError(f"the {self.name} loader has no fixed length (exact pass over uneven shards)")
        return self.plan.steps_per_epoch

    def _report(self, note: str = "") -> None:
        run, self._open = self._open, None
        if run is None:
            return
        seen = self.stats.snapshot() - run["before"]
        self.last_report = EpochReport(run["epoch"], run["steps"], run["samples"],
                                       time.perf_counter() - run["start"], seen)
        level = logging.WARNING if seen.corrupt else logging.INFO
        log.log(level, "%s rank %d epoch %d: %d steps, %d samples, %d shards opened, %d tar errors, "
                "%d samples skipped%s", self.name, self.rank, run["epoch"], run["steps"], run["samples"],
                seen.shards, seen.tar_errors, seen.skipped, note)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._open is not None:
            self._report(" (pass left early by its consumer)")
        run = self._open = {"epoch": self.epoch_state.get_value(), "before": self.stats.snapshot(),
                            "start": time.perf_counter(), "steps": 0, "samples": 0}
        expected = None if self.plan is None else self.plan.steps_per_epoch
        for batch in self.dataloader:
            run["steps"] += 1
            run["samples"] += len(batch["key"])
            if expected is not None and run["steps"] > expected:
                raise RuntimeError(f"{self.name} rank {self.rank} epoch {run['epoch']}: more than {expected} "
                                   "steps; ranks would fall out of step")
            if run["steps"] == expected:
                self._report()
            yield batch
        if self._open is run:
            self._report()
        if expected is not None and run["steps"] != expected:
            raise RuntimeError(f"{self.name} rank {self.rank} epoch {run['epoch']}: {run['steps']} steps instead "
                               f"of {expected}; ranks would fall out of step")


class _SeededShuffle:
    """Sample shuffle buffer seeded from (seed, epoch, rank, worker), re-seeded every epoch."""

    def __init__(self, bufsize: int, initial: int, seed: int, epoch: SharedEpoch, rank: int) -> None:
        self.bufsize, self.initial, self.seed, self.epoch, self.rank = bufsize, initial, seed, epoch, rank

    def __call__(self, src: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        if self.bufsize <= 1:
            yield from src
            return
        worker, _ = worker_slot()
        rng = random.Random(derive_seed(self.seed, self.epoch.get_value(), self.rank, worker, SAMPLE_SHUFFLE_TAG))
        yield from wds.shuffle(self.bufsize, min(self.initial, self.bufsize), rng=rng)(src)


class _Decode:
    """Decode stage: schema-checked samples out, broken ones counted, warned about and dropped.
    With ``expect`` each sample is also checked against the manifest's grid, channels and spacing."""

    def __init__(self, stats: StreamStats, warner: RateLimitedWarner, expect: ShardFacts | None = None) -> None:
        self.stats, self.warner, self.expect = stats, warner, expect

    def __call__(self, src: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for raw in src:
            try:
                sample = decode_sample(raw, self.expect)
            except SampleError as exn:
                self.stats.add("skipped")
                self.warner(f"sample:{exn.reason}", f"skipped sample of {raw.get('__url__', '?')}: {exn}")
                continue
            self.stats.add("samples")
            yield sample


def _worker_init(_worker_id: int) -> None:
    """Workers belong to their trainer: they die with it and leave every signal to it.

    SLURM signals every process of a job step (cgroup), so a worker would otherwise run the
    trainer's handlers it inherited at fork: submitit's SIGUSR2 requeue, our SIGTERM/SIGINT stop
    request, or print a KeyboardInterrupt traceback on Ctrl-C. ``PR_SET_PDEATHSIG`` (Linux) kills
    the worker when the trainer dies, even by SIGKILL, instead of after torch's 5 s watchdog poll.
    """
    import ctypes
    import signal
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass  # not Linux/glibc: the watchdog still ends orphaned workers


def _dataloader(pipeline: torch.utils.data.IterableDataset, num_workers: int, cfg: DataConfig
                ) -> torch.utils.data.DataLoader:
    """Batches are built in the workers, so the DataLoader itself does no batching."""
    return torch.utils.data.DataLoader(
        pipeline, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0,
        pin_memory=cfg.pin_memory, prefetch_factor=cfg.prefetch_factor if num_workers > 0 else None,
        worker_init_fn=_worker_init if num_workers > 0 else None)


def _pipeline(shards: ShardList, stats: StreamStats, batch_size: int, *, partial: bool,
              shuffle: _SeededShuffle | None, expect: ShardFacts | None = None) -> wds.DataPipeline:
    warner = RateLimitedWarner()
    return wds.DataPipeline(
        shards,
        wds.tarfile_to_samples(handler=CountingHandler(stats, warner), select_files=wanted_member),
        CountRaw(stats),
        shuffle,  # DataPipeline skips None
        _Decode(stats, warner, expect),
        wds.batched(batch_size, collation_fn=collate, partial=partial),
    )


def _local(urls: list[str]) -> list[str]:
    """The shard URLs that are local files (remote ones have no manifest to compare with here)."""
    return [u for u in urls if "://" not in u and not u.startswith("pipe:")]


def make_train_loader(cfg: DataConfig, *, rank: int = 0, world_size: int = 1,
                      epoch_state: SharedEpoch | None = None,
                      expect: ShardFacts | None = None) -> tuple[StreamLoader, int]:
    """The training stream of one rank and its steps per epoch (equal on every rank).

    ``rank``/``world_size`` are explicit (nothing is read from the environment), so several
    ranks can be simulated in one process. Pass the :class:`SharedEpoch` that the training
    loop sets (or call ``loader.set_epoch``) before each epoch. Every shard is checked against
    its manifest record before streaming (size always, sha256 with ``data.verify: sha256``), and
    with ``expect`` every sample against the manifest's facts (a counted skip).

    Raises:
        ValueError / FileNotFoundError: bad shard spec, missing shards, no size information,
            weights without resampling, or too few shards for ``permute`` mode.
        ShardFactsError: a shard that is not what its manifest says (named).
    """
    if not cfg.shards:
        raise ValueError("data.shards is not set")
    sources = parse_sources(cfg.shards, cfg.weights)
    urls = all_urls(sources)
    check_exist(urls)
    val_urls = all_urls(parse_sources(cfg.val_shards)) if cfg.val_shards else []
    check_shard_files(_local(urls + val_urls), sha256=cfg.verify == "sha256")   # refused at start, named
    if not cfg.resampled and any(s.weight is not None for s in sources):
        raise ValueError("source weights need resampled shards (data.resampled: true)")
    if not cfg.resampled and len(urls) < world_size * max(1, cfg.num_workers):
        raise ValueError(f"{len(urls)} shards < {world_size} ranks x {max(1, cfg.num_workers)} workers: "
                         "set data.resampled: true, or use fewer workers or more shards")
    requested = cfg.samples_per_epoch or total_samples(urls)
    plan = EpochPlan(int(requested), cfg.batch_size, world_size, cfg.num_workers)
    epoch_state = epoch_state if epoch_state is not None else SharedEpoch(0)
    stats = StreamStats(cfg.num_workers)
    shards = ShardList(urls, mode="resample" if cfg.resampled else "permute", rank=rank,
                       world_size=world_size, seed=cfg.seed, epoch=epoch_state,
                       probabilities=shard_probabilities(sources) if cfg.resampled else None, stats=stats,
                       max_bad_samples=cfg.shuffle_buffer + 10_000)
    shuffle = _SeededShuffle(cfg.shuffle_buffer, cfg.shuffle_initial, cfg.seed, epoch_state, rank)
    pipeline = _pipeline(shards, stats, cfg.batch_size, partial=False, shuffle=shuffle, expect=expect)
    pipeline = pipeline.with_epoch(plan.worker_batches)
    assert plan.steps_per_epoch * cfg.batch_size * world_size >= plan.requested_samples
    log.info("train stream rank %d/%d: %d shards in %d source(s), %s; %d samples/epoch requested -> "
             "%d steps/epoch (%d workers x %d batches) x micro batch %d x %d ranks = %d samples/epoch",
             rank, world_size, len(urls), len(sources), "resampled" if cfg.resampled else "permuted per pass",
             plan.requested_samples, plan.steps_per_epoch, plan.workers, plan.worker_batches,
             cfg.batch_size, world_size, plan.samples_per_epoch)
    loader = StreamLoader(_dataloader(pipeline, cfg.num_workers, cfg), name="train", rank=rank,
                          stats=stats, epoch_state=epoch_state, plan=plan)
    return loader, plan.steps_per_epoch


def make_val_loader(cfg: DataConfig, *, rank: int = 0, world_size: int = 1,
                    expect: ShardFacts | None = None) -> StreamLoader:
    """The exact validation pass of one rank: every sample once across ranks, partial last batch.

    Ranks can get different batch counts (uneven shards); see the module docstring for the
    loop pattern that cannot hang, and :class:`MetricSums` for the reduction.

    Raises:
        ValueError / FileNotFoundError: no ``val_shards`` configured, bad spec or missing files.
    """
    if not cfg.val_shards:
        raise ValueError("data.val_shards is not set")
    urls = all_urls(parse_sources(cfg.val_shards))
    check_exist(urls)
    check_shard_files(_local(urls))          # sizes again (one stat each); hashed once, at start
    workers = cfg.num_workers if cfg.val_num_workers is None else cfg.val_num_workers
    # more workers than this rank has shards would only start idle processes
    workers = min(workers, len(urls[rank::world_size]))
    stats = StreamStats(workers)
    epoch_state = SharedEpoch(0)
    shards = ShardList(urls, mode="once", rank=rank, world_size=world_size, stats=stats)
    pipeline = _pipeline(shards, stats, cfg.val_batch_size or cfg.batch_size, partial=True, shuffle=None,
                         expect=expect)
    log.info("val stream rank %d/%d: %d of %d shards, %d workers", rank, world_size,
             len(urls[rank::world_size]), len(urls), workers)
    return StreamLoader(_dataloader(pipeline, workers, cfg), name="val", rank=rank, stats=stats,
                        epoch_state=epoch_state)
