"""Two real gloo ranks under torchrun with the DDP backend and uneven shards."""
from __future__ import annotations

import pytest

from anatplane_dist.core import checkpoints as ckpt
from anatplane_dist.train.metrics import read_metrics
from tests.train.launch import tail, torchrun
from tests.train.synth import config_yaml


@pytest.mark.parametrize("resampled", [False, True], ids=["permuted", "resampled"])
def test_two_rank_ddp_equal_steps_identical_weights(tmp_path, shards, resampled):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(config_yaml(shards, data={"resampled": resampled}, train={"epochs": 2, "backend": "ddp"}))
    run = tmp_path / "run"
    proc = torchrun(2, cfg, run)
    assert proc.returncode == 0, tail(proc)
    # 32 samples/epoch over 2 ranks x micro 4 -> 4 steps/epoch on each rank, whatever the shard sizes (24/15/9)
    meta = ckpt.read_meta(ckpt.find_latest_complete(run))
    assert meta["step"] == 8 and meta["world_size"] == 2 and meta["backend"] == "ddp"
    assert meta["rank_micro_steps"] == [8, 8]
    assert meta["params_in_sync"] is True
    assert meta["global_batch"] == 8 and meta["samples_seen"] == 64
    # validation: uneven val shards (10 vs 5 samples per rank), reduced once: every sample counted once
    assert meta["metrics"]["val/samples"] == 15
    rows = [r for r in read_metrics(run) if "loss" in r]
    assert [r["step"] for r in rows] == [2, 4, 6, 8] and all(r["loss"] > 0 for r in rows)
