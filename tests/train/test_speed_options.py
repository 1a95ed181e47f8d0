"""``train.channels_last`` and ``train.compile`` under every backend (issue 16).

The failure modes these guard against are silent: under DeepSpeed, NHWC parameters either
break the start-up broadcast or, converted after ``deepspeed.initialize``, come loose from the
flat bf16/ZeRO buffers and stop updating; a compiled module's state dict can carry
``_orig_mod.`` prefixes that make its checkpoints unreadable by an eager run. So each run here
checkpoints after every step and the test checks that *every* weight moved between
consecutive checkpoints, that no state dict holds a compile prefix, and that the run resumes
(with the option switched off and on again, and for ZeRO on another world size).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from anatplane_dist.core import checkpoints as ckpt
from anatplane_dist.core import weights
from anatplane_dist.train.backends import DDP_STATE, ENGINE_TAG, Backend
from anatplane_dist.train.config import PretrainConfig
from anatplane_dist.train.options import TrainConfig
from tests.train.conftest import subprocess_env
from tests.train.launch import PRETRAIN, tail, torchrun
from tests.train.synth import config_yaml

PARTS = ("encoder", "decoder", "location_head")


def _launch(nproc: int, cfg: Path, run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    if nproc > 1:
        return torchrun(nproc, cfg, run_dir, *overrides, timeout=600)
    return subprocess.run([sys.executable, PRETRAIN, "--config", str(cfg), "--run-dir", str(run_dir), *overrides],
                          env=subprocess_env(), capture_output=True, text=True, timeout=600, cwd=run_dir.parent)


def _fp32(step_dir: Path) -> dict[str, torch.Tensor]:
    return {f"{p}.{k}": v for p in PARTS for k, v in weights.load_part(step_dir / "fp32", p)["state_dict"].items()}


def _all_state_keys(step_dir: Path) -> list[str]:
    """Every state-dict key a checkpoint holds: engine/DDP model state and the fp32 export."""
    keys = list(_fp32(step_dir))
    if (step_dir / DDP_STATE).is_file():
        keys += list(torch.load(step_dir / DDP_STATE, map_location="cpu", weights_only=True)["model"])
    for f in sorted((step_dir / ENGINE_TAG).glob("mp_rank_*_model_states.pt")):
        keys += list(torch.load(f, map_location="cpu", weights_only=False)["module"])
    return keys


def _check_every_step_updated(run_dir: Path, steps: range) -> None:
    """All trainable tensors differ between the checkpoints of consecutive steps; no compile prefixes."""
    dirs = {ckpt.step_of(d): d for d in ckpt.list_complete(run_dir)}
    assert set(steps) <= set(dirs), sorted(dirs)
    for s in steps:
        keys = _all_state_keys(dirs[s])
        assert keys and not [k for k in keys if "_orig_mod" in k], f"compile prefix in step {s}"
    for a, b in zip(steps, steps[1:]):
        wa, wb = _fp32(dirs[a]), _fp32(dirs[b])
        frozen = [k for k in wa if wa[k].is_floating_point() and "running" not in k and torch.equal(wa[k], wb[k])]
        assert not frozen, f"weights did not change from step {a} to {b}: {frozen[:5]}"


def test_conv_runs_nhwc_when_only_the_input_is_nhwc():
    """The premise of channels_last under DeepSpeed: an NHWC batch makes the network run NHWC."""
    x = torch.randn(2, 3, 16, 16)
    w = torch.randn(4, 3, 3, 3)            # NCHW weight, as DeepSpeed keeps it
    backend = Backend(torch.nn.Identity(), None, PretrainConfig(train=TrainConfig(channels_last=True)),
                      torch.device("cpu"))
    x_cl = backend.layout(x)
    assert x_cl.is_contiguous(memory_format=torch.channels_last)
    out = F.conv2d(x_cl, w, padding=1)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, F.conv2d(x, w, padding=1), atol=1e-5)
    plain = Backend(torch.nn.Identity(), None, PretrainConfig(), torch.device("cpu"))
    assert plain.layout(x) is x


@pytest.mark.parametrize("stage, precision", [(0, "fp32"), (1, "bf16"), (2, "fp32")])
def test_channels_last_under_deepspeed_trains_and_resumes(tmp_path, shards, stage, precision):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(config_yaml(shards, train={"epochs": 2, "backend": "deepspeed", "zero_stage": stage,
                                              "precision": precision, "channels_last": True, "ckpt_every": 1,
                                              "log_every": 1, "progress": "none"}))
    run = tmp_path / "run"
    first = torchrun(2, cfg, run, "train.max_steps=3")
    assert first.returncode == 0, tail(first)
    resumed = torchrun(2, cfg, run, "train.max_steps=5")
    assert resumed.returncode == 0, tail(resumed)
    assert "resumed at step 3" in resumed.stdout + resumed.stderr, tail(resumed)
    _check_every_step_updated(run, range(1, 6))
    if precision == "bf16" and stage > 0:
        # the fp32 export comes from the master partitions; the bf16 module copy the network runs
        # with must be those master weights rounded (a detached module copy would stay at step 0)
        steps = {ckpt.step_of(d): d for d in ckpt.list_complete(run)}
        for s in (3, 5):
            module = torch.load(steps[s] / ENGINE_TAG / "mp_rank_00_model_states.pt", map_location="cpu",
                                weights_only=False)["module"]
            master = _fp32(steps[s])
            stale = [k for k, v in module.items() if v.is_floating_point() and "running" not in k
                     and not torch.equal(v, master[k].to(v.dtype))]
            assert not stale, f"bf16 module weights differ from the master weights at step {s}: {stale[:5]}"
    assert ckpt.read_meta(ckpt.find_latest_complete(run))["params_in_sync"] is True


@pytest.mark.slow
@pytest.mark.parametrize("backend, stage, nproc, resume_nproc, compiled_first", [
    ("single", 0, 1, 1, False), ("ddp", 0, 2, 2, True), ("deepspeed", 0, 2, 2, False), ("deepspeed", 1, 2, 1, True),
    ("deepspeed", 2, 2, 2, False)])
def test_compile_under_every_backend_trains_and_resumes(tmp_path, shards, backend, stage, nproc, resume_nproc,
                                                        compiled_first):
    """Steps 0-3 then a resume to 6, one of the two compiled: compiled -> eager under some backends,
    eager -> compiled under the others (two launches each keep the test affordable); ZeRO-1
    also changes the world size 2 -> 1 on the resume (universal checkpoint)."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(config_yaml(shards, train={"epochs": 2, "backend": backend, "zero_stage": stage,
                                              "compile": compiled_first, "channels_last": True, "ckpt_every": 1,
                                              "log_every": 1, "val_batches": 1, "progress": "none"}))
    run = tmp_path / "run"
    first = _launch(nproc, cfg, run, "train.max_steps=3")
    assert first.returncode == 0, tail(first)
    resumed = _launch(resume_nproc, cfg, run, "train.max_steps=6", f"train.compile={str(not compiled_first).lower()}")
    assert resumed.returncode == 0, tail(resumed)
    assert "resumed at step 3" in resumed.stdout + resumed.stderr, tail(resumed)
    _check_every_step_updated(run, range(1, 7))
    meta = ckpt.read_meta(ckpt.find_latest_complete(run))
    assert meta["step"] == 6 and meta["world_size"] == resume_nproc


def test_phase_times_are_logged_per_step(tmp_path, shards, clean_env):
    """``train.phase_times``: every training row says where the step's time went."""
    from anatplane_dist.train.cli import main
    from anatplane_dist.train.metrics import read_metrics
    from anatplane_dist.train.phases import PHASES

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(config_yaml(shards, train={"epochs": 1, "phase_times": True, "log_every": 2, "progress": "none"},
                               data={"batch_size": 4}))
    assert main(["--config", str(cfg), "--run-dir", str(tmp_path / "run")]) == 0
    rows = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert rows
    for r in rows:
        times = {p: r[f"ms/{p}"] for p in PHASES}
        assert all(v >= 0 for v in times.values()) and times["forward"] > 0 and times["backward"] > 0
        # the phases are parts of the step: together less than the wall time per optimiser step
        assert sum(times.values()) < 1e3 * 4 / r["samples_per_s"] * 1.05
