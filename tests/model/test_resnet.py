"""The ResNet-style encoder: residual stages, stride-2 downsampling, light decoder."""
from __future__ import annotations

import torch
from torch import nn

from anatplane_dist.model import ModelConfig, build_model
from anatplane_dist.model.resnet import BasicBlock, ResNetEncoder


def test_basic_block_projects_shortcut_only_when_needed():
    same = BasicBlock(8, 8, 1, "batch")
    down = BasicBlock(8, 16, 2, "group")
    assert isinstance(same.shortcut, nn.Identity)
    assert isinstance(down.shortcut, nn.Sequential)
    assert down(torch.randn(2, 8, 16, 16)).shape == (2, 16, 8, 8)
    # residual: with conv2 zeroed the block is relu(x) for an identity shortcut
    nn.init.zeros_(same.conv2.weight)
    x = torch.randn(2, 8, 6, 6)
    same.eval()
    torch.testing.assert_close(same(x), torch.relu(x))


def test_encoder_levels_and_block_count():
    enc = ResNetEncoder(1, [8, 16, 32], blocks_per_stage=3, norm="batch")
    feats = enc(torch.randn(2, 1, 32, 32))
    assert [tuple(f.shape) for f in feats] == [(2, 8, 32, 32), (2, 16, 16, 16), (2, 32, 8, 8)]
    assert [len(s) for s in enc.stages] == [3, 3]


def test_light_decoder_has_one_conv_per_level():
    net = build_model(ModelConfig(name="resnet", width=8, depth=3), 2)
    convs_per_level = [sum(isinstance(m, nn.Conv2d) for m in lvl.convs.modules()) for lvl in net.decoder.levels]
    assert convs_per_level == [1, 1, 1]
    assert net(torch.randn(2, 1, 64, 64))["heatmaps"].shape == (2, 2, 64, 64)


def test_groupnorm_variant_trains_with_batch_of_one():
    net = build_model(ModelConfig(name="resnet", width=8, depth=2, norm="group"), 2).train()
    out = net(torch.randn(1, 1, 16, 16))
    (out["heatmaps"].square().mean() + out["location"].square().mean()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
