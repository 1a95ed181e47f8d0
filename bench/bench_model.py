"""Model, loss and augmentation throughput on this machine, with same-run baselines.

    python bench/bench_model.py [--size 64] [--batch 8] [--width 16] [--depth 4]
                                [--models unet,resnet] [--compile] [--channels-last]
                                [--no-bf16] [--device cpu|cuda] [--iters 5]

For each architecture: one training step (forward, multitask loss with device-rendered
heatmaps, backward, SGD) in samples/s, for eager fp32 (the baseline), eager + bf16 autocast
and, with ``--compile``, ``torch.compile`` (inductor; first-step compile time reported
separately); every variant is printed as a ratio to eager in this run.  Then the heatmap
renderer (torch vs the numpy reference, same lines, same grid) and the augmentation of a batch
(samples/s).  On a GPU (``--device cuda``) the step also reports achieved TFLOP/s from an
analytic count of the convolutions (forward x 3 for forward + backward) and MFU against
``--peak-tflops``.  Defaults run in about a minute on 2 CPU cores; the paper's network is
``--size 224 --width 64 --depth 4``.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Callable

import numpy as np
import torch
from torch import nn

from anatplane_dist.core.geometry import render_heatmaps
from anatplane_dist.data.augment import augment_batch
from anatplane_dist.data.config import AugmentConfig
from anatplane_dist.model import ModelConfig, build_model
from anatplane_dist.objectives.config import LossConfig
from anatplane_dist.objectives.losses import MultitaskLoss, render_heatmaps_torch


def make_batch(b: int, k: int, size: int, device: torch.device, seed: int = 0) -> dict:
    """A batch in the stream's layout with random lines through the grid."""
    g = torch.Generator().manual_seed(seed)
    th = torch.rand(b, k, generator=g) * np.pi
    p = torch.rand(b, k, 2, generator=g) * size
    a, bb = th.cos(), th.sin()
    lines = torch.stack([a, bb, -(a * p[..., 0] + bb * p[..., 1])], -1)
    return {"image": torch.randn(b, 1, size, size, generator=g).to(device),
            "lines": lines.to(device), "valid": torch.ones(b, k, device=device),
            "loc": torch.rand(b, generator=g).to(device), "loc_valid": torch.ones(b, device=device),
            "key": [str(i) for i in range(b)]}


def conv_flops(model: nn.Module, x: torch.Tensor) -> float:
    """Forward FLOPs (2 x MACs) of every Conv2d / ConvTranspose2d / Linear, counted with hooks."""
    total = [0.0]

    def hook(m: nn.Module, inp, out) -> None:
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
            total[0] += 2.0 * out.numel() * k
        elif isinstance(m, nn.ConvTranspose2d):
            k = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            total[0] += 2.0 * inp[0].numel() * k
        elif isinstance(m, nn.Linear):
            total[0] += 2.0 * out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total[0]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step: Callable[[], None], iters: int, device: torch.device) -> tuple[float, float]:
    """(first-step seconds incl. any compilation, mean seconds per step after one more warm-up)."""
    t = time.perf_counter()
    step()
    sync(device)
    first = time.perf_counter() - t
    step()
    sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        step()
    sync(device)
    return first, (time.perf_counter() - t) / iters


def make_step(cfg: ModelConfig, batch: dict, loss_fn: MultitaskLoss, bf16: bool, compiled: bool,
              channels_last: bool, device: torch.device) -> tuple[Callable[[], None], nn.Module, float]:
    """One training step closure (forward, loss, backward, SGD) and its model and FLOPs."""
    torch.manual_seed(0)
    model = build_model(cfg, 2).to(device).train()
    x = batch["image"]
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    flops = conv_flops(model, x) * 3.0            # backward ~ 2x forward
    run = torch.compile(model) if compiled else model
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = run(x)
        loss, _ = loss_fn(out, batch)
        loss.backward()
        opt.step()
    return step, model, flops


def bench_model(name: str, args: argparse.Namespace, device: torch.device) -> list[dict]:
    """All variants of one architecture, timed in interleaved rounds (one step of each per round,
    median per variant) so that load from other processes hits every variant alike."""
    cfg = ModelConfig(name=name, width=args.width, depth=args.depth)
    batch = make_batch(args.batch, 2, args.size, device)
    loss_fn = MultitaskLoss(LossConfig(sigma_px=args.sigma_px))
    variants = [("eager", False, False)]
    if not args.no_bf16:
        variants.append(("bf16", True, False))
    if args.compile:
        variants.append(("compile", False, True))
        if not args.no_bf16:
            variants.append(("compile+bf16", True, True))
    steps, firsts, times = [], [], []
    for _, bf16, compiled in variants:
        step, model, flops = make_step(cfg, batch, loss_fn, bf16, compiled, args.channels_last, device)
        t = time.perf_counter()
        step()                                    # includes compilation for compiled variants
        sync(device)
        firsts.append(time.perf_counter() - t)
        step()
        steps.append((step, model, flops))
        times.append([])
    for _ in range(args.iters):
        for i, (step, _, _) in enumerate(steps):
            sync(device)
            t = time.perf_counter()
            step()
            sync(device)
            times[i].append(time.perf_counter() - t)
    rows = []
    for (label, _, _), (_, model, flops), first, ts in zip(variants, steps, firsts, times):
        dt = float(np.median(ts))
        row = {"model": name, "variant": label, "size": args.size, "batch": args.batch,
               "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
               "channels_last": args.channels_last, "first_step_s": round(first, 2),
               "s_per_step": round(dt, 4), "samples_per_s": round(args.batch / dt, 1),
               "tflops": round(flops / dt / 1e12, 3)}
        if device.type == "cuda" and args.peak_tflops:
            row["mfu"] = round(flops / dt / 1e12 / args.peak_tflops, 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = rows[0]["samples_per_s"]
    for r in rows[1:]:
        print(f"  {name}: {r['variant']} / eager = {r['samples_per_s'] / base:.2f}x", flush=True)
    return rows


def bench_renderer(args: argparse.Namespace, device: torch.device) -> None:
    """numpy reference vs torch renderer on the same lines, alternated per round (median)."""
    b, k, size = args.render_batch, 2, args.render_size
    batch = make_batch(b, k, size, torch.device("cpu"), seed=1)
    lines_np, valid_np = batch["lines"].numpy(), batch["valid"].numpy() > 0
    lines, valid = batch["lines"].to(device), batch["valid"].to(device)
    out = render_heatmaps_torch(lines, valid, size, size, args.sigma_px)       # warm-up
    t_np, t_torch = [], []
    for _ in range(max(3, args.iters)):
        t = time.perf_counter()
        ref = render_heatmaps(lines_np, valid_np, (size, size), args.sigma_px)
        t_np.append(time.perf_counter() - t)
        sync(device)
        t = time.perf_counter()
        out = render_heatmaps_torch(lines, valid, size, size, args.sigma_px)
        sync(device)
        t_torch.append(time.perf_counter() - t)
    numpy_s, torch_s = float(np.median(t_np)), float(np.median(t_torch))
    err = float(np.abs(out.cpu().numpy() - ref).max())
    print(f"heatmaps {b}x{k}x{size}^2: numpy {b / numpy_s:,.0f} samples/s, torch ({device.type}) "
          f"{b / torch_s:,.0f} samples/s, torch / numpy = {numpy_s / torch_s:.2f}x, max |diff| {err:.1e}",
          flush=True)


def bench_loss(args: argparse.Namespace, device: torch.device) -> None:
    """Multitask loss (device heatmaps + masked MSE, forward + backward): eager vs compiled,
    alternated per round (median)."""
    b, size = args.render_batch, args.render_size
    batch = make_batch(b, 2, size, device, seed=3)
    pred = torch.rand(b, 2, size, size, device=device, requires_grad=True)
    loc = torch.rand(b, device=device, requires_grad=True)
    variants = [("eager", MultitaskLoss(LossConfig(sigma_px=args.sigma_px)))]
    if args.compile:      # the LossConfig.compile path: the orientation term compiled
        variants.append(("compile", MultitaskLoss(LossConfig(sigma_px=args.sigma_px, compile=True))))
    steps, firsts, times = [], [], []
    for _, fn in variants:
        def step(fn=fn) -> None:
            total, _ = fn({"heatmaps": pred, "location": loc}, batch)
            total.backward()
        t = time.perf_counter()
        step()
        sync(device)
        firsts.append(time.perf_counter() - t)
        steps.append(step)
        times.append([])
    for _ in range(max(3, args.iters)):
        for i, step in enumerate(steps):
            sync(device)
            t = time.perf_counter()
            step()
            sync(device)
            times[i].append(time.perf_counter() - t)
    base = float(np.median(times[0]))
    for (label, _), first, ts in zip(variants, firsts, times):
        dt = float(np.median(ts))
        print(f"loss {b}x2x{size}^2 {label}: {b / dt:,.0f} samples/s (first call {first:.1f} s), "
              f"{label} / eager = {base / dt:.2f}x", flush=True)


def bench_augment(args: argparse.Namespace, device: torch.device) -> None:
    batch = make_batch(args.render_batch, 2, args.render_size, device, seed=2)
    cfg = AugmentConfig(p=1.0)
    gen = torch.Generator(device=device).manual_seed(0)
    first, dt = time_steps(lambda: augment_batch(batch, cfg, gen), args.iters, device)
    print(f"augment_batch {args.render_batch}x1x{args.render_size}^2 (affine + intensity): "
          f"{args.render_batch / dt:,.0f} samples/s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--models", default="unet,resnet")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="add torch.compile (inductor) variants")
    ap.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast variants")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--sigma-px", type=float, default=6.0)
    ap.add_argument("--render-size", type=int, default=224)
    ap.add_argument("--render-batch", type=int, default=32)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--peak-tflops", type=float, default=0.0,
                    help="dense bf16 peak of the device for MFU (e.g. 989 for an H100 SXM)")
    args = ap.parse_args()
    device = torch.device(args.device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"cpus {os.cpu_count()}, load average {load:.1f} (timings are only comparable within a run)",
          flush=True)
    for name in filter(None, (n.strip() for n in args.models.split(","))):   # --models "" skips
        bench_model(name, args, device)
    bench_renderer(args, device)
    bench_loss(args, device)
    bench_augment(args, device)


if __name__ == "__main__":
    main()
