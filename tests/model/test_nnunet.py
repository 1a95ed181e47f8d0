"""model.name=nnunet: nnU-Net's own 2d network from a plans file, with our heads attached."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("nnunetv2")

from anatplane_dist.model import ModelConfig, build_model, check_data_grid, export_parts  # noqa: E402
from anatplane_dist.model.nnunet import build_nnunet_network, nnunet_state_dict  # noqa: E402
from anatplane_dist.model.plans import PlansError
from anatplane_dist.objectives import available_objectives, get_objective  # noqa: E402
from anatplane_dist.objectives.config import (
    LossConfig,  # noqa: E402
    ObjectiveConfig,
)
from tests.model.nnunet_plans import write_plans  # noqa: E402

K = 3


def _cfg(tmp_path, **kw):
    return ModelConfig(name="nnunet", plans=str(write_plans(tmp_path / "pre", **kw)), loc_hidden=[8], loc_dropout=0.0)


def test_network_is_nnunets_own_with_heatmaps_from_its_output_side(tmp_path):
    cfg = _cfg(tmp_path)
    torch.manual_seed(0)
    net = build_model(cfg, K).eval()
    x = torch.randn(2, 1, 32, 32)
    out = net(x)
    assert out["heatmaps"].shape == (2, K, 32, 32) and out["location"].shape == (2,)
    assert net.encoder.out_channels == [8, 16, 32] and net.location_head.mlp[0].in_features == 32  # bottleneck
    assert type(net.encoder).__module__.startswith("dynamic_network_architectures")
    # nnU-Net's PlainConvUNet with our tensors (its full-resolution seg layer = our head) gives our heatmaps
    ref = build_nnunet_network(cfg.nnunet, 1, K).eval()
    parts = export_parts(net)
    sd = nnunet_state_dict(parts["encoder"], parts["decoder"])
    last = len(ref.decoder.seg_layers) - 1
    sd.update({k: v for k, v in ref.state_dict().items() if ".seg_layers." in k})
    sd[f"decoder.seg_layers.{last}.weight"] = parts["decoder"]["head.weight"]
    sd[f"decoder.seg_layers.{last}.bias"] = parts["decoder"]["head.bias"]
    ref.load_state_dict(sd, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(ref(x), net(x)["heatmaps"])
    # every nnU-Net tensor but the seg layers is in our parts, each exactly once
    assert set(sd) - {k for k in sd if ".seg_layers." in k} == set(nnunet_state_dict(parts["encoder"], parts["decoder"]))
    assert not any(k.startswith("encoder.") for k in parts["decoder"])


def test_config_carries_the_architecture_so_weights_rebuild_without_the_plans(tmp_path):
    cfg = _cfg(tmp_path)
    text = cfg.to_yaml()
    (tmp_path / "pre" / "nnUNetPlans.json").unlink()
    again = ModelConfig.from_yaml(text)
    assert again.nnunet == cfg.nnunet and again.nnunet["patch_size"] == [32, 32]
    a, b = build_model(cfg, K), build_model(again, K)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}


@pytest.mark.parametrize("objective", ["multitask", "orientation", "location", "simclr", "genesis", "rotation"])
def test_every_objective_builds_and_runs_on_it(tmp_path, objective):
    assert objective in available_objectives()
    cfg = _cfg(tmp_path)
    if objective == "orientation":
        cfg = ModelConfig(**{**cfg.to_dict(), "location_head": False})
    if objective == "location":
        cfg = ModelConfig(**{**cfg.to_dict(), "orientation_head": False})
    obj = get_objective(ObjectiveConfig(name=objective), LossConfig(), grid_spacing_mm=1.5)
    net = obj.build_model(cfg, K)
    out = net(torch.randn(2, 1, 32, 32))
    assert out and all(torch.isfinite(v).all() for v in out.values())
    assert "encoder" in dict(net.named_children())


def test_bad_plans_and_bad_data_are_one_line_errors(tmp_path):
    with pytest.raises(PlansError, match=r"no '2d' configuration \(it has \['3d_fullres'\]\)"):
        _cfg(tmp_path / "a", configs=("3d_fullres",))
    with pytest.raises(PlansError, match="2 input channel"):
        _cfg(tmp_path / "b", channels=2)
    pre = tmp_path / "c" / "pre"
    write_plans(pre)
    (pre / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1", "1": "T2"}}))
    with pytest.raises(PlansError, match="2 input channel"):
        ModelConfig(name="nnunet", plans=str(pre / "nnUNetPlans.json"))
    with pytest.raises(PlansError, match="not a readable nnU-Net plans file"):
        ModelConfig(name="nnunet", plans=str(tmp_path / "missing.json"))
    with pytest.raises(PlansError, match="needs model.plans"):
        build_model(ModelConfig(name="nnunet"), K)
    cfg = _cfg(tmp_path / "d")
    net = build_model(cfg, K)
    with pytest.raises(PlansError, match="input 64x64 px != the nnU-Net plans' 2d patch size 32x32"):
        net(torch.randn(1, 1, 64, 64))
    check_data_grid(cfg, 32, 1.5)
    with pytest.raises(PlansError, match="--grid 32"):
        check_data_grid(cfg, 64, 1.5)
    with pytest.raises(PlansError, match="--spacing 1.5"):
        check_data_grid(cfg, 32, 1.25)
    check_data_grid(ModelConfig(), 50, 0.7)  # other backbones: no plans to match
