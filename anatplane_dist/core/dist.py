"""Distributed environment resolution: torchrun, the deepspeed launcher, SLURM, or one process.

Every launcher describes the world differently; this module turns each into one
:class:`DistEnv`, exports it as ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/
``MASTER_PORT`` (which is what both ``torch.distributed`` and ``deepspeed.init_distributed``
read, so DeepSpeed never falls back to its mpi4py discovery), and initialises the process
group itself (gloo on CPU, nccl on CUDA). A half-set environment is an error: guessing the
missing half silently trains N independent copies.
"""
from __future__ import annotations

import datetime
import importlib
import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from anatplane_dist.core.errors import AnatplaneError

_TORCH_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistEnvError(AnatplaneError, RuntimeError):
    """The launcher environment is inconsistent or incomplete."""


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    source: str                      #: torchrun | deepspeed | slurm | single

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError as e:
        raise DistEnvError(f"{key}={env[key]!r} is not an integer") from e


def _local_rank_arg(argv: Sequence[str]) -> int | None:
    """The deepspeed launcher passes ``--local_rank=N`` (or ``--local_rank N``)."""
    for i, a in enumerate(argv):
        if a.startswith("--local_rank=") or a.startswith("--local-rank="):
            return int(a.split("=", 1)[1])
        if a in ("--local_rank", "--local-rank") and i + 1 < len(argv):
            return int(argv[i + 1])
    return None


def master_port_for_job(job_id: str, environ: Mapping[str, str] | None = None) -> int:
    """The rendezvous port of a SLURM (or submitit local) job: ``$ANATPLANE_MASTER_PORT`` when set,
    else derived from the job id (the same on every task and across a requeue, different for
    two jobs sharing a node) in the unprivileged range 20000-39999. The one rule for both the
    SLURM environment parsed here and submitit's jobs (:func:`anatplane_dist.train.submit.export_dist_env`)."""
    environ = os.environ if environ is None else environ
    if environ.get("ANATPLANE_MASTER_PORT"):
        return _int(environ, "ANATPLANE_MASTER_PORT")
    digits = re.sub(r"\D", "", str(job_id))       # array tasks: "123_4"
    if not digits:
        raise DistEnvError(f"SLURM_JOB_ID={job_id!r} is not a job id")
    return 20000 + int(digits) % 20000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def expand_nodelist(nodelist: str) -> list[str]:
    """``node[01-03,07],gpu5`` → ``[node01, node02, node03, node07, gpu5]`` (SLURM syntax)."""
    hosts: list[str] = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", nodelist):
        m = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", part)
        if not m:
            hosts.append(part)
            continue
        prefix, ranges, suffix = m.groups()
        for r in ranges.split(","):
            if "-" in r:
                lo, hi = r.split("-", 1)
                hosts += [f"{prefix}{i:0{len(lo)}d}{suffix}" for i in range(int(lo), int(hi) + 1)]
            else:
                hosts.append(f"{prefix}{r}{suffix}")
    return hosts


def slurm_master_addr(nodelist: str) -> str:
    """First host of the job: ``scontrol show hostnames`` when available, else our parser."""
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                                 text=True, timeout=20, check=True).stdout.split()
            if out:
                return out[0]
        except (subprocess.SubprocessError, OSError):
            pass
    hosts = expand_nodelist(nodelist)
    if not hosts:
        raise DistEnvError(f"cannot parse SLURM_JOB_NODELIST={nodelist!r}")
    return hosts[0]


def resolve_env(environ: Mapping[str, str] | None = None, argv: Sequence[str] | None = None) -> DistEnv:
    """Work out rank/world/master from the launcher's variables.

    Order: torch-style variables (torchrun, the deepspeed launcher, an sbatch that exported
    them) → SLURM task variables (plain ``srun python ...``) → a single process.
    """
    env = dict(os.environ if environ is None else environ)
    argv = list(argv if argv is not None else [])
    arg_local = _local_rank_arg(argv)
    present = [k for k in _TORCH_KEYS if k in env]

    if "RANK" in env or "WORLD_SIZE" in env:
        missing = [k for k in ("RANK", "WORLD_SIZE") if k not in env]
        if missing:
            raise DistEnvError(f"half-set distributed environment: {', '.join(present)} set but "
                               f"{', '.join(missing)} missing")
        rank, world = _int(env, "RANK"), _int(env, "WORLD_SIZE")
        if not 0 <= rank < world:
            raise DistEnvError(f"RANK={rank} outside WORLD_SIZE={world}")
        local = _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else arg_local
        if local is None:
            if world > 1:
                raise DistEnvError("half-set distributed environment: RANK/WORLD_SIZE set but LOCAL_RANK missing")
            local = 0
        if arg_local is not None and arg_local != local:
            raise DistEnvError(f"--local_rank={arg_local} disagrees with LOCAL_RANK={local}")
        if world > 1:
            missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in env]
            if missing:
                raise DistEnvError(f"half-set distributed environment: WORLD_SIZE={world} but "
                                   f"{', '.join(missing)} missing")
        addr = env.get("MASTER_ADDR", "127.0.0.1")
        port = _int(env, "MASTER_PORT") if "MASTER_PORT" in env else free_port()
        source = "deepspeed" if arg_local is not None else "torchrun"
        return DistEnv(rank, world, local, addr, port, source)

    if present:
        raise DistEnvError(f"half-set distributed environment: {', '.join(present)} set but RANK and "
                           "WORLD_SIZE missing")
    if arg_local is not None:
        raise DistEnvError(f"--local_rank={arg_local} given but RANK/WORLD_SIZE are not set")

    if "SLURM_PROCID" in env or "SLURM_NTASKS" in env:
        missing = [k for k in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_JOB_ID") if k not in env]
        if missing:
            raise DistEnvError(f"half-set SLURM environment: {', '.join(missing)} missing")
        rank, world = _int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS")
        local = _int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
        if world > 1 and "SLURM_JOB_NODELIST" not in env and "SLURM_NODELIST" not in env:
            raise DistEnvError("half-set SLURM environment: SLURM_JOB_NODELIST missing")
        nodelist = env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST", "127.0.0.1"))
        addr = slurm_master_addr(nodelist) if world > 1 else "127.0.0.1"
        port = master_port_for_job(env["SLURM_JOB_ID"], env)
        return DistEnv(rank, world, local, addr, port, "slurm")

    return DistEnv(0, 1, 0, "127.0.0.1", free_port(), "single")


def export_env(denv: DistEnv) -> None:
    """Set the torch-style variables that torch.distributed and DeepSpeed read."""
    os.environ.update(RANK=str(denv.rank), WORLD_SIZE=str(denv.world_size), LOCAL_RANK=str(denv.local_rank),
                      MASTER_ADDR=denv.master_addr, MASTER_PORT=str(denv.master_port))


def disable_deepspeed_shm_build() -> None:
    """DeepSpeed's shm comm op is a ~25 s g++ JIT build used only for CPU inference all-reduce."""
    try:
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    except ImportError:
        pass


def device_for(denv: DistEnv) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(denv.local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_distributed(denv: DistEnv | None = None, *, timeout_min: float = 30.0) -> DistEnv:
    """Export the env and create the default process group (also for one process).

    A group of size 1 costs nothing and lets DeepSpeed and the loop use collectives
    unconditionally. Backend: nccl on CUDA, gloo otherwise.
    """
    import torch.distributed as dist

    denv = denv or resolve_env(argv=__import__("sys").argv)
    export_env(denv)
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        device_for(denv)
        dist.init_process_group(backend=backend, init_method="env://", rank=denv.rank,
                                world_size=denv.world_size,
                                timeout=datetime.timedelta(minutes=timeout_min))
    return denv


def barrier() -> None:
    import torch.distributed as dist
    if is_enabled():
        dist.barrier()


def shutdown(clean: bool = True) -> None:
    """Barrier + destroy_process_group: without it, ranks can abort at exit (rc -6).

    ``clean=False`` (leaving on an exception) skips the barrier: the other ranks may be dead
    or stuck elsewhere, and waiting for them would turn a crash into a hang.
    """
    import torch.distributed as dist
    if dist.is_initialized():
        try:
            if clean:
                dist.barrier()
        finally:
            dist.destroy_process_group()


# ---------------------------------------------------------------------------- queries and collectives
# The one home of every collective the package runs. Each works without a process group (one
# process: the local value) and on any backend; "nccl reduces CUDA tensors only" is handled
# once, in :func:`reduce_device`.

def is_enabled() -> bool:
    """A process group exists (also for a world of one)."""
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Ranks in the default group; 1 without one."""
    import torch.distributed as dist
    return dist.get_world_size() if is_enabled() else 1


def rank() -> int:
    """This process's global rank; 0 without a group."""
    import torch.distributed as dist
    return dist.get_rank() if is_enabled() else 0


def is_main_process() -> bool:
    return rank() == 0


def is_multi_rank() -> bool:
    """More than one rank takes part: collectives have something to combine."""
    return world_size() > 1


def reduce_device(group: Any = None) -> torch.device:
    """NCCL reduces CUDA tensors only; gloo and others take CPU tensors."""
    import torch.distributed as dist
    if is_enabled() and dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce(t: torch.Tensor, op: str = "sum", group: Any = None) -> torch.Tensor:
    """``op`` (sum | max | min) of ``t`` over all ranks, on ``t``'s device; ``t`` itself without a group."""
    import torch.distributed as dist
    if not is_enabled():
        return t
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    work = t.to(reduce_device(group))
    dist.all_reduce(work, op=ops[op], group=group)
    return work.to(t.device)


def all_ranks_true(flag: bool) -> bool:
    """True on every rank iff ``flag`` is true on every rank (so all ranks decide together)."""
    return bool(all_reduce(torch.tensor([0.0 if flag else 1.0]), "max").item() == 0.0)




def gather_ints(value: int) -> list[int]:
    """``value`` of every rank, in rank order (e.g. micro-batches each rank trained on)."""
    import torch.distributed as dist
    if not is_multi_rank():
        return [int(value)]
    t = torch.tensor([int(value)], dtype=torch.int64, device=reduce_device())
    out = [torch.zeros_like(t) for _ in range(world_size())]
    dist.all_gather(out, t)
    return [int(x.item()) for x in out]


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (a small picklable value: a path, a decision)."""
    import torch.distributed as dist
    if not is_multi_rank():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def on_main(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` on rank 0, its result on every rank; a failure on rank 0 fails every rank.

    For the rank-0-only work between collectives (writing meta and markers, the config history,
    taking the run lock): without it an exception on rank 0 (a full disk) would leave the other
    ranks waiting in the next barrier until the process-group timeout. Rank 0 re-raises its own
    exception; the others raise an AnatplaneError carrying rank 0's message and exit code.
    """
    from anatplane_dist.core.errors import AnatplaneError, ExitCode, one_line

    error: BaseException | None = None
    result: tuple[str, Any, int] = ("", None, 0)
    if is_main_process():
        try:
            result = ("ok", fn(*args), 0)
        except Exception as e:  # noqa: BLE001 — re-raised below, after the other ranks know
            error = e
            result = ("error", f"rank 0: {one_line(e)}", int(getattr(e, "exit_code", ExitCode.USAGE)))
    kind, value, code = broadcast_object(result)
    if error is not None:
        raise error
    if kind == "error":
        exc = AnatplaneError(value)
        exc.exit_code = code
        raise exc
    return value


def params_in_sync(module: torch.nn.Module) -> bool:
    """Whether every rank holds bit-identical parameters (elementwise MAX == MIN across ranks).

    Run at each checkpoint: a silent divergence (a rank that skipped a step, a missed
    all-reduce) would otherwise only show up as a bad published model. Buffers are left out:
    BatchNorm running statistics are per rank by design (DDP re-broadcasts rank 0's at each
    forward; the exported weights are rank 0's).
    """
    if not is_multi_rank():
        return True
    flat = torch.cat([p.detach().reshape(-1).float() for p in module.parameters()])
    return bool(torch.equal(all_reduce(flat.clone(), "max"), all_reduce(flat.clone(), "min")))


def assert_same_across_ranks(value: int, what: str = "steps per epoch", group: Any = None) -> None:
    """Collective check that every rank computed the same integer (e.g. steps per epoch).

    A mismatch (ranks started with different data configs) would hang the first collective
    after the shortest epoch; this turns it into an immediate error. Call it on every rank.
    """
    if not is_enabled():
        return
    t = all_reduce(torch.tensor([value, -value], dtype=torch.int64), "max", group)
    hi, lo = int(t[0]), -int(t[1])
    if hi != lo:
        raise RuntimeError(f"{what} differs across ranks: min {lo}, max {hi} (this rank: {value})")


class MetricSums:
    """Sums and counts of named metrics, reduced across ranks once, after an uneven loop.

    Every rank must create it with the same names (so the reduced tensor has the same layout
    everywhere, also on a rank that saw no batch) and call :meth:`reduce`, a single collective.
    """

    def __init__(self, names: Sequence[str]) -> None:
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"metric names must be unique and non-empty, got {list(names)}")
        self.names = tuple(names)
        self.sums = np.zeros(len(names), dtype=np.float64)
        self.counts = np.zeros(len(names), dtype=np.float64)
        self._reduced = False

    def add(self, name: str, total: float, count: float = 1.0) -> None:
        """Add a sum over ``count`` items (e.g. a batch's summed error and its number of valid items)."""
        if self._reduced:
            raise RuntimeError("MetricSums already reduced")
        i = self.names.index(name)
        self.sums[i] += float(total)
        self.counts[i] += float(count)

    def reduce(self, group: Any = None) -> dict[str, float]:
        """Means over all ranks (NaN where no rank counted anything); ``counts`` become global.

        Without an initialised process group this just returns the local means. Reducing twice
        is an error (it would count every rank's sums again).
        """
        if self._reduced:
            raise RuntimeError("MetricSums.reduce() was already called; make a new one per evaluation")
        self._reduced = True
        both = all_reduce(torch.from_numpy(np.concatenate([self.sums, self.counts])), "sum", group).numpy()
        self.sums, self.counts = both[: len(self.names)].copy(), both[len(self.names):].copy()
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(self.counts > 0, self.sums / np.maximum(self.counts, 1e-300), np.nan)
        return {n: float(m) for n, m in zip(self.names, means)}


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        import torch.distributed as dist
        ctx.rank, ctx.n, ctx.device = rank(), x.shape[0], x.device
        work = x.detach().contiguous().to(reduce_device())
        parts = [torch.empty_like(work) for _ in range(world_size())]
        dist.all_gather(parts, work)
        return torch.cat(parts).to(x.device)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        import torch.distributed as dist
        work = grad.contiguous().to(reduce_device())
        dist.all_reduce(work, op=dist.ReduceOp.SUM)
        return work[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n].to(ctx.device)


def all_gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every rank's ``x`` concatenated along dim 0 (rank order), and where this rank's rows start.

    All-gather with gradients, for losses whose negatives come from every rank (SimCLR).

    ``torch.distributed.all_gather`` returns tensors with no autograd history, so a contrastive loss
    over gathered embeddings would train each rank's encoder only through the anchors it holds,
    not through its embeddings' role as other ranks' negatives. :func:`all_gather_with_grad`
    returns the concatenation of every rank's tensor, and its backward sums the incoming gradient
    over ranks (one all-reduce) and hands each rank the slice of its own tensor: that is the
    gradient of ``sum_r loss_r`` with respect to the local tensor, so after DDP / DeepSpeed average
    the parameter gradients over ranks, training sees the gradient of the mean loss over the
    global batch - exactly what one process would compute on the concatenated batch.

    An all-reduce rather than ``reduce_scatter`` (what ``torch.distributed.nn.all_gather`` uses)
    because gloo has no reduce-scatter: the same code runs on CPU test ranks and on nccl.

    Every rank must call it with the same shape (the training stream drops partial batches, so
    micro-batches are equal). Without a process group, or with one rank, ``(x, 0)``.
    """
    if not is_multi_rank():
        return x, 0
    return _GatherWithGrad.apply(x), rank() * x.shape[0]
