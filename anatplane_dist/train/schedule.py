"""Optimisers and the per-iteration LR schedule.

The LR is a pure function of the optimiser step (linear warm-up, then cosine to ``min_lr``),
so resuming needs only the step count to be exact: there is no scheduler state to save.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch

from anatplane_dist.train.options import OptimConfig


def warmup_cosine(step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """LR factor in [0, 1] at the 0-based ``step`` about to be taken: linear warm-up over
    ``warmup_steps``, then a cosine from 1 to 0 at ``total_steps`` (held at 0 after it).
    The one cosine of the package: pretraining (:class:`LRSchedule`) and fine-tuning use it."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / span))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class LRSchedule:
    """Warm-up + cosine, evaluated at the 0-based optimiser step about to be taken."""
    peak: float
    total_steps: int
    warmup_steps: int = 0
    min_lr: float = 0.0
    cosine: bool = True

    def __call__(self, step: int) -> float:
        factor = warmup_cosine(step, self.total_steps, self.warmup_steps)
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return self.peak * factor
        if not self.cosine:
            return self.peak
        return self.min_lr + (self.peak - self.min_lr) * factor


def make_schedule(optim: OptimConfig, peak_lr: float, total_steps: int, steps_per_epoch: int) -> LRSchedule:
    """Schedule in optimiser steps; warm-up in epochs is converted with ``steps_per_epoch``."""
    warmup = optim.warmup_steps if optim.warmup_steps > 0 else int(round(optim.warmup_epochs * steps_per_epoch))
    return LRSchedule(peak=peak_lr, total_steps=total_steps, warmup_steps=min(warmup, total_steps),
                      min_lr=optim.min_lr, cosine=optim.cosine)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and norm weights (ndim <= 1), as is usual for ConvNets/ViTs."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al. 2019): Adam update rescaled per tensor by ||w|| / ||update||.

    Kept in torch so that it runs everywhere (DeepSpeed's FusedLamb is a CUDA JIT build);
    large-batch runs use it with the linear LR rule.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                t = state["step"]
                g = p.grad.float()
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                update = (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + group["eps"])
                if group["weight_decay"]:
                    update = update + group["weight_decay"] * p.float()
                w_norm, u_norm = p.float().norm(), update.norm()
                trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                p.add_((update * trust * -group["lr"]).to(p.dtype))
        return loss


def build_optimizer(model: torch.nn.Module, optim: OptimConfig, lr: float) -> torch.optim.Optimizer:
    """A torch optimiser (also the one handed to DeepSpeed, which wraps it for ZeRO)."""
    groups = param_groups(model, optim.weight_decay)
    betas = (float(optim.betas[0]), float(optim.betas[1]))
    if optim.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
    if optim.name == "lamb":
        return Lamb(groups, lr=lr, betas=betas)
    if optim.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=optim.momentum)
    raise ValueError(f"unknown optimiser {optim.name!r} (adamw | lamb | sgd)")
