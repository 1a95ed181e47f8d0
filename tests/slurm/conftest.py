"""A real one-node SLURM cluster for the session, and the tiny pretraining data it trains on.

Skipped, with the reason, when the machine cannot host the cluster (not root, Debian packages
missing); a cluster that should start but does not is an error, not a skip.  The daemons are
stopped at the end of the session whatever happened (the fixture's ``finally``), and a cluster
left behind by a killed session is cleaned up when the next one starts.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.slurm.cluster import ClusterUnavailable, SlurmCluster, unavailable_reason

REPO = Path(__file__).resolve().parents[2]
SUBMIT = REPO / "launch" / "submit.py"
TINY = REPO / "launch" / "configs" / "tiny-cpu.yaml"
_DIST_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="session")
def slurm_cluster():
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"no SLURM cluster on this machine: {reason}")
    cluster = SlurmCluster()
    try:
        cluster.start()
    except ClusterUnavailable as e:
        pytest.skip(f"no SLURM cluster on this machine: {e}")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    """The built-in heart phantom, sharded by the real ``anatplane phantom`` / ``shard`` commands
    (3 subjects); reused from ``$ANATPLANE_CACHE`` when that is set."""
    from anatplane_dist.data.builtin import DEMO_CACHE_ENV, ensure_demo_shards

    cache = os.environ.get(DEMO_CACHE_ENV)
    root = Path(cache) if cache else tmp_path_factory.mktemp("demo-data")
    return ensure_demo_shards(root, subjects=3)


def submit_env(cluster: SlurmCluster) -> dict[str, str]:
    """The submitting shell: SLURM_CONF of the test cluster, no rank variables, 1 thread/rank."""
    env = {k: v for k, v in cluster.env.items() if k not in _DIST_KEYS and not k.startswith("SLURM_JOB")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_submit(cluster: SlurmCluster, args: list[str], timeout: float) -> tuple[subprocess.CompletedProcess, str]:
    """``python launch/submit.py ARGS`` as a user would type it; returns the result and the job id."""
    proc = subprocess.run([sys.executable, str(SUBMIT), *map(str, args)], env=submit_env(cluster),
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)
    m = re.search(r"^submitted job (\d+) \(SLURM\)", proc.stdout, flags=re.M)
    assert m, f"no job id in submit output (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc, m.group(1)
