"""Fine-tune cells as a SLURM job array (submitit), so a GPU cluster's grid does not train on the
login node.

Each array task is one cell: it loads the fine-tuning data itself (nothing large is pickled),
runs :func:`anatplane_dist.experiment.cell.run_cell` on the task's GPU (CPU when it has none)
and writes the cell file atomically under the same fingerprint as a local run.  Requeue-safe: a
task that finds its cell file already written with that fingerprint (a requeued or re-run task)
returns it without training, and on preemption/timeout submitit requeues the same task
(:meth:`CellTask.checkpoint`).  ``--slurm-args`` takes the usual sbatch options of
``anatplane submit`` that apply to one cell (``--partition``, ``--time``, ``--gpus-per-node``,
``--cpus-per-task``, ``--mem``, ``--account``, ``--qos``, ``--array-parallelism``), and ``--local``
(submitit's LocalExecutor: the same tasks, on this machine).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from anatplane_dist.core.atomic import atomic_write_json, json_safe
from anatplane_dist.experiment.spec import SpecError

__all__ = ["CellTask", "parse_cell_slurm_args", "run_on_slurm"]


def parse_cell_slurm_args(args: list[str]) -> argparse.Namespace:
    """The options of ``--slurm-args`` that apply to one cell (others are for pretraining only)."""
    ap = argparse.ArgumentParser(prog="--slurm-args", add_help=False)
    ap.add_argument("--partition")
    ap.add_argument("--account")
    ap.add_argument("--qos")
    ap.add_argument("--time", dest="time_min", type=int, default=60)
    ap.add_argument("--gpus-per-node", type=int, default=1)
    ap.add_argument("--cpus-per-task", type=int, default=4)
    ap.add_argument("--mem")
    ap.add_argument("--array-parallelism", type=int, default=64)
    ap.add_argument("--local", action="store_true")
    ns, _rest = ap.parse_known_args(args)
    if ns.time_min < 1 or ns.gpus_per_node < 0 or ns.cpus_per_task < 1 or ns.array_parallelism < 1:
        raise SpecError("--slurm-args: --time >= 1, --gpus-per-node >= 0, --cpus-per-task >= 1, "
                        "--array-parallelism >= 1")
    return ns


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
    import submitit

    if not jobs:
        return
    opts = parse_cell_slurm_args(slurm_args)
    folder = out / "slurm-cells"
    if opts.local:
        ex: Any = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=opts.time_min, gpus_per_node=0)
    else:
        ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=3)
        params = {"partition": opts.partition, "account": opts.account, "qos": opts.qos, "time": opts.time_min,
                  "gpus_per_node": opts.gpus_per_node or None, "cpus_per_task": opts.cpus_per_task,
                  "mem": opts.mem, "array_parallelism": opts.array_parallelism, "job_name": "anatplane-cells"}
        ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
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
