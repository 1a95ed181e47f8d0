"""experiments/smoke.yaml end to end through the CLI (slow: ~4 min on 2 loaded cores)."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_smoke_preset_runs_end_to_end_and_reports(tmp_path):
    out = tmp_path / "smoke"
    proc = subprocess.run([sys.executable, "-m", "anatplane_dist.cli", "experiment", "run",
                           str(REPO / "experiments" / "smoke.yaml"), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    spec = yaml.safe_load((REPO / "experiments" / "smoke.yaml").read_text())
    arms = json.loads((out / "arms.json").read_text())
    assert all(a["status"] in ("ok", "random") for a in arms.values())
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    p = spec["protocol"]
    assert len(rows) == len(spec["arms"]) * len(p["labels"]) * len(p["seeds"]) * p["test_subjects"] * 3
    md = (out / "results.md").read_text()
    for n in p["labels"]:
        assert f"- n={n}: highest mean" in md
    for fig in ("curves", "paired", "overlays", "heatmaps-multitask"):
        assert f"figures/{fig}.png" in md and (out / "figures" / f"{fig}.png").stat().st_size > 5000
    preds = sorted((out / "cells").rglob("*_pred.nii.gz"))
    assert len(preds) == len(spec["arms"]) * len(p["labels"]) * len(p["seeds"]) * p["test_subjects"] * 2
