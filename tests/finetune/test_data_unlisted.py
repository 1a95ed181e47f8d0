"""Issue 19: subjects a loader does not use are recorded, never silently dropped (item 7), and
hidden folders are not subjects (as in the sharder)."""
from __future__ import annotations

import shutil
from pathlib import Path

from anatplane_dist.finetune.data import GridSpec, load_acdc, load_knee
from anatplane_dist.sources.phantom.acdc import AcdcCohortConfig, write_acdc_cohort
from anatplane_dist.sources.phantom.knee_writer import KneeCohortConfig, write_knee_cohort


def test_a_knee_subject_without_a_label_row_is_a_recorded_skip(tmp_path: Path) -> None:
    root = tmp_path / "knee"
    write_knee_cohort(root, KneeCohortConfig(subjects=2, seed=1, matrix=(24, 24), slices=3))
    rows = (root / "labels.csv").read_text().splitlines()
    (root / "labels.csv").write_text("\n".join(rows[:2]) + "\n")          # knee0002's row removed
    (root / ".ipynb_checkpoints").mkdir()                                   # litter, not a subject
    stacks, _, skips = load_knee(root, GridSpec(16, 8.0))
    assert [s.subject for s in stacks] == ["knee0001"]
    assert [(s.subject, s.reason) for s in skips] == [("knee0002", "no row in the label table: not used")]


def test_the_acdc_loader_skips_hidden_folders(tmp_path: Path) -> None:
    root = tmp_path / "acdc"
    write_acdc_cohort(root, AcdcCohortConfig(patients=1, matrix=(24, 24), frames=(2, 2)))
    shutil.copytree(root / "patient001", root / ".staging-patient002")     # a half-written copy
    subjects, skips = load_acdc(root, GridSpec(16, 8.0))
    assert [s.subject for s in subjects] == ["patient001"]
    assert not [s for s in skips if ".staging" in s.subject]
