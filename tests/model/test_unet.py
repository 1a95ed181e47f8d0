"""The paper's U-Net: sizes, skips, the decoder head swap fine-tuning relies on."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from anatplane_dist.model import ModelConfig, build_model
from anatplane_dist.model.unet import UNetEncoder


def test_paper_size_channels_and_parameter_count():
    cfg = ModelConfig(name="unet")                       # defaults are the paper's network
    assert cfg.level_channels() == [64, 128, 256, 512, 1024]
    net = build_model(cfg, num_channels=2)
    assert net.encoder.out_channels[-1] == 1024
    n = sum(p.numel() for p in net.parameters())
    # encoder 18.8 M + decoder 12.2 M + head 0.13 M; the paper code reports 32.3 M with biases
    assert 30e6 < n < 33e6, n
    lin = [m for m in net.location_head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in lin] == [(1024, 128), (128, 1)]


def test_encoder_returns_every_level_as_skip():
    enc = UNetEncoder(1, [8, 16, 32, 64], "batch")
    feats = enc(torch.randn(2, 1, 64, 48))
    assert [tuple(f.shape) for f in feats] == [(2, 8, 64, 48), (2, 16, 32, 24), (2, 32, 16, 12), (2, 64, 8, 6)]
    assert enc.reduction == 8


def test_decoder_is_linear_and_head_is_swappable():
    net = build_model(ModelConfig(name="unet", width=8, depth=3), num_channels=2).eval()
    x = torch.randn(2, 1, 64, 64)
    assert isinstance(net.decoder.head, nn.Conv2d) and net.decoder.head.out_channels == 2
    heat = net(x)["heatmaps"]
    assert heat.min() < 0                                 # no activation after the 1x1 conv
    # fine-tuning: encoder + decoder with a new last 1x1 conv (4 segmentation classes)
    net.decoder.head = nn.Conv2d(net.decoder.head.in_channels, 4, 1)
    seg = net.decoder(net.encoder(x))
    assert seg.shape == (2, 4, 64, 64)
    torch.testing.assert_close(net.decoder.head(net.decoder.features(net.encoder(x))), seg)


def test_max_width_caps_channels():
    cfg = ModelConfig(name="unet", width=16, depth=4, max_width=64)
    assert cfg.level_channels() == [16, 32, 64, 64, 64]
    out = build_model(cfg, 3)(torch.randn(1, 1, 32, 32))
    assert out["heatmaps"].shape == (1, 3, 32, 32)


def test_indivisible_input_is_a_clear_error():
    net = build_model(ModelConfig(name="unet", width=4, depth=3), 2)
    with pytest.raises(ValueError, match=r"60x64 is not divisible by 8"):
        net(torch.randn(1, 1, 60, 64))
