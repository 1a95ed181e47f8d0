"""A tiny phantom cohort (pretraining shards + ACDC-layout labelled subjects), made once."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from anatplane_dist.experiment.data import prepare_data
from anatplane_dist.experiment.spec import load_spec

GRID, SPACING = 40, 5.0


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> tuple[Path, Path]:
    """(shard dir, ACDC root) of a 2-subject pretraining phantom and a 9-subject labelled cohort."""
    out = tmp_path_factory.mktemp("expdata")
    spec_path = out / "make.yaml"
    spec_path.write_text(yaml.safe_dump({
        "name": "make", "task": "seg",
        "data": {"phantom": {"kind": "heart", "pretrain_subjects": 2, "labelled_subjects": 9, "size": 64},
                 "grid": GRID, "spacing": SPACING},
        "arms": [{"name": "random"}, {"name": "multitask", "objective": "multitask"}]}))
    return prepare_data(load_spec(spec_path), out, log=lambda _m: None)


def write_spec(path: Path, data: tuple[Path, Path], **changes) -> Path:
    """An experiment on the tiny cohort: random + whatever arms are given, 10-step cells."""
    shards, root = data
    spec = {"name": path.stem, "task": "seg",
            "data": {"pretrain_shards": str(shards), "finetune": str(root), "grid": GRID, "spacing": SPACING},
            "pretrain": {"config": "launch/configs/tiny-cpu.yaml", "ranks": 1,
                         "overrides": ["train.epochs=1", "data.samples_per_epoch=32", "train.log_every=4",
                                       "data.num_workers=0"]},
            "arms": [{"name": "random"}],
            "finetune": {"steps": 8, "batch_size": 4, "lr": 3e-3},
            "protocol": {"labels": [1, 2], "seeds": [0, 1], "test_subjects": 4, "val_subjects": 1},
            "workers": 1}
    for k, v in changes.items():
        if isinstance(v, dict) and isinstance(spec.get(k), dict):
            spec[k].update(v)
        else:
            spec[k] = v
    path.write_text(yaml.safe_dump(spec))
    return path
