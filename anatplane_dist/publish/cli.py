"""``anatplane publish RUN_DIR --to SHARED [--name NAME]``."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from anatplane_dist.publish.versions import LATEST, publish

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="training run directory (its newest complete checkpoint)")
    parser.add_argument("--to", required=True, type=Path, help="destination root on the shared filesystem")
    parser.add_argument("--name", default=None, help="model name (default: the run dir's name)")


def run(args: argparse.Namespace) -> int:
    """Errors are AnatplaneErrors / OSErrors: ``anatplane_dist.cli`` prints one line and exits 2."""
    version = publish(args.run_dir, args.to, args.name)
    print(f"published {version}\nlatest -> {os.readlink(version.parent / LATEST)}\n"
          f"load: from anatplane_dist.publish import load_pretrained; "
          f"load_pretrained({str(version.parent)!r}, part='encoder')")
    return 0
