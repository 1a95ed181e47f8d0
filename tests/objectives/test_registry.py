"""The registry and the config: names, refusals, YAML/override round trip."""
from __future__ import annotations

import pytest

from anatplane_dist.core.errors import AnatplaneError, ExitCode
from anatplane_dist.core.mapping import ConfigError, from_dict
from anatplane_dist.objectives import available_objectives, get_objective
from anatplane_dist.objectives.config import LossConfig, ObjectiveConfig, ObjectiveError
from anatplane_dist.train.config import apply_overrides
from tests.objectives.conftest import tiny_loss

ALL = ["genesis", "location", "multitask", "orientation", "rotation", "simclr"]


def test_available_objectives_are_the_six():
    assert available_objectives() == ALL


def test_unknown_name_is_a_clear_anatplane_error():
    cfg = ObjectiveConfig()
    cfg.name = "byol"                     # bypasses the Literal, as a hand-built config could
    with pytest.raises(AnatplaneError) as err:
        get_objective(cfg, tiny_loss())
    assert isinstance(err.value, ObjectiveError) and err.value.exit_code == ExitCode.USAGE
    msg = str(err.value)
    assert "unknown objective.name 'byol'" in msg and all(n in msg for n in ALL)


def test_yaml_mapping_and_overrides_are_typed_and_checked():
    cfg = from_dict(ObjectiveConfig, {"name": "simclr", "simclr": {"temperature": "0.2", "crop_scale": [0.2, 1]}})
    assert cfg.simclr.temperature == 0.2 and cfg.simclr.crop_scale == [0.2, 1.0]
    cfg = apply_overrides(cfg, ["genesis.paint_p=0.5", "name=genesis"])
    assert cfg.name == "genesis" and cfg.genesis.paint_p == 0.5
    with pytest.raises(ConfigError, match="is not one of"):
        from_dict(ObjectiveConfig, {"name": "byol"})
    with pytest.raises(ConfigError, match="unknown config key simclr.temprature"):
        from_dict(ObjectiveConfig, {"simclr": {"temprature": 0.2}}, prefix="")


@pytest.mark.parametrize("section, values, key", [
    ("simclr", {"temperature": 0.0}, "objective.simclr.temperature"),
    ("simclr", {"crop_scale": [0.5, 1.5]}, "objective.simclr.crop_scale"),
    ("genesis", {"paint_p": 1.5}, "objective.genesis.paint_p"),
    ("genesis", {"inpaint_size": [0.4, 0.2]}, "objective.genesis.inpaint_size"),
    ("rotation", {"dropout": 1.0}, "objective.rotation.dropout"),
])
def test_impossible_hyper_parameters_are_refused_naming_the_key(section, values, key):
    with pytest.raises(ObjectiveError, match=key.replace(".", r"\.")):
        from_dict(ObjectiveConfig, {section: values})


def test_single_task_with_its_weight_at_zero_is_refused():
    with pytest.raises(ObjectiveError, match="loss.beta=0"):
        get_objective(ObjectiveConfig(name="location"), LossConfig(alpha=1.0, beta=0.0, sigma_px=1.5))


def test_single_tasks_zero_the_other_weight_and_multitask_keeps_both():
    loss = LossConfig(alpha=2.0, beta=3.0, sigma_px=1.5)
    assert get_objective(ObjectiveConfig(name="orientation"), loss).loss_cfg.terms == ("loss_ori",)
    assert get_objective(ObjectiveConfig(name="location"), loss).loss_cfg.terms == ("loss_loc",)
    multi = get_objective(ObjectiveConfig(name="multitask"), loss)
    assert (multi.loss_cfg.alpha, multi.loss_cfg.beta) == (2.0, 3.0)


def test_grid_spacing_converts_sigma_mm_for_the_heatmap_objectives():
    obj = get_objective(ObjectiveConfig(name="orientation"), LossConfig(sigma_mm=7.5), grid_spacing_mm=3.0)
    assert obj.loss_fn.sigma_px == 2.5
