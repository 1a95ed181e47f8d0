"""Fine-tune cells as a SLURM job array (submitit), so a GPU cluster's grid does not train on the
login node.

Each array task is one cell: it loads the fine-tuning data itself (nothing large is pickled),
runs :func:`anatplane_dist.experiment.cell.run_cell` on the task's GPU (CPU when it has none)
and writes the cell file atomically under the same fingerprint as a local run.  Requeue-safe: a
task that finds its cell file already written with that fingerprint (a requeued or re-run task)
returns it without training, and on preemption/timeout submitit requeues the same task
(:meth:`CellTask.checkpoint`).  ``--slurm-args`` takes exactly the resource and requeue options of
``anatplane submit`` (checked before anything runs, :func:`parse_slurm_args`) plus
``--array-parallelism N``; each cell uses those that apply to one single-GPU task, and ``--local``
runs the same tasks on this machine (submitit's LocalExecutor).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NoReturn

from anatplane_dist.core.atomic import atomic_write_json, json_safe
from anatplane_dist.experiment.spec import SpecError

__all__ = ["CellTask", "parse_slurm_args", "pretrain_submit_args", "cell_executor", "run_on_slurm"]


#: ``submit`` options the engine sets itself for each arm's pretraining (a second value would
#: break that command), refused in ``--slurm-args``
ENGINE_SET = ("--config", "--run-dir", "--wait", "--dry-run", "--entry")
#: CPUs a cell asks for when ``--slurm-args`` says nothing (data loading + one torch process)
CELL_CPUS = 4


class _SlurmArgsParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:              # a one-line SpecError, not exit(2)
        raise SpecError(f"--slurm-args: {message}")


def parse_slurm_args(args: list[str]) -> argparse.Namespace:
    """Check ``--slurm-args`` once, before anything is written or queued: exactly the resource and
    requeue options of ``anatplane submit`` (:func:`~anatplane_dist.train.submit.add_resource_arguments`)
    plus ``--array-parallelism N``; an unknown or malformed option is a one-line error.

    Pretraining gets them all (see :func:`pretrain_submit_args`); a cell takes what applies to one
    single-process job: partition, account, qos, time, cpus, mem, constraint, exclude, job name,
    signal delay, max timeouts, ``--local``, and one GPU unless ``--gpus-per-node 0`` is given
    (``--nodes`` / ``--tasks-per-node`` are pretraining's)."""
    from anatplane_dist.core.scripttext import refuse_control_chars
    from anatplane_dist.train.submit import add_resource_arguments

    for a in args:
        if a.split("=", 1)[0] in ENGINE_SET:
            raise SpecError(f"--slurm-args: {a.split('=', 1)[0]} is set by the experiment itself")
    ap = _SlurmArgsParser(prog="--slurm-args", add_help=False, allow_abbrev=False)
    add_resource_arguments(ap)
    ap.add_argument("--array-parallelism", type=int, default=64)
    ap.set_defaults(gpus_per_node=None)                     # not given: one GPU per cell
    ns = ap.parse_args(args)
    checks = [(ns.nodes >= 1, "--nodes >= 1"), (ns.time_min >= 1, "--time >= 1 minute"),
              (ns.gpus_per_node is None or ns.gpus_per_node >= 0, "--gpus-per-node >= 0"),
              (ns.cpus_per_task is None or ns.cpus_per_task >= 1, "--cpus-per-task >= 1"),
              (ns.array_parallelism >= 1, "--array-parallelism >= 1"),
              (ns.max_num_timeout >= 0, "--max-num-timeout >= 0"),
              (0 < ns.signal_delay_s < ns.time_min * 60, "0 < --signal-delay-s < --time (in seconds)")]
    for ok, rule in checks:
        if not ok:
            raise SpecError(f"--slurm-args: {rule}, got {' '.join(args)}")
    try:
        refuse_control_chars((f"--{k.replace('_', '-')}", getattr(ns, k)) for k in
                             ("partition", "account", "qos", "mem", "constraint", "exclude", "job_name"))
    except ValueError as exc:
        raise SpecError(f"--slurm-args: {exc}") from exc
    return ns


def pretrain_submit_args(args: list[str]) -> list[str]:
    """``--slurm-args`` for ``anatplane submit`` (pretraining): without the cells-only
    ``--array-parallelism N``."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--array-parallelism":
            skip = True
        elif not a.startswith("--array-parallelism="):
            out.append(a)
    return out


def cell_executor(opts: argparse.Namespace, folder: Path) -> Any:
    """The submitit executor of the cells' job array (one single-process task per cell)."""
    import submitit

    gpus = 1 if opts.gpus_per_node is None else min(1, opts.gpus_per_node)
    if opts.local:
        ex: Any = submitit.LocalExecutor(folder=folder, max_num_timeout=opts.max_num_timeout)
        ex.update_parameters(timeout_min=opts.time_min, gpus_per_node=0, signal_delay_s=opts.signal_delay_s)
        return ex
    ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=opts.max_num_timeout)
    params = {"partition": opts.partition, "account": opts.account, "qos": opts.qos, "time": opts.time_min,
              "gpus_per_node": gpus or None, "cpus_per_task": opts.cpus_per_task or CELL_CPUS,
              "mem": opts.mem, "constraint": opts.constraint, "exclude": opts.exclude,
              "signal_delay_s": opts.signal_delay_s, "array_parallelism": opts.array_parallelism,
              "job_name": f"{opts.job_name}-cells"}
    ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return ex


@dataclass
class CellTask:
    """What one array task runs (picklable: the spec, the job, its key and where it goes)."""
    spec: Any                      # ExperimentSpec
    root: str                      # the fine-tuning data root
    job: Any                       # CellJob
    key: dict[str, Any]
    path: str
    out: str                       # the experiment directory (cell_dir is recorded relative to it)

    def _cached(self) -> dict[str, Any] | None:
        try:
            rec = json.loads(Path(self.path).read_text())
        except (OSError, ValueError):
            return None
        return rec if isinstance(rec, dict) and rec.get("fingerprint") == self.key["fingerprint"] else None

    def __call__(self) -> str:
        import torch

        from anatplane_dist.experiment.cell import load_task_data, run_cell

        if self._cached() is not None:             # requeued after the file was written
            return self.path
        data = load_task_data(self.spec, Path(self.root))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        torch.set_num_threads(max(1, torch.get_num_threads()))
        result = run_cell(self.job, data, device)
        rec = json_safe({**self.key, **result, "cell_dir": str(Path(self.job.cell_dir).relative_to(self.out))})
        atomic_write_json(Path(self.path), rec)
        return self.path

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Preemption / timeout: requeue the same cell (it restarts; a written cell is kept)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def run_on_slurm(jobs: list[tuple[Any, dict[str, Any], Path]], spec: Any, root: Path, out: Path,
                 slurm_args: list[str],
                 finish: Callable[[Any, dict[str, Any], Path, dict[str, Any] | None, str | None], None]) -> None:
    """Submit ``jobs`` as one job array and wait; each finished cell is handed to ``finish``."""

    if not jobs:
        return
    ex = cell_executor(parse_slurm_args(slurm_args), out / "slurm-cells")
    tasks = [CellTask(spec, str(root), job, key, str(path), str(out)) for job, key, path in jobs]
    with ex.batch():
        submitted = [ex.submit(t) for t in tasks]
    for (job, key, path), sub in zip(jobs, submitted):
        try:
            sub.result()
            rec = json.loads(Path(path).read_text())
        except Exception as exc:  # noqa: BLE001 - one failed array task is a failed cell, the grid goes on
            finish(job, key, path, None, f"SLURM job {sub.job_id}: {type(exc).__name__}: {str(exc)[-300:]}")
            continue
        finish(job, key, path, rec, None)
