"""MultitaskNet for every registered architecture: outputs, heads, export, device-friendliness."""
from __future__ import annotations

import pytest
import torch
import yaml

from anatplane_dist.core import weights
from anatplane_dist.model import (
    ModelConfig,
    available_models,
    build_model,
    export_parts,
    load_parts,
    unwrap_model,
)

ARCHS = ["unet", "resnet"]


def tiny(name: str, **kw) -> ModelConfig:
    return ModelConfig(name=name, width=8, depth=3, **kw)


@pytest.mark.parametrize("name", ARCHS)
def test_outputs_and_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    net = build_model(tiny(name), num_channels=3).train()
    out = net(torch.randn(4, 1, 64, 64))
    assert out["heatmaps"].shape == (4, 3, 64, 64) and out["location"].shape == (4,)
    (out["heatmaps"].square().mean() + out["location"].square().mean()).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("name", ARCHS)
def test_disabled_heads_have_no_parameters_and_no_output(name):
    ori = build_model(tiny(name, location_head=False), 2)
    loc = build_model(tiny(name, orientation_head=False), 2)
    assert ori.location_head is None and set(ori(torch.randn(1, 1, 32, 32))) == {"heatmaps"}
    assert loc.decoder is None and set(loc(torch.randn(1, 1, 32, 32))) == {"location"}
    assert set(export_parts(loc)) == {"encoder", "location_head"}
    with pytest.raises(ValueError, match="at least one"):
        tiny(name, orientation_head=False, location_head=False)


@pytest.mark.parametrize("name", ARCHS)
def test_channels_last_gives_the_same_result(name):
    torch.manual_seed(0)
    net = build_model(tiny(name), 2).eval()
    x = torch.randn(2, 1, 64, 64)
    ref = net(x)
    net_cl = net.to(memory_format=torch.channels_last)
    out = net_cl(x.contiguous(memory_format=torch.channels_last))
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ARCHS)
def test_bf16_autocast_forward_backward(name):
    torch.manual_seed(0)
    net = build_model(tiny(name), 2).train()
    x = torch.randn(2, 1, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    assert out["heatmaps"].dtype == torch.bfloat16
    loss = out["heatmaps"].float().square().mean() + out["location"].float().square().mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in net.parameters())
    with torch.no_grad():
        ref = net.eval()(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x)
    err = (low["heatmaps"].float() - ref["heatmaps"]).abs().max() / ref["heatmaps"].abs().max()
    assert err < 0.05


@pytest.mark.parametrize("name", ARCHS)
def test_single_graph_without_breaks(name):
    """fullgraph=True fails on any graph break (host sync, data-dependent shape, Python on data).

    The eager backend traces with dynamo exactly as inductor would, without its minutes of C++
    codegen on 2 CPU cores (the benchmark times real inductor compilation)."""
    torch.manual_seed(0)
    net = build_model(tiny(name), 2).eval()
    x = torch.randn(2, 1, 64, 64).contiguous(memory_format=torch.channels_last)
    compiled = torch.compile(net, backend="eager", fullgraph=True)
    ref, out = net(x), compiled(x)
    for k in ref:
        torch.testing.assert_close(out[k], ref[k])
    assert unwrap_model(compiled) is net


@pytest.mark.parametrize("name", ARCHS)
def test_export_parts_roundtrip_through_safetensors_files(name, tmp_path):
    torch.manual_seed(0)
    src = build_model(tiny(name), 2)
    src.train()(torch.randn(4, 1, 32, 32))          # move BN running stats off their init
    src = src.to(torch.bfloat16).eval()
    parts = export_parts(torch.nn.DataParallel(torch.compile(src, backend="eager")))   # wrappers
    assert list(parts) == ["encoder", "decoder", "location_head"]
    assert all(v.dtype == torch.float32 for sd in parts.values() for v in sd.values() if v.is_floating_point())
    for part, sd in parts.items():
        weights.save_part(tmp_path / f"{part}.safetensors", sd, part=part,
                          model_config_yaml=src.config.to_yaml(), num_channels=2, step=3)
    blob = {p: weights.load_part(tmp_path, p) for p in weights.find_parts(tmp_path)}
    dst = build_model(ModelConfig.from_yaml(blob["encoder"]["model_config"]), 2).eval()
    assert load_parts(dst, {p: b["state_dict"] for p, b in blob.items()}) == ["encoder", "decoder", "location_head"]
    x = torch.randn(2, 1, 32, 32)
    ref = src.float()(x)
    out = dst(x)
    for k in ref:
        torch.testing.assert_close(out[k], ref[k])


def test_extra_heads_are_parts_too():
    """A head a pretraining objective adds (any top-level submodule) exports and loads like the
    core parts, listed after them."""
    net = build_model(tiny("unet"), 2)
    net.projection = torch.nn.Linear(4, 3)
    parts = export_parts(net)
    assert list(parts) == ["encoder", "decoder", "location_head", "projection"]
    other = build_model(tiny("unet"), 2)
    other.projection = torch.nn.Linear(4, 3)
    assert load_parts(other, {"projection": parts["projection"]}) == ["projection"]
    assert torch.equal(other.projection.weight, net.projection.weight)


def test_load_parts_errors():
    net = build_model(tiny("unet", location_head=False), 2)
    with pytest.raises(ValueError, match="no part 'backbone'"):
        load_parts(net, {"backbone": {}})
    with pytest.raises(ValueError, match="no part 'location_head'"):
        load_parts(net, {"location_head": {}})
    with pytest.raises(RuntimeError, match="Missing key"):
        load_parts(net, {"encoder": {}})


def test_config_yaml_roundtrip_and_validation():
    cfg = ModelConfig(name="resnet", width=16, depth=3, norm="group", loc_hidden=[64, 32])
    text = cfg.to_yaml()
    assert yaml.safe_load(text)["loc_hidden"] == [64, 32]
    assert ModelConfig.from_yaml(text) == cfg
    assert ModelConfig(**cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown model config key"):
        ModelConfig.from_dict({"widht": 8})
    with pytest.raises(ValueError, match="model.norm"):
        ModelConfig(norm="layer")
    with pytest.raises(ValueError, match="model.depth"):
        ModelConfig(depth=0)
    assert set(ARCHS) <= set(available_models())


def test_compiled_training_step_matches_eager():
    """fullgraph through AOT autograd (the backward inductor would compile), bf16 autocast on;
    the paper's U-Net only, at depth 2, to keep tracing time small on CI."""
    torch.manual_seed(0)
    net = build_model(ModelConfig(name="unet", width=8, depth=2, loc_dropout=0.0), 2).train()
    x = torch.randn(2, 1, 16, 16)

    def grads(model):
        net.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        (out["heatmaps"].float().square().mean() + out["location"].float().square().mean()).backward()
        return [p.grad.clone() for p in net.parameters()]

    state = {k: v.clone() for k, v in net.state_dict().items()}
    ref = grads(net)
    net.load_state_dict(state)                      # undo the BN running-stat update
    got = grads(torch.compile(net, backend="aot_eager", fullgraph=True))
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("name", ARCHS)
def test_starts_near_zero_heatmaps_and_mid_location_then_fits_a_batch(name):
    """Output layers start small (heatmaps ~0, location ~0.5) and the network can learn."""
    from anatplane_dist.objectives.config import LossConfig
    from anatplane_dist.objectives.losses import MultitaskLoss, render_heatmaps_torch
    torch.manual_seed(0)
    net = build_model(ModelConfig(name=name, width=4, depth=2, loc_dropout=0.0), 1).train()
    g = torch.Generator().manual_seed(0)
    th = torch.rand(4, 1, generator=g) * torch.pi
    p = 4 + torch.rand(4, 1, 2, generator=g) * 8
    lines = torch.stack([th.cos(), th.sin(), -(th.cos() * p[..., 0] + th.sin() * p[..., 1])], -1)
    valid = torch.ones(4, 1)
    image = render_heatmaps_torch(lines, valid, 16, 16, 1.5) + 0.1 * torch.randn(4, 1, 16, 16, generator=g)
    batch = {"image": image, "lines": lines, "valid": valid, "loc": torch.rand(4, generator=g),
             "loc_valid": torch.ones(4)}
    out = net(image)
    assert out["heatmaps"].abs().max() < 0.1
    torch.testing.assert_close(out["location"], torch.full((4,), 0.5), atol=0.05, rtol=0)
    loss_fn = MultitaskLoss(LossConfig(sigma_px=1.5))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = None
    for _ in range(25):
        opt.zero_grad()
        total, _ = loss_fn(net(image), batch)
        total.backward()
        opt.step()
        first = total.detach() if first is None else first
    assert total < 0.5 * first
