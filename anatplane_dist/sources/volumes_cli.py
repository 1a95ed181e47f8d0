"""``anatplane volumes COHORT.yaml --out DIR``: pseudo-acquisitions of a volume cohort.

Writes ``DIR/pretrain`` and ``DIR/heldout`` (DICOM series, ``<volume>-pNN/study/<view>_<n>/``),
``DIR/labelled`` (NIfTI stacks + ``_gt``, ACDC layout) and ``DIR/profile.yaml`` (the sharder
profile); see docs/volumes.md.  Then, e.g.::

    anatplane shard --profile DIR/profile.yaml --input DIR/pretrain --out shards/brain
"""
from __future__ import annotations

import argparse
import dataclasses
import time

from anatplane_dist.sources.prescription import PrescriptionError
from anatplane_dist.sources.volumes import ROLES, build_cohort, load_cohort

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cohort", help="volume cohort YAML (volumes, roles, prescription, poses)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--poses", nargs="*", default=[], metavar="ROLE=N",
                        help=f"acquisitions per volume of a role ({', '.join(ROLES)}), replacing the cohort's")
    parser.add_argument("--seed", type=int, default=None, help="replace the cohort's seed")


def run(args: argparse.Namespace) -> int:
    cohort = load_cohort(args.cohort)
    poses = dict(cohort.poses)
    for item in args.poses:
        role, _, n = item.partition("=")
        if role not in ROLES or not n.isdigit():
            raise PrescriptionError(f"--poses {item!r}: expected ROLE=N with ROLE in {ROLES}")
        poses[role] = int(n)
    cohort = dataclasses.replace(cohort, poses=poses, seed=cohort.seed if args.seed is None else args.seed)
    t0 = time.perf_counter()
    paths = build_cohort(cohort, args.out)
    print(f"{cohort.name}: {len(cohort.volumes)} volume(s) -> {args.out} in {time.perf_counter() - t0:.1f} s "
          f"(profile {paths['profile']})")
    return 0
