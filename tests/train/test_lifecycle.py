"""A trainer process's life, for real: the run-dir lock, SIGTERM / SIGINT, no worker left behind."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from anatplane_dist.core import checkpoints as ckpt
from anatplane_dist.core import weights
from anatplane_dist.core.errors import ExitCode
from anatplane_dist.train.metrics import read_metrics
from anatplane_dist.train.runlock import RunLock, RunLockedError
from tests.train.conftest import subprocess_env
from tests.train.launch import PRETRAIN, tail
from tests.train.synth import config_yaml

#: long enough that the signal always lands mid-run (steps take ~10-50 ms here)
LONG = {"epochs": 40, "ckpt_every": 1000, "log_every": 1, "progress": "none", "keep_last": 3}


def _config(tmp_path: Path, shards: Path, **train) -> Path:
    """A long tiny run with one DataLoader worker (so there is a worker to watch)."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(config_yaml(shards, data={"num_workers": 1}, train={**LONG, **train}))
    return cfg


def _pretrain(cfg: Path, run_dir: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, PRETRAIN, "--config", str(cfg), "--run-dir", str(run_dir)],
                          env=subprocess_env(), capture_output=True, text=True, timeout=timeout)


def _start(cfg: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, PRETRAIN, "--config", str(cfg), "--run-dir", str(run_dir), *extra],
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=run_dir.parent)


def _wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited early: {proc.returncode} {proc.communicate()}")
        try:
            if any(r.get("step", 0) >= step for r in read_metrics(run_dir) if "loss" in r):
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached in {timeout} s")


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from anatplane_dist.train.runlock import RunLock; "
        f"RunLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=f"pid {holder.pid} since"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(tmp_path):          # the kernel released the dead holder's lock: no stale lock
        pass


def test_second_trainer_on_a_running_run_exits_2(tmp_path, shards):
    cfg = _config(tmp_path, shards)
    run = tmp_path / "run"
    first = _start(cfg, run)
    try:
        _wait_for_step(run, 2, first)
        second = _pretrain(cfg, run, timeout=120)
        assert second.returncode == ExitCode.USAGE, tail(second)
        assert f"pid {first.pid} since" in second.stderr and "in use by host" in second.stderr
        assert first.poll() is None                       # the owner trains on, undisturbed
    finally:
        first.kill()
        first.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_checkpoints_exits_75_and_resume_matches_uninterrupted(tmp_path, shards, sig):
    cfg = _config(tmp_path, shards, epochs=3)
    ref_run, run = tmp_path / "reference", tmp_path / "run"
    ref = _pretrain(cfg, ref_run)
    assert ref.returncode == 0, tail(ref)

    proc = _start(cfg, run)
    _wait_for_step(run, 3, proc)
    workers = _children(proc.pid)
    assert workers, "the DataLoader worker should be running"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == ExitCode.INTERRUPTED, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    time.sleep(0.5)
    assert not [w for w in workers if _alive(w)], "a DataLoader worker outlived the trainer"
    stopped = ckpt.find_latest_complete(run)
    assert stopped is not None and 3 <= ckpt.step_of(stopped) < 24
    ckpt.verify(stopped)

    resumed = _pretrain(cfg, run)
    assert resumed.returncode == 0, tail(resumed)
    final, ref_final = ckpt.find_latest_complete(run), ckpt.find_latest_complete(ref_run)
    assert ckpt.step_of(final) == ckpt.step_of(ref_final) == 24
    for part in ("encoder", "decoder", "location_head"):
        a = weights.load_part(final / "fp32", part)["state_dict"]
        b = weights.load_part(ref_final / "fp32", part)["state_dict"]
        for k in b:
            assert torch.equal(a[k], b[k]), f"{part}.{k}"
    lr = {r["step"]: r["lr"] for r in read_metrics(run) if "lr" in r}
    assert lr == {r["step"]: r["lr"] for r in read_metrics(ref_run) if "lr" in r}
    assert json.loads((run / "config-history.jsonl").read_text().splitlines()[-1])["start_step"] == \
        ckpt.step_of(stopped)


def test_workers_die_with_a_killed_trainer(tmp_path, shards):
    """SIGKILL leaves no time to shut workers down: PR_SET_PDEATHSIG takes them along."""
    cfg = _config(tmp_path, shards)
    run = tmp_path / "run"
    proc = _start(cfg, run)
    try:
        _wait_for_step(run, 2, proc)
        workers = _children(proc.pid)
        assert workers
        proc.kill()
        proc.wait()
        deadline = time.time() + 3
        while [w for w in workers if _alive(w)] and time.time() < deadline:
            time.sleep(0.05)
        assert not [w for w in workers if _alive(w)], "a DataLoader worker outlived a SIGKILLed trainer"
    finally:
        if proc.poll() is None:
            proc.kill()
