"""Architectures by name: the built-ins, adding one, and the errors."""
from __future__ import annotations

import pytest
import torch

from anatplane_dist.model import ModelConfig, available_models, build_model, register_encoder, registry
from anatplane_dist.model.heads import UNetDecoder
from anatplane_dist.model.unet import UNetEncoder


def test_builtins_are_registered():
    assert {"unet", "resnet"} <= set(available_models())


def test_register_custom_encoder_and_build_it(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))   # leave the global intact

    @register_encoder("tiny-plain")
    def build(cfg, k):
        ch = cfg.level_channels()
        return UNetEncoder(cfg.in_channels, ch, cfg.norm), UNetDecoder(ch, k, n_convs=1)

    assert "tiny-plain" in available_models()
    net = build_model(ModelConfig(name="tiny-plain", width=4, depth=2), 3)
    out = net(torch.randn(2, 1, 16, 16))
    assert out["heatmaps"].shape == (2, 3, 16, 16) and out["location"].shape == (2,)
    with pytest.raises(ValueError, match="already registered"):
        register_encoder("tiny-plain")(lambda cfg, k: None)


def test_unknown_name_lists_available():
    with pytest.raises(ValueError, match=r"unknown model 'vit'.*resnet.*unet"):
        build_model(ModelConfig(name="vit"), 2)
