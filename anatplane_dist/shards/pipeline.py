"""Run the sharder over a data set: subjects -> worker processes -> ordered shard writing.

Determinism regardless of worker count: workers only *compute* (read one study, build and
encode its samples, return the bytes); the main process consumes results strictly in subject
order and is the only writer.  So shard contents and order depend on the input and the
config, never on scheduling.  Memory stays bounded: at most ``2 x workers`` studies are in
flight, and each is dropped once written.
"""
from __future__ import annotations

import contextlib
import fcntl
import multiprocessing
import os
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from tqdm import tqdm

from anatplane_dist.core.atomic import atomic_write_json
from anatplane_dist.core.errors import AnatplaneError
from anatplane_dist.core.hashing import json_fingerprint
from anatplane_dist.shards.manifest import merge_parts, write_part
from anatplane_dist.shards.profiles import ShardConfig
from anatplane_dist.shards.samples import StudySamples
from anatplane_dist.shards.splits import assign_splits, part_subjects
from anatplane_dist.shards.threads import pin_worker_threads
from anatplane_dist.shards.worker import SubjectTask, list_subjects, process_subject, resolve_reader
from anatplane_dist.shards.writer import Journal, ResumeState, ShardRecord, SplitWriter
from anatplane_dist.sources.base import Skip

__all__ = ["ShardRun", "PartBusy", "shard_dataset"]

SPLITS = ("train", "val")


def _ordered_results(tasks: list[SubjectTask], workers: int) -> Iterator[StudySamples]:
    """Results in task order; at most ``2 * workers`` studies in flight (bounded memory).

    A worker that dies (a decoder crash, the out-of-memory killer) breaks the whole pool; the
    pool is rebuilt, the oldest pending study is retried alone, and if it kills a worker again
    it is recorded as skipped -- the other studies are resubmitted and the run goes on.
    """
    if workers <= 1:
        for t in tasks:
            yield process_subject(t)
        return
    def pool() -> ProcessPoolExecutor:
        return worker_pool(workers)

    ex = pool()
    try:
        pending: deque[tuple[int, Future]] = deque()
        nxt = 0
        while nxt < len(tasks) and len(pending) < 2 * workers:
            pending.append((nxt, ex.submit(process_subject, tasks[nxt])))
            nxt += 1
        while pending:
            i, fut = pending.popleft()
            try:
                result = fut.result()
            except BrokenProcessPool:
                ex.shutdown(wait=True, cancel_futures=True)
                ex = pool()
                try:
                    result = ex.submit(process_subject, tasks[i]).result()
                except BrokenProcessPool:
                    ex.shutdown(wait=True, cancel_futures=True)
                    ex = pool()
                    result = StudySamples(tasks[i].subject, skipped=[Skip(
                        tasks[i].subject, "study left out: its worker process died twice while sharding it "
                        "(a crash in a decoder or the out-of-memory killer)", tasks[i].subject, "study")])
                pending = deque((j, ex.submit(process_subject, tasks[j])) for j, _ in pending)
            if nxt < len(tasks):
                pending.append((nxt, ex.submit(process_subject, tasks[nxt])))
                nxt += 1
            yield result
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """Spawned worker processes (fork-safety with threads, the same on every OS), each pinned to
    one compute thread before it imports numpy/torch (:mod:`.threads`). The pool lives for the
    whole run, so interpreter start-up and imports are paid once per worker."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=pin_worker_threads)


@dataclass
class ShardRun:
    """Outcome of one run (one part)."""

    out_dir: Path
    samples: int = 0
    shards: list[ShardRecord] = field(default_factory=list)
    subjects: int = 0
    subjects_with_samples: int = 0
    skipped: int = 0
    complete: bool = False
    error: str = ""
    manifest: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        """Something usable was produced (the CLI's exit status)."""
        return self.complete and self.samples > 0


class PartBusy(AnatplaneError, RuntimeError):
    """Another process is writing the same part into the same folder."""


@contextlib.contextmanager
def _part_lock(path: Path) -> Iterator[None]:
    """Exclusive lock of one part's output (e.g. a requeued SLURM task whose first instance
    still runs): two writers of the same shards would delete each other's temporary files."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PartBusy(f"another run is writing {path.parent.parent} part {path.stem}; "
                           "wait for it or stop it") from None
        yield
    finally:
        os.close(fd)


def _subjects_hash(split_of: dict[str, str]) -> str:
    """Identity of the whole data set's subject list and split (the same for every part)."""
    return json_fingerprint(split_of)


@dataclass
class _Plan:
    """Which subjects this part shards, in which split, at which position, into which names."""

    root: Path
    out: Path
    part: tuple[int, int]
    split_of: dict[str, str]
    mine: list[str]
    order: dict[str, list[str]]
    pos_of: dict[str, int]
    prefixes: dict[str, str]

    @property
    def tag(self) -> str:
        return f"part-{self.part[0]:04d}-of-{self.part[1]:04d}"


def _plan(input_root: str | os.PathLike, out_dir: str | os.PathLike, cfg: ShardConfig, part: tuple[int, int],
          subjects: Iterable[str] | None) -> _Plan:
    root = Path(input_root).resolve()
    out = Path(out_dir)
    if not root.is_dir():
        raise ValueError(f"--input {root}: not a folder")
    all_subjects = list_subjects(resolve_reader(cfg.profile.reader), root)
    out_abs = out.resolve()
    if out_abs.parent == root:       # an output folder inside the input is not a subject
        all_subjects = [s for s in all_subjects if s != out_abs.name]
    if subjects is not None:
        wanted = set(subjects)
        all_subjects = [s for s in all_subjects if s in wanted]
    split_of = assign_splits(all_subjects, cfg.val_fraction, cfg.seed)
    i, n = part
    mine = part_subjects(all_subjects, i, n)
    order = {sp: [s for s in mine if split_of[s] == sp] for sp in SPLITS}
    return _Plan(root, out, part, split_of, mine, order,
                 pos_of={s: k for sp in SPLITS for k, s in enumerate(order[sp])},
                 prefixes={sp: (sp if n == 1 else f"{sp}-p{i:04d}") for sp in SPLITS})


def shard_dataset(input_root: str | os.PathLike, out_dir: str | os.PathLike, cfg: ShardConfig, *,
                  workers: int = 1, part: tuple[int, int] = (0, 1), overwrite: bool = False,
                  progress: bool = True, subjects: Iterable[str] | None = None) -> ShardRun:
    """Shard ``input_root`` (this part's subjects) into ``out_dir``; resumes a previous run.

    Args:
        workers: worker processes (1: in this process).
        part: ``(i, N)``: shard the i-th of N interleaved subject subsets; shard names then
            carry ``-p<i>``.  A one-part run also merges (sizes/manifest/skipped).
        overwrite: replace shards of another config instead of refusing.
        subjects: restrict to these subject ids (default: all of ``input_root``).

    Raises:
        ValueError: unknown reader, missing input; ``writer.ResumeMismatch`` (see ``overwrite``);
        ``PartBusy``: another process writes the same part.
    """
    plan = _plan(input_root, out_dir, cfg, part, subjects)
    out = plan.out
    (out / "_state").mkdir(parents=True, exist_ok=True)
    with _part_lock(out / "_state" / f"{plan.tag}.lock"):
        header = {"config_hash": cfg.config_hash(), "subjects_hash": _subjects_hash(plan.split_of),
                  "part": list(plan.part)}
        journal = Journal(out / "_state" / f"{plan.tag}.jsonl", header)
        state = journal.load(out, plan.prefixes, overwrite)
        for stale in ("manifest.json", "sizes.json"):      # describe the shard set only once it is whole again
            (out / stale).unlink(missing_ok=True)
        shards, error = _write(plan, cfg, journal, state, workers, progress)
        return _finish(plan, cfg, journal, shards, error)


def _write(plan: _Plan, cfg: ShardConfig, journal: Journal, state: ResumeState, workers: int, progress: bool
           ) -> tuple[dict[str, list[ShardRecord]], str]:
    """Shard the subjects not yet in complete shards; returns all complete shards and the
    output error that stopped the run ('' when it finished)."""
    shards: dict[str, list[ShardRecord]] = {sp: list(state.shards[sp]) for sp in SPLITS}

    def done(rec: ShardRecord) -> None:
        journal.shard_done(rec)
        shards[rec.split].append(rec)

    writers = {sp: SplitWriter(plan.out, plan.prefixes[sp], sp, cfg.shard_size, state.next_index(sp), done,
                               cfg.compress) for sp in SPLITS}
    ends = {sp: state.end(sp) for sp in SPLITS}
    todo = [s for s in plan.mine if plan.pos_of[s] >= ends[plan.split_of[s]][0]]
    tasks = [SubjectTask(cfg.profile.reader, str(plan.root), s, cfg) for s in todo]
    i, n = plan.part
    bar = tqdm(total=len(plan.mine), initial=len(plan.mine) - len(todo), unit="subject", disable=not progress,
               desc=f"shard {cfg.profile.name}" + (f" part {i}/{n}" if n > 1 else ""), dynamic_ncols=True)
    t0, n_new = time.perf_counter(), 0
    error = ""
    results = _ordered_results(tasks, workers)
    try:
        for res in results:
            sp, pos = plan.split_of[res.subject], plan.pos_of[res.subject]
            start = ends[sp][1] if pos == ends[sp][0] else 0     # resuming inside this subject
            for j in range(start, len(res.samples)):
                writers[sp].add(res.samples[j], (pos, j))
            n_new += len(res.samples) - start
            journal.append({"type": "subject", "split": sp, "pos": pos, "subject": res.subject,
                            "samples": len(res.samples), "skipped": [s.to_dict() for s in res.skipped]})
            bar.update(1)
            rate = n_new / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(samples=n_new, samples_s=f"{rate:.1f}", refresh=False)
            del res
        for sp in SPLITS:
            writers[sp].finish((len(plan.order[sp]), 0))
    except OSError as exc:          # disk full, quota, permissions: stop cleanly, keep what is complete
        error = f"output error: {type(exc).__name__}: {exc}"
        for w in writers.values():
            w.abort()
    except BaseException:           # killed (Ctrl-C) or a bug: leave no partial shard behind
        for w in writers.values():
            w.abort()
        raise
    finally:
        results.close()
        bar.close()
    return shards, error


def _finish(plan: _Plan, cfg: ShardConfig, journal: Journal, shards: dict[str, list[ShardRecord]], error: str
            ) -> ShardRun:
    """Write the part record (and, for a one-part run, the merged metadata); the run's outcome."""
    # a subject counts as sharded only once all its samples sit in complete shards
    final_end = {sp: ((len(plan.order[sp]), 0) if not error else
                      (tuple(shards[sp][-1].end) if shards[sp] else (0, 0))) for sp in SPLITS}
    subject_recs = {r["subject"]: r for r in journal.records() if r.get("type") == "subject"
                    and r["pos"] < final_end[r["split"]][0]}
    skipped: list[dict[str, str]] = []
    for s in plan.mine:
        end = final_end[plan.split_of[s]]
        if s in subject_recs:
            skipped.extend(subject_recs[s]["skipped"])
        elif (plan.pos_of[s], 0) < end:
            skipped.append(Skip(s, f"partially sharded: samples from #{end[1]} on not written, run stopped "
                                   f"({error})", s, "study").to_dict())
        else:
            skipped.append(Skip(s, f"not sharded: run stopped ({error})", s, "study").to_dict())
    all_shards = shards["train"] + shards["val"]
    run = ShardRun(plan.out, samples=sum(r.count for r in all_shards), shards=all_shards, subjects=len(plan.mine),
                   subjects_with_samples=sum(1 for r in subject_recs.values() if r["samples"] > 0),
                   skipped=len(skipped), complete=not error, error=error)
    record = {"part": list(plan.part), "complete": run.complete, "error": error, "config": cfg.to_dict(),
              "config_hash": cfg.config_hash(), "subjects_hash": journal.header["subjects_hash"],
              "input_root": str(plan.root),
              "shards": [{"name": r.name, "split": r.split, "count": r.count, "sha256": r.sha256, "bytes": r.bytes}
                         for r in all_shards],
              "subjects": {s: plan.split_of[s] for s in plan.mine},
              "subject_samples": {s: subject_recs[s]["samples"] for s in plan.mine if s in subject_recs},
              "skipped": skipped}
    try:
        write_part(plan.out, record)
        if plan.part[1] == 1 and run.complete:
            run.manifest = merge_parts(plan.out)
        elif plan.part[1] == 1:          # no manifest for an incomplete set, but say what is missing
            atomic_write_json(plan.out / "skipped.jsonl", skipped, lines=True)
    except OSError as exc:
        run.complete = False
        run.error = run.error or f"output error writing metadata: {exc}"
    return run
