"""``anatplane experiment run CONFIG --out DIR`` and ``anatplane experiment report DIR``.

``run`` prepares the data, pretrains and publishes every arm (each through the trainer CLI),
fine-tunes every cell it has not finished before, then writes results.csv, results.md and
figures/.  ``report`` re-renders those from the stored cells without training.
"""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    r = sub.add_parser("run", help="run (or resume) an experiment")
    r.add_argument("config", type=Path, help="experiment YAML (see experiments/)")
    r.add_argument("--out", type=Path, required=True, help="experiment directory (resumed when it exists)")
    r.add_argument("--slurm", action="store_true",
                   help="pretrain each arm on SLURM via 'anatplane submit --wait', and fine-tune the cells as a "
                        "SLURM job array (submitit; one GPU per cell; requeue-safe, cached by fingerprint)")
    r.add_argument("--slurm-args", default="", help="'anatplane submit' resource/requeue options, e.g. "
                                                   "\"--partition gpu --gpus-per-node 4 --time 240\"; "
                                                   "cells use those that fit one single-GPU task, plus "
                                                   "--array-parallelism N (checked before anything runs)")
    r.add_argument("--workers", type=int, default=None, help="CPU: fine-tune cells at once (default: the file's)")
    r.add_argument("--devices", default=None,
                   help="where cells train: auto | cpu | cuda:0,cuda:1,... (default: the file's 'devices')")
    r.add_argument("--cells-per-device", type=int, default=None,
                   help="GPU: cells trained at once on each device (default: the file's)")
    p = sub.add_parser("report", help="re-render results.csv/md and figures from stored cells")
    p.add_argument("dir", type=Path, help="experiment directory")
    p.add_argument("--vs", default=None, metavar="ARM[,ARM]",
                   help="also compare every arm with these arms, paired per seed (e.g. rotation,genesis: "
                        "the generic SSL baselines); default: the file's protocol.compare_to")


def run(args: argparse.Namespace) -> int:
    from anatplane_dist.experiment.report import render_report

    if args.action == "report":
        against = [a.strip() for a in args.vs.split(",") if a.strip()] if args.vs is not None else None
        info = render_report(args.dir, against=against)
        print((args.dir / "results.md").read_text())
        bad = info["unreadable"]
        print(f"{info['cells']} cells -> {info['csv']}, {info['md']}, {len(info['figures'])} figure(s)"
              + (f"; {len(bad)} cell file(s) unreadable, listed as failed: {', '.join(bad)}" if bad else ""))
        return 1 if bad else 0
    from anatplane_dist.experiment.runner import run_experiment
    from anatplane_dist.experiment.spec import load_spec

    spec = load_spec(args.config)
    if args.workers is not None:
        spec.workers = max(1, args.workers)
    if args.devices is not None:
        spec.devices = args.devices
    if args.cells_per_device is not None:
        spec.cells_per_device = max(1, args.cells_per_device)
    # Ctrl-C: finished cells are on disk; the workers exit quietly and KeyboardInterrupt reaches
    # the top-level command, which prints one line and exits 130
    summary = run_experiment(spec, args.out, slurm=args.slurm, slurm_args=shlex.split(args.slurm_args))
    info = render_report(args.out)
    print((args.out / "results.md").read_text())
    print(f"{summary['cells']} cells ({summary['cells_cached']} cached) in {summary['seconds']} s -> "
          f"{info['csv']}, {info['md']}, {len(info['figures'])} figure(s)")
    failed = [a for a, v in summary["arms"].items() if v["status"] == "failed"]
    return 1 if failed or summary["cell_failures"] else 0
