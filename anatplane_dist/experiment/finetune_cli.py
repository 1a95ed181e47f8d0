"""``anatplane finetune seg|cls``: the low-label protocol on a target task, from published weights.

    anatplane finetune seg --data ACDC_ROOT --pretrained PUBLISHED_DIR_OR_FILE --out DIR
    anatplane finetune cls --data KNEE_ROOT --pretrained PUBLISHED_DIR_OR_FILE --out DIR

Images are resampled to the grid the encoder was pretrained on (read from the published
weights when recorded there, else ``--grid``/``--spacing``) and normalised as in pretraining.
Results: ``DIR/results.{json,md,png}`` and one file per run in ``DIR/runs/`` (reused on re-runs).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch

from anatplane_dist.core.errors import ExitCode
from anatplane_dist.experiment.lowlabel import ClsTask, ProtocolConfig, SegTask, run_protocol
from anatplane_dist.finetune.backbone import (
    INITS,
    TRANSFERS,
    BackboneFactory,
    PretrainedError,
    grid_from_pretrained,
    read_pretrained_info,
)
from anatplane_dist.finetune.classification import ClsTrainConfig
from anatplane_dist.finetune.data import FinetuneDataError, GridSpec, load_acdc, load_knee
from anatplane_dist.finetune.segmentation import SegTrainConfig
from anatplane_dist.model import ModelConfig

__all__ = ["add_arguments", "run", "main"]


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", choices=("seg", "cls"),
                        help="seg: ACDC-format segmentation (Dice/HD95); cls: knee stack labels (AUC/accuracy)")
    parser.add_argument("--data", type=Path, required=True,
                        help="seg: <root>/patientXXX/patientXXX_frameYY.nii.gz + _gt; "
                             "cls: <root>/<subject>/<series>/*.dcm + <root>/labels.csv")
    parser.add_argument("--pretrained", type=Path, default=None,
                        help="published weights (a published version or name directory with encoder.safetensors "
                             "[+ decoder.safetensors], or a file in it)")
    parser.add_argument("--out", type=Path, required=True, help="results directory")
    parser.add_argument("--init", default=",".join(INITS),
                        help="comma list of initialisations to compare (default: random,pretrained)")
    parser.add_argument("--transfer", choices=TRANSFERS, default="encoder+decoder",
                        help="seg: which pretrained parts to transfer (cls always transfers the encoder)")
    parser.add_argument("--labels", default="auto",
                        help="comma list of labelled-subject counts or 'all'; a count larger than the labelled "
                             "pool is refused (default auto: 1, 2, 4, 8 up to the pool, and all)")
    parser.add_argument("--seeds", default="0,1", help="comma list of seeds (subset draw, batches, new head)")
    parser.add_argument("--test-fraction", type=float, default=0.25, help="subjects held out for testing")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the train/test split")
    parser.add_argument("--grid", type=int, default=None,
                        help="model grid size in pixels (default: as recorded with the pretrained weights)")
    parser.add_argument("--spacing", type=float, default=None,
                        help="model grid spacing in mm (default: as recorded with the pretrained weights)")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimiser steps per run (default: seg 200, cls 150)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="seg: slices per step (default 8); cls: whole stacks per step (default 2)")
    parser.add_argument("--lr", type=float, default=None,
                        help="AdamW learning rate, cosine decay to 0 (default: seg 3e-3, cls 1e-3)")
    parser.add_argument("--no-largest-component", action="store_true",
                        help="seg: score the raw argmax (default keeps the largest component per structure)")
    parser.add_argument("--view", default="sagittal", help="cls: which knee stack to classify")
    parser.add_argument("--labels-csv", type=Path, default=None, help="cls: label table (default DATA/labels.csv)")
    parser.add_argument("--model-config", type=Path, default=None,
                        help="YAML ModelConfig for random-only runs without --pretrained")
    parser.add_argument("--num-channels", type=int, default=2,
                        help="heatmap channels K of that architecture (random-only runs)")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1...)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="runs trained at once, in separate processes of --threads each "
                             "(default: 2, or 1 on a single core)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch (default 1: the tiny CPU models gain little from more, "
                             "and oversubscribed cores slow every thread down several-fold)")


def _resolve_grid(args: argparse.Namespace, recorded: tuple[int, float] | None) -> GridSpec:
    size = args.grid if args.grid is not None else (recorded[0] if recorded else None)
    spacing = args.spacing if args.spacing is not None else (recorded[1] if recorded else None)
    if size is None or spacing is None:
        raise ValueError("the model grid is unknown: the pretrained weights do not record it; "
                         "pass --grid PIXELS --spacing MM as used for pretraining (the shard settings)")
    if recorded and (size, spacing) != recorded:
        print(f"warning: grid {size} px @ {spacing} mm differs from the pretraining grid "
              f"{recorded[0]} px @ {recorded[1]} mm", file=sys.stderr)
    return GridSpec(int(size), float(spacing))


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (FinetuneDataError, PretrainedError, ValueError, OSError) as exc:
        print(f"anatplane finetune: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE


def _run(args: argparse.Namespace) -> int:
    if args.threads < 1 or args.workers < 1:
        raise ValueError(f"--threads and --workers must be >= 1, got {args.threads}, {args.workers}")
    torch.set_num_threads(args.threads)
    inits = _csv(args.init)
    seeds = [int(s) for s in _csv(args.seeds)]
    transfer = args.transfer if args.task == "seg" else "encoder"
    proto = ProtocolConfig(labels=_csv(args.labels), seeds=seeds, inits=inits, transfer=transfer,
                           test_fraction=args.test_fraction, split_seed=args.split_seed)
    provenance: dict[str, Any] = {"data": str(args.data.resolve())}
    model_config = num_channels = None
    recorded = None
    if args.pretrained is not None:
        info = read_pretrained_info(args.pretrained)
        recorded = grid_from_pretrained(info)
        provenance.update(pretrained=str(info.path.parent.resolve()), pretrained_step=info.step,
                          pretrained_parts=info.parts)
    elif "pretrained" in inits:
        raise ValueError("--init includes 'pretrained' but no --pretrained weights were given")
    elif args.model_config is not None:
        model_config = ModelConfig.from_yaml(args.model_config.read_text())
        num_channels = args.num_channels
    else:
        raise ValueError("random-only runs need --model-config (or --pretrained for its architecture)")
    grid = _resolve_grid(args, recorded)
    provenance["grid"] = {"size": grid.size, "spacing": grid.spacing}

    given = {"steps": args.steps, "lr": args.lr, "batch": args.batch_size}
    given = {k: v for k, v in given.items() if v is not None}
    if args.task == "seg":
        if "batch" in given:
            given["batch_size"] = given.pop("batch")
        cfg = SegTrainConfig(largest_component=not args.no_largest_component, device=args.device, **given)
        subjects, skipped = load_acdc(args.data, grid, cfg.num_classes)
        task: SegTask | ClsTask = SegTask(subjects, cfg)
        print(f"loaded {len(subjects)} labelled subjects "
              f"({sum(len(s.volumes) for s in subjects)} frames) from {args.data}; {len(skipped)} skip(s)")
    else:
        if "batch" in given:
            given["stacks_per_step"] = given.pop("batch")
        ccfg = ClsTrainConfig(device=args.device, **given)
        stacks, names, skipped = load_knee(args.data, grid, view=args.view, labels_csv=args.labels_csv)
        task = ClsTask(stacks, names, ccfg)
        print(f"loaded {len(stacks)} labelled '{args.view}' stacks from {args.data} "
              f"(labels {', '.join(names)}); {len(skipped)} skip(s)")
    for s in skipped[:10]:
        print(f"  skipped {s.subject} {s.path}: {s.reason}")

    factory = BackboneFactory(str(args.pretrained) if args.pretrained else None, transfer, model_config,
                              num_channels)
    results = run_protocol(task, proto, factory, args.out, skipped=skipped, provenance=provenance,
                           workers=args.workers)
    print((args.out / "results.md").read_text())
    print(f"results: {args.out / 'results.json'}, {args.out / 'results.md'}, {args.out / 'results.png'}")
    return 0 if results["runs"] else 1


def main(argv: list[str] | None = None) -> int:
    """What ``launch/finetune.py`` runs (same arguments as ``anatplane finetune``)."""
    parser = argparse.ArgumentParser(prog="finetune", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
