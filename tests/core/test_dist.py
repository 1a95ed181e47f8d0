"""dist.py: launcher environments → one DistEnv; half-set environments are errors."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from anatplane_dist.core.dist import DistEnvError, expand_nodelist, resolve_env, slurm_master_addr

TORCHRUN = dict(RANK="1", WORLD_SIZE="4", LOCAL_RANK="1", MASTER_ADDR="node7", MASTER_PORT="29400")


def test_single_process_without_any_variables():
    env = resolve_env({}, [])
    assert (env.rank, env.world_size, env.local_rank, env.source) == (0, 1, 0, "single")
    assert env.master_addr == "127.0.0.1" and 1024 < env.master_port < 65536


def test_torchrun_variables():
    env = resolve_env(TORCHRUN, [])
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port, env.source) == \
        (1, 4, 1, "node7", 29400, "torchrun")


def test_deepspeed_launcher_passes_local_rank_argument():
    env = resolve_env(TORCHRUN, ["--local_rank=1"])
    assert env.source == "deepspeed" and env.local_rank == 1
    with pytest.raises(DistEnvError, match="disagrees"):
        resolve_env(TORCHRUN, ["--local_rank=0"])


def test_slurm_variables_map_to_ranks_and_port_from_job_id():
    slurm = dict(SLURM_PROCID="3", SLURM_NTASKS="8", SLURM_LOCALID="1", SLURM_JOB_ID="123456",
                 SLURM_JOB_NODELIST="gpu[07-08]")
    env = resolve_env(slurm, [])
    assert (env.rank, env.world_size, env.local_rank, env.source) == (3, 8, 1, "slurm")
    assert env.master_port == 20000 + 123456 % 20000
    assert env.master_addr == slurm_master_addr("gpu[07-08]")
    # every task of the job computes the same master
    other = resolve_env({**slurm, "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}, [])
    assert (other.master_addr, other.master_port) == (env.master_addr, env.master_port)


def test_torch_variables_win_over_slurm():
    """``srun torchrun ...``: torchrun's variables describe the real world, not SLURM's tasks."""
    env = resolve_env({**TORCHRUN, "SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_JOB_ID": "5"}, [])
    assert env.source == "torchrun" and env.world_size == 4


@pytest.mark.parametrize("environ, argv, fragment", [
    ({"RANK": "0"}, [], "WORLD_SIZE missing"),
    ({"WORLD_SIZE": "2"}, [], "RANK missing"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, [], "MASTER_ADDR, MASTER_PORT missing"),
    ({"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "a", "MASTER_PORT": "1"}, [], "LOCAL_RANK missing"),
    ({"MASTER_ADDR": "a"}, [], "RANK and WORLD_SIZE missing"),
    ({"LOCAL_RANK": "0"}, [], "RANK and WORLD_SIZE missing"),
    ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "a", "MASTER_PORT": "1"}, [], "outside"),
    ({"RANK": "x", "WORLD_SIZE": "2"}, [], "not an integer"),
    ({}, ["--local_rank=0"], "RANK/WORLD_SIZE are not set"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"}, [], "SLURM_JOB_ID missing"),
    ({"SLURM_NTASKS": "2", "SLURM_JOB_ID": "9"}, [], "SLURM_PROCID missing"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_ID": "9"}, [], "SLURM_JOB_NODELIST missing"),
])
def test_half_set_environments_are_errors(environ, argv, fragment):
    with pytest.raises(DistEnvError, match=fragment):
        resolve_env(environ, argv)


@pytest.mark.parametrize("nodelist, hosts", [
    ("localhost", ["localhost"]),
    ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
    ("a1,b[9-10]", ["a1", "b9", "b10"]),
    ("gpu[1-2]-ib,cpu3", ["gpu1-ib", "gpu2-ib", "cpu3"]),
])
def test_nodelist_parser(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.skipif(shutil.which("scontrol") is None, reason="scontrol not installed")
def test_nodelist_parser_agrees_with_scontrol():
    out = subprocess.run(["scontrol", "show", "hostnames", "node[01-03,07],x[9-10]"], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"scontrol cannot run here: {out.stderr.strip()}")
    assert expand_nodelist("node[01-03,07],x[9-10]") == out.stdout.split()
