"""The ``anatplane`` command: one sub-command per stage, each owned by its module.

A sub-command module exposes ``add_arguments(parser)`` and ``run(args) -> int``; it is
imported only when used, so ``anatplane phantom`` does not pay for importing DeepSpeed.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import NoReturn

from anatplane_dist.core.errors import DISK_FULL_ERRNOS, AnatplaneError, ExitCode, is_disk_full, one_line

#: sub-command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "phantom": ("anatplane_dist.sources.phantom.cli", "write a built-in phantom data set (DICOM/NIfTI)"),
    "inspect": ("anatplane_dist.sources.inspect_planes", "print the line where plane B cuts image A"),
    "volumes": ("anatplane_dist.sources.volumes_cli", "cut prescribed views out of 3D volumes as DICOM series (pseudo-acquisitions)"),
    "shard": ("anatplane_dist.shards.cli", "write WebDataset shards of plane pairs with their targets"),
    "pretrain": ("anatplane_dist.train.cli", "multitask pretraining (same as launch/pretrain.py)"),
    "submit": ("anatplane_dist.train.submit", "submit pretraining to SLURM with submitit (requeue + resume)"),
    "publish": ("anatplane_dist.publish.cli", "publish a run's pretrained weights to a shared directory"),
    "finetune": ("anatplane_dist.experiment.finetune_cli", "fine-tune a pretrained encoder on a target task"),
    "experiment": ("anatplane_dist.experiment.cli", "run / report a pretraining comparison (arms x labels x seeds)"),
    "predict": ("anatplane_dist.finetune.predict", "segment a folder of NIfTI images with a fine-tuned model"),
    "figures": ("anatplane_dist.experiment.figures", "draw figures (heatmaps: predicted vs ground truth)"),
    "export": ("anatplane_dist.export.cli", "export weights / an ACDC cohort for nnU-Net (--format nnunet | nnunet-dataset)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anatplane", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `deepspeed --module anatplane_dist.cli pretrain ...` puts --local_rank=N first: move it behind
    while argv and (argv[0].startswith("--local_rank") or argv[0].startswith("--local-rank")):
        flag = [argv.pop(0)] if "=" in argv[0] else [argv.pop(0), argv.pop(0)] if len(argv) > 1 else [argv.pop(0)]
        argv = argv[:1] + flag + argv[1:]
    if not argv or argv[0] not in COMMANDS:
        build_parser().print_help()
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"anatplane {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    return run_guarded(f"anatplane {name}", module.run, parse(parser, rest))


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Options and ``key=value`` positionals in any order (``... data.shards=X --run-dir Y``);
    parsers with sub-commands, which argparse cannot intermix, parse as usual."""
    try:
        return parser.parse_intermixed_args(argv)
    except TypeError:
        return parser.parse_args(argv)


def run_guarded(prog: str, run, args: object) -> int:
    """``run(args)`` with every :class:`AnatplaneError` turned into one stderr line and its exit code,
    and Ctrl-C into one line and :attr:`ExitCode.CANCELLED` (every writer is atomic, so what was
    finished is kept and nothing half-written is visible; a traceback would only hide that)."""
    try:
        return int(run(args) or 0)
    except KeyboardInterrupt:
        print(f"\n{prog}: cancelled (Ctrl-C); finished outputs are kept, rerun to continue", file=sys.stderr)
        return int(ExitCode.CANCELLED)
    except AnatplaneError as e:
        print(f"{prog}: {one_line(e)}", file=sys.stderr)
        return int(e.exit_code)
    except OSError as e:  # a read-only or full destination, a vanished input: the user's environment
        target = getattr(e, "filename2", None) if e.errno in DISK_FULL_ERRNOS else None
        target = target or getattr(e, "filename", None)     # a copy to a full disk: name the destination
        where = f": {target}" if target else ""
        print(f"{prog}: {e.strerror or one_line(e)}{where}", file=sys.stderr)
        return int(ExitCode.USAGE)
    except RuntimeError as e:  # torch's zip writer on a full disk ("unexpected pos"); other bugs stay loud
        if not is_disk_full(e):
            raise
        print(f"{prog}: no space left on device ({one_line(e)[:160]}); complete outputs are intact "
              "(writes are atomic): free space and rerun", file=sys.stderr)
        return int(ExitCode.USAGE)


def launch(prog: str, main_fn, argv: list[str] | None = None) -> int:
    """A ``launch/*.py`` script's ``main(argv)`` under the same guard as ``anatplane`` sub-commands."""
    return run_guarded(prog, main_fn, argv)


def exit_process(rc: int) -> NoReturn:
    """Leave a launched process (``python -m anatplane_dist.cli``, ``launch/*.py``) with ``rc``.

    A rank of a multi-process run (``WORLD_SIZE`` > 1: torchrun, the deepspeed launcher) leaves
    without the interpreter's teardown. By then every output is written atomically and the
    process group is destroyed, but C++ destructors of torch threads still alive at teardown
    intermittently abort a finished rank ("terminate called without an active exception",
    rc -6; seen on 2 gloo ranks in this project's tests), and the launcher then reports a run
    that finished as failed. A single process exits normally.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        os._exit(rc)
    raise SystemExit(rc)


if __name__ == "__main__":
    exit_process(main())
