"""The nnU-Net round trip, for real: phantom ACDC cohort -> nnU-Net raw dataset ->
``nnUNetv2_plan_and_preprocess`` -> our pretraining (trainer CLI) with the plans' 2d network on
phantom shards made at the plans' patch size and spacing -> ``anatplane export --format nnunet``
-> ``nnUNetv2_train DATASET 2d 0 -pretrained_weights ... -device cpu`` with a short trainer,
which must start from exactly our tensors and finish.  Each stage's seconds are printed
(``pytest -s``) and written to ``timings.json`` in the test's tmp dir.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("nnunetv2")

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
DATASET_ID = 501


def _sh(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float = 900) -> str:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} -> {proc.returncode}\n{out[-4000:]}"
    return out


def test_pretrain_export_and_nnunet_fine_tunes_from_our_weights(tmp_path):
    t: dict[str, float] = {}
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                          "MASTER_PORT")}
    env.update(nnUNet_raw=str(tmp_path / "nnUNet_raw"), nnUNet_preprocessed=str(tmp_path / "nnUNet_preprocessed"),
               nnUNet_results=str(tmp_path / "nnUNet_results"), nnUNet_n_proc_DA="1", nnUNet_def_n_proc="1",
               nnUNet_compile="false", OMP_NUM_THREADS="1")
    anatplane = [sys.executable, "-m", "anatplane_dist.cli"]

    def stage(name: str, cmd: list[str], **kw) -> str:
        start = time.perf_counter()
        out = _sh(cmd, env, tmp_path, **kw)
        t[name] = round(time.perf_counter() - start, 1)
        return out

    # 1. a labelled phantom cohort in ACDC layout -> nnU-Net raw dataset -> nnU-Net's planning
    stage("phantom", [*anatplane, "phantom", "heart", "--subjects", "3", "--out", "dsbcc", "--size", "64",
                      "--frames", "4", "--labelled", "3", "--labelled-out", "acdc"])
    stage("export_dataset", [*anatplane, "export", "--format", "nnunet-dataset", "acdc", env["nnUNet_raw"],
                             "--dataset-id", str(DATASET_ID), "--dataset-name", "Phantom"])
    stage("plan_and_preprocess", [str(BIN / "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "2d",
                                  "-np", "1", "--verify_dataset_integrity"])
    plans = tmp_path / "nnUNet_preprocessed" / "Dataset501_Phantom" / "nnUNetPlans.json"
    c2d = json.loads(plans.read_text())["configurations"]["2d"]
    grid, spacing = c2d["patch_size"], c2d["spacing"]
    assert grid[0] == grid[1] and spacing[0] == pytest.approx(spacing[1])

    # 2. shards at the plans' grid, and our pretraining with the plans' network (trainer CLI)
    stage("shard", [*anatplane, "shard", "--input", "dsbcc", "--out", "shards", "--grid", str(grid[0]),
                    "--spacing", repr(spacing[0]), "--workers", "1", "--val-fraction", "0.34", "--no-progress"])
    (tmp_path / "tiny.yaml").write_text(
        "data: {shards: shards, samples_per_epoch: 8, batch_size: 4, num_workers: 0, shuffle_buffer: 8,"
        " shuffle_initial: 4}\n"
        "model: {name: nnunet, loc_hidden: [16], loc_dropout: 0.0}\n"
        "optim: {name: adamw, base_lr: 1.0e-3, warmup_steps: 0}\n"
        "train: {max_steps: 2, backend: single, log_every: 1}\n")
    stage("pretrain", [*anatplane, "pretrain", "--config", "tiny.yaml", "--run-dir", "run",
                       f"model.plans={plans}"])
    stage("export_weights", [*anatplane, "export", "--format", "nnunet", "run", "pretrained.pth"])
    ours = torch.load(tmp_path / "pretrained.pth", weights_only=True)["network_weights"]

    # 3. nnU-Net fine-tunes from them: a few iterations of fold 0, on the CPU
    env.update(nnUNet_n_proc_DA="0", ANATPLANE_NNUNET_DUMP=str(tmp_path / "loaded.pt"), ANATPLANE_NNUNET_ITERS="3")
    log = stage("nnunet_train", [sys.executable, str(HERE / "nnunet_train.py"), str(DATASET_ID), "2d", "0",
                                 "-tr", "nnUNetTrainer_anatplaneShort", "-pretrained_weights", "pretrained.pth",
                                 "-device", "cpu"])
    assert "Loading pretrained weights from file" in log
    loaded = torch.load(tmp_path / "loaded.pt", weights_only=True)
    transferable = {k for k in loaded if ".seg_layers." not in k}
    assert transferable == set(ours)                       # every tensor but the seg layers, nothing else
    assert all(torch.equal(loaded[k], ours[k]) for k in transferable)
    results = tmp_path / "nnUNet_results" / "Dataset501_Phantom" / "nnUNetTrainer_anatplaneShort__nnUNetPlans__2d"
    assert (results / "fold_0" / "checkpoint_final.pth").is_file()   # it trained and finished

    t["total"] = round(sum(t.values()), 1)
    (tmp_path / "timings.json").write_text(json.dumps(t, indent=1))
    print("nnU-Net round trip seconds:", json.dumps(t))
