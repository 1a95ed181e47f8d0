"""The runner end to end on a tiny cohort: failing arms, refusals, caching, SIGKILL resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from anatplane_dist.cli import main as anatplane
from anatplane_dist.experiment.draws import draw_split, draw_subsets
from anatplane_dist.experiment.runner import run_experiment
from anatplane_dist.experiment.spec import SpecError, load_spec
from tests.experiment.conftest import write_spec

REPO = Path(__file__).resolve().parents[2]


def _cells(out: Path) -> dict[str, dict]:
    return {str(p.relative_to(out)): json.loads(p.read_text()) for p in sorted((out / "cells").rglob("n*-seed*.json"))}


def test_subsets_differ_per_seed_and_nest_across_counts():
    pool = [f"s{i:02d}" for i in range(20)]
    a, b = draw_subsets(pool, [1, 2, 4, 8], 0), draw_subsets(pool, [1, 2, 4, 8], 1)
    for small, big in ((1, 2), (2, 4), (4, 8)):
        assert set(a[small]) <= set(a[big]) and set(b[small]) <= set(b[big])
    assert a[8] != b[8]
    split = draw_split(pool, 5, 2, 0)
    assert len(split["test"]) == 5 and len(split["val"]) == 2 and len(split["pool"]) == 13
    assert not set(split["test"]) & set(split["pool"]) and not set(split["val"]) & set(split["pool"])


def test_label_count_larger_than_the_pool_is_refused_before_anything_runs(tmp_path, tiny_data):
    spec = load_spec(write_spec(tmp_path / "big.yaml", tiny_data, protocol={"labels": [1, 8]},
                                arms=[{"name": "random"}, {"name": "multitask", "objective": "multitask"}]))
    with pytest.raises(SpecError, match=r"protocol.labels \[8\] exceed the labelled pool of 4"):
        run_experiment(spec, tmp_path / "out", log=lambda _m: None)
    assert not (tmp_path / "out" / "arms").exists()


def test_unknown_objective_or_override_typo_is_refused_before_any_data_is_written(tmp_path, capsys):
    """issue 19 (f): both were found only after the phantom data had been written."""
    for arm, want in (({"name": "x", "objective": "no-such-objective"}, "arms.x: objective.name"),
                      ({"name": "x", "objective": "multitask", "overrides": ["trian.epochs=3"]},
                       "arms.x: unknown config key trian.epochs")):
        cfg = tmp_path / "bad.yaml"
        cfg.write_text(yaml.safe_dump({"name": "bad", "task": "seg", "arms": [{"name": "random"}, arm],
                                       "data": {"phantom": {"kind": "heart", "pretrain_subjects": 2,
                                                            "labelled_subjects": 9, "size": 64}}}))
        out = tmp_path / "out"
        assert anatplane(["experiment", "run", str(cfg), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and want in err, err
        assert not (out / "data").exists()


def test_spec_type_errors_name_the_key_in_one_line(tmp_path, tiny_data, capsys):
    """issue 19 (d): ``workers: abc`` was a 17-line traceback, ``finetune.steps: abc`` a
    comparison error naming no key."""
    for changes, want in (({"workers": "abc"}, "workers: expected an integer"),
                          ({"finetune": {"steps": "abc"}}, "finetune.steps: expected an integer"),
                          ({"finetune": {"lr": "fast"}}, "finetune.lr: expected a number")):
        bad = write_spec(tmp_path / "typed.yaml", tiny_data, **changes)
        assert anatplane(["experiment", "run", str(bad), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and want in err, err


def test_spec_refusals_are_one_line_errors(tmp_path, tiny_data, capsys):
    bad = write_spec(tmp_path / "norandom.yaml", tiny_data, arms=[{"name": "multitask", "objective": "multitask"}])
    assert anatplane(["experiment", "run", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'random' arm" in err
    sel = write_spec(tmp_path / "sel.yaml", tiny_data, finetune={"select": "best-val"},
                     protocol={"val_subjects": 0})
    with pytest.raises(SpecError, match="best-val needs protocol.val_subjects"):
        load_spec(sel)


def test_failed_arm_is_reported_and_the_grid_goes_on_then_cells_are_cached(tmp_path, tiny_data):
    # a configuration the trainer accepts but cannot run (9 poolings of a 40 px grid)
    broken = [{"name": "random"}, {"name": "broken", "objective": "multitask", "overrides": ["model.depth=9"]}]
    cfg = write_spec(tmp_path / "fail.yaml", tiny_data, arms=broken)
    out = tmp_path / "out"
    assert anatplane(["experiment", "run", str(cfg), "--out", str(out)]) == 1     # an arm failed
    arms = json.loads((out / "arms.json").read_text())
    assert arms["broken"]["status"] == "failed" and "pretraining exit" in arms["broken"]["reason"]
    cells = _cells(out)
    assert sorted(cells) == [f"cells/random/n00{n}-seed{s}.json" for n in (1, 2) for s in (0, 1)]
    md = (out / "results.md").read_text()
    assert "## Failed arms" in md and "`broken`" in md
    split = json.loads((out / "split.json").read_text())
    for rec in cells.values():                  # subsets recorded, drawn from the pool, test fixed
        assert rec["test"] == split["test"] and set(rec["train"]) <= set(split["pool"])
        assert rec["train"] == split["subsets"][str(rec["seed"])][str(rec["n_labelled"])]
        assert rec["predictions"] and all((out / "cells" / "random" / f"n{rec['n_labelled']:03d}-seed{rec['seed']}"
                                           / p).is_file() for p in rec["predictions"])
    mtimes = {p: (out / p).stat().st_mtime_ns for p in cells}
    summary = run_experiment(load_spec(cfg), out, log=lambda _m: None)
    assert summary["cells_run"] == 0 and summary["cells_cached"] == 4
    assert {p: (out / p).stat().st_mtime_ns for p in cells} == mtimes
    # a changed fine-tune schedule is a different question: every cell runs again
    changed = write_spec(tmp_path / "fail.yaml", tiny_data, finetune={"steps": 9}, arms=broken)
    assert run_experiment(load_spec(changed), out, log=lambda _m: None)["cells_run"] == 4


def test_resume_after_sigkill_reruns_no_finished_cell_and_gives_the_same_results(tmp_path, tiny_data):
    cfg = write_spec(tmp_path / "kill.yaml", tiny_data, finetune={"steps": 30})
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "anatplane_dist.cli", "experiment", "run", str(cfg),
                             "--out", str(out)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 900    # pretraining first: minutes on 2 loaded cores
    while time.monotonic() < deadline and proc.poll() is None and len(list((out / "cells").rglob("*.json"))) < 1:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _cells(out)
    assert 1 <= len(before) < 4, f"the kill must land mid-grid ({len(before)} cells done, runner rc {proc.returncode})"
    mtimes = {p: (out / p).stat().st_mtime_ns for p in before}
    summary = run_experiment(load_spec(cfg), out, log=lambda _m: None)
    assert summary["cells_cached"] == len(before) and summary["cells_run"] == 4 - len(before)
    assert all((out / p).stat().st_mtime_ns == t for p, t in mtimes.items())
    fresh = tmp_path / "fresh"
    run_experiment(load_spec(cfg), fresh, log=lambda _m: None)
    a, b = _cells(out), _cells(fresh)
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k]["summary"] == b[k]["summary"], k            # deterministic: resumed == uninterrupted


@pytest.mark.slow
def test_changed_arm_reruns_only_its_cells(tmp_path, tiny_data):
    arms = [{"name": "random"}, {"name": "multitask", "objective": "multitask"}]
    cfg = write_spec(tmp_path / "arm.yaml", tiny_data, arms=arms, protocol={"labels": [1], "seeds": [0]})
    out = tmp_path / "out"
    first = run_experiment(load_spec(cfg), out, log=lambda _m: None)
    assert first["arms"]["multitask"]["status"] == "ok", first["arms"]
    assert first["cells_run"] == 2
    arms[1]["overrides"] = ["optim.base_lr=1.0e-3"]
    cfg = write_spec(tmp_path / "arm.yaml", tiny_data, arms=arms, protocol={"labels": [1], "seeds": [0]})
    second = run_experiment(load_spec(cfg), out, log=lambda _m: None)
    assert second["cells_cached"] == 1 and second["cells_run"] == 1       # random kept, multitask rerun
    assert second["arms"]["multitask"]["published"] != first["arms"]["multitask"]["published"]
    # the heatmap figure of a real published network: its ground truth on the plane intersection
    from anatplane_dist.experiment.figures import heatmap_panels
    from tests.experiment.test_figures_content import assert_ridge_on_plane

    panels = heatmap_panels(second["arms"]["multitask"]["published"], tiny_data[0], count=2)
    assert len(panels) == 2 and panels[0]["pred"].shape == panels[0]["gt"].shape
    from anatplane_dist.experiment.heatmaps import read_validation_samples

    meta = read_validation_samples(tiny_data[0])[panels[0]["key"]]["meta"]
    c = int(np.argmax(panels[0]["valid"]))
    assert_ridge_on_plane(panels[0]["gt"][c], meta["grid"], meta["references"][c]["plane"], tol_mm=5.0)
    # the pretext on training vs held-out subjects: both heads measured on both sides
    from anatplane_dist.experiment.pretext_fit import pretext_fit

    fit = pretext_fit(second["arms"]["multitask"]["published"], tiny_data[0], count=32)
    for part in ("train", "held_out"):
        assert set(fit[part]) == {"angle_err_deg", "loc_mae"}, fit
        assert 0 <= fit[part]["angle_err_deg"] <= 90 and 0 <= fit[part]["loc_mae"] <= 1.5, fit


def test_best_val_selection_is_recorded_and_named_in_the_report(tmp_path, tiny_data):
    from anatplane_dist.experiment.report import render_report

    cfg = write_spec(tmp_path / "bv.yaml", tiny_data, finetune={"select": "best-val", "val_every": 4},
                     protocol={"labels": [1], "seeds": [0]})
    out = tmp_path / "out"
    run_experiment(load_spec(cfg), out, log=lambda _m: None)
    rec = _cells(out)["cells/random/n001-seed0.json"]
    assert [s for s, _ in rec["val_history"]] == [4, 8]
    best = max(v for _, v in rec["val_history"])
    assert rec["selected_step"] == max(s for s, v in rec["val_history"] if v == best)
    assert set(rec["val"]).isdisjoint(rec["train"]) and set(rec["val"]).isdisjoint(rec["test"])
    render_report(out)
    assert "**best on validation**" in (out / "results.md").read_text()


def test_a_timed_out_arm_launcher_takes_its_ranks_along(tmp_path):
    """A launcher killed on timeout must not leave ranks behind (they would hold the run lock)."""
    from anatplane_dist.experiment.arms import _run_group
    pid_file = tmp_path / "child.pid"
    code = ("import subprocess, sys, time; "
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            f"open({str(pid_file)!r}, 'w').write(str(c.pid)); time.sleep(60)")
    with open(tmp_path / "log", "wb") as log:
        assert _run_group([sys.executable, "-c", code], dict(os.environ), log, timeout_s=3) == -1
    child = int(pid_file.read_text())
    time.sleep(0.2)
    state = Path(f"/proc/{child}/stat").read_text().split()[2] if Path(f"/proc/{child}").exists() else "gone"
    assert state in ("gone", "Z"), state
