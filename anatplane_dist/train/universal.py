"""ZeRO state written on one world size, read on another, through DeepSpeed's universal checkpoint.

ZeRO-1/2 partition the fp32 master weights and optimiser moments by rank, so a checkpoint of N
ranks cannot be loaded as such by M. Rank 0 converts the (already verified) engine state with
``deepspeed.checkpoint.ds_to_universal`` into a scratch folder of the run (never into the
checkpoint, which stays byte-identical and verifiable); every rank loads it with the engine
config ``checkpoint.load_universal``, which restores parameters, fp32 masters and moments of any
partitioning; the scratch folder is removed after the load. DeepSpeed's universal loader skips
module buffers, so BatchNorm statistics come from the checkpoint's fp32 export (rank 0's, as in
every checkpoint). tests/train/test_world_size.py checks ZeRO-1 and ZeRO-2, 2 -> 1 and 1 -> 2 (fp32):
4 steps after the change, the weights are within 1e-6 of an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import shutil
from argparse import Namespace
from pathlib import Path
from typing import Iterator

import torch

from anatplane_dist.core import dist, weights
from anatplane_dist.core.checkpoints import CheckpointLoadError


@contextlib.contextmanager
def converted(engine_dir: Path, scratch: Path) -> Iterator[tuple[Path, str]]:
    """``(root, tag)`` of the universal form of ``engine_dir`` for ``engine.load_checkpoint``.

    Collective: rank 0 converts, every rank learns whether it worked, the scratch folder is
    removed once every rank has loaded (on leaving the ``with``).
    """

    out = scratch / f"{engine_dir.name}_universal"
    error = ""
    if dist.is_main_process():
        try:
            from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir(parents=True)
            # inject_missing_state: a plain model carries no universal_checkpoint_info; one worker
            # each: the pools buy nothing for one model file and cost a fork per save on 2 cores
            ds_to_universal(Namespace(input_folder=str(engine_dir), output_folder=str(out), num_extract_workers=1,
                                      num_merge_workers=1, keep_temp_folder=False, strict=True,
                                      inject_missing_state=True))
        except Exception as e:  # noqa: BLE001 — every rank must learn that the conversion failed
            error = f"{type(e).__name__}: {e}"
    if not dist.all_ranks_true(not error):
        raise CheckpointLoadError(f"{engine_dir.parent.name}: conversion to the universal format failed "
                                  f"({error or 'on rank 0'})")
    try:
        yield scratch, out.name
    finally:
        dist.barrier()
        if dist.is_main_process():
            shutil.rmtree(scratch, ignore_errors=True)


def restore_buffers(module: torch.nn.Module, fp32_dir: Path) -> None:
    """Copy the module's buffers (BatchNorm statistics) from the checkpoint's fp32 part files."""
    saved: dict[str, torch.Tensor] = {}
    for part, file in weights.find_parts(fp32_dir).items():
        saved.update({f"{part}.{k}": v for k, v in weights.load_weights(file)["state_dict"].items()})
    with torch.no_grad():
        for name, buf in module.named_buffers():
            if name in saved:
                buf.copy_(saved[name].to(buf.dtype))
