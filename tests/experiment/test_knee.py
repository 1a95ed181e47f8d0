"""Knee classification through the same runner: AUC rows, subject-bootstrap CI, too-small test sets."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from anatplane_dist.experiment.report import render_report
from anatplane_dist.experiment.runner import run_experiment
from anatplane_dist.experiment.spec import load_spec
from anatplane_dist.experiment.stats import auc


def _spec(path: Path, data: dict, test_subjects: int) -> Path:
    path.write_text(yaml.safe_dump({
        "name": path.stem, "task": "cls", "data": {**data, "grid": 32, "spacing": 5.0},
        "arms": [{"name": "random"}], "finetune": {"steps": 6, "batch_size": 2, "lr": 1e-3},
        "protocol": {"labels": [2], "seeds": [0, 1], "test_subjects": test_subjects}, "workers": 1}))
    return path


@pytest.fixture(scope="module")
def knee_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("knee")
    cfg = _spec(tmp / "knee.yaml", {"phantom": {"kind": "knee", "pretrain_subjects": 2, "labelled_subjects": 12,
                                                "size": 48}}, test_subjects=8)
    out = tmp / "out"
    run_experiment(load_spec(cfg), out, log=lambda _m: None)
    render_report(out)
    return tmp, out


def test_auc_rows_are_the_auc_of_the_stored_probabilities(knee_run):
    _, out = knee_run
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    labels = json.loads((out / "cells" / "random" / "n002-seed0.json").read_text())["train_config"]["label_names"]
    split = json.loads((out / "split.json").read_text())
    for seed in ("0", "1"):
        for name in labels:
            per = [r for r in rows if r["seed"] == seed and r["structure"] == name and r["subject"] != "ALL"]
            assert sorted(r["subject"] for r in per) == split["test"]
            want = auc(np.array([int(r["label"]) for r in per]), np.array([float(r["prob"]) for r in per]))
            got = next(r for r in rows if r["seed"] == seed and r["structure"] == name and r["subject"] == "ALL")
            if np.isfinite(want):
                assert float(got["auc"]) == pytest.approx(want, abs=1e-5)
            else:
                assert got["auc"] == ""
    md = (out / "results.md").read_text()
    assert "| random | 2 | 2 |" in md and "hierarchical percentile bootstrap (seeds, then test subjects" in md


def test_a_test_set_too_small_for_auc_says_so(knee_run):
    tmp, out = knee_run
    data = json.loads((out / "data.json").read_text())
    cfg = _spec(tmp / "tiny.yaml", {"pretrain_shards": data["pretrain_shards"], "finetune": data["finetune"]},
                test_subjects=1)
    small = tmp / "small"
    run_experiment(load_spec(cfg), small, log=lambda _m: None)
    render_report(small)
    md = (small / "results.md").read_text()
    assert "test set too small for AUC" in md
    assert "| random | 2 | 2 | n/a |" in md
