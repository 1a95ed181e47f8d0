"""``anatplane finetune seg|cls``: random init vs published weights, as a two-arm experiment.

    anatplane finetune seg --data ACDC_ROOT --pretrained PUBLISHED_DIR_OR_FILE --out DIR
    anatplane finetune cls --data KNEE_ROOT --pretrained PUBLISHED_DIR_OR_FILE --out DIR

The same engine as ``anatplane experiment run`` (:mod:`anatplane_dist.experiment.runner`): the
same stratified split with validation subjects, nested subsets per seed, named schedules, LR
search, cache, statistics (the seed as the replicate) and files (``DIR/results.{md,csv}``,
``DIR/figures/``, ``DIR/cells/``).  The published weights are verified before anything runs.
Images are resampled to the grid the encoder was pretrained on (read from the published
weights when recorded there, else ``--grid``/``--spacing``) and normalised as in pretraining.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from anatplane_dist.core.errors import AnatplaneError, ExitCode
from anatplane_dist.finetune.backbone import (
    TRANSFERS,
    PretrainedError,
    grid_from_pretrained,
    verify_pretrained,
)
from anatplane_dist.finetune.data import FinetuneDataError

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
    parser.add_argument("--init", default="random,pretrained",
                        help="comma list of initialisations to compare (default: random,pretrained)")
    parser.add_argument("--transfer", choices=TRANSFERS, default="encoder+decoder",
                        help="seg: which pretrained parts to transfer (cls always transfers the encoder)")
    parser.add_argument("--labels", default="auto",
                        help="comma list of labelled-subject counts or 'all'; a count larger than the labelled "
                             "pool is refused (default auto: 1, 2, 4, 8 up to the pool, and all)")
    parser.add_argument("--seeds", default="0,1", help="comma list of seeds (subset draw, batches, new head)")
    parser.add_argument("--test-fraction", type=float, default=0.25, help="subjects held out for testing")
    parser.add_argument("--val-subjects", type=int, default=1,
                        help="validation subjects (stratified, disjoint from training and test): best-val "
                             "selection and the LR search use them (0: final model, fixed LR)")
    parser.add_argument("--schedule", choices=("steps", "paper"), default="steps",
                        help="steps: fixed optimiser steps, AdamW, cosine (CPU); paper: Adam 1e-3, x0.5 every "
                             "50 epochs, 500 epochs of the labelled slices, batch 10")
    parser.add_argument("--lr-grid", default="",
                        help="comma list of LRs to choose from per arm and count on the validation subjects")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the train/test split")
    parser.add_argument("--grid", type=int, default=None,
                        help="model grid size in pixels (default: as recorded with the pretrained weights)")
    parser.add_argument("--spacing", type=float, default=None,
                        help="model grid spacing in mm (default: as recorded with the pretrained weights)")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps schedule: optimiser steps per run (default 200)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="seg: slices per step (default 8); cls: whole stacks per step (default 2)")
    parser.add_argument("--lr", type=float, default=None,
                        help="learning rate (default: the schedule's)")
    parser.add_argument("--no-largest-component", action="store_true",
                        help="seg: score the raw argmax (default keeps the largest component per structure)")
    parser.add_argument("--view", default="sagittal", help="cls: which knee stack to classify")
    parser.add_argument("--labels-csv", type=Path, default=None, help="cls: label table (default DATA/labels.csv)")
    parser.add_argument("--model-config", type=Path, default=None,
                        help="YAML ModelConfig for random-only runs without --pretrained")
    parser.add_argument("--num-channels", type=int, default=2,
                        help="heatmap channels K of that architecture (random-only runs)")
    parser.add_argument("--devices", "--device", dest="devices", default="cpu",
                        help="where runs train: auto | cpu | cuda:0,cuda:1,...")
    parser.add_argument("--cells-per-device", type=int, default=1, help="GPU: runs at once on each device")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="CPU: runs trained at once, each in its own 1-thread process "
                             "(default: 2, or 1 on a single core)")


def _resolve_grid(args: argparse.Namespace, recorded: tuple[int, float] | None) -> tuple[int, float]:
    size = args.grid if args.grid is not None else (recorded[0] if recorded else None)
    spacing = args.spacing if args.spacing is not None else (recorded[1] if recorded else None)
    if size is None or spacing is None:
        raise ValueError("the model grid is unknown: the pretrained weights do not record it; "
                         "pass --grid PIXELS --spacing MM as used for pretraining (the shard settings)")
    if recorded and (size, spacing) != recorded:
        print(f"warning: grid {size} px @ {spacing} mm differs from the pretraining grid "
              f"{recorded[0]} px @ {recorded[1]} mm", file=sys.stderr)
    return int(size), float(spacing)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (AnatplaneError, FinetuneDataError, PretrainedError, ValueError, OSError) as exc:
        print(f"anatplane finetune: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE


def build_spec(args: argparse.Namespace):
    """The two-arm :class:`~anatplane_dist.experiment.spec.ExperimentSpec` these arguments ask
    for (the weights verified first: a corrupted file stops here, before any run trains)."""
    from anatplane_dist.experiment.spec import (
        ArmSpec,
        DataSpec,
        ExperimentSpec,
        FinetuneSpec,
        PretrainSpec,
        ProtocolSpec,
        SpecError,
    )

    inits = _csv(args.init)
    unknown = sorted(set(inits) - {"random", "pretrained"})
    if unknown or "random" not in inits:
        raise ValueError(f"--init: random plus optionally pretrained (every arm is compared with random), got {inits}")
    recorded = None
    arms = [ArmSpec("random")]
    if args.pretrained is not None:
        if not args.pretrained.exists():
            raise PretrainedError(f"pretrained weights {args.pretrained} do not exist")
        info = verify_pretrained(args.pretrained)
        recorded = grid_from_pretrained(info)
        if "pretrained" in inits:
            arms.append(ArmSpec("pretrained", published=str(args.pretrained)))
    elif "pretrained" in inits:
        raise ValueError("--init includes 'pretrained' but no --pretrained weights were given")
    elif args.model_config is None:
        raise ValueError("random-only runs need --model-config (or --pretrained for its architecture)")
    if not args.data.exists():
        raise FinetuneDataError(f"{args.data}: labelled data folder does not exist")
    size, spacing = _resolve_grid(args, recorded)
    if args.workers < 1 or args.cells_per_device < 1:
        raise ValueError(f"--workers and --cells-per-device must be >= 1, got {args.workers}, {args.cells_per_device}")
    labels: list = [("all" if x == "all" else "auto" if x == "auto" else int(x)) if x in ("all", "auto")
                    or x.isdigit() else x for x in _csv(args.labels)]
    bad = [x for x in labels if isinstance(x, str) and x not in ("all", "auto")]
    if bad:
        raise ValueError(f"--labels: counts are integers, 'all' or 'auto', got {args.labels}")
    try:
        lr_grid = [float(x) for x in _csv(args.lr_grid)]
    except ValueError:
        raise ValueError(f"--lr-grid: numbers, got {args.lr_grid}") from None
    try:
        return ExperimentSpec(
            name="finetune", task=args.task,
            data=DataSpec(finetune=str(args.data), grid=size, spacing=spacing, view=args.view,
                          labels_csv=str(args.labels_csv) if args.labels_csv else None,
                          model_config=str(args.model_config) if args.model_config else None,
                          num_channels=args.num_channels),
            pretrain=PretrainSpec(), arms=arms,
            finetune=FinetuneSpec(schedule=args.schedule, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                                  lr_grid=lr_grid, transfer=args.transfer if args.task == "seg" else "encoder",
                                  select="best-val" if args.val_subjects > 0 else "final",
                                  largest_component=not args.no_largest_component),
            protocol=ProtocolSpec(labels=labels, seeds=[int(x) for x in _csv(args.seeds)],
                                  val_subjects=args.val_subjects, split_seed=args.split_seed,
                                  test_fraction=args.test_fraction),
            workers=args.workers, devices=args.devices, cells_per_device=args.cells_per_device)
    except SpecError:
        raise
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from exc


def _run(args: argparse.Namespace) -> int:
    from anatplane_dist.experiment.report import render_report
    from anatplane_dist.experiment.runner import run_experiment

    spec = build_spec(args)
    summary = run_experiment(spec, args.out)
    info = render_report(args.out)
    print((args.out / "results.md").read_text())
    print(f"{summary['cells']} runs ({summary['cells_cached']} cached) in {summary['seconds']} s -> "
          f"{info['csv']}, {info['md']}, {len(info['figures'])} figure(s)")
    return 1 if summary["cell_failures"] or not summary["cells"] else 0


def main(argv: list[str] | None = None) -> int:
    """What ``launch/finetune.py`` runs (same arguments as ``anatplane finetune``)."""
    parser = argparse.ArgumentParser(prog="finetune", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
