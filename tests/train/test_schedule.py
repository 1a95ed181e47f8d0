"""train/schedule.py: per-iteration warm-up + cosine, optimisers."""
from __future__ import annotations

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
