"""train/schedule.py: per-iteration warm-up + cosine, optimisers."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from anatplane_dist.train.options import OptimConfig
from anatplane_dist.train.schedule import (
    Lamb,
    LRSchedule,
    build_optimizer,
    make_schedule,
    param_groups,
    set_lr,
)


def test_warmup_is_linear_and_reaches_peak():
    s = LRSchedule(peak=1.0, total_steps=100, warmup_steps=10, min_lr=0.0)
    assert [s(i) for i in range(10)] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert s(10) == pytest.approx(1.0)


def test_cosine_decays_monotonically_to_min_lr():
    s = LRSchedule(peak=2.0, total_steps=50, warmup_steps=5, min_lr=0.1)
    values = [s(i) for i in range(5, 51)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert s(50) == pytest.approx(0.1) and s(500) == pytest.approx(0.1)
    mid = 5 + (50 - 5) / 2
    assert s(int(mid)) == pytest.approx(0.1 + 1.9 * 0.5 * (1 + math.cos(math.pi * (int(mid) - 5) / 45)))


def test_constant_without_cosine():
    s = LRSchedule(peak=0.3, total_steps=10, warmup_steps=0, cosine=False)
    assert {s(i) for i in range(20)} == {0.3}


def test_schedule_is_a_pure_function_of_the_step():
    """What makes resume exact: no state besides the step."""
    a = make_schedule(OptimConfig(warmup_epochs=1.5), 1e-3, total_steps=40, steps_per_epoch=8)
    b = make_schedule(OptimConfig(warmup_epochs=1.5), 1e-3, total_steps=40, steps_per_epoch=8)
    assert a.warmup_steps == 12 and [a(i) for i in range(40)] == [b(i) for i in range(40)]
    assert make_schedule(OptimConfig(warmup_steps=3, warmup_epochs=9), 1, 40, 8).warmup_steps == 3


def test_no_weight_decay_on_biases_and_norms():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    decay, no_decay = param_groups(net, 0.05)
    assert [p.ndim for p in decay["params"]] == [4] and decay["weight_decay"] == 0.05
    assert all(p.ndim == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0


@pytest.mark.parametrize("name", ["adamw", "lamb", "sgd"])
def test_each_optimiser_reduces_a_quadratic(name):
    torch.manual_seed(0)
    net = torch.nn.Linear(8, 1)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    opt = build_optimizer(net, OptimConfig(name=name, weight_decay=0.0), lr=0.05)
    first = None
    for _ in range(60):
        loss = torch.nn.functional.mse_loss(net(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first


def test_set_lr_reaches_every_group():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
    opt = build_optimizer(net, OptimConfig(), lr=1.0)
    set_lr(opt, 0.25)
    assert [g["lr"] for g in opt.param_groups] == [0.25, 0.25]


def test_lamb_trust_ratio_scales_step_with_weight_norm():
    """LAMB's update size is ~lr × ||w|| per tensor, whatever the gradient scale."""
    for scale in (1e-3, 1e3):
        w = torch.nn.Parameter(torch.full((10,), 2.0))
        opt = Lamb([w], lr=0.1)
        w.grad = torch.full((10,), scale)
        before = w.detach().clone()
        opt.step()
        assert (w.detach() - before).norm().item() == pytest.approx(0.1 * before.norm().item(), rel=1e-3)


@torch.no_grad()
def _reference_lamb_step(params, state, lr, b1, b2, eps, wd):
    """LAMB written one tensor at a time (the loop the multi-tensor step replaced)."""
    for p in params:
        st = state.setdefault(p, {"t": 0, "m": torch.zeros_like(p), "v": torch.zeros_like(p)})
        st["t"] += 1
        g = p.grad
        st["m"].mul_(b1).add_(g, alpha=1 - b1)
        st["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
        update = (st["m"] / (1 - b1 ** st["t"])) / ((st["v"] / (1 - b2 ** st["t"])).sqrt() + eps)
        if wd:
            update = update + wd * p
        w_norm, u_norm = p.norm(), update.norm()
        trust = w_norm / u_norm if (w_norm > 0 and u_norm > 0) else torch.tensor(1.0)
        p.sub_(update * trust * lr)


def _net_pair():
    """Two identical small nets: 4-D, 2-D and 1-D tensors, one zero-initialised (trust ratio 1)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 6 * 6, 3))
    torch.nn.init.zeros_(net[0].bias)
    twin = copy.deepcopy(net)
    return net, twin


def _grads(net, seed):
    """The same gradients for both implementations, scaled differently per tensor.

    Set directly rather than back-propagated: an Adam-type update divides by the gradient's
    size, so a tensor whose gradient is near zero turns last-bit differences of the weights
    into full-size differences of the next update, in either implementation.
    """
    gen = torch.Generator().manual_seed(seed)
    for i, p in enumerate(net.parameters()):
        p.grad = torch.randn(p.shape, generator=gen) * 10.0 ** (i % 3 - 1)


@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_multi_tensor_lamb_equals_the_per_tensor_loop(wd):
    net, ref = _net_pair()
    opt = Lamb(net.parameters(), lr=0.01, betas=(0.9, 0.95), eps=1e-6, weight_decay=wd)
    state: dict = {}
    for i in range(20):
        _grads(net, i)
        _grads(ref, i)
        opt.step()
        _reference_lamb_step([p for p in ref.parameters()], state, 0.01, 0.9, 0.95, 1e-6, wd)
        for a, b in zip(net.parameters(), ref.parameters()):
            assert (a - b).abs().max().item() <= 1e-6, i
    assert all(float(opt.state[p]["step"]) == 20 for p in net.parameters())


def test_multi_tensor_lamb_skips_tensors_without_grads():
    net, _ = _net_pair()
    opt = Lamb(net.parameters(), lr=0.01)
    _grads(net, 0)
    net[3].weight.grad = None
    frozen = net[3].weight.detach().clone()
    opt.step()
    assert torch.equal(net[3].weight, frozen) and net[3].weight not in opt.state


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_built_optimisers_use_the_multi_tensor_path_and_equal_the_loop(name):
    net, ref = _net_pair()
    cfg = OptimConfig(name=name, weight_decay=0.05)
    opt = build_optimizer(net, cfg, lr=0.01)
    assert all(g["foreach"] or g.get("fused") for g in opt.param_groups)
    loop = build_optimizer(ref, cfg, lr=0.01)
    for g in loop.param_groups:
        g["foreach"], g["fused"] = False, None
    for i in range(20):
        _grads(net, i)
        _grads(ref, i)
        opt.step()
        loop.step()
    for a, b in zip(net.parameters(), ref.parameters()):
        assert (a - b).abs().max().item() <= 1e-6


def test_lamb_state_dict_round_trip_continues_identically():
    net, twin = _net_pair()
    opt = Lamb(net.parameters(), lr=0.01, weight_decay=0.05)
    for i in range(3):
        _grads(net, i)
        opt.step()
    twin.load_state_dict(net.state_dict())
    opt2 = Lamb(twin.parameters(), lr=0.01, weight_decay=0.05)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    for i in range(3, 6):
        _grads(net, i)
        _grads(twin, i)
        opt.step()
        opt2.step()
    for a, b in zip(net.parameters(), twin.parameters()):
        assert torch.equal(a, b)
