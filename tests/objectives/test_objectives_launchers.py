"""Each objective trains a few steps through the real CLI under torchrun x2 and deepspeed x2.

``python -m anatplane_dist.cli pretrain --config <tiny preset> objective.name=X`` on the tiny
synthetic shards of tests/train (32x32, K=2, 4-8-16 U-Net); 1 epoch = 4 optimiser steps on 2
ranks. These need the trainer to build the model / inputs / loss / validation from
``get_objective`` (the lead's wiring).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from anatplane_dist.core import checkpoints as ckpt
from anatplane_dist.core.dist import free_port
from anatplane_dist.core.weights import find_parts
from anatplane_dist.objectives import get_objective
from anatplane_dist.objectives.config import ObjectiveConfig
from anatplane_dist.train.metrics import read_metrics
from tests.objectives.conftest import tiny_loss
from tests.train.conftest import subprocess_env
from tests.train.synth import config_yaml, write_shards

#: objective -> (its loss parts in metrics.jsonl, the parts its checkpoint exports)
EXPECTED = {
    "multitask": ({"loss_ori", "loss_loc"}, {"encoder", "decoder", "location_head"}),
    "orientation": ({"loss_ori"}, {"encoder", "decoder"}),
    "location": ({"loss_loc"}, {"encoder", "location_head"}),
    "simclr": ({"loss_nt_xent"}, {"encoder", "projection"}),
    "genesis": ({"loss_restore"}, {"encoder", "decoder"}),
    "rotation": ({"loss_rot"}, {"encoder", "rotation_head"}),
}
CLI = ["-m", "anatplane_dist.cli", "pretrain"]


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("objective-launchers")
    shards = write_shards(root / "shards", [24, 15, 9], [10, 5])
    cfg = root / "tiny.yaml"
    cfg.write_text(config_yaml(shards, train={"epochs": 1, "log_every": 1, "progress": "lines"}))
    return cfg


def _launch(launcher: str, cfg: Path, run: Path, name: str) -> subprocess.CompletedProcess:
    overrides = [f"objective.name={name}"]
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
               "127.0.0.1", "--master_port", str(free_port()), *CLI]
    else:
        # the deepspeed launcher puts --local_rank=N right after the module, before the sub-command
        # (the CLI moves it behind); `auto` then picks DeepSpeed, here with ZeRO-1
        cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
               "--module", CLI[1], CLI[2]]
        overrides.append("train.zero_stage=1")
    cmd += ["--config", str(cfg), "--run-dir", str(run), *overrides]
    return subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=400, cwd=run.parent)


@pytest.mark.slow
@pytest.mark.timeout(500)
@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_objective_trains_under_two_rank_launcher(name, launcher, tiny_config, tmp_path):
    run = tmp_path / "run"
    proc = _launch(launcher, tiny_config, run, name)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert yaml.safe_load((run / "config.yaml").read_text())["objective"]["name"] == name
    final = ckpt.find_latest_complete(run)
    meta = ckpt.read_meta(final)
    # 32 samples/epoch / (micro 4 x 2 ranks) = 4 optimiser steps
    assert meta["step"] == 4 and meta["world_size"] == 2 and meta["params_in_sync"] is True
    assert meta["backend"] == ("ddp" if launcher == "torchrun" else "deepspeed")
    loss_parts, exported = EXPECTED[name]
    rows = read_metrics(run)
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    assert all(loss_parts <= set(r) for r in train_rows)
    val_names = get_objective(ObjectiveConfig(name=name), tiny_loss()).validation_names
    val_rows = [r for r in rows if "val/loss" in r]
    assert val_rows and set(val_names) <= set(val_rows[-1])
    assert set(find_parts(final / "fp32")) == exported
