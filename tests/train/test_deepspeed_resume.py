"""DeepSpeed engine, 2 gloo ranks: ZeRO 1/2 save → SIGKILL → resume equals an uninterrupted run."""
from __future__ import annotations

import pytest
import torch

from anatplane_dist.core import checkpoints as ckpt
from anatplane_dist.core import weights
from anatplane_dist.train.backends import ENGINE_TAG
from anatplane_dist.train.metrics import read_metrics
from tests.train.faults import fault_env
from tests.train.launch import tail, torchrun
from tests.train.synth import config_yaml


def _weights(ckpt_dir):
    return {p: weights.load_part(ckpt_dir / "fp32", p)["state_dict"]
            for p in ("encoder", "decoder", "location_head")}


@pytest.mark.parametrize("stage", [1, 2])
def test_zero_kill_and_resume_matches_uninterrupted(tmp_path, shards, stage):
    cfg = tmp_path / "cfg.yaml"
    # 4 optimiser steps per epoch: 32 samples / (micro 4 x 2 ranks)
    cfg.write_text(config_yaml(shards, train={"epochs": 2, "backend": "deepspeed", "zero_stage": stage,
                                              "ckpt_every": 3, "log_every": 1}))
    ref_run, run = tmp_path / "reference", tmp_path / "interrupted"

    ref = torchrun(2, cfg, ref_run)
    assert ref.returncode == 0, tail(ref)
    assert (ref_run / "ds_config.json").is_file()

    killed = torchrun(2, cfg, run, env=fault_env(5))      # SIGKILL on both ranks as step 6 starts
    assert killed.returncode != 0
    latest = ckpt.find_latest_complete(run)
    assert ckpt.step_of(latest) == 3                        # mid-epoch 0 (4 steps/epoch)
    assert ckpt.read_meta(latest)["samples_in_epoch"] == 3 * 8       # 3 steps of the global batch 8

    resumed = torchrun(2, cfg, run)
    assert resumed.returncode == 0, tail(resumed)
    final, ref_final = ckpt.find_latest_complete(run), ckpt.find_latest_complete(ref_run)
    assert ckpt.step_of(final) == ckpt.step_of(ref_final) == 8
    meta, ref_meta = ckpt.read_meta(final), ckpt.read_meta(ref_final)
    assert (meta["epoch"], meta["samples_seen"], meta["data_seed"]) == \
        (ref_meta["epoch"], ref_meta["samples_seen"], ref_meta["data_seed"])
    assert meta["params_in_sync"] is True and meta["backend"] == "deepspeed"
    a, b = _weights(final), _weights(ref_final)
    for part in a:
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k}"
    lr = {r["step"]: r["lr"] for r in read_metrics(run) if "lr" in r}
    ref_lr = {r["step"]: r["lr"] for r in read_metrics(ref_run) if "lr" in r}
    assert all(lr[s] == ref_lr[s] for s in range(1, 9))
    steps = [r["step"] for r in read_metrics(run) if "lr" in r]
    assert steps == list(range(1, 9))               # rows 4-5 of the killed run were dropped on resume

    # the fp32 export read from engine.module equals DeepSpeed's own consolidation of the ZeRO partitions
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    consolidated = get_fp32_state_dict_from_zero_checkpoint(str(final), tag=ENGINE_TAG)
    for part, sd in a.items():
        for k, v in sd.items():
            name = f"{part}.{k}"
            if name in consolidated:
                assert torch.equal(consolidated[name].float(), v), name
    assert any(n.startswith("encoder.") for n in consolidated)
