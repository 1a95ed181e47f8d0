"""launch/submit.py against a real SLURM controller: train + publish, then requeue + resume."""
from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch

from anatplane_dist import publish as pub
from anatplane_dist.core import checkpoints as ckpt
from tests.slurm.conftest import TINY, run_submit, submit_env

pytestmark = pytest.mark.slurm

CPU_JOB = ["--nodes", 1, "--gpus-per-node", 0, "--tasks-per-node", 2, "--cpus-per-task", 1,
           "--partition", "debug", "--time", 30, "--config", TINY]
FAST = ["train.val_batches=2", "data.num_workers=0", "train.progress=lines"]


def train_steps(run_dir: Path) -> list[int]:
    """Steps of the training rows of metrics.jsonl, in the order they were written."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["step"] for r in rows if "loss" in r]


def test_submit_trains_two_tasks_and_publishes(slurm_cluster, tiny_shards, tmp_path):
    run_dir, shared = tmp_path / "run", tmp_path / "shared"
    proc, job_id = run_submit(slurm_cluster, [
        *CPU_JOB, "--run-dir", run_dir, "--wait", f"data.shards={tiny_shards}", "train.epochs=2",
        "data.samples_per_epoch=64", "train.backend=deepspeed", f"publish.dir={shared}",
        "publish.name=tiny-heart", *FAST], timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"tail -F {run_dir}/slurm/{job_id}_0_log.out" in proc.stdout
    assert f"scontrol requeue {job_id}" in proc.stdout
    assert slurm_cluster.wait_for_state(job_id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, 60) == "COMPLETED"

    log0 = (run_dir / "slurm" / f"{job_id}_0_log.out").read_text()
    assert f"[anatplane] job {job_id}: 2 tasks on 1 node(s)" in log0 and "resume from scratch" in log0
    assert (run_dir / "slurm" / f"{job_id}_1_log.err").is_file()  # the second rank ran as its own task
    last = ckpt.find_latest_complete(run_dir)
    meta = ckpt.read_meta(last)
    steps = train_steps(run_dir)
    assert meta["world_size"] == 2 and meta["backend"] == "deepspeed"
    assert meta["step"] == steps[-1] and meta["epoch"] == 2 and steps == sorted(steps)
    records = [json.loads(line) for line in (run_dir / "slurm" / "jobs.jsonl").read_text().splitlines()]
    assert [r["job_id"] for r in records] == [job_id]

    version = pub.resolve_version(shared / "tiny-heart")
    assert version.name.startswith(f"step{meta['step']:08d}-")
    pub.verify(version)
    card = json.loads((version / "model_card.json").read_text())
    assert card["training"]["world_size"] == 2 and card["training"]["steps"] == meta["step"]
    assert card["pretext_metrics"]["step"] == meta["step"] and "val/loss" in card["pretext_metrics"]
    from anatplane_dist.core.hashing import sha256_file
    assert card["data_manifests"] and card["data_manifests"][0]["sha256"] == sha256_file(tiny_shards / "manifest.json")
    assert (version / card["data_manifests"][0]["file"]).is_file()     # copied next to the weights
    model = pub.load_pretrained(shared / "tiny-heart", part="full").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 64, 64))
    assert out["heatmaps"].shape == (1, 2, 64, 64) and torch.isfinite(out["heatmaps"]).all()


@pytest.mark.parametrize("how", ["signal", "scontrol"])
def test_requeued_job_resumes_from_its_checkpoint(slurm_cluster, tiny_shards, tmp_path, how):
    """Mid-run, the job gets SLURM's warning signal (what a timeout/preemption sends: submitit calls
    TrainJob.checkpoint on rank 0 and requeues) or an admin's ``scontrol requeue``; it comes back under
    the same job id, resumes from the newest complete checkpoint and finishes."""
    run_dir = tmp_path / "run"
    # 64 samples / (8 per rank x 2 ranks) = 4 steps per epoch; long enough that the requeue always
    # lands before the last step, however fast this machine happens to be at the time
    epochs, per_epoch = 30, 4
    proc, job_id = run_submit(slurm_cluster, [
        *CPU_JOB, "--run-dir", run_dir, f"data.shards={tiny_shards}", f"train.epochs={epochs}",
        "data.samples_per_epoch=64", "train.ckpt_every=2", "train.keep_last=20", "train.log_every=1",
        *FAST], timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    deadline = time.monotonic() + 600
    while (ckpt.find_latest_complete(run_dir) is None or ckpt.step_of(ckpt.find_latest_complete(run_dir)) < 4):
        assert slurm_cluster.job_state(job_id) in ("PENDING", "RUNNING"), slurm_cluster.log_tails()
        assert time.monotonic() < deadline, "no checkpoint at step >= 4 in time"
        time.sleep(0.2)
    env = submit_env(slurm_cluster)
    cmd = (["scancel", "--signal=USR2", job_id] if how == "signal" else ["scontrol", "requeue", job_id])
    subprocess.run(cmd, env=env, check=True, timeout=60)

    state = slurm_cluster.wait_for_state(job_id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, 900)
    history = subprocess.run(["sacct", "-j", job_id, "-D", "-X", "-n", "-P", "-o", "State"], env=env,
                             capture_output=True, text=True).stdout.split()
    assert state == "COMPLETED", (history, slurm_cluster.log_tails())
    assert history[0] == "REQUEUED" and history[-1] == "COMPLETED", history

    log0 = (run_dir / "slurm" / f"{job_id}_0_log.out").read_text()
    starts = re.findall(rf"\[anatplane\] job {job_id}: 2 tasks .*; resume from (\S+)", log0)
    assert len(starts) == 2 and starts[0] == "scratch", log0
    resumed = ckpt.step_of(Path(starts[1]))
    assert resumed is not None and resumed >= 4
    assert resumed < epochs * per_epoch, "the job finished before the requeue reached it"
    if how == "signal":
        assert "Calling checkpoint method" in log0 and f"Requeued job {job_id}" in log0

    steps = train_steps(run_dir)
    restarts = [i for i in range(1, len(steps)) if steps[i] <= steps[i - 1]]
    if restarts:  # the kill came after steps beyond the checkpoint had been logged: those are redone
        assert len(restarts) == 1
        assert min(steps[restarts[0]:]) == resumed + 1, steps
    else:  # the kill came right after the checkpoint: the second run logs on from it
        assert resumed + 1 in steps
    assert steps[0] == 1 and steps[-1] == epochs * per_epoch  # ran from scratch once, then to the end
    assert max(steps[:restarts[0]] if restarts else steps) >= resumed
    meta = ckpt.read_meta(ckpt.find_latest_complete(run_dir))
    assert meta["step"] == epochs * per_epoch and meta["world_size"] == 2
