"""The launch paths: deepspeed launcher (2 ranks) with kill + re-run, ``anatplane pretrain``, no-argument demo."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from anatplane_dist.cli import main as anatplane
from anatplane_dist.core import checkpoints as ckpt
from anatplane_dist.core import weights
from anatplane_dist.train.metrics import read_metrics
from tests.train.conftest import subprocess_env
from tests.train.faults import fault_env
from tests.train.launch import PRETRAIN, deepspeed_launcher, tail
from tests.train.synth import config_yaml


def test_deepspeed_launcher_two_ranks_and_rerun_resumes(tmp_path, shards, monkeypatch):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(config_yaml(shards, train={"epochs": 2, "backend": "auto", "zero_stage": 1, "grad_accum": 2,
                                              "ckpt_every": 1, "log_every": 1}))
    run = tmp_path / "run"
    for k, v in fault_env(3).items():
        monkeypatch.setenv(k, v)
    first = deepspeed_launcher(2, cfg, run)
    assert first.returncode != 0                      # both ranks SIGKILLed as step 4 starts
    assert ckpt.step_of(ckpt.find_latest_complete(run)) == 3
    for k in fault_env(3):
        if k != "PYTHONPATH":
            monkeypatch.delenv(k)
    second = deepspeed_launcher(2, cfg, run)          # the same command again: resumes
    assert second.returncode == 0, tail(second)
    meta = ckpt.read_meta(ckpt.find_latest_complete(run))
    # 32 samples/epoch / (micro 4 x 2 ranks) = 4 micro-batches = 2 optimiser steps/epoch (accumulation 2)
    assert meta["backend"] == "deepspeed" and meta["world_size"] == 2 and meta["global_batch"] == 16
    assert meta["step"] == 4 and meta["params_in_sync"] is True
    steps = [r["step"] for r in read_metrics(run) if "loss" in r]
    assert steps == [1, 2, 3, 4]                      # step 4 trained once, after the resume
    assert "resumed at step 3" in second.stdout + second.stderr


def test_anatplane_pretrain_subcommand_publishes_at_the_end(tmp_path, shards, clean_env):
    from anatplane_dist.publish import load_pretrained

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(config_yaml(shards, train={"epochs": 1, "progress": "none"}))
    assert anatplane(["pretrain", "--config", str(cfg), "--run-dir", str(tmp_path / "run"),
                      f"publish.dir={tmp_path / 'pub'}", "publish.name=tiny"]) == 0
    final = ckpt.find_latest_complete(tmp_path / "run")
    assert ckpt.step_of(final) == 8
    versions = [p for p in (tmp_path / "pub" / "tiny").iterdir() if p.is_dir()]
    assert versions
    encoder = load_pretrained(versions[0], part="encoder")
    exported = weights.load_part(final / "fp32", "encoder")["state_dict"]
    for k, v in encoder.state_dict().items():
        assert torch.equal(v.float(), exported[k]), k


def test_half_set_environment_is_refused(tmp_path, shards):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(config_yaml(shards))
    proc = subprocess.run([sys.executable, PRETRAIN, "--config", str(cfg), "--run-dir", str(tmp_path / "run")],
                          env={**subprocess_env(), "RANK": "0"}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "half-set distributed environment" in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_no_arguments_trains_on_generated_phantom_shards(tmp_path):
    """``python launch/pretrain.py``: phantom + shards generated into the cache, then the tiny preset."""
    env = {**subprocess_env(), "ANATPLANE_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, PRETRAIN, "train.epochs=1", "data.samples_per_epoch=64"],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, tail(proc)
    assert (tmp_path / "cache" / "shards" / "manifest.json").is_file()
    run = tmp_path / "runs" / "tiny-cpu"
    meta = ckpt.read_meta(ckpt.find_latest_complete(run))
    assert meta["step"] == 8 and meta["metrics"]["val/samples"] > 0
    for part in ("encoder", "decoder", "location_head"):
        assert weights.load_part(ckpt.find_latest_complete(run) / "fp32", part)["num_channels"] == 2
