"""``anatplane pretrain`` / ``launch/pretrain.py``: ``--config FILE [--run-dir DIR] [key=value ...]``.

The same command runs under ``python``, ``torchrun --nproc_per_node G`` and ``deepspeed
--num_gpus G`` (which adds ``--local_rank=N``); :mod:`anatplane_dist.dist` sorts out which.
Without ``--config`` it trains the tiny preset on the built-in heart phantom, generating the
phantom and its shards first when they are absent. Re-running the same command on the same
run directory resumes from the newest complete checkpoint.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("anatplane.train")

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO_ROOT / "launch" / "configs" / "tiny-cpu.yaml"
DEMO_CACHE_ENV = "ANATPLANE_CACHE"

#: exit codes
EXIT_NONFINITE = 3
EXIT_CONFIG = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML preset (default: tiny-cpu on the built-in phantom shards)")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="run directory (default: config run_dir, else runs/<config name>)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. train.epochs=3 optim.base_lr=2e-4")


def _setup_logging(rank: int) -> None:
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("DeepSpeed", "deepspeed", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def demo_data_dir() -> Path:
    """Where the built-in phantom and its shards live: ``$ANATPLANE_CACHE`` or ``./runs/demo-data``."""
    return Path(os.environ.get(DEMO_CACHE_ENV, "runs/demo-data"))


def ensure_demo_shards(root: Path, subjects: int = 6) -> Path:
    """Generate the heart phantom and shard it on the tiny grid (``anatplane`` sub-commands) if absent."""
    from anatplane_dist.cli import main as anatplane

    shards = root / "shards"
    if (shards / "manifest.json").exists():
        return shards
    phantom = root / "phantom"
    if not (phantom / ".complete").exists():
        rc = anatplane(["phantom", "heart", "--subjects", str(subjects), "--out", str(phantom), "--seed", "0"])
        if rc:
            raise RuntimeError(f"anatplane phantom heart failed with exit code {rc}")
        (phantom / ".complete").write_text("ok\n")
    rc = anatplane(["shard", "--profile", "heart", "--input", str(phantom), "--out", str(shards),
                    "--grid", "64", "--spacing", "3.0", "--val-fraction", "0.25", "--workers", "1",
                    "--shard-size", "128"])
    if rc:
        raise RuntimeError(f"anatplane shard failed with exit code {rc}")
    return shards


def run(args: argparse.Namespace) -> int:
    from anatplane_dist.config import ConfigError, load_config, resolve_shard_dir
    from anatplane_dist.dist import DistEnvError, barrier, init_distributed, resolve_env, shutdown

    argv = [f"--local_rank={args.local_rank}"] if args.local_rank is not None else []
    try:
        denv = resolve_env(argv=argv)
    except DistEnvError as e:
        print(f"anatplane pretrain: {e}", file=sys.stderr)
        return EXIT_CONFIG
    _setup_logging(denv.rank)

    overrides = list(args.overrides)
    config_path = args.config
    demo = config_path is None
    if demo:
        config_path = TINY_CONFIG
    try:
        cfg = load_config(config_path, overrides)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"anatplane pretrain: config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    run_dir = args.run_dir or (Path(cfg.run_dir) if cfg.run_dir else Path("runs") / Path(config_path).stem)

    init_distributed(denv)
    clean = False
    try:
        demo_shards = demo_data_dir() / "shards"
        if demo and not any(o.startswith("data.shards=") for o in overrides):
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, shards=str(demo_shards)))
        # the tiny preset points at the built-in phantom shards: generate them on first use
        if isinstance(cfg.data.shards, str) and Path(cfg.data.shards) == demo_shards:
            if denv.rank == 0:
                ensure_demo_shards(demo_data_dir())
            barrier()
        try:
            cfg = dataclasses.replace(cfg, data=resolve_shard_dir(cfg.data))
        except ConfigError as e:  # every rank sees the same files
            print(f"anatplane pretrain: config error: {e}", file=sys.stderr)
            clean = True
            return EXIT_CONFIG

        from anatplane_dist.train.loop import NonFiniteLossError, train
        try:
            summary = train(cfg, run_dir, denv)
        except NonFiniteLossError as e:  # raised on every rank together
            log.error("%s", e)
            clean = True
            return EXIT_NONFINITE
        if cfg.publish.dir:
            barrier()
            if denv.rank == 0:
                from anatplane_dist import publish
                dest = publish.publish(run_dir, cfg.publish.dir, name=cfg.publish.name or None)
                log.info("published to %s", dest)
        if denv.rank == 0:
            log.info("done: %d steps, last checkpoint %s", summary.steps, summary.last_checkpoint)
        clean = True
        return 0
    finally:
        shutdown(clean)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anatplane pretrain", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(sys.argv[1:] if argv is None else argv))
