"""results.csv / statistics / results.md / figures from stored cell records (no training)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from anatplane_dist.experiment.figures import plot_curves, plot_paired
from anatplane_dist.experiment.report import render_report
from anatplane_dist.experiment.results import cell_stats, comparisons, load_results

TEST = ["p1", "p2", "p3", "p4"]
SEEDS = [0, 1, 2]


def _dice(arm: str, n: int, seed: int, subj: int) -> float:
    # a known table: multitask is exactly +0.1 (n=1) / +0.02 (n=4) above random everywhere
    base = 0.4 + 0.05 * n + 0.01 * seed + 0.02 * subj
    return base + ({1: 0.1, 4: 0.02}[n] if arm == "multitask" else 0.0)


def make_experiment(out: Path, failed: bool = False) -> Path:
    arms = [{"name": "random", "objective": None, "overrides": []},
            {"name": "multitask", "objective": "multitask", "overrides": []},
            {"name": "simclr", "objective": "simclr", "overrides": []}]
    spec = {"name": "synthetic", "task": "seg", "arms": arms, "workers": 1,
            "pretrain": {"config": "tiny.yaml", "overrides": [], "ranks": 1},
            "finetune": {"steps": 10, "batch_size": 2, "lr": 1e-3, "transfer": "encoder+decoder",
                         "select": "final", "val_every": 5},
            "protocol": {"labels": [1, 4], "seeds": SEEDS, "test_subjects": 4, "val_subjects": 0}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "experiment.json").write_text(json.dumps(spec))
    (out / "split.json").write_text(json.dumps({"test": TEST, "val": [], "pool": ["q1", "q2", "q3", "q4"]}))
    (out / "arms.json").write_text(json.dumps({
        "random": {"status": "random"}, "multitask": {"status": "ok"},
        "simclr": {"status": "failed", "reason": "pretraining exit 1: boom"}}))
    for arm in ("random", "multitask"):
        for n in (1, 4):
            for seed in SEEDS:
                rows = []
                for i, s in enumerate(TEST):
                    d = _dice(arm, n, seed, i)
                    for phase in ("ED", "ES"):
                        rows.append({"subject": s, "phase": phase, "dice": {"RV": d, "MYO": d, "LV": d},
                                     "hd95": {"RV": 5.0, "MYO": None, "LV": 3.0}})
                rec = {"arm": arm, "n_labelled": n, "seed": seed, "test": TEST, "rows": rows, "fingerprint": "x"}
                p = out / "cells" / arm / f"n{n:03d}-seed{seed}.json"
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text(json.dumps(rec))
    return out


def test_results_csv_has_one_row_per_arm_count_seed_subject_structure(tmp_path):
    out = make_experiment(tmp_path / "exp")
    render_report(out)
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[:7] == ["arm", "n_labelled", "seed", "subject", "structure", "dice", "hd95"]
    assert len(rows) == 2 * 2 * len(SEEDS) * len(TEST) * 3      # failed simclr has none
    keys = {(r["arm"], r["n_labelled"], r["seed"], r["subject"], r["structure"]) for r in rows}
    assert len(keys) == len(rows)
    r = next(r for r in rows if r["arm"] == "multitask" and r["n_labelled"] == "4" and r["seed"] == "2"
             and r["subject"] == "p3" and r["structure"] == "MYO")
    assert float(r["dice"]) == pytest.approx(_dice("multitask", 4, 2, 2), rel=1e-5)
    assert r["hd95"] == ""                                       # undefined in every frame


def test_cell_means_and_paired_differences_match_the_table(tmp_path):
    res = load_results(make_experiment(tmp_path / "exp"))
    stats = {(s.arm, s.n_labelled): s for s in cell_stats(res)}
    expect = np.mean([_dice("random", 1, s, i) for s in SEEDS for i in range(4)])
    assert stats[("random", 1)].metric.mean == pytest.approx(expect)
    assert stats[("random", 1)].metric.n == len(SEEDS)          # the replicate is the seed, not the pair
    assert stats[("random", 1)].hd95.mean == pytest.approx(4.0)        # mean of 5 and 3, the NaN skipped
    comps = comparisons(res, list(stats.values()))
    assert comps[("multitask", 1)].diff.mean == pytest.approx(0.1)
    # every pair differs by exactly +0.1: the CI collapses onto it and every seed wins
    assert comps[("multitask", 1)].diff.lo == pytest.approx(0.1)
    assert (comps[("multitask", 1)].wins, comps[("multitask", 1)].seeds) == (3, 3)
    assert comps[("multitask", 1)].diff.n == 3
    assert ("simclr", 1) not in comps


def test_an_unreadable_cell_is_a_failed_cell_and_its_row_says_so(tmp_path, capsys):
    """issue 19 (a): a cell JSON overwritten with junk was dropped silently (rc 0, a row's mean
    moved from 3 seeds to 2 unseen)."""
    from anatplane_dist.cli import main as anatplane

    out = make_experiment(tmp_path / "exp")
    (out / "cells" / "multitask" / "n001-seed1.json").write_text("{not json")
    assert anatplane(["experiment", "report", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "unreadable" in printed and "n001-seed1.json" in printed
    md = (out / "results.md").read_text()
    assert "## Failed cells" in md and "multitask n=1 seed=1: unreadable cell file" in md
    row = next(l for l in md.splitlines() if l.startswith("| multitask | 1 |"))
    assert "| 2 (1 unreadable) |" in row


def test_results_md_names_the_failed_arm_the_selection_and_reads_each_count(tmp_path):
    out = make_experiment(tmp_path / "exp")
    render_report(out)
    md = (out / "results.md").read_text()
    assert "`simclr`: pretraining exit 1: boom" in md
    assert "final model after the fixed schedule" in md
    assert "- n=1: highest mean multitask" in md
    assert "+0.100 [+0.100, +0.100], wins 3/3 (undetermined (3 seeds: a seed-level interval needs 5))" in md
    assert "- n=4:" in md


def test_curves_figure_draws_the_cell_means_and_ci_bands(tmp_path):
    res = load_results(make_experiment(tmp_path / "exp"))
    stats = cell_stats(res)
    fig = plot_curves(stats, tmp_path / "c.png", metric="Dice")
    ax = fig.axes[0]
    lines = {l.get_label(): l for l in ax.get_lines()}
    for arm in ("random", "multitask"):
        want = [s.metric.mean for s in sorted((s for s in stats if s.arm == arm), key=lambda s: s.n_labelled)]
        assert list(lines[arm].get_xdata()) == [1, 4]
        assert np.allclose(lines[arm].get_ydata(), want)
    bands = [c for c in ax.collections if isinstance(c, matplotlib.collections.PolyCollection)]
    assert len(bands) == 2
    ys = bands[1].get_paths()[0].vertices[:, 1]
    mt = [s for s in stats if s.arm == "multitask"]
    assert np.isclose(ys.min(), min(s.metric.lo for s in mt)) and np.isclose(ys.max(), max(s.metric.hi for s in mt))
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_paired_figure_puts_each_difference_at_its_value(tmp_path):
    res = load_results(make_experiment(tmp_path / "exp"))
    comps = comparisons(res, cell_stats(res))
    fig = plot_paired(comps, tmp_path / "p.png", metric="Dice")
    bars = next(c for c in fig.axes[0].containers if c.get_label() == "multitask")
    assert np.allclose(bars.lines[0].get_ydata(), [0.1, 0.02])


def _add_arm(out: Path, name: str, shift: float, seeds: list[int]) -> None:
    """A third arm whose every Dice is multitask's minus ``shift`` (so multitask - it = +shift)."""
    spec = json.loads((out / "experiment.json").read_text())
    spec["arms"].append({"name": name, "objective": "rotation", "overrides": []})
    spec["protocol"]["seeds"] = seeds
    (out / "experiment.json").write_text(json.dumps(spec))
    arms = json.loads((out / "arms.json").read_text())
    arms[name] = {"status": "ok"}
    (out / "arms.json").write_text(json.dumps(arms))
    for src in sorted((out / "cells" / "multitask").glob("*.json")):
        rec = json.loads(src.read_text())
        rec["arm"] = name
        for row in rec["rows"]:
            row["dice"] = {k: v - shift for k, v in row["dice"].items()}
        dst = out / "cells" / name / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(json.dumps(rec))


def test_every_arm_is_also_compared_with_a_named_baseline_arm_paired_per_seed(tmp_path):
    """protocol.compare_to / report --vs: e.g. the anatomy pretexts against a generic SSL baseline,
    with the same seed-level statistics and verdict rule as against random."""
    out = make_experiment(tmp_path / "exp")
    _add_arm(out, "rotation", 0.03, SEEDS)
    res = load_results(out)
    stats = cell_stats(res)
    vs = comparisons(res, stats, against="rotation")
    assert set(vs) == {("multitask", 1), ("multitask", 4)}        # random and rotation itself: not rows
    for p in vs.values():
        assert p.diff.mean == pytest.approx(0.03) and p.wins == len(SEEDS)
    assert comparisons(res, stats)[("rotation", 1)].diff.mean == pytest.approx(0.1 - 0.03)
    render_report(out, against=["rotation"])
    md = (out / "results.md").read_text()
    assert "## Against rotation (per-seed paired difference, as against random)" in md
    row = next(line for line in md.splitlines() if line.startswith("| multitask | 1 | +0.030"))
    assert "undetermined (3 seeds" in row                        # 3 seeds cannot carry a verdict


def test_compare_to_names_pretrained_arms_of_the_experiment(tmp_path):
    from anatplane_dist.experiment.spec import SpecError

    out = make_experiment(tmp_path / "exp")
    with pytest.raises(SpecError, match=r"--vs: \['rotaton'\] are not pretrained arms"):
        render_report(out, against=["rotaton"])
    with pytest.raises(SpecError, match=r"--vs: \['random'\]"):
        render_report(out, against=["random"])
