"""Resume on another number of ranks: the global batch, the step, the LR curve and the sample
count continue exactly (DDP: 1 -> 2 -> 1 ranks; DeepSpeed ZeRO-1/2 through the universal
checkpoint, 2 -> 1 and 1 -> 2).

The shards here hold one sample repeated, so every global batch has the same content however
the ranks split the stream: the final weights of a run that changed its world size can then be
compared with an uninterrupted run, which checks that weights *and optimiser state* crossed the
world-size change intact (with real data the samples per step differ, since each rank streams
its own shards; the sample count and LR curve do not)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from anatplane_dist.core import checkpoints as ckpt
from anatplane_dist.core import weights
from anatplane_dist.train.metrics import read_metrics
from tests.train.conftest import subprocess_env
from tests.train.faults import fault_env
from tests.train.launch import PRETRAIN, tail, torchrun
from tests.train.synth import config_yaml, write_shards

# 32 samples/epoch at a global batch of 8: 4 steps/epoch, 3 epochs = 12 steps
TRAIN = {"epochs": 3, "global_batch": 8, "ckpt_every": 2, "log_every": 1, "progress": "none", "keep_last": 10}


@pytest.fixture(scope="module")
def constant_shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("constant"), [24, 15, 9], [10, 5], constant=True)


def _config(tmp_path, shards, **train):
    cfg = tmp_path / "cfg.yaml"
    # no augmentation: its draws depend on the rank, which a world-size change renumbers
    cfg.write_text(config_yaml(shards, augment={"p": 0.0}, train={**TRAIN, **train}))
    return cfg


def _final_weights(run_dir):
    final = ckpt.find_latest_complete(run_dir)
    return {p: weights.load_part(final / "fp32", p)["state_dict"] for p in ("encoder", "decoder", "location_head")}


def _max_param_diff(a, b):
    return max(float((a[p][k] - b[p][k]).abs().max()) for p in a for k in a[p]
               if a[p][k].is_floating_point() and "running" not in k)


def _single(cfg, run_dir, env=None):
    return subprocess.run([sys.executable, PRETRAIN, "--config", str(cfg), "--run-dir", str(run_dir)],
                          env={**subprocess_env(), **(env or {})}, capture_output=True, text=True, timeout=300,
                          cwd=run_dir.parent)


def _launch(nproc, cfg, run_dir, env=None):
    return _single(cfg, run_dir, env) if nproc == 1 else torchrun(nproc, cfg, run_dir, env=env)


def _history(run_dir):
    return [json.loads(x) for x in (run_dir / "config-history.jsonl").read_text().splitlines()]


def _lr_by_step(run_dir):
    return {r["step"]: r["lr"] for r in read_metrics(run_dir) if "lr" in r}


def _segments(cfg, run, worlds, kill_at):
    """Train on ``worlds[i]`` ranks until step ``kill_at[i]`` (SIGKILL), the last one to the end."""
    for i, nproc in enumerate(worlds):
        env = fault_env(kill_at[i]) if i < len(kill_at) else None
        proc = _launch(nproc, cfg, run, env)
        if env is None:
            assert proc.returncode == 0, tail(proc)
        else:
            assert proc.returncode != 0
            assert ckpt.step_of(ckpt.find_latest_complete(run)) == kill_at[i], tail(proc)
        yield proc


def test_ddp_1_2_1_ranks_equals_an_uninterrupted_run(tmp_path, constant_shards):
    cfg = _config(tmp_path, constant_shards)
    ref_run, run = tmp_path / "reference", tmp_path / "run"
    ref = _single(cfg, ref_run)
    assert ref.returncode == 0, tail(ref)
    procs = list(_segments(cfg, run, [1, 2, 1], kill_at=[4, 8]))
    assert "world size 1 -> 2: grad_accum 2 -> 1 keeps the run's global batch 8" in procs[1].stderr
    assert "world size 2 -> 1: grad_accum 1 -> 2 keeps the run's global batch 8" in procs[2].stderr
    final, ref_final = ckpt.find_latest_complete(run), ckpt.find_latest_complete(ref_run)
    meta, ref_meta = ckpt.read_meta(final), ckpt.read_meta(ref_final)
    assert meta["step"] == ref_meta["step"] == 12
    assert meta["samples_seen"] == ref_meta["samples_seen"] == 96 and meta["epoch"] == ref_meta["epoch"] == 3
    assert [ckpt.read_meta(c)["grad_accum"] for c in sorted(ckpt.list_complete(run))] == [2, 2, 1, 1, 2, 2]
    assert _lr_by_step(run) == _lr_by_step(ref_run)                       # the same LR at every step
    assert [(h["world_size"], h["start_step"]) for h in _history(run)] == [(1, 0), (2, 4), (1, 8)]
    assert _max_param_diff(_final_weights(run), _final_weights(ref_run)) == 0.0      # bit-exact


@pytest.mark.parametrize("stage, worlds", [(1, [2, 1]), (1, [1, 2]), (2, [2, 1]), (2, [1, 2])],
                         ids=["zero1-2to1", "zero1-1to2", "zero2-2to1", "zero2-1to2"])
def test_deepspeed_zero_resumes_on_another_world_size(tmp_path, constant_shards, stage, worlds):
    cfg = _config(tmp_path, constant_shards, epochs=2, backend="deepspeed", zero_stage=stage)
    ref_run, run = tmp_path / "reference", tmp_path / "run"
    ref = _launch(worlds[0], cfg, ref_run)
    assert ref.returncode == 0, tail(ref)
    procs = list(_segments(cfg, run, worlds, kill_at=[4]))
    assert f"ZeRO state of {worlds[0]} ranks) to DeepSpeed's universal format for {worlds[1]} rank(s)" \
        in procs[1].stderr
    meta = ckpt.read_meta(ckpt.find_latest_complete(run))
    assert (meta["step"], meta["samples_seen"], meta["world_size"]) == (8, 64, worlds[1])
    assert not (run / ".universal").exists() or not any((run / ".universal").iterdir())   # scratch removed
    ckpt.verify(ckpt.checkpoints_root(run) / ckpt.step_name(4))     # the converted checkpoint is untouched
    assert _lr_by_step(run) == _lr_by_step(ref_run)
    # weights and Adam moments crossed the change: 4 more steps land where the uninterrupted run did
    diff = _max_param_diff(_final_weights(run), _final_weights(ref_run))
    assert diff <= 1e-6, diff
