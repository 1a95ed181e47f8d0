"""The test cluster itself: accounting works, teardown is complete, dead harnesses are cleaned up,
and a machine that cannot host it says why."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.slurm import cluster as sc

pytestmark = pytest.mark.slurm


def _start_harness_process() -> tuple[subprocess.Popen, Path]:
    """``python -m tests.slurm.cluster`` (the runbook's command) in the background."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.slurm.cluster"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("export SLURM_CONF="), (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc, Path(line.split("=", 1)[1].split()[0]).parent


def _pids_of(root: Path) -> list[int]:
    return [p for p, r in sc._marked_processes().items() if r == str(root)]


def test_two_task_step_and_accounting(slurm_cluster):
    out = subprocess.run(["srun", "-n", "2", "bash", "-c", "echo $SLURM_PROCID/$SLURM_NTASKS"],
                         env=slurm_cluster.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.split()) == ["0/2", "1/2"]
    # slurmdbd + MariaDB: finished jobs have a real state (submitit relies on it)
    job = subprocess.run(["sbatch", "--parsable", "-n", "1", "--output=/dev/null", "--wrap", "true"],
                         env=slurm_cluster.env, capture_output=True, text=True, check=True).stdout.strip()
    assert slurm_cluster.wait_for_state(job, {"COMPLETED", "FAILED"}, 60) == "COMPLETED"
    deadline = time.monotonic() + 30
    while True:
        acct = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job, "-o", "State"], env=slurm_cluster.env,
                              capture_output=True, text=True).stdout.split()
        if acct == ["COMPLETED"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert acct == ["COMPLETED"]


def test_stopped_harness_leaves_nothing_and_a_killed_one_is_cleaned(slurm_cluster):
    # graceful: SIGTERM to the harness stops every daemon it started and removes its dir
    proc, root = _start_harness_process()
    assert len(_pids_of(root)) >= 5  # munged, mariadbd, slurmdbd, slurmctld, slurmd
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert _pids_of(root) == [] and not root.exists()

    # killed: its daemons survive it, and are stopped by the next clean-up; live clusters are not
    proc, root = _start_harness_process()
    orphans = _pids_of(root)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert _pids_of(root) == orphans and all(sc._alive(p) for p in orphans)
    stopped = sc.clean_stale()
    assert set(orphans) <= set(stopped)
    assert _pids_of(root) == [] and not root.exists()
    assert _pids_of(slurm_cluster.root), "the session's own cluster must survive the clean-up"
    assert slurm_cluster._sinfo_state() in ("idle", "mixed", "allocated")


def test_unprivileged_user_gets_a_skip_reason():
    """What a non-root CI runner sees instead of a silent pass."""
    if os.geteuid() != 0:
        assert "needs root" in (sc.unavailable_reason() or "")
        return
    # the harness module is stdlib-only, so the system interpreter can import it as any user
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 to run as an unprivileged user")
    # a copy in a world-readable folder: the checkout itself may sit under a 0700 directory
    # (mktemp -d) that the unprivileged user cannot enter
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)
        shutil.copy(sc.__file__, Path(tmp) / "slurm_cluster.py")
        os.chmod(Path(tmp) / "slurm_cluster.py", 0o644)
        code = "from slurm_cluster import unavailable_reason as r; print(r())"
        out = subprocess.run(["runuser", "-u", "nobody", "--", python, "-c", code], cwd="/",
                             capture_output=True, text=True, timeout=120,
                             env={"PATH": os.environ["PATH"], "PYTHONPATH": tmp})
    assert out.returncode == 0, out.stderr
    assert "needs root" in out.stdout
