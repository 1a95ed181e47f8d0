"""``anatplane finetune`` and ``launch/finetune.py``: a two-arm experiment on the one engine."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from anatplane_dist.cli import main as anatplane
from anatplane_dist.model import ModelConfig
from tests.finetune.conftest import acdc_root, knee_root, publish_weights  # noqa: F401 (fixtures)

TINY = ModelConfig(name="unet", width=8, depth=3, loc_hidden=[16])
REPO = Path(__file__).resolve().parents[2]


def test_seg_cli_pretrained_vs_random(acdc_root: Path, tmp_path: Path, capsys) -> None:
    name_dir = publish_weights(tmp_path, TINY, grid=64, spacing=1.5)
    out = tmp_path / "ft"
    rc = anatplane(["finetune", "seg", "--data", str(acdc_root), "--pretrained", str(name_dir / "latest"),
                    "--out", str(out), "--labels", "1,all", "--seeds", "0", "--steps", "8", "--batch-size", "4",
                    "--workers", "1"])
    assert rc == 0
    split = json.loads((out / "split.json").read_text())
    # 6 subjects: 2 test (25%), 1 validation, a pool of 3; disjoint
    assert len(split["test"]) == 2 and len(split["val"]) == 1 and split["counts"] == [1, 3]
    assert not set(split["val"]) & (set(split["test"]) | set(split["pool"]))
    spec = json.loads((out / "experiment.json").read_text())
    assert spec["data"]["grid"] == 64 and spec["data"]["spacing"] == 1.5       # read from the shard manifest
    cells = {p.relative_to(out).as_posix(): json.loads(p.read_text()) for p in (out / "cells").glob("*/n*.json")}
    assert sorted(cells) == ["cells/pretrained/n001-seed0.json", "cells/pretrained/n003-seed0.json",
                             "cells/random/n001-seed0.json", "cells/random/n003-seed0.json"]
    assert {tuple(c["transferred"]) for c in cells.values()} == {(), ("encoder", "decoder")}
    assert all(c["select"] == "best-val" and c["val_history"] for c in cells.values())
    assert (out / "results.csv").is_file() and (out / "figures" / "curves.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "pretrained 1" not in printed and "| pretrained | 1 |" in printed and "undetermined (1 seed" in printed


def test_corrupted_weights_fail_before_any_run_trains(acdc_root: Path, tmp_path: Path, capsys) -> None:
    """issue 19 (e): a corrupted weights file used to fail only after every random-init run."""
    name_dir = publish_weights(tmp_path, TINY, grid=64, spacing=1.5)
    version = (name_dir / "latest").resolve()
    enc = version / "encoder.safetensors"
    data = bytearray(enc.read_bytes())
    data[-10] ^= 0xFF
    enc.write_bytes(bytes(data))
    out = tmp_path / "ft"
    rc = anatplane(["finetune", "seg", "--data", str(acdc_root), "--pretrained", str(version), "--out", str(out),
                    "--labels", "1", "--seeds", "0", "--steps", "4"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "verification" in err, err
    assert not (out / "cells").exists()


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
                    str(tmp_path / "m.yaml"), "--grid", "64", "--spacing", "1.5", "--out", str(tmp_path / "o2")])
    assert rc == 2 and "no usable labelled ACDC frame" in capsys.readouterr().err


def test_launcher_runs_classification(knee_root: Path, tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(TINY.to_yaml())
    out = tmp_path / "cls"
    proc = subprocess.run([sys.executable, str(REPO / "launch" / "finetune.py"), "cls", "--data", str(knee_root),
                           "--init", "random", "--model-config", str(tmp_path / "m.yaml"), "--grid", "32",
                           "--spacing", "1.5", "--labels", "all", "--seeds", "0", "--steps", "4", "--workers", "1",
                           "--val-subjects", "0", "--out", str(out)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    split = json.loads((out / "split.json").read_text())
    assert split["counts"] == [6] and len(list((out / "cells" / "random").glob("n*.json"))) == 1
    assert "AUC" in proc.stdout
