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
from typing import Mapping, Sequence

import torch

_TORCH_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistEnvError(RuntimeError):
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
        # same port on every task, derived from the job id, in the unprivileged range
        port = 20000 + _int(env, "SLURM_JOB_ID") % 20000
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
    if dist.is_initialized():
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
