"""``anatplane phantom heart|knee``: write the built-in phantom data sets.

Examples::

    anatplane phantom heart --subjects 3 --out data/dsbcc --labelled 5 --labelled-out data/acdc
    anatplane phantom heart --subjects 1000 --out /scratch/dsbcc --size 160-256 --frames 20-30 --workers 16
    anatplane phantom knee --subjects 3 --out data/knee
"""
from __future__ import annotations

import argparse
import time

from anatplane_dist.sources.phantom.acdc import AcdcCohortConfig, truth_header, write_acdc_cohort
from anatplane_dist.sources.phantom.dsbcc_writer import HeartCohortConfig, write_heart_cohort
from anatplane_dist.sources.phantom.io import PhantomError, check_target, parse_range
from anatplane_dist.sources.phantom.knee_writer import KneeCohortConfig, write_knee_cohort

__all__ = ["add_arguments", "run"]


def _range_arg(text: str) -> tuple[int, int]:
    try:
        return parse_range(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="anatomy", metavar="ANATOMY", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--subjects", type=int, default=3, help="number of studies (default 3)")
    common.add_argument("--out", required=True, help="output directory")
    common.add_argument("--seed", type=int, default=0, help="same seed -> same pixels and UIDs")
    common.add_argument("--size", type=_range_arg, default=(128, 128),
                        help="image matrix N or MIN-MAX drawn per subject (default 128; real data 160-256)")
    common.add_argument("--first-index", type=int, default=1, help="index of the first subject (to extend a cohort)")
    common.add_argument("--workers", type=int, default=1, help="processes (subjects are independent)")
    common.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty folder that is not a phantom of the same kind and seed "
                             "(same-named subject folders are replaced whole); refused without it")
    heart = sub.add_parser("heart", parents=[common], help="cardiac cine (DSBCC layout) + optional ACDC cohort")
    heart.add_argument("--frames", type=_range_arg, default=(20, 20), help="cine frames N or MIN-MAX (default 20)")
    heart.add_argument("--mess", action="store_true",
                       help="inject DSBCC problems, cycling over subjects: missing 2CH, second 4CH, "
                            "duplicated slice position, two positions in one SAX folder")
    heart.add_argument("--labelled", type=int, default=0, help="labelled patients in ACDC layout (default 0)")
    heart.add_argument("--labelled-out", default=None, help="directory of the ACDC-layout cohort")
    knee = sub.add_parser("knee", parents=[common], help="knee sagittal/coronal/axial stacks + labels.csv")
    knee.add_argument("--slices", type=int, default=20, help="slices per stack (default 20; fastMRI ~30-40)")


def run(args: argparse.Namespace) -> int:
    """Sizes, counts and targets are checked before anything is written; a refusal is a
    :class:`PhantomError` (one line, exit 2 through ``anatplane``)."""
    start = time.perf_counter()
    done = 0
    if args.workers < 1:
        raise PhantomError(f"--workers must be >= 1, got {args.workers}")
    if args.anatomy == "heart":
        if args.labelled < 0:
            raise PhantomError(f"--labelled must be >= 0, got {args.labelled}")
        if args.labelled and not args.labelled_out:
            raise PhantomError("--labelled needs --labelled-out")
        cfg = HeartCohortConfig(subjects=args.subjects, seed=args.seed, matrix=args.size, frames=args.frames,
                                mess=args.mess, first_index=args.first_index, workers=args.workers)
        acfg = None
        if args.labelled:           # built (and validated) before anything is written
            acfg = AcdcCohortConfig(patients=args.labelled, seed=args.seed, matrix=args.size, frames=args.frames,
                                    first_index=args.first_index, workers=args.workers)
            check_target(args.labelled_out, truth_header(acfg), overwrite=args.overwrite)
        done += len(write_heart_cohort(args.out, cfg, overwrite=args.overwrite))
        if acfg is not None:
            done += len(write_acdc_cohort(args.labelled_out, acfg, overwrite=args.overwrite))
    else:
        kcfg = KneeCohortConfig(subjects=args.subjects, seed=args.seed, matrix=args.size, slices=args.slices,
                                first_index=args.first_index, workers=args.workers)
        done += len(write_knee_cohort(args.out, kcfg, overwrite=args.overwrite))
    elapsed = time.perf_counter() - start
    print(f"phantom {args.anatomy}: {done} subjects in {elapsed:.1f} s ({done / max(elapsed, 1e-9):.2f} subjects/s)")
    return 0
