"""Backends with reduced precision: bf16 under DeepSpeed ZeRO-1 (fp32 master-weight export) and DDP/single autocast."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from anatplane_dist.core import checkpoints as ckpt
from anatplane_dist.core.dist import DistEnv
from anatplane_dist.core.errors import AnatplaneError
from anatplane_dist.core.weights import load_part
from anatplane_dist.train.backends import ENGINE_TAG, choose_backend
from anatplane_dist.train.cli import main
from anatplane_dist.train.options import TrainConfig
from tests.train.conftest import subprocess_env
from tests.train.launch import PRETRAIN, tail
from tests.train.synth import config_yaml


def test_deepspeed_bf16_exports_fp32_master_weights(tmp_path, shards):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(config_yaml(shards, train={"epochs": 1, "backend": "deepspeed", "precision": "bf16",
                                              "zero_stage": 1}))
    proc = subprocess.run([sys.executable, PRETRAIN, "--config", str(cfg), "--run-dir", str(tmp_path / "run")],
                          env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, tail(proc)
    final = ckpt.find_latest_complete(tmp_path / "run")
    enc = load_part(final / "fp32", "encoder")["state_dict"]
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    master = get_fp32_state_dict_from_zero_checkpoint(str(final), tag=ENGINE_TAG)
    weights = [k for k in enc if k.endswith("weight")]
    assert weights and all(torch.equal(enc[k], master[f"encoder.{k}"].float()) for k in weights)
    # master weights carry more precision than the bf16 module copy
    assert any(not torch.equal(enc[k], enc[k].bfloat16().float()) for k in weights)


def test_single_process_bf16_autocast(tmp_path, shards, clean_env):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(config_yaml(shards, train={"epochs": 1, "precision": "bf16", "progress": "none",
                                              "channels_last": True}))
    assert main(["--config", str(cfg), "--run-dir", str(tmp_path / "run")]) == 0
    meta = ckpt.read_meta(ckpt.find_latest_complete(tmp_path / "run"))
    assert meta["backend"] == "single" and meta["step"] == 8


def test_fp16_without_cuda_is_refused_for_torch_backends(tmp_path, shards, clean_env):
    if torch.cuda.is_available():
        pytest.skip("fp16 autocast is allowed on CUDA")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(config_yaml(shards, train={"epochs": 1, "precision": "fp16", "progress": "none"}))
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        main(["--config", str(cfg), "--run-dir", str(tmp_path / "run")])


@pytest.mark.parametrize("requested, zero, source, world, expected", [
    ("auto", 0, "deepspeed", 2, "deepspeed"), ("auto", 0, "torchrun", 2, "ddp"), ("auto", 0, "single", 1, "single"),
    ("auto", 0, "slurm", 4, "ddp"), ("deepspeed", 0, "torchrun", 2, "deepspeed"), ("ddp", 0, "single", 1, "ddp"),
    # a ZeRO stage is a DeepSpeed option: auto honours it under every launcher (SLURM included)
    ("auto", 1, "slurm", 4, "deepspeed"), ("auto", 2, "torchrun", 2, "deepspeed"), ("auto", 1, "single", 1, "deepspeed"),
])
def test_backend_choice(requested, zero, source, world, expected):
    train = TrainConfig(backend=requested, zero_stage=zero)
    assert choose_backend(train, DistEnv(0, world, 0, "h", 1, source)) == expected


@pytest.mark.parametrize("train, message", [
    (TrainConfig(backend="single"), "single with 2 ranks"),
    (TrainConfig(backend="ddp", zero_stage=1), "zero_stage=1 is a DeepSpeed option"),
])
def test_backend_choice_refusals(train, message):
    with pytest.raises(AnatplaneError, match=message):
        choose_backend(train, DistEnv(0, 2, 0, "h", 1, "torchrun"))
