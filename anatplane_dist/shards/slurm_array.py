"""``anatplane shard ... --slurm-array N``: one SLURM array task per part, then the merge.

Each array task runs ``shard_dataset(..., part=(i, N))`` on its own node: parts write disjoint
shard names into the same output folder, so nothing has to be copied, and a re-submitted
task resumes its own part (its journal is per part).  The submitting process waits for the
array, then merges; if it is interrupted, ``anatplane shard --merge --out DIR`` does the same
later (and refuses while a part is missing or incomplete).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anatplane_dist.core.scripttext import refuse_control_chars
from anatplane_dist.shards.profiles import ShardConfig

__all__ = ["PartJob", "run_part", "submit_array"]


@dataclass(frozen=True)
class PartJob:
    """Everything one array task needs (pickled by submitit)."""

    input_root: str
    out_dir: str
    config: dict[str, Any]
    part: int
    parts: int
    workers: int


def run_part(job: PartJob) -> dict[str, Any]:
    """Shard one part (runs inside the array task); returns a small summary."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from anatplane_dist.shards.pipeline import shard_dataset

    run = shard_dataset(job.input_root, job.out_dir, ShardConfig.from_dict(job.config), workers=job.workers,
                        part=(job.part, job.parts), progress=False)
    return {"part": job.part, "samples": run.samples, "shards": len(run.shards), "complete": run.complete,
            "error": run.error}


def submit_array(args: argparse.Namespace, cfg: ShardConfig, cluster: str | None = None) -> int:
    """Submit ``args.slurm_array`` parts as one job array, wait, merge; the CLI's exit status.

    Args:
        cluster: submitit cluster (None: auto, i.e. SLURM when ``sbatch`` exists; ``"local"``
            runs the same tasks as local processes, used by the tests).
    """
    import submitit

    from anatplane_dist.shards.manifest import MergeError, merge_parts

    n = int(args.slurm_array)
    out = Path(args.out)
    try:   # both reach the sbatch script (the partition directive, the log paths under out)
        refuse_control_chars([("--out", out.resolve()), ("--slurm-partition", getattr(args, "slurm_partition", None))])
    except ValueError as e:
        print(f"anatplane shard: {e}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    ex = submitit.AutoExecutor(folder=out / "_slurm" / "%j", cluster=cluster)
    params: dict[str, Any] = {"timeout_min": int(getattr(args, "slurm_time_min", 240)),
                              "cpus_per_task": max(1, int(args.workers)), "slurm_array_parallelism": n,
                              "name": "anatplane-shard"}
    if getattr(args, "slurm_partition", ""):
        params["slurm_partition"] = args.slurm_partition
    ex.update_parameters(**params)
    jobs_in = [PartJob(str(Path(args.input).resolve()), str(out.resolve()), cfg.to_dict(), i, n, args.workers)
               for i in range(n)]
    jobs = ex.map_array(run_part, jobs_in)
    print(f"submitted {n} part(s) as job array {jobs[0].job_id.split('_')[0]} "
          f"(logs: {out / '_slurm'}); waiting; if interrupted: anatplane shard --merge --out {out}")
    failed = []
    for job in jobs:
        try:
            res = job.result()
            print(f"part {res['part']}/{n}: {res['samples']} samples in {res['shards']} shards"
                  + (f" (stopped: {res['error']})" if res["error"] else ""))
        except Exception as exc:  # a failed task is reported; the others' shards are kept
            failed.append(job.job_id)
            print(f"job {job.job_id} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    try:
        m = merge_parts(out)
    except MergeError as exc:
        print(f"anatplane shard: not merged: {exc}" + (f" (failed jobs: {failed})" if failed else ""),
              file=sys.stderr)
        return 1
    print(f"merged {n} parts: {m['counts']['samples']} samples in {m['counts']['shards']} shards")
    return 0 if m["counts"]["samples"] > 0 else 1
