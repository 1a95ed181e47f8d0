"""``bench/gpu_check.py --smoke``: the GPU node check runs its whole code path on the CPU.

Tiny sizes (a 4-channel U-Net on 32^2 for the network alone, 64^2 phantom shards for the real
trainer under DeepSpeed ZeRO-1 and DDP, the loader, the sharder scaling, publish and fine-tune),
so that the one command a GPU session runs keeps working between GPU sessions.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train.conftest import subprocess_env

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_section(tmp_path):
    out = tmp_path / "summary.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--smoke", "--out", str(out),
                           "--work", str(tmp_path / "work")], env=subprocess_env(), capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    summary = json.loads(out.read_text())
    assert summary["mode"] == "smoke" and summary["errors"] == {}
    sec = summary["sections"]
    assert set(sec) == {"model", "data", "trainer_deepspeed_zero1", "trainer_ddp", "loader", "sharder", "smoke"}

    variants = {(r["batch"], r["variant"]) for r in sec["model"]}
    assert {(2, "eager fp32"), (2, "bf16"), (2, "bf16 channels_last"), (2, "compile bf16 channels_last"),
            (4, "bf16 channels_last")} <= variants
    assert all(r["samples_per_s"] > 0 and r["tflops"] > 0 for r in sec["model"])

    runs = {r["run"]: r for r in (sec["trainer_deepspeed_zero1"], sec["trainer_ddp"])}
    assert set(runs) == {"deepspeed zero1", "ddp"} and runs["deepspeed zero1"]["backend"] == "deepspeed"
    for r in runs.values():
        assert r["steps"] == 3 and r["samples_per_s"] > 0 and r["data_wait_ms_per_micro_batch"] >= 0
        assert r["ratio_to_model_alone"] > 0 and r["model_alone_samples_per_s"] > 0
        assert set(r["phase_ms_per_step"]) == {"host_to_device", "augment", "forward", "loss", "backward",
                                               "optimiser_step"}
        assert r["phase_ms_per_step"]["forward"] > 0
    assert [r["workers"] for r in sec["loader"]] == [0, 1] and all(r["samples_per_s"] > 0 for r in sec["loader"])
    rows = sec["sharder"]["rows"]
    assert [r["workers"] for r in rows] == [1, 2] and rows[0]["efficiency"] == 1.0
    assert rows[0]["samples"] == rows[1]["samples"] > 0 and rows[1]["pool_startup_s"] > 0
    assert sec["sharder"]["writer_alone"]["samples_per_cpu_s"] > 0
    assert sec["smoke"]["finetune_device"] == "cpu"
    assert (tmp_path / "work" / "models" / "gpu-check" / "latest").exists()
