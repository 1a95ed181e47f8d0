"""Submitting pretraining to SLURM with submitit: executor set-up, the requeueable job, job spec.

Design (see docs/slurm.md):

- One SLURM task per GPU (``--ntasks-per-node = --gpus-per-node``); every task runs the same
  training entry point, and ranks/rendezvous come from the SLURM environment through
  submitit's ``JobEnvironment`` - no ssh/pdsh launcher.
- The run directory is chosen once, at submission, and never contains the job id: a requeued
  job (same id, same pickle) and a fresh submission of the same run both find the checkpoints
  through :func:`anatplane_dist.core.checkpoints.find_latest_complete`.
- :class:`TrainJob` implements ``checkpoint()``: on the preemption/timeout signal submitit
  calls it on global rank 0 only, and it returns a new submission of the very same command.
  Nothing is saved inside submitit's signal handler (a collective save there would hang): the
  requeued job resumes from the trainer's newest periodic checkpoint, and ``signal_delay_s``
  leaves time for a save already in flight to finish.
"""
from __future__ import annotations

import datetime as _dt
import importlib
import json
import os
import shlex
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import submitit

from anatplane_dist.core.errors import AnatplaneError, ExitCode, one_line
from anatplane_dist.core.jsonl import append_jsonl
from anatplane_dist.core.scripttext import refuse_control_chars
from anatplane_dist.train.config import add_run_arguments

DEFAULT_ENTRY = "anatplane_dist.train.cli:main"
#: Seconds between SLURM's warning signal and the kill.  Must exceed the slowest checkpoint
#: save (engine state of every rank + fp32 export), which is what finishes in that window.
DEFAULT_SIGNAL_DELAY_S = 120
#: How many timeouts a run may survive by requeueing itself before submitit gives up.
DEFAULT_MAX_NUM_TIMEOUT = 20


@dataclass
class SubmitOptions:
    """Everything one submission needs; ``launch/submit.py`` fills it from the command line."""

    config: Path
    run_dir: Path
    overrides: list[str] = field(default_factory=list)
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: int = 60
    cpus_per_task: int | None = None
    mem: str | None = None
    constraint: str | None = None
    exclude: str | None = None
    signal_delay_s: int = DEFAULT_SIGNAL_DELAY_S
    max_num_timeout: int = DEFAULT_MAX_NUM_TIMEOUT
    job_name: str = "anatplane"
    entry: str = DEFAULT_ENTRY

    def __post_init__(self) -> None:
        self.config = Path(self.config).resolve()
        self.run_dir = Path(self.run_dir).resolve()
        check_script_values(self)
        self.tasks_per_node = resolve_tasks_per_node(self.gpus_per_node, self.tasks_per_node)
        if self.nodes < 1:
            raise ValueError(f"--nodes must be >= 1, got {self.nodes}")
        if self.time_min < 1:
            raise ValueError(f"--time must be >= 1 minute, got {self.time_min}")
        if not 0 < self.signal_delay_s < self.time_min * 60:
            raise ValueError(f"signal delay {self.signal_delay_s} s must be positive and shorter than "
                             f"the time limit ({self.time_min} min): it is the warning before the kill")
        if self.max_num_timeout < 0:
            raise ValueError("--max-num-timeout must be >= 0")
        if ":" not in self.entry:
            raise ValueError(f"entry must be 'module:function', got {self.entry!r}")

    @property
    def world_size(self) -> int:
        return self.nodes * int(self.tasks_per_node)

    @property
    def log_dir(self) -> Path:
        """submitit's folder: job pickles and per-task logs ``<jobid>_<task>_log.{out,err}``."""
        return self.run_dir / "slurm"

    def train_argv(self) -> list[str]:
        """The argv every task hands to the training entry point."""
        return ["--config", str(self.config), "--run-dir", str(self.run_dir), *self.overrides]


#: option name of each string that reaches the sbatch script (or the job's argv and logs)
_SCRIPT_VALUES = {"job_name": "--job-name", "partition": "--partition", "account": "--account", "qos": "--qos",
                  "mem": "--mem", "constraint": "--constraint", "exclude": "--exclude", "entry": "--entry",
                  "config": "--config", "run_dir": "--run-dir"}


def check_script_values(opts: "SubmitOptions") -> None:
    """Refuse control characters in every value that is written into the sbatch script
    (:mod:`anatplane_dist.core.scripttext`), and in the job's argv and logs."""
    values = [(flag, getattr(opts, name)) for name, flag in _SCRIPT_VALUES.items()]
    values += [("override", o) for o in opts.overrides] + [("python executable", sys.executable)]
    refuse_control_chars(values)


def resolve_tasks_per_node(gpus_per_node: int, tasks_per_node: int | None) -> int:
    """One task per GPU; on CPU-only partitions (``gpus_per_node == 0``) the caller says how many."""
    if gpus_per_node < 0:
        raise ValueError(f"--gpus-per-node must be >= 0, got {gpus_per_node}")
    if gpus_per_node > 0:
        if tasks_per_node not in (None, gpus_per_node):
            raise ValueError(f"one task per GPU: --tasks-per-node {tasks_per_node} conflicts with "
                             f"--gpus-per-node {gpus_per_node} (leave --tasks-per-node out)")
        return gpus_per_node
    tasks = 1 if tasks_per_node is None else tasks_per_node
    if tasks < 1:
        raise ValueError(f"--tasks-per-node must be >= 1, got {tasks}")
    return tasks


# --------------------------------------------------------------------------- the job
def resolve_entry(entry: str) -> Callable[[list[str]], int]:
    """``"package.module:function"`` -> the function (imported inside the job, not pickled)."""
    module, _, name = entry.partition(":")
    fn = getattr(importlib.import_module(module), name, None)
    if not callable(fn):
        raise ImportError(f"training entry point {entry!r}: {module} has no callable {name!r}")
    return fn


def export_dist_env() -> dict[str, str]:
    """Set RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT from the submitit job environment.

    Works for SLURM and for the local executor alike.  MASTER_PORT is derived from the job id
    (stable across a requeue, different for two jobs sharing a node) unless
    ``ANATPLANE_MASTER_PORT`` pins it; a MASTER_PORT leaked from the submitting shell is ignored.
    """
    from anatplane_dist.core.dist import master_port_for_job

    os.environ.pop("MASTER_PORT", None)
    env = submitit.JobEnvironment()
    os.environ["MASTER_PORT"] = str(master_port_for_job(str(env.job_id)))
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    keys = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    return {k: os.environ[k] for k in keys}


@dataclass
class TrainJob:
    """What submitit pickles and runs on every task: the training entry point with a fixed argv.

    Picklable by value (strings only), so a requeued job re-imports the code it runs.
    """

    argv: list[str]
    run_dir: str
    entry: str = DEFAULT_ENTRY

    def __call__(self) -> int:
        dist_env = export_dist_env()
        job = submitit.JobEnvironment()
        if job.global_rank == 0:
            resume = _latest_checkpoint(Path(self.run_dir))
            print(f"[anatplane] job {job.job_id}: {job.num_tasks} tasks on {job.num_nodes} node(s) "
                  f"{job.hostnames}, master {dist_env['MASTER_ADDR']}:{dist_env['MASTER_PORT']}; "
                  f"resume from {resume or 'scratch'}", flush=True)
        rc = resolve_entry(self.entry)(list(self.argv))
        if rc:
            raise RuntimeError(f"training entry point {self.entry} returned {rc} on rank {job.global_rank}")
        return 0

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on global rank 0 at preemption/timeout: requeue the same command.

        The state to resume from is on disk (newest complete checkpoint in ``run_dir``), so
        the resubmission carries nothing but the command.
        """
        return submitit.helpers.DelayedSubmission(TrainJob(list(self.argv), self.run_dir, self.entry))


def _read_save_s(ckpt_dir: Path) -> float | None:
    """``save_s`` from a checkpoint's meta.json, when the trainer records it."""
    try:
        value = json.loads((ckpt_dir / "meta.json").read_text()).get("save_s")
    except (OSError, ValueError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def _latest_checkpoint(run_dir: Path) -> Path | None:
    from anatplane_dist.core.checkpoints import find_latest_complete

    return find_latest_complete(run_dir)


# --------------------------------------------------------------------------- executors
_SETUP = ['export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"']


def slurm_parameters(opts: SubmitOptions) -> dict[str, Any]:
    """SlurmExecutor parameters (sbatch flags) for ``opts``; None values are left to the site."""
    params: dict[str, Any] = dict(
        job_name=opts.job_name, nodes=opts.nodes, ntasks_per_node=opts.tasks_per_node,
        time=opts.time_min, signal_delay_s=opts.signal_delay_s, setup=list(_SETUP),
        partition=opts.partition, account=opts.account, qos=opts.qos,
        cpus_per_task=opts.cpus_per_task, mem=opts.mem, constraint=opts.constraint,
        exclude=opts.exclude, gpus_per_node=opts.gpus_per_node or None,
    )
    return {k: v for k, v in params.items() if v is not None}


def build_executor(opts: SubmitOptions, local: bool = False) -> submitit.Executor:
    """SlurmExecutor, or with ``local`` submitit's LocalExecutor running the same tasks here."""
    if local:
        if opts.nodes != 1:
            raise ValueError("--local runs on this machine: use --nodes 1")
        ex: submitit.Executor = submitit.LocalExecutor(folder=opts.log_dir,
                                                       max_num_timeout=opts.max_num_timeout)
        ex.update_parameters(nodes=1, tasks_per_node=opts.tasks_per_node, timeout_min=opts.time_min,
                             gpus_per_node=opts.gpus_per_node, signal_delay_s=opts.signal_delay_s,
                             setup=list(_SETUP))
        return ex
    check_script_values(opts)      # again: options may have been changed since they were made
    ex = submitit.SlurmExecutor(folder=opts.log_dir, max_num_timeout=opts.max_num_timeout)
    ex.update_parameters(**slurm_parameters(opts))
    return ex


def sbatch_script(opts: SubmitOptions) -> str:
    """The exact sbatch file a submission writes (``%j`` is filled in by SLURM)."""
    ex = build_executor(opts)
    return ex._make_submission_file_text(ex._submitit_command_str, uid="dry-run")  # noqa: SLF001


def training_backend(opts: SubmitOptions) -> tuple[str, int]:
    """(backend, ZeRO stage) the job's ranks will use: the trainer's own rule, decided here.

    :func:`anatplane_dist.train.options.resolve_backend` with world = nodes x tasks per node and the
    ``slurm`` launcher, so the dry run shows what the job will do (a preset with a ZeRO stage runs
    DeepSpeed under SLURM too) and refuses what the trainer would refuse (AnatplaneError). The
    stage is 0 unless the backend is DeepSpeed (DDP and single have no ZeRO).
    """
    from anatplane_dist.train.config import load_config
    from anatplane_dist.train.options import resolve_backend

    train = load_config(opts.config, list(opts.overrides)).train
    backend = resolve_backend(train, opts.world_size, "slurm")
    return backend, (int(train.zero_stage) if backend == "deepspeed" else 0)


def job_spec(opts: SubmitOptions) -> dict[str, Any]:
    """A JSON-able description of the submission, printed by ``--dry-run`` and logged."""
    spec = asdict(opts)
    backend, zero_stage = training_backend(opts)
    spec.update(config=str(opts.config), run_dir=str(opts.run_dir), log_dir=str(opts.log_dir),
                world_size=opts.world_size, backend=backend, zero_stage=zero_stage,
                train_argv=opts.train_argv(), python=sys.executable, sbatch=slurm_parameters(opts))
    spec["sbatch"]["setup"] = list(_SETUP)
    spec["warnings"] = spec_warnings(opts)
    return spec


def spec_warnings(opts: SubmitOptions) -> list[str]:
    warnings = []
    last = _latest_checkpoint(opts.run_dir)
    save_s = _read_save_s(last) if last else None
    if save_s is not None and opts.signal_delay_s < 1.5 * save_s:
        warnings.append(f"--signal-delay-s {opts.signal_delay_s} is not comfortably above the last "
                        f"checkpoint save ({save_s:.0f} s in {last.name}): a save in flight at the "
                        f"signal may be cut off")
    if opts.time_min * 60 <= 750:
        # submitit: walltime >= min(0.8 T, T - 10 min) counts as a timeout, i.e. always when T <= 12.5 min
        warnings.append(f"--time {opts.time_min} min: every preemption signal counts as a timeout "
                        f"(submitit), so at most --max-num-timeout {opts.max_num_timeout} requeues")
    if opts.gpus_per_node == 0:
        warnings.append("--gpus-per-node 0: CPU tasks (gloo); training will be slow")
    return warnings


# --------------------------------------------------------------------------- submit + report
def submit(opts: SubmitOptions, local: bool = False) -> submitit.Job:
    """Create the run dir, submit :class:`TrainJob`, record the job in ``<log_dir>/jobs.jsonl``."""
    if not opts.config.is_file():
        raise FileNotFoundError(f"config {opts.config} does not exist")
    opts.log_dir.mkdir(parents=True, exist_ok=True)
    ex = build_executor(opts, local=local)
    job = ex.submit(TrainJob(opts.train_argv(), str(opts.run_dir), opts.entry))
    record = {"job_id": str(job.job_id), "local": local,
              "submitted_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "world_size": opts.world_size, "argv": opts.train_argv()}
    append_jsonl(opts.log_dir / "jobs.jsonl", record)
    return job


def follow_text(job: submitit.Job, opts: SubmitOptions, local: bool = False) -> str:
    """What a user needs after submitting: ids, where things are, how to follow and steer."""
    jid = job.job_id
    out, err = job.paths.stdout, job.paths.stderr
    lines = [
        f"submitted job {jid} ({'local' if local else 'SLURM'}): {opts.nodes} node(s) x "
        f"{opts.tasks_per_node} task(s) = world size {opts.world_size}",
        f"run dir:     {opts.run_dir}",
        f"checkpoints: {opts.run_dir / 'checkpoints'}   metrics: {opts.run_dir / 'metrics.jsonl'}",
        f"logs:        {out} (rank 0)",
        f"             {err}",
        f"             {opts.log_dir}/{jid}_<rank>_log.{{out,err}} for the other ranks",
        f"follow:      tail -F {shlex.quote(str(out))}",
    ]
    if not local:
        lines += [
            f"state:       squeue -j {jid}    sacct -j {jid} -o JobID,State,Elapsed,ExitCode",
            f"requeue:     scontrol requeue {jid}   (the job resumes from its newest complete checkpoint)",
            f"cancel:      scancel {jid}",
            f"resubmit:    python launch/submit.py ... --run-dir {opts.run_dir}   (continues the same run)",
        ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line
def add_resource_arguments(parser: Any) -> None:
    """The SLURM resource and requeue flags: shared by ``submit`` and the experiment engine's
    ``--slurm-args`` (so an experiment accepts exactly what ``submit`` accepts)."""
    g = parser.add_argument_group("resources")
    g.add_argument("--nodes", type=int, default=1)
    g.add_argument("--gpus-per-node", type=int, default=0,
                   help="GPUs per node; one task is started per GPU (0: CPU tasks, see --tasks-per-node)")
    g.add_argument("--tasks-per-node", type=int, default=None,
                   help="only with --gpus-per-node 0: CPU tasks (ranks) per node (default 1)")
    g.add_argument("--partition", default=None)
    g.add_argument("--account", default=None)
    g.add_argument("--qos", default=None)
    g.add_argument("--time", dest="time_min", type=int, default=60, metavar="MIN",
                   help="time limit per job in minutes; on timeout the job requeues itself")
    g.add_argument("--cpus-per-task", type=int, default=None)
    g.add_argument("--mem", default=None, help="memory per node, SLURM syntax (e.g. 64G)")
    g.add_argument("--constraint", default=None)
    g.add_argument("--exclude", default=None, help="nodes to avoid (SLURM node list)")
    g.add_argument("--job-name", default="anatplane")
    r = parser.add_argument_group("requeue")
    r.add_argument("--signal-delay-s", type=int, default=DEFAULT_SIGNAL_DELAY_S,
                   help="warning before the kill; must exceed the slowest checkpoint save "
                        f"(default {DEFAULT_SIGNAL_DELAY_S})")
    r.add_argument("--max-num-timeout", type=int, default=DEFAULT_MAX_NUM_TIMEOUT,
                   help=f"requeues after timeouts before giving up (default {DEFAULT_MAX_NUM_TIMEOUT})")
    parser.add_argument("--local", action="store_true",
                        help="run the same tasks on this machine with submitit's LocalExecutor (no SLURM) and wait")


def add_arguments(parser: Any) -> None:
    """``launch/submit.py`` flags (also usable as an ``anatplane`` sub-command)."""
    add_resource_arguments(parser)
    t = parser.add_argument_group("training")
    add_run_arguments(t, config_required=True)
    t.add_argument("--entry", default=DEFAULT_ENTRY, help="training entry point module:function "
                   "taking the pretrain argv (default: %(default)s)")
    m = parser.add_argument_group("mode")
    m.add_argument("--dry-run", action="store_true", help="print the job spec and sbatch script, submit nothing")
    m.add_argument("--wait", action="store_true", help="wait for the job to end; exit 0 only if every task succeeded")


def options_from_args(args: Any) -> SubmitOptions:
    """Validate the config (a typo fails now, not after hours in the queue) and build the options."""
    from anatplane_dist.train.config import load_config, resolve_config_path, run_dir_for

    config = resolve_config_path(args.config)   # a file, or a packaged preset's name
    cfg = load_config(config, list(args.overrides))
    return SubmitOptions(
        config=config, run_dir=run_dir_for(config, cfg.run_dir, args.run_dir), overrides=list(args.overrides),
        nodes=args.nodes, gpus_per_node=args.gpus_per_node, tasks_per_node=args.tasks_per_node,
        partition=args.partition, account=args.account, qos=args.qos, time_min=args.time_min,
        cpus_per_task=args.cpus_per_task, mem=args.mem, constraint=args.constraint, exclude=args.exclude,
        signal_delay_s=args.signal_delay_s, max_num_timeout=args.max_num_timeout,
        job_name=args.job_name, entry=args.entry)


def wait(job: submitit.Job) -> int:
    """Block until every task has ended; 0 when all succeeded."""
    try:
        results = job.results()
    except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError) as e:
        print(f"job {job.job_id} did not succeed: {str(e).splitlines()[0]}", flush=True)
        return 1
    print(f"job {job.job_id} finished: {len(results)} task(s) succeeded", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``launch/submit.py``."""
    import argparse

    parser = argparse.ArgumentParser(prog="launch/submit.py", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_intermixed_args(argv))


def run(args: Any) -> int:
    """Dry run, or submit (and with ``--local``/``--wait`` wait); the ``anatplane`` sub-command hook."""
    try:
        opts = options_from_args(args)
    except (ValueError, FileNotFoundError) as e:  # ConfigError is a ValueError
        print(f"submit: {e}", file=sys.stderr)
        return ExitCode.USAGE
    resume = _latest_checkpoint(opts.run_dir)
    if args.dry_run:
        try:
            spec = job_spec(opts)
        except (ValueError, AnatplaneError) as e:  # e.g. train.backend=ddp with a ZeRO stage
            print(f"submit: {one_line(e)}", file=sys.stderr)
            return int(getattr(e, "exit_code", ExitCode.USAGE))
        spec["resume_from"] = str(resume) if resume else None
        print(json.dumps(spec, indent=1))
        print(f"\n# training: backend {spec['backend']}, ZeRO stage {spec['zero_stage']}, world size "
              f"{spec['world_size']} ({opts.nodes} node(s) x {opts.tasks_per_node} task(s)), resume from "
              f"{spec['resume_from'] or 'scratch'}")
        if not args.local:
            print("\n# sbatch script (submitit writes it; %j = job id)\n" + sbatch_script(opts))
        return 0
    try:
        training_backend(opts)   # what the trainer would refuse is refused before queueing
    except AnatplaneError as e:
        print(f"submit: {one_line(e)}", file=sys.stderr)
        return int(e.exit_code)
    if not args.local and shutil.which("sbatch") is None:
        print("submit: sbatch not found on PATH (not a SLURM login node?); use --local to run here "
              "or --dry-run to see the job", file=sys.stderr)
        return ExitCode.USAGE
    for w in spec_warnings(opts):
        print(f"warning: {w}", file=sys.stderr)
    job = submit(opts, local=args.local)
    print(follow_text(job, opts, local=args.local))
    print(f"resume:      {resume or 'none (starts from scratch)'}", flush=True)
    return wait(job) if (args.local or args.wait) else 0
