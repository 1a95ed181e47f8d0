"""``anatplane pretrain`` / ``launch/pretrain.py``: ``--config FILE|PRESET [--run-dir DIR] [key=value ...]``.

The same command runs under ``python``, ``torchrun --nproc_per_node G`` and ``deepspeed
--num_gpus G`` (which adds ``--local_rank=N``); :mod:`anatplane_dist.core.dist` sorts out which.
Without ``--config`` it trains the tiny preset on the built-in heart phantom (generated on
first use). Re-running the same command on the same run directory resumes (the rules are in
docs/training.md, "Resume"). Exit codes are the package's table (:mod:`anatplane_dist.core.errors`).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from anatplane_dist.core.errors import EXIT_CODES, AnatplaneError, ExitCode, one_line

log = logging.getLogger("anatplane.train")

DEFAULT_PRESET = "tiny-cpu"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from anatplane_dist.train.config import add_run_arguments

    add_run_arguments(parser, config_default=DEFAULT_PRESET)
    parser.add_argument("--allow-config-change", action="store_true",
                        help="resume although keys that are not safe to change differ from the saved config")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.epilog = "exit codes: " + "; ".join(f"{int(c)} {t}" for c, t in EXIT_CODES.items())


def _setup_logging(rank: int) -> None:
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("DeepSpeed", "deepspeed", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _resolve_data(cfg):
    """Built-in data made on rank 0 (others wait), then a shard folder expanded to its tar files."""
    from anatplane_dist.core.dist import on_main
    from anatplane_dist.data import builtin as demo_data
    from anatplane_dist.train.config import resolve_shard_dir
    if demo_data.is_builtin(cfg.data.shards):
        shards = on_main(lambda spec: str(demo_data.resolve_builtin(spec)), cfg.data.shards)
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, shards=shards))
    return dataclasses.replace(cfg, data=resolve_shard_dir(cfg.data))


def _load(args: argparse.Namespace):
    """(config path, validated config): every key, type and range is checked here, before any
    process group exists, so a bad value is one line on every rank and no collective hangs."""
    from anatplane_dist.train.config import load_config, resolve_config_path

    config_path = resolve_config_path(args.config or DEFAULT_PRESET)
    return config_path, load_config(config_path, list(args.overrides))


def _train(args: argparse.Namespace, denv, loaded) -> int:
    from anatplane_dist.core.dist import is_main_process, on_main
    from anatplane_dist.train.config import run_dir_for
    from anatplane_dist.train.hooks import hooks_from_env
    from anatplane_dist.train.runlock import RunLock
    from anatplane_dist.train.signals import StopRequest
    from anatplane_dist.train.trainer import train

    config_path, cfg = loaded
    cfg = _resolve_data(cfg)
    run_dir = run_dir_for(config_path, cfg.run_dir, args.run_dir)
    lock = RunLock(run_dir)
    on_main(lambda: lock.acquire() and None)   # held by rank 0 for the whole run; released at exit
    try:
        with StopRequest() as stop:
            summary = train(cfg, run_dir, denv, stop=stop, allow_config_change=args.allow_config_change,
                            hooks=hooks_from_env())
        if summary.interrupted:
            return ExitCode.INTERRUPTED
        if cfg.publish.dir:
            from anatplane_dist import publish
            dest = on_main(publish.publish, run_dir, cfg.publish.dir, cfg.publish.name or None)
            log.info("published to %s", dest)
        if is_main_process():
            log.info("done: %d steps, last checkpoint %s", summary.steps, summary.last_checkpoint)
        return ExitCode.OK
    finally:
        lock.release()


def run(args: argparse.Namespace) -> int:
    from anatplane_dist.core.dist import DistEnvError, init_distributed, resolve_env, shutdown

    argv = [f"--local_rank={args.local_rank}"] if args.local_rank is not None else []
    try:
        denv = resolve_env(argv=argv)
    except DistEnvError as e:
        print(f"anatplane pretrain: {one_line(e)}", file=sys.stderr)
        return ExitCode.USAGE
    _setup_logging(denv.rank)
    try:
        loaded = _load(args)
    except AnatplaneError as e:   # no process group yet: every rank refuses alone, rank 0 says why
        if denv.rank == 0:
            print(f"anatplane pretrain: {one_line(e)}", file=sys.stderr)
        return int(e.exit_code)
    init_distributed(denv)
    clean = False
    try:
        rc = _train(args, denv, loaded)
        clean = True
        return rc
    except AnatplaneError as e:   # raised on every rank together (decisions are agreed first)
        clean = True
        if denv.rank == 0:
            print(f"anatplane pretrain: {one_line(e)}", file=sys.stderr)
        return int(e.exit_code)
    except OSError as e:          # the environment (read-only or full disk): one line, no barrier
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"anatplane pretrain: rank {denv.rank}: {e.strerror or one_line(e)}{where}", file=sys.stderr)
        return int(ExitCode.USAGE)
    finally:
        shutdown(clean)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anatplane pretrain", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_intermixed_args(sys.argv[1:] if argv is None else argv))
