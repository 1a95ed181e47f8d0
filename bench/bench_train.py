"""End-to-end training throughput (stream → augment → model → loss → optimiser → checkpoints).

    python bench/bench_train.py [--cache runs/bench-data] [--steps 48] [--heart-steps 3] [--skip-heart]

Every variant runs ``launch/pretrain.py`` for real in a subprocess (``torchrun`` /
``deepspeed`` launchers for 2 ranks, ``OMP_NUM_THREADS`` = cores / ranks), on the built-in
heart phantom sharded at 64² (tiny preset) and, unless ``--skip-heart``, at 224² (heart preset:
the paper's U-Net, a few steps). Reported: median samples/s of the logged rows after the
first (start-up, worker spawn and the first-step allocations excluded), wall time of the
whole command, and each variant's ratio to the 1-rank single-process baseline of this run
(so 2-rank scaling on this CPU is the ``ddp``/``deepspeed`` row's ratio).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = str(REPO / "launch" / "pretrain.py")
PY = sys.executable


def shards_for(cache: Path, grid: int, spacing: float) -> Path:
    """The heart phantom sharded on a ``grid``² model grid (generated once into ``cache``)."""
    from anatplane_dist.cli import main as anatplane

    phantom, out = cache / "phantom", cache / f"shards-{grid}"
    if not (phantom / ".complete").exists():
        assert anatplane(["phantom", "heart", "--subjects", "6", "--out", str(phantom), "--seed", "0",
                          "--workers", "2"]) == 0
        (phantom / ".complete").write_text("ok\n")
    if not (out / "manifest.json").exists():
        assert anatplane(["shard", "--profile", "heart", "--input", str(phantom), "--out", str(out), "--grid",
                          str(grid), "--spacing", str(spacing), "--val-fraction", "0.25", "--workers", "2",
                          "--shard-size", "128", "--no-progress"]) == 0
    return out


def run_variant(name: str, launcher: list[str], ranks: int, config: str, overrides: list[str]) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                                 "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // ranks))
    cmd = launcher + [PRETRAIN, "--config", config, "--run-dir", str(run_dir), *overrides]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    train = [r for r in rows if "samples_per_s" in r]
    rates = [r["samples_per_s"] for r in train[1:]] or [train[0]["samples_per_s"]]
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"variant": name, "ranks": ranks, "steps": train[-1]["step"], "samples_per_s": statistics.median(rates),
            "data_ms_per_it": 1000 * statistics.median(r["data_time"] for r in train[1:] or train),
            "wall_s": wall, "final_loss": train[-1]["loss"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=REPO / "runs" / "bench-data")
    ap.add_argument("--steps", type=int, default=48, help="optimiser steps of the tiny variants (1 rank)")
    ap.add_argument("--heart-steps", type=int, default=3)
    ap.add_argument("--skip-heart", action="store_true")
    args = ap.parse_args()

    tiny = str(REPO / "launch" / "configs" / "tiny-cpu.yaml")
    s64 = shards_for(args.cache, 64, 3.0)
    common = [f"data.shards={s64}", "train.progress=lines", "train.log_every=4", "train.val_every=100000",
              "train.ckpt_every=100000", "train.epochs=1"]
    n1 = args.steps * 8  # samples for `steps` steps of micro 8 on one rank; 2 ranks run half the steps
    torchrun = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    deepspeed = [str(Path(PY).parent / "deepspeed"), "--num_gpus", "2"]
    variants = [
        ("tiny single fp32", [PY], 1, tiny, common + [f"data.samples_per_epoch={n1}", "train.backend=single"]),
        ("tiny single bf16", [PY], 1, tiny, common + [f"data.samples_per_epoch={n1}", "train.backend=single",
                                                     "train.precision=bf16"]),
        ("tiny ddp x2 fp32", torchrun, 2, tiny, common + [f"data.samples_per_epoch={n1}", "train.backend=ddp"]),
        ("tiny deepspeed x2 zero1", deepspeed, 2, tiny, common + [f"data.samples_per_epoch={n1}",
                                                                   "train.backend=deepspeed", "train.zero_stage=1"]),
        ("tiny deepspeed x2 zero2", deepspeed, 2, tiny, common + [f"data.samples_per_epoch={n1}",
                                                                   "train.backend=deepspeed", "train.zero_stage=2"]),
    ]
    if not args.skip_heart:
        s224 = shards_for(args.cache, 224, 1.26)
        heart = str(REPO / "launch" / "configs" / "heart.yaml")
        variants.append(("heart U-Net 224 single fp32", [PY], 1, heart,
                         [f"data.shards={s224}", "data.batch_size=4", "data.num_workers=1",
                          f"data.samples_per_epoch={4 * (args.heart_steps + 1)}", "train.backend=single",
                          "train.precision=fp32", "train.channels_last=false", "train.compile=false",
                          "train.log_every=1", "train.val_every=100000", "train.ckpt_every=100000", "train.epochs=1",
                          "train.progress=lines", "optim.warmup_epochs=0", "train.val_batches=1"]))
    results = []
    for name, launcher, ranks, config, overrides in variants:
        res = run_variant(name, launcher, ranks, config, overrides)
        results.append(res)
        print(json.dumps(res), flush=True)
    base = results[0]["samples_per_s"]
    print(f"\n{'variant':32s} {'ranks':>5s} {'steps':>5s} {'samples/s':>10s} {'vs 1-rank':>9s} {'data ms/it':>10s} {'wall s':>7s}")
    for r in results:
        print(f"{r['variant']:32s} {r['ranks']:5d} {r['steps']:5d} {r['samples_per_s']:10.1f} "
              f"{r['samples_per_s'] / base:8.2f}x {r['data_ms_per_it']:10.1f} {r['wall_s']:7.1f}")
    print(f"\n(os.cpu_count()={os.cpu_count()}; ratios against 'tiny single fp32' of this run; the heart row "
          "is another model and grid, its ratio is not a scaling figure)")


if __name__ == "__main__":
    main()
