"""Every shipped experiment preset loads and its arms' trainer configurations validate, so a
preset cannot rot unnoticed (the GPU-only ones never run in CI); heart-paper is the paper's."""
from __future__ import annotations

from pathlib import Path

import pytest

from anatplane_dist.experiment.runner import validate_up_front
from anatplane_dist.experiment.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
PRESETS = sorted((REPO / "experiments").glob("*.yaml"))


def test_the_presets_are_found():
    assert {"demo", "heart-quick", "heart-paper", "smoke"} <= {p.stem for p in PRESETS}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_preset_loads_and_its_arms_validate(preset):
    spec = load_spec(preset)
    validate_up_front(spec)
    seeds, counts = spec.protocol.seeds, spec.protocol.labels
    assert seeds and counts and spec.arms[0].name == "random"
    if spec.finetune.select == "best-val":
        assert spec.protocol.val_subjects >= 1, "best-val needs validation subjects"


def test_heart_paper_is_the_papers_network_and_schedule():
    from anatplane_dist.experiment.arms import _config_path
    from anatplane_dist.model import build_model
    from anatplane_dist.train.config import load_config

    spec = load_spec(REPO / "experiments" / "heart-paper.yaml")
    cfg = load_config(_config_path(spec), ["data.shards=/nonexistent", *spec.pretrain.overrides])
    net = build_model(cfg.model, num_channels=2)
    millions = sum(p.numel() for p in net.parameters()) / 1e6
    assert 28 < millions < 35, millions                          # the paper's U-Net: ~31 M
    sched = spec.finetune.base_schedule()
    assert (sched.name, sched.optimizer, sched.lr, sched.batch_size) == ("paper", "adam", 1e-3, 10)
    assert spec.finetune.select == "best-val" and len(spec.protocol.seeds) >= 5
    assert (spec.data.grid, spec.data.spacing) == (224, 1.26)
