"""``anatplane finetune`` and ``launch/finetune.py`` end to end on tiny data."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from anatplane_dist.cli import main as anatplane
from anatplane_dist.model import ModelConfig
from tests.finetune.conftest import publish_weights

TINY = ModelConfig(name="unet", width=8, depth=3, loc_hidden=[16])
REPO = Path(__file__).resolve().parents[2]


def test_seg_cli_pretrained_vs_random(acdc_root: Path, tmp_path: Path, capsys) -> None:
    name_dir = publish_weights(tmp_path, TINY, grid=64, spacing=1.5)
    out = tmp_path / "ft"
    rc = anatplane(["finetune", "seg", "--data", str(acdc_root), "--pretrained", str(name_dir / "latest"),
                    "--out", str(out), "--labels", "1,all", "--seeds", "0", "--steps", "8", "--batch-size", "4"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["provenance"]["grid"] == {"size": 64, "spacing": 1.5}          # read from the shard manifest
    assert res["provenance"]["pretrained_step"] == 10
    assert {(r["init"], r["n_labelled"]) for r in res["runs"]} == {("random", 1), ("pretrained", 1),
                                                                  ("random", 4), ("pretrained", 4)}
    assert {tuple(r["transferred"]) for r in res["runs"]} == {(), ("encoder", "decoder")}
    assert (out / "results.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "pretrained − random (dice_mean)" in printed and "loaded 6 labelled subjects" in printed


def test_cli_errors_are_messages_not_tracebacks(acdc_root: Path, tmp_path: Path, capsys) -> None:
    rc = anatplane(["finetune", "seg", "--data", str(tmp_path / "none"), "--pretrained", str(tmp_path / "w"),
                    "--out", str(tmp_path / "o")])
    assert rc == 2 and "do not exist" in capsys.readouterr().err
    rc = anatplane(["finetune", "seg", "--data", str(acdc_root), "--out", str(tmp_path / "o")])
    assert rc == 2 and "no --pretrained" in capsys.readouterr().err
    (tmp_path / "m.yaml").write_text(TINY.to_yaml())
    rc = anatplane(["finetune", "seg", "--data", str(acdc_root), "--init", "random", "--model-config",
                    str(tmp_path / "m.yaml"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "--grid" in capsys.readouterr().err
    rc = anatplane(["finetune", "seg", "--data", str(acdc_root), "--init", "random", "--model-config",
                    str(tmp_path / "m.yaml"), "--grid", "64", "--spacing", "1.5", "--steps", "-3", "--out", str(tmp_path / "o")])
    assert rc == 2 and "steps" in capsys.readouterr().err
    rc = anatplane(["finetune", "seg", "--data", str(tmp_path), "--init", "random", "--model-config",
                    str(tmp_path / "m.yaml"), "--grid", "64", "--spacing", "1.5", "--out", str(tmp_path / "o")])
    assert rc == 2 and "no usable labelled ACDC frame" in capsys.readouterr().err


def test_launcher_runs_classification(knee_root: Path, tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(TINY.to_yaml())
    out = tmp_path / "cls"
    proc = subprocess.run([sys.executable, str(REPO / "launch" / "finetune.py"), "cls", "--data", str(knee_root),
                           "--init", "random", "--model-config", str(tmp_path / "m.yaml"), "--grid", "32",
                           "--spacing", "1.5", "--labels", "all", "--seeds", "0", "--steps", "4", "--workers", "1", "--out", str(out)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    assert res["task"] == "cls" and res["counts"] == [6] and len(res["runs"]) == 1
    assert "AUC (mean)" in proc.stdout
