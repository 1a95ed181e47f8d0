"""model.name=nnunet through the real trainer CLI on 2 ranks, with each distributed backend."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("nnunetv2")

from anatplane_dist.core import checkpoints as ckpt  # noqa: E402
from anatplane_dist.core import weights  # noqa: E402
from anatplane_dist.model import ModelConfig  # noqa: E402

pytestmark = pytest.mark.slow


def _write_plans(folder: Path, **kw) -> Path:
    spec = importlib.util.spec_from_file_location("nnunet_plans", Path(__file__).parents[1] / "model" / "nnunet_plans.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.write_plans(folder, **kw)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                          "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("nnunet-shards")
    cli = [sys.executable, "-m", "anatplane_dist.cli"]
    for cmd in ([*cli, "phantom", "heart", "--subjects", "2", "--out", str(d / "dsbcc"), "--size", "64", "--frames", "3"],
                [*cli, "shard", "--input", str(d / "dsbcc"), "--out", str(d / "shards"), "--grid", "32", "--spacing",
                 "3.0", "--workers", "1", "--val-fraction", "0.5", "--no-progress"]):
        proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    return d / "shards"


@pytest.mark.parametrize("backend", ["ddp", "deepspeed"])
def test_two_ranks_train_and_export_the_nnunet_parts(tmp_path, shards, backend):
    plans = _write_plans(tmp_path / "pre", patch=32, spacing=3.0)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(f"data: {{shards: {shards}, samples_per_epoch: 8, batch_size: 2, num_workers: 0,"
                   " shuffle_buffer: 8, shuffle_initial: 2}\n"
                   "model: {name: nnunet, loc_hidden: [8], loc_dropout: 0.0}\n"
                   f"train: {{max_steps: 2, backend: {backend}, zero_stage: {int(backend == 'deepspeed')}, log_every: 1}}\n")
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "anatplane_dist.cli", "pretrain", "--config", str(cfg), "--run-dir", str(run),
                           f"model.plans={plans}"], env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert f"backend {backend}" in proc.stdout + proc.stderr
    fp32 = ckpt.find_latest_complete(run) / "fp32"
    enc = weights.load_part(fp32, "encoder")
    assert ModelConfig.from_yaml(enc["model_config"]).nnunet["patch_size"] == [32, 32]
    assert set(weights.find_parts(fp32)) == {"encoder", "decoder", "location_head"}
    sd = enc["state_dict"]
    assert any(k.startswith("stages.") for k in sd)              # nnU-Net's encoder names
    # nnU-Net's blocks name each conv twice; every backend must export both, equal
    conv, alias = "stages.0.0.convs.0.conv.weight", "stages.0.0.convs.0.all_modules.0.weight"
    assert torch.equal(sd[conv], sd[alias])
    out = subprocess.run([sys.executable, "-m", "anatplane_dist.cli", "export", "--format", "nnunet", str(run),
                          str(tmp_path / "pretrained.pth")], env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
