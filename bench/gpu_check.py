#!/usr/bin/env python
"""One command that measures a GPU node end to end and prints a JSON summary (issue 16).

    python bench/gpu_check.py --out gpu_check.json                 # one GPU, about 6-8 minutes
    python bench/gpu_check.py --wheelhouse wheelhouse --out ...    # offline node: install first
    python bench/gpu_check.py --smoke                               # CPU, tiny sizes (make test)

Sections (each timed; a failing section is recorded with its error and the rest still run):

- ``model``: the network alone (bench/bench_model.py's step: forward, multitask loss with
  device heatmaps, backward, SGD) at batch 32 and 128: eager fp32, bf16, bf16 + channels_last,
  compile + bf16 (+ channels_last); samples/s, TFLOP/s from a convolution FLOP count and MFU
  against ``--peak-tflops`` (989 = H100/H200 dense bf16);
- ``trainer_deepspeed_zero1``, ``trainer_ddp``: ``launch/pretrain.py`` for real on phantom
  shards (the heart preset: bf16, channels_last, compile, LAMB) under DeepSpeed ZeRO-1 and under
  DDP (on one GPU: one rank,
  where DDP has nothing to all-reduce and the torch backend runs the bare module): median
  samples/s of the logged rows after the first, the ratio to the model alone at the same batch
  and settings, the data wait per micro-batch, and the step's phases (``train.phase_times``:
  host-to-device, augmentation, forward, loss, backward, optimiser step; CUDA events);
- ``loader``: the training stream alone at 4 / 8 / 16 workers (samples/s);
- ``sharder``: samples/s for 1, 2, 4, ... workers up to the core count and the efficiency
  against one worker, on 32 phantom subjects (bench/bench_shard.py), and the writer alone;
- ``smoke``: the DDP run published (``anatplane publish``), then ``anatplane finetune seg
  --device cuda`` from it for a few steps.

``--smoke`` runs the same code at tiny sizes on the CPU (the network alone compiled once, the
trainer uncompiled: inductor costs about a minute per process there) so that ``make test``
keeps it working. The exit status is 1 when any section failed (its error is in ``errors``).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = str(REPO / "launch" / "pretrain.py")
PEAK_H200_BF16 = 989.0   # TFLOP/s, dense bf16 (H100/H200 SXM)


# ---------------------------------------------------------------------------- set-up
def install_wheelhouse(wheelhouse: Path, target: Path) -> None:
    """Every wheel of ``make wheelhouse`` into a scratch folder put first on the import path.

    ``--no-deps``: the folder already holds the whole closure minus torch, which the node's
    image provides (pip's resolver would otherwise look for torch in the wheelhouse)."""
    wheels = sorted(str(w) for w in wheelhouse.glob("*.whl") if not w.name.startswith("anatplane_dist-"))
    if not wheels:
        raise SystemExit(f"{wheelhouse}: no wheels (make wheelhouse WHEEL_PY=<the node's Python>)")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target",
                    str(target), *wheels], check=True)
    sys.path.insert(0, str(target))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH", "")]))


def child_env(threads: int) -> dict[str, str]:
    """The environment of launched commands: this repo importable, no inherited rank variables."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                                "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def anatplane(args: list[str], env: dict[str, str], timeout: float = 600) -> None:
    proc = subprocess.run([sys.executable, "-m", "anatplane_dist.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"anatplane {' '.join(args[:2])} failed ({proc.returncode}):\n"
                           f"{(proc.stdout + proc.stderr)[-2000:]}")


class Sizes:
    """Everything that differs between the GPU run and ``--smoke``."""

    def __init__(self, smoke: bool, cores: int) -> None:
        self.smoke = smoke
        self.device = "cpu" if smoke else "cuda"
        # network alone: the paper U-Net on 224^2 (smoke: a 4-channel U-Net on 32^2)
        self.model = dict(size=32, width=4, depth=2) if smoke else dict(size=224, width=64, depth=4)
        self.batches = [2, 4] if smoke else [32, 128]
        self.iters = 2 if smoke else 10
        # phantom -> shards (the sharder figures used 12 subjects, 192^2, 20 frames)
        self.phantom = (["--subjects", "3", "--size", "64", "--frames", "4", "--labelled", "4"] if smoke else
                        ["--subjects", "12", "--size", "192", "--frames", "20", "--labelled", "8"])
        self.grid, self.spacing = (64, 3.0) if smoke else (224, 1.26)
        self.trainer_batch = 2 if smoke else 128
        self.trainer_steps = 3 if smoke else 40
        self.trainer_extra = (["model.width=4", "model.depth=2", "model.loc_hidden=[8]", "train.compile=false",
                               "data.num_workers=1", "data.shuffle_buffer=16", "data.shuffle_initial=4"]
                              if smoke else ["data.num_workers=12"])
        self.loader_workers = [0, 1] if smoke else [4, 8, 16]
        self.loader_batches = 4 if smoke else 100
        self.shard_workers = [1, 2] if smoke else _counts(cores)
        # the scaling needs more studies than workers (a study is the unit of work)
        self.shard_phantom = None if smoke else ["--subjects", "32", "--size", "192", "--frames", "10"]
        self.finetune = ["--steps", "2", "--workers", "1"] if smoke else ["--steps", "100", "--workers", "4"]


def _counts(cores: int) -> list[int]:
    sys.path.insert(0, str(REPO / "bench"))
    from bench_shard import worker_counts
    return worker_counts(cores)


# ---------------------------------------------------------------------------- sections
def section_model(sz: Sizes, peak: float) -> list[dict]:
    """The network alone, variants interleaved per round (median step time)."""
    import torch
    sys.path.insert(0, str(REPO / "bench"))
    from bench_model import make_batch, make_step, sync

    from anatplane_dist.model import ModelConfig
    from anatplane_dist.objectives.losses import LossConfig, MultitaskLoss

    device = torch.device(sz.device)
    cfg = ModelConfig(name="unet", width=sz.model["width"], depth=sz.model["depth"])
    loss_fn = MultitaskLoss(LossConfig(sigma_px=2.0))
    rows = []
    for batch_size in sz.batches:
        batch = make_batch(batch_size, 2, sz.model["size"], device)
        # (label, bf16, compiled, channels_last); the smoke run compiles one variant at its first
        # batch only (inductor on a CPU takes ~30 s per graph)
        variants = [("eager fp32", False, False, False), ("bf16", True, False, False),
                    ("bf16 channels_last", True, False, True)]
        # compile + bf16 without channels_last only at the first batch (the baseline row):
        # each compiled variant costs ~1 min of compilation on the node
        if not sz.smoke and batch_size == sz.batches[0]:
            variants.append(("compile bf16", True, True, False))
        if not sz.smoke or batch_size == sz.batches[0]:
            variants.append(("compile bf16 channels_last", True, True, True))
        steps, times = [], []
        for label, bf16, compiled, cl in variants:
            t = time.perf_counter()
            step, model, flops = make_step(cfg, batch, loss_fn, bf16, compiled, cl, device)
            step()
            sync(device)
            first = time.perf_counter() - t
            step()
            steps.append((label, step, flops, first))
            times.append([])
        for _ in range(sz.iters):
            for i, (_, step, _, _) in enumerate(steps):
                sync(device)
                t = time.perf_counter()
                step()
                sync(device)
                times[i].append(time.perf_counter() - t)
        base = None
        for (label, _, flops, first), ts in zip(steps, times):
            dt = statistics.median(ts)
            row = {"batch": batch_size, "variant": label, "samples_per_s": round(batch_size / dt, 1),
                   "ms_per_step": round(1e3 * dt, 2), "first_step_s": round(first, 1),
                   "tflops": round(flops / dt / 1e12, 3)}
            if device.type == "cuda":
                row["mfu"] = round(flops / dt / 1e12 / peak, 3)
            base = base or row["samples_per_s"]
            row["vs_eager_fp32"] = round(row["samples_per_s"] / base, 2)
            rows.append(row)
        del steps
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def make_data(work: Path, sz: Sizes, env: dict[str, str], cores: int) -> tuple[Path, Path, Path]:
    """Phantom heart (+ labelled ACDC-layout patients) and its shards on the model grid."""
    data, acdc, shards = work / "heart", work / "acdc", work / "shards"
    anatplane(["phantom", "heart", "--out", str(data), "--labelled-out", str(acdc), "--workers",
               str(max(1, min(cores, 16))), *sz.phantom], env)
    anatplane(["shard", "--profile", "heart", "--input", str(data), "--out", str(shards), "--grid", str(sz.grid),
               "--spacing", str(sz.spacing), "--val-fraction", "0.25", "--workers", str(max(1, min(cores, 16))),
               "--shard-size", "200", "--no-progress"], env)
    return data, acdc, shards


def run_trainer(name: str, backend: str, stage: int, shards: Path, run_dir: Path, sz: Sizes, ranks: int,
                env: dict[str, str]) -> dict:
    """``launch/pretrain.py --config heart`` under torchrun, as a user would start it."""
    overrides = [f"data.shards={shards}", f"data.batch_size={sz.trainer_batch}",
                 f"data.samples_per_epoch={sz.trainer_batch * ranks * (sz.trainer_steps + 1)}",
                 f"train.backend={backend}", f"train.zero_stage={stage}", f"train.max_steps={sz.trainer_steps}",
                 "train.global_batch=0", "train.grad_accum=1", f"train.log_every={max(1, sz.trainer_steps // 6)}",
                 "train.val_batches=2", "train.progress=lines", "train.phase_times=true", "optim.warmup_epochs=0",
                 *sz.trainer_extra]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
           PRETRAIN, "--config", "heart", "--run-dir", str(run_dir), *overrides]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in rows if "samples_per_s" in r]
    later = train[1:] or train
    return {"run": name, "backend": backend, "zero_stage": stage, "ranks": ranks, "batch_per_rank": sz.trainer_batch,
            "steps": train[-1]["step"], "samples_per_s": round(statistics.median(r["samples_per_s"] for r in later), 1),
            "first_row_samples_per_s": round(train[0]["samples_per_s"], 1),
            "data_wait_ms_per_micro_batch": round(1e3 * statistics.median(r["data_time"] for r in later), 2),
            "phase_ms_per_step": {k.split("/", 1)[1]: round(statistics.median(r[k] for r in later), 2)
                                  for k in later[0] if k.startswith("ms/")},
            "wall_s": round(wall, 1), "final_loss": round(train[-1]["loss"], 4)}


def section_loader(sz: Sizes, shards: Path) -> list[dict]:
    from anatplane_dist.data.stream import DataConfig, make_train_loader
    from anatplane_dist.train.config import resolve_shard_dir

    rows = []
    for w in sz.loader_workers:
        cfg = resolve_shard_dir(DataConfig(shards=str(shards), batch_size=sz.trainer_batch, num_workers=w,
                                           shuffle_buffer=256, shuffle_initial=64,
                                           samples_per_epoch=sz.trainer_batch * (sz.loader_batches + 4)))
        loader, _ = make_train_loader(cfg)
        it = iter(loader)
        for _ in range(2):             # worker start-up outside the timing
            next(it)
        t, n = time.perf_counter(), 0
        for _ in range(sz.loader_batches):
            n += len(next(it)["key"])
        rows.append({"workers": w, "samples_per_s": round(n / (time.perf_counter() - t), 1)})
        del it, loader
    return rows


def section_sharder(sz: Sizes, data: Path, work: Path, env: dict[str, str], cores: int) -> dict:
    sys.path.insert(0, str(REPO / "bench"))
    from bench_shard import shard_scaling, writer_alone
    if sz.shard_phantom:
        data = work / "heart-scaling"
        anatplane(["phantom", "heart", "--out", str(data), "--workers", str(max(1, min(cores, 16))),
                   *sz.shard_phantom], env)
    load = os.getloadavg()[0]
    rows = shard_scaling(data, work / "scaling", sz.shard_workers, grid=sz.grid, spacing=sz.spacing)
    return {"cpus": os.cpu_count(), "load_avg_before": round(load, 2), "rows": rows,
            "writer_alone": writer_alone(work / "writer", samples=200 if sz.smoke else 3000)}


def section_smoke(sz: Sizes, run_dir: Path, acdc: Path, work: Path, env: dict[str, str]) -> dict:
    models, ft = work / "models", work / "ft"
    t = time.perf_counter()
    anatplane(["publish", str(run_dir), "--to", str(models), "--name", "gpu-check"], env)
    anatplane(["finetune", "seg", "--data", str(acdc), "--pretrained", str(models / "gpu-check" / "latest"),
               "--labels", "1", "--seeds", "0", "--out", str(ft), "--device", sz.device, *sz.finetune], env)
    rows = list(csv.DictReader((ft / "results.csv").open()))   # one row per arm x count x seed x subject x class
    return {"published": str(models / "gpu-check"), "finetune_device": sz.device,
            "result_rows": len(rows), "arms": sorted({r.get("arm", "?") for r in rows}),
            "seconds": round(time.perf_counter() - t, 1)}


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: the same code path in seconds")
    ap.add_argument("--out", type=Path, help="also write the JSON summary here")
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed)")
    ap.add_argument("--wheelhouse", type=Path, help="install these wheels (make wheelhouse) into a scratch "
                    "--target first, for nodes without internet")
    ap.add_argument("--peak-tflops", type=float, default=PEAK_H200_BF16)
    ap.add_argument("--skip", default="", help="comma list of sections to leave out")
    args = ap.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    summary: dict[str, Any] = {"mode": "smoke" if args.smoke else "gpu", "sections": {}, "errors": {}}
    try:
        if args.wheelhouse:
            install_wheelhouse(args.wheelhouse, work / "site")
        import torch
        cores = os.cpu_count() or 1
        summary["node"] = {"cpus": cores, "torch": torch.__version__,
                           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                           "gpus": torch.cuda.device_count()}
        if args.wheelhouse:   # where the node-side packages really came from
            import importlib
            summary["node"]["imported_from"] = {m: str(Path(importlib.import_module(m).__file__).parent)
                                                for m in ("deepspeed", "webdataset", "pydicom", "nibabel")}
        if not args.smoke and not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --smoke on a CPU machine")
        sz = Sizes(args.smoke, cores)
        ranks = 1 if args.smoke else max(1, torch.cuda.device_count())
        env = child_env(1 if args.smoke else max(1, cores // (2 * ranks)))
        skip = set(filter(None, args.skip.split(",")))
        ctx: dict[str, Any] = {}

        def run(name: str, fn: Callable[[], Any]) -> None:
            if name in skip:
                return
            t = time.perf_counter()
            try:
                summary["sections"][name] = fn()
            except Exception as e:   # one failing section must not hide the others' numbers
                summary["errors"][name] = f"{type(e).__name__}: {e}"[-3000:]
                traceback.print_exc()
            summary.setdefault("seconds", {})[name] = round(time.perf_counter() - t, 1)
            print(f"[gpu_check] {name}: {summary['seconds'][name]} s", file=sys.stderr, flush=True)

        run("model", lambda: section_model(sz, args.peak_tflops))
        run("data", lambda: ctx.update(zip(("data", "acdc", "shards"), make_data(work, sz, env, cores))) or
            {"shards": str(ctx["shards"])})
        if "shards" in ctx:
            def trainer(name: str, backend: str, stage: int) -> dict:
                run_dir = work / f"run-{backend}"
                row = run_trainer(name, backend, stage, ctx["shards"], run_dir, sz, ranks, env)
                ctx[f"run_{backend}"] = run_dir
                # the network alone at the trainer's batch, with the trainer's settings (bf16,
                # channels_last, compile; the smoke trainer does not compile)
                variant = "bf16 channels_last" if sz.smoke else "compile bf16 channels_last"
                alone = [r for r in summary["sections"].get("model", [])
                         if r["batch"] == sz.trainer_batch and r["variant"] == variant]
                if alone:
                    row.update(model_alone_variant=variant, model_alone_samples_per_s=alone[0]["samples_per_s"],
                               ratio_to_model_alone=round(row["samples_per_s"] / ranks / alone[0]["samples_per_s"],
                                                          3))
                return row
            # separate sections: one backend failing must not hide the other's numbers
            run("trainer_deepspeed_zero1", lambda: trainer("deepspeed zero1", "deepspeed", 1))
            run("trainer_ddp", lambda: trainer("ddp", "ddp", 0))
            run("loader", lambda: section_loader(sz, ctx["shards"]))
            run("sharder", lambda: section_sharder(sz, ctx["data"], work, env, cores))
            if "run_ddp" in ctx:
                run("smoke", lambda: section_smoke(sz, ctx["run_ddp"], ctx["acdc"], work, env))
    finally:
        summary["total_s"] = round(time.perf_counter() - t_start, 1)
        text = json.dumps(summary, indent=1)
        print(text, flush=True)
        if args.out:
            args.out.write_text(text + "\n")
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
