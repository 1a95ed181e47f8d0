"""``anatplane shard``: studies -> WebDataset tar shards of plane pairs with their targets.

Examples::

    anatplane shard --profile heart --input demo/dsbcc --out demo/shards --grid 64 --spacing 5
    anatplane shard --profile knee --input data/knee --out shards/knee --workers 8
    anatplane shard ... --part 3/16          # one of 16 machines; then:
    anatplane shard --merge --out DIR        # combined sizes.json / manifest.json / skipped.jsonl
    anatplane shard --verify DIR             # every shard against manifest.json (sha256) + sample seals

Exit status: 0 when shards were written (masked or skipped inputs are normal and listed in
``skipped.jsonl``), 1 when nothing could be sharded or the output could not be written
(a re-run resumes), or when ``--verify`` found bad shards (they are listed), 2 for a usage
error (bad profile, input, part, another config's output, no manifest to verify).
"""
from __future__ import annotations

import argparse
import os
import sys

from anatplane_dist.core.errors import ExitCode
from anatplane_dist.shards.manifest import MergeError, merge_parts
from anatplane_dist.shards.profiles import ShardConfig, load_profile
from anatplane_dist.shards.splits import parse_part
from anatplane_dist.shards.writer import ResumeMismatch

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="heart", help="heart | knee | a profile YAML file (default: heart)")
    parser.add_argument("--input", help="data-set root (DSBCC or knee layout)")
    parser.add_argument("--out", help="output folder for shards and metadata")
    parser.add_argument("--verify", metavar="DIR",
                        help="check every shard of DIR against its manifest.json (sha256, size, count) and every "
                             "sample against its checksum; exit 1 listing the bad shards")
    parser.add_argument("--grid", type=int, default=224, help="model grid size in pixels (default 224)")
    parser.add_argument("--spacing", type=float, default=1.26, help="model grid spacing in mm (default 1.26)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="fraction of subjects in val (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="worker processes (default: min(8, CPUs)); 1 runs in this process")
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    parser.add_argument("--require-all-views", action="store_true",
                        help="drop a study missing a reference view (default: mask that channel)")
    parser.add_argument("--compress", choices=("none", "gz"), default="none",
                        help="gz: gzip the tar stream (smaller, slower to read; see shards/FORMAT.md)")
    parser.add_argument("--part", default="0/1", help="i/N: shard the i-th of N subject subsets (default 0/1)")
    parser.add_argument("--slurm-array", type=int, default=0, metavar="N",
                        help="submit N parts as a SLURM job array (submitit) and merge when all are done")
    parser.add_argument("--slurm-partition", default="", help="SLURM partition for --slurm-array")
    parser.add_argument("--slurm-time-min", type=int, default=240, help="time limit per array task (minutes)")
    parser.add_argument("--merge", action="store_true", help="only merge the part records found in --out")
    parser.add_argument("--overwrite", action="store_true", help="replace shards made with another config")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> ShardConfig:
    return ShardConfig(profile=load_profile(args.profile), grid=args.grid, spacing=args.spacing,
                       val_fraction=args.val_fraction, seed=args.seed, shard_size=args.shard_size,
                       require_all_views=args.require_all_views, compress=args.compress)


def verify(args: argparse.Namespace) -> int:
    """``--verify DIR``: exit 0 when every shard matches, else ``CHECK_FAILED`` with the list."""
    from anatplane_dist.shards.verify import verify_dir

    checks = verify_dir(args.verify, workers=max(1, args.workers), progress=not args.no_progress)
    bad = [c for c in checks if not c.ok]
    samples = sum(c.samples for c in checks)
    if not bad:
        print(f"{len(checks)} shard(s), {samples} samples: manifest.json is sealed, every shard matches it and "
              "every sample its checksum and the manifest's grid, channels and spacing")
        return ExitCode.OK
    print(f"{len(bad)} of {len(checks)} shard(s) bad:", file=sys.stderr)
    for c in bad:
        print(f"  {c.name}: {'; '.join(c.problems)}", file=sys.stderr)
        for line in c.bad_samples[:5]:
            print(f"    {line}", file=sys.stderr)
        if len(c.bad_samples) > 5:
            print(f"    ... and {len(c.bad_samples) - 5} more", file=sys.stderr)
    return ExitCode.CHECK_FAILED


def run(args: argparse.Namespace) -> int:
    from anatplane_dist.shards.pipeline import PartBusy, shard_dataset

    if args.verify:
        return verify(args)
    if not args.out:
        print("anatplane shard: --out is required (unless --verify DIR)", file=sys.stderr)
        return ExitCode.USAGE
    if args.merge:
        try:
            m = merge_parts(args.out)
        except MergeError as exc:
            print(f"anatplane shard --merge: {exc}", file=sys.stderr)
            return 1
        print(f"merged {m['parts']} part(s): {m['counts']['samples']} samples in {m['counts']['shards']} shards")
        return 0
    if not args.input:
        print("anatplane shard: --input is required (unless --merge)", file=sys.stderr)
        return ExitCode.USAGE
    try:
        cfg = config_from_args(args)
        part = parse_part(args.part)
    except ValueError as exc:
        print(f"anatplane shard: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    if args.slurm_array:
        from anatplane_dist.shards.slurm_array import submit_array
        return submit_array(args, cfg)
    try:
        result = shard_dataset(args.input, args.out, cfg, workers=args.workers, part=part,
                               overwrite=args.overwrite, progress=not args.no_progress)
    except (ValueError, ResumeMismatch, PartBusy) as exc:
        print(f"anatplane shard: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except KeyboardInterrupt:
        print("anatplane shard: interrupted; complete shards are kept and a re-run resumes", file=sys.stderr)
        return 130
    splits = {}
    for r in result.shards:
        splits[r.split] = splits.get(r.split, 0) + r.count
    where = os.path.join(args.out, "skipped.jsonl") if part[1] == 1 else "the part record"
    print(f"{result.samples} samples ({', '.join(f'{k} {v}' for k, v in splits.items()) or 'none'}) in "
          f"{len(result.shards)} shards from {result.subjects_with_samples}/{result.subjects} subjects; "
          f"{result.skipped} skip record(s) -> {where}")
    if result.error:
        print(f"anatplane shard: stopped early: {result.error}; the {len(result.shards)} complete shard(s) "
              f"written are intact and a re-run resumes after them", file=sys.stderr)
        return 1
    if result.samples == 0:
        print("anatplane shard: nothing could be sharded (see skipped records)", file=sys.stderr)
        return 1
    return 0
