"""The engine's protocol pieces: stratified draws, device slots, schedules, the seed as the
replicate, LR search + best-val on a tiny cell, device/worker invariance, lock, Ctrl-C."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from anatplane_dist.experiment.cell import still_rising
from anatplane_dist.experiment.draws import draw_split, draw_subsets, stratified_permutation
from anatplane_dist.experiment.runner import resolve_devices, run_experiment
from anatplane_dist.experiment.spec import SpecError, load_spec
from anatplane_dist.experiment.stats import (
    hierarchical_mean,
    paired_difference,
    paired_seed_difference,
    verdict,
)
from anatplane_dist.finetune.schedules import named_schedule
from tests.experiment.conftest import write_spec
from tests.sigint import sigint_default

REPO = Path(__file__).resolve().parents[2]


# -- draws -----------------------------------------------------------------------------------

def test_stratified_draws_spread_small_subsets_over_the_groups_and_stay_nested():
    groups = {f"s{i:02d}": "NOR DCM HCM MINF RV".split()[i % 5] for i in range(30)}
    ids = sorted(groups)
    for seed in range(20):
        order = stratified_permutation(ids, groups, np.random.default_rng(seed))
        assert sorted(order) == ids
        assert len({groups[s] for s in order[:5]}) == 5           # 5 draws: one of each group
    split = draw_split(ids, 10, 5, 0, groups=groups)
    assert sorted(groups[s] for s in split["test"]) == sorted("NOR DCM HCM MINF RV".split() * 2)
    assert len({groups[s] for s in split["val"]}) == 5
    sub = draw_subsets(split["pool"], [1, 2, 5, 10], 3, groups)
    for small, big in ((1, 2), (2, 5), (5, 10)):
        assert set(sub[small]) < set(sub[big])
    assert len({groups[s] for s in sub[2]}) == 2 and len({groups[s] for s in sub[5]}) == 5
    assert len({tuple(draw_subsets(split["pool"], [5], s, groups)[5]) for s in range(6)}) > 1


# -- devices -----------------------------------------------------------------------------------

def test_device_slots_on_a_cpu_machine():
    assert resolve_devices("cpu", 3, 2) == ["cpu"] * 3
    if not torch.cuda.is_available():
        assert resolve_devices("auto", 2, 4) == ["cpu", "cpu"]
        with pytest.raises(SpecError, match="cuda:0 is not available"):
            resolve_devices("cuda:0,cuda:1", 1, 2)
    assert resolve_devices("cpu,cpu", 1, 3) == ["cpu", "cpu"]
    with pytest.raises(SpecError, match="not cpu, cuda or cuda:N"):
        resolve_devices("tpu:0", 1, 1)


# -- schedules and one-home helpers ------------------------------------------------------------

def test_paper_schedule_counts_epochs_of_the_labelled_slices_and_halves_every_50():
    s = named_schedule("paper")
    assert (s.optimizer, s.lr, s.batch_size) == ("adam", 1e-3, 10)
    assert s.total_steps(20) == 1000                         # 500 epochs x 20 slices / batch 10
    assert s.lr_at(0, 20) == pytest.approx(1e-3) and s.lr_at(99, 20) == pytest.approx(1e-3)
    assert s.lr_at(100, 20) == pytest.approx(5e-4) and s.lr_at(999, 20) == pytest.approx(1e-3 * 0.5 ** 9)
    c = named_schedule("steps", steps=10, lr=1.0, warmup_steps=2)
    assert [round(c.lr_at(i, 5), 4) for i in (0, 1, 2)] == [0.5, 1.0, 1.0] and c.lr_at(10, 5) == 0.0
    with pytest.raises(ValueError, match="unknown schedule"):
        named_schedule("fast")


def test_fine_tune_cosine_is_the_old_lambda_lr_and_pretraining_schedule_unchanged():
    from anatplane_dist.train.schedule import LRSchedule, warmup_cosine

    steps = 37
    old = [0.5 * (1 + math.cos(math.pi * min(k, steps) / steps)) for k in range(steps + 3)]
    assert np.allclose([warmup_cosine(k, steps) for k in range(steps + 3)], old)
    sch = LRSchedule(peak=2.0, total_steps=50, warmup_steps=5, min_lr=0.1)
    ref = [2.0 * (k + 1) / 5 if k < 5 else 0.1 + 1.9 * 0.5 * (1 + math.cos(math.pi * min(1, (k - 5) / 45)))
           for k in range(55)]
    assert np.allclose([sch(k) for k in range(55)], ref)


def test_rotate_scale_is_the_old_fine_tune_augmentation():
    import torch.nn.functional as F

    from anatplane_dist.data.augment import rotate_scale

    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 16, 16, generator=g)
    ang, s = torch.tensor([0.1, -0.2, 0.25]), torch.tensor([1.05, 0.93, 1.0])
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
    z = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, z], -1), torch.stack([sin, cos, z], -1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    want = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    assert torch.equal(rotate_scale(x, ang, s), want)


# -- statistics: the seed is the replicate ------------------------------------------------------

def test_seed_level_interval_is_wide_when_seeds_disagree_however_many_subjects():
    # every subject agrees within a seed; the five seeds (five models) disagree in sign
    per_seed = {0: 0.10, 1: 0.08, 2: -0.07, 3: 0.09, 4: -0.06}
    arm = {(s, j): 0.6 + d + 0.001 * j for s, d in per_seed.items() for j in range(40)}
    ref = {(s, j): 0.6 + 0.001 * j for s in per_seed for j in range(40)}
    pairs = paired_difference(arm, ref)                     # the old, pseudo-replicated unit
    assert pairs.diff.lo > 0 and pairs.p < 1e-6              # it claimed a clear gain
    seeds = paired_seed_difference(arm, ref)
    assert seeds.diff.mean == pytest.approx(np.mean(list(per_seed.values())))
    assert seeds.diff.lo < 0 < seeds.diff.hi and (seeds.wins, seeds.seeds) == (3, 5)
    assert verdict(seeds) == "no clear difference from random"
    one = paired_seed_difference({k: v for k, v in arm.items() if k[0] == 0}, ref)
    assert verdict(one).startswith("undetermined (1 seed")
    same = {k: v + 0.1 for k, v in ref.items()}
    assert verdict(paired_seed_difference(same, ref)) == "better than random"
    three = {k: v for k, v in same.items() if k[0] < 3}
    assert verdict(paired_seed_difference(three, ref)).startswith("undetermined (3 seeds")
    est = hierarchical_mean({0: [0.5, 0.5], 1: [0.7, 0.7]})
    assert est.n == 2 and est.mean == pytest.approx(0.6) and (est.lo, est.hi) == pytest.approx((0.5, 0.7))


def test_still_rising_flags_a_curve_that_improves_in_its_last_quarter():
    assert still_rising([(i, v) for i, v in enumerate([0.1, 0.3, 0.5, 0.6, 0.62, 0.61, 0.62, 0.62])]) is False
    assert still_rising([(i, v) for i, v in enumerate([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])]) is True
    assert still_rising([(0, 0.1), (1, 0.2)]) is None


# -- tiny cells ----------------------------------------------------------------------------------

def _cells(out: Path) -> dict[str, dict]:
    return {p.relative_to(out).as_posix(): json.loads(p.read_text()) for p in sorted((out / "cells").rglob("n*.json"))}


def test_lr_chosen_on_validation_with_best_val_and_widened_at_the_edge(tmp_path, tiny_data):
    cfg = write_spec(tmp_path / "lr.yaml", tiny_data, protocol={"labels": [1], "seeds": [0, 1]},
                     finetune={"select": "best-val", "val_every": 4, "steps": 8, "lr_grid": [3e-4, 3e-3],
                               "lr_seeds": 1, "lr_widen": 1, "warmup_steps": 2})
    out = tmp_path / "out"
    summary = run_experiment(load_spec(cfg), out, log=lambda _m: None)
    lr = json.loads((out / "lr.json").read_text())["arms"]["random"]["1"]
    scores = {float(k): v for k, v in lr["scores"].items()}
    assert len(scores) == 3                                  # the 2-point grid widened once at its edge
    assert lr["chosen"] == max(scores, key=scores.get)
    cells = _cells(out)
    search = {k: v for k, v in cells.items() if "/lr-search/" in k}
    assert len(search) == 3 and all(c["seed"] == 0 for c in search.values())
    for c in search.values():                                # chosen on validation, never on test
        assert c["val_best"] == pytest.approx(max(v for _, v in c["val_history"]))
        assert scores[c["lr"]] == pytest.approx(c["val_best"])
    main = {k: v for k, v in cells.items() if "/lr-search/" not in k}
    assert sorted(main) == ["cells/random/n001-seed0.json", "cells/random/n001-seed1.json"]
    assert all(c["lr"] == lr["chosen"] for c in main.values())
    # seed 0 at the chosen LR is the search cell itself (nothing trained twice)
    assert main["cells/random/n001-seed0.json"]["summary"] == next(
        c for c in search.values() if c["lr"] == lr["chosen"])["summary"]
    assert summary["cells_run"] == 4
    c1 = main["cells/random/n001-seed1.json"]
    assert [s for s, _ in c1["val_history"]] == [4, 8] and c1["still_rising"] is None
    assert c1["schedule"]["warmup_steps"] == 2 and c1["moved"]["encoder"] > 0 and c1["device"] == "cpu"
    from anatplane_dist.experiment.report import render_report

    render_report(out)
    md = (out / "results.md").read_text()
    assert "Learning-rate search on the validation subjects" in md and "moved encoder" in md


def test_results_do_not_depend_on_the_worker_or_device_slot(tmp_path, tiny_data):
    kw = dict(protocol={"labels": [1, 2], "seeds": [0]}, finetune={"steps": 6})
    one = run_experiment(load_spec(write_spec(tmp_path / "a.yaml", tiny_data, **kw)), tmp_path / "one",
                         log=lambda _m: None)
    two = run_experiment(load_spec(write_spec(tmp_path / "b.yaml", tiny_data, devices="cpu,cpu", **kw)),
                         tmp_path / "two", log=lambda _m: None)
    assert one["devices"] == ["cpu"] and two["devices"] == ["cpu", "cpu"]
    a, b = _cells(tmp_path / "one"), _cells(tmp_path / "two")
    assert sorted(a) == sorted(b) and len(a) == 2
    for k in a:
        assert a[k]["summary"] == b[k]["summary"] and a[k]["losses"] == b[k]["losses"], k


def test_a_second_run_on_the_same_directory_is_refused(tmp_path, tiny_data):
    """issue 19 (b): two runs on one --out collided; the directory is locked like a run dir."""
    from anatplane_dist.train.runlock import RunLockedError

    cfg = write_spec(tmp_path / "l.yaml", tiny_data, protocol={"labels": [1], "seeds": [0]})
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom anatplane_dist.train.runlock import "
                               f"RunLock\nwith RunLock({str(out)!r}):\n    print('held', flush=True)\n"
                               "    time.sleep(60)"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match="in use"):
            run_experiment(load_spec(cfg), out, log=lambda _m: None)
    finally:
        holder.kill()
        holder.wait()
    assert not (out / "split.json").exists()


def test_ctrl_c_keeps_finished_cells_and_workers_die_quietly(tmp_path, tiny_data):
    """issue 19 (c): Ctrl-C printed tracebacks from every worker process."""
    cfg = write_spec(tmp_path / "c.yaml", tiny_data, devices="cpu,cpu", finetune={"steps": 60},
                     protocol={"labels": [1, 2], "seeds": [0, 1, 2]})
    out = tmp_path / "out"
    code = ("import sys\nfrom anatplane_dist.experiment.runner import run_experiment\n"
            "from anatplane_dist.experiment.spec import load_spec\n"
            "try:\n"
            f"    run_experiment(load_spec({str(cfg)!r}), {str(out)!r}, log=lambda m: None)\n"
            "except KeyboardInterrupt:\n"
            "    print('interrupted', file=sys.stderr); sys.exit(130)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env={**os.environ, "TQDM_DISABLE": "1"},
                            preexec_fn=sigint_default)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not list((out / "cells").rglob("n*.json")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)                       # what a terminal's Ctrl-C does: the whole group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and err.strip() == "interrupted", err[-3000:]
    done = _cells(out)
    assert 1 <= len(done) < 6
    assert all(isinstance(c["summary"]["dice_mean"], float) for c in done.values())


def test_frozen_encoder_readout_rows_leave_the_encoder_untouched(tmp_path, tiny_data):
    cfg = write_spec(tmp_path / "r.yaml", tiny_data, protocol={"labels": [1], "seeds": [0]},
                     finetune={"steps": 6, "readout": True})
    out = tmp_path / "out"
    run_experiment(load_spec(cfg), out, log=lambda _m: None)
    cells = _cells(out)
    frozen = cells["cells/random@frozen/n001-seed0.json"]
    free = cells["cells/random/n001-seed0.json"]
    assert frozen["frozen_encoder"] is True and frozen["moved"]["encoder"] == 0.0
    assert frozen["moved"]["decoder"] > 0 and free["moved"]["encoder"] > 0


def test_pretext_quality_per_arm_with_a_warning_when_not_learnt(tmp_path, tiny_data):
    from anatplane_dist.experiment.report import render_report
    from anatplane_dist.model import ModelConfig
    from tests.experiment.test_results import make_experiment
    from tests.finetune.conftest import publish_weights

    run = tmp_path / "run-tiny"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 10, "val/loss": 0.02, "val/angle_err_deg": 21.6,
                                                   "val/offset_err_px": 3.0, "val/loc_mae": 0.1}) + "\n")
    name_dir = publish_weights(tmp_path, ModelConfig(name="unet", width=8, depth=3, loc_hidden=[16]))
    out = make_experiment(tmp_path / "exp")
    arms = json.loads((out / "arms.json").read_text())
    arms["multitask"]["published"] = str((name_dir / "latest").resolve())
    (out / "arms.json").write_text(json.dumps(arms))
    (out / "data.json").write_text(json.dumps({"pretrain_shards": str(tiny_data[0])}))
    render_report(out)
    md = (out / "results.md").read_text()
    assert "## Pretext quality per arm" in md and "| multitask | 10 | 21.6 | 3 | 0.1 |" in md
    assert "orientation not learnt (angle error >= 15°) (val/angle_err_deg = 21.6)" in md
    assert "location not learnt" not in md
    # the untrained network, measured on training and held-out pretraining subjects: learnt nothing
    assert "## Pretext fit: training vs held-out pretraining subjects" in md
    row = next(line for line in md.splitlines() if line.startswith("| multitask | ") and line.count("|") == 6)
    assert all(float(v) >= 0 for v in row.split("|")[2:6]), row
    assert "- **multitask**: angle error ° not learnt (training subjects" in md


@pytest.mark.slow
def test_cells_as_a_submitit_job_array_are_the_local_cells_and_requeue_safe(tmp_path, tiny_data):
    """--slurm sends the cells to a job array; submitit's LocalExecutor runs the same tasks here."""
    from anatplane_dist.experiment.slurm_cells import CellTask

    kw = dict(protocol={"labels": [1], "seeds": [0, 1]}, finetune={"steps": 6})
    local = run_experiment(load_spec(write_spec(tmp_path / "a.yaml", tiny_data, **kw)), tmp_path / "local",
                           log=lambda _m: None)
    spec = load_spec(write_spec(tmp_path / "b.yaml", tiny_data, **kw))
    array = run_experiment(spec, tmp_path / "array", slurm=True, slurm_args=["--local", "--time", "5"],
                           log=lambda _m: None)
    assert local["cells_run"] == array["cells_run"] == 2 and not array["cell_failures"]
    a, b = _cells(tmp_path / "local"), _cells(tmp_path / "array")
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k]["summary"] == b[k]["summary"], k
    assert list((tmp_path / "array" / "slurm-cells").glob("*_log.out"))
    # a requeued task whose cell is already written returns it without training again
    path = tmp_path / "array" / "cells" / "random" / "n001-seed0.json"
    rec = json.loads(path.read_text())
    task = CellTask(spec, "unused-root", None, {"fingerprint": rec["fingerprint"]}, str(path), str(tmp_path))
    mtime = path.stat().st_mtime_ns
    assert task() == str(path) and path.stat().st_mtime_ns == mtime


def test_the_cpu_schedule_on_the_paper_network_is_called_out():
    from anatplane_dist.experiment.runner import schedule_warnings
    from anatplane_dist.model import ModelConfig

    paper_unet = ModelConfig(name="unet", width=64, depth=4, loc_hidden=[128]).to_yaml()
    tiny = ModelConfig(name="unet", width=8, depth=3, loc_hidden=[16]).to_yaml()
    (w,) = schedule_warnings(named_schedule("steps"), paper_unet, 2)
    assert "31.2 M-parameter" in w and "schedule: paper" in w
    assert schedule_warnings(named_schedule("paper"), paper_unet, 2) == []
    assert schedule_warnings(named_schedule("steps"), tiny, 2) == []


def test_protocol_compare_to_must_name_a_pretrained_arm(tmp_path, tiny_data):
    cfg = write_spec(tmp_path / "c.yaml", tiny_data, protocol={"compare_to": ["rotation"]})
    with pytest.raises(SpecError, match=r"protocol.compare_to: \['rotation'\] are not pretrained arms"):
        load_spec(cfg)
    arms = [{"name": "random"}, {"name": "rotation", "objective": "rotation"}]
    assert load_spec(write_spec(tmp_path / "d.yaml", tiny_data, arms=arms,
                                protocol={"compare_to": ["rotation"]})).protocol.compare_to == ["rotation"]
