"""The low-label protocol: splits, nested subsets, the runner's outputs, caching."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anatplane_dist.experiment.lowlabel import (
    ClsTask,
    LabelCountError,
    ProtocolConfig,
    SegTask,
    label_counts,
    labelled_subset,
    plot_results,
    run_protocol,
    split_subjects,
)
from anatplane_dist.finetune.backbone import BackboneFactory
from anatplane_dist.finetune.classification import ClsTrainConfig
from anatplane_dist.finetune.data import GridSpec, load_acdc, load_knee
from anatplane_dist.finetune.segmentation import SegTrainConfig
from anatplane_dist.model import ModelConfig

TINY = ModelConfig(name="unet", width=8, depth=3)


def test_split_is_seeded_disjoint_and_keeps_a_pool() -> None:
    ids = [f"p{i:02d}" for i in range(10)]
    pool, test = split_subjects(ids, 0.25, split_seed=0)
    assert len(test) == 3 and len(pool) == 7 and not set(pool) & set(test)
    assert sorted(pool + test) == ids
    assert split_subjects(list(reversed(ids)), 0.25, 0) == (pool, test)      # order-independent
    assert split_subjects(ids, 0.25, 1) != (pool, test)
    assert split_subjects(["a", "b"], 0.9, 0)[0] != []                      # never an empty pool
    with pytest.raises(ValueError, match="at least 2"):
        split_subjects(["a"], 0.25, 0)


def test_label_counts_and_nested_subsets() -> None:
    assert label_counts(["1", "2", "4", "all"], 6) == [1, 2, 4, 6]
    assert label_counts(["8", "all"], 8) == [8]
    with pytest.raises(LabelCountError, match="16 does not fit the 6 labelled subjects"):
        label_counts(["16"], 6)
    with pytest.raises(LabelCountError, match="0 does not fit"):
        label_counts(["0", "2"], 6)
    pool = [f"p{i}" for i in range(8)]
    subsets = [labelled_subset(pool, n, seed=3) for n in (1, 2, 4, 8)]
    for small, big in zip(subsets, subsets[1:]):
        assert set(small) < set(big)
    assert labelled_subset(pool, 4, seed=3) != labelled_subset(pool, 4, seed=4)
    with pytest.raises(ValueError):
        ProtocolConfig(labels=["0"])
    with pytest.raises(ValueError):
        ProtocolConfig(inits=["imagenet"])


_random_backbone = BackboneFactory(model_config=TINY, num_channels=2)


def test_segmentation_protocol_outputs_and_resume(acdc_root: Path, tmp_path: Path) -> None:
    subjects, skips = load_acdc(acdc_root, GridSpec(64, 1.5))
    task = SegTask(subjects, SegTrainConfig(steps=15, batch_size=4))
    with pytest.raises(LabelCountError, match="16 does not fit"):   # refused up front, nothing written
        run_protocol(task, ProtocolConfig(labels=["1", "16"], seeds=[0], inits=["random"]), _random_backbone,
                     tmp_path / "refused", log=lambda m: None)
    assert not (tmp_path / "refused").exists()
    cfg = ProtocolConfig(labels=["1", "2", "all"], seeds=[0, 1], inits=["random"])
    out = tmp_path / "ft"
    logs: list[str] = []
    res = run_protocol(task, cfg, _random_backbone, out, skipped=skips, provenance={"grid": [64, 1.5]},
                       log=logs.append)
    assert res["counts"] == [1, 2, 4]                  # 6 subjects: 2 test, pool of 4; 16 does not fit
    assert len(res["split"]["test"]) == 2 and len(res["runs"]) == 6
    for run in res["runs"]:
        assert len(run["train"]) == run["n_labelled"] and not set(run["train"]) & set(res["split"]["test"])
        assert len(run["rows"]) == 4                   # 2 test subjects x (ED, ES)
        assert 0.0 <= run["summary"]["dice_mean"] <= 1.0
    assert [(r["init"], r["n_labelled"], r["runs"]) for r in res["table"]] == [("random", 1, 2), ("random", 2, 2),
                                                                               ("random", 4, 2)]
    def strict(c: str) -> None:
        raise ValueError(f"non-standard JSON constant {c}")
    on_disk = json.loads((out / "results.json").read_text(), parse_constant=strict)   # NaN is written as null
    assert [r["init"] for r in on_disk["table"]] == [r["init"] for r in res["table"]]
    assert on_disk["table"][0]["dice_mean"] == pytest.approx(res["table"][0]["dice_mean"])
    md = (out / "results.md").read_text()
    assert "| random | 4 | 2 |" in md and "Dice (mean)" in md
    with Image.open(out / "results.png") as im:
        assert im.size[0] > 300 and im.size[1] > 200
    # the curve drawn is the table: one point per count at the mean over seeds
    line = next(l for l in plot_results(res, tmp_path / "again.png").axes[0].get_lines() if l.get_label() == "random")
    assert list(line.get_xdata()) == [1, 2, 4]
    assert np.allclose(line.get_ydata(), [r["dice_mean"] for r in res["table"]])
    assert len(list((out / "runs").glob("*.json"))) == 6
    # same question again: every run comes from the cache
    logs.clear()
    run_protocol(task, cfg, _random_backbone, out, skipped=skips, provenance={"grid": [64, 1.5]}, log=logs.append)
    assert sum("(cached)" in line for line in logs) == 6
    # another schedule is another question: nothing reused
    logs.clear()
    task2 = SegTask(subjects, SegTrainConfig(steps=5, batch_size=4))
    run_protocol(task2, ProtocolConfig(labels=["1"], seeds=[0], inits=["random"]), _random_backbone, out,
                 log=logs.append)
    assert not any("(cached)" in line for line in logs)


def test_undefined_metrics_are_null_in_json_and_na_in_markdown(knee_root: Path, tmp_path: Path) -> None:
    """A test split with one class only: AUC is undefined, never a made-up 0.5."""
    stacks, names, _ = load_knee(knee_root, GridSpec(32, 1.5))
    for s in stacks:
        s.labels["acl"] = 1
    task = ClsTask(stacks, names, ClsTrainConfig(steps=2, stacks_per_step=1))
    out = tmp_path / "nan"
    res = run_protocol(task, ProtocolConfig(labels=["1"], seeds=[0], inits=["random"]), _random_backbone, out,
                       log=lambda _: None)
    assert res["runs"][0]["summary"]["auc_acl"] != res["runs"][0]["summary"]["auc_acl"]       # NaN in memory
    on_disk = json.loads((out / "runs" / "random-n001-seed0.json").read_text())
    assert on_disk["summary"]["auc_acl"] is None
    assert "| n/a |" in (out / "results.md").read_text()
    logs: list[str] = []
    run_protocol(task, ProtocolConfig(labels=["1"], seeds=[0], inits=["random"]), _random_backbone, out,
                 log=logs.append)                   # the cached file (with nulls) is read back
    assert any("(cached)" in line for line in logs)


def test_classification_protocol(knee_root: Path, tmp_path: Path) -> None:
    stacks, names, skips = load_knee(knee_root, GridSpec(32, 1.5))
    task = ClsTask(stacks, names, ClsTrainConfig(steps=10, stacks_per_step=2))
    res = run_protocol(task, ProtocolConfig(labels=["2", "all"], seeds=[0], inits=["random"]), _random_backbone,
                       tmp_path / "cls", log=lambda _: None)
    assert res["metric"] == "auc_mean" and res["counts"] == [2, 6]
    for run in res["runs"]:
        assert set(run["summary"]) >= {"auc_abnormal", "acc_abnormal", "auc_mean", "acc_mean"}
        assert [r["subject"] for r in run["rows"]] == res["split"]["test"]
    assert "AUC abnormal" in (tmp_path / "cls" / "results.md").read_text()


def test_worker_processes_give_the_same_results(acdc_root: Path, tmp_path: Path) -> None:
    """Runs are seeded and independent: two spawned workers reproduce the in-process numbers."""
    subjects, _ = load_acdc(acdc_root, GridSpec(64, 1.5))
    task = SegTask(subjects, SegTrainConfig(steps=6, batch_size=4))
    cfg = ProtocolConfig(labels=["1", "2"], seeds=[0], inits=["random"])
    one = run_protocol(task, cfg, _random_backbone, tmp_path / "one", workers=1, log=lambda _: None)
    two = run_protocol(task, cfg, _random_backbone, tmp_path / "two", workers=2, log=lambda _: None)
    assert [r["n_labelled"] for r in two["runs"]] == [1, 2]           # protocol order, not finish order
    for a, b in zip(one["runs"], two["runs"]):
        assert a["fingerprint"] == b["fingerprint"]
        assert a["summary"]["dice_mean"] == pytest.approx(b["summary"]["dice_mean"], abs=1e-6)
        assert a["final_loss"] == pytest.approx(b["final_loss"], rel=1e-5)



def test_default_counts_follow_the_pool() -> None:
    assert label_counts(["auto"], 3) == [1, 2, 3]
    assert label_counts(["auto"], 20) == [1, 2, 4, 8, 20]
