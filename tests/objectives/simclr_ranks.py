"""Entry point of the spawned ranks of test_simclr_dist.py (a module of its own, with absolute
imports only: spawned processes unpickle it by module name)."""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from anatplane_dist.objectives import get_objective
from anatplane_dist.objectives import simclr as simclr_mod
from anatplane_dist.objectives.config import LossConfig, ObjectiveConfig, SimCLRConfig


def _gather_no_backward_reduce(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """all_gather, then this rank's slot replaced by the local tensor (gradient only through it)."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts), dist.get_rank() * x.shape[0]


def rank_main(rank: int, world: int, port: int, ref_path: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        ref = torch.load(ref_path, weights_only=False)
        obj = get_objective(ObjectiveConfig(name="simclr", simclr=SimCLRConfig(**ref["simclr"])), LossConfig())
        model = obj.build_model(ref["model_cfg"], 1)
        model.load_state_dict(ref["state_dict"])
        ddp = DistributedDataParallel(model)
        views = ref["views"]                              # (2N, C, H, W): [view 1 of all; view 2 of all]
        n = views.shape[0] // 2
        b = n // world
        local = torch.cat([views[rank * b:(rank + 1) * b], views[n + rank * b:n + (rank + 1) * b]])
        loss, parts = obj.loss(ddp(local), {})
        loss.backward()                                   # DDP averages the gradients over ranks
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        with torch.no_grad():
            local_only = obj.validation_sums(model(local), {})["val/loss"]
        grads = {k: p.grad.detach().clone() for k, p in model.named_parameters()}
        # the common mistake, for contrast: gathered negatives without the backward all-reduce
        simclr_mod.all_gather_with_grad = _gather_no_backward_reduce
        model.zero_grad()
        obj.loss(ddp(local), {})[0].backward()
        naive = {k: p.grad.detach().clone() for k, p in model.named_parameters()}
        torch.save({"loss": float(mean_loss) / world, "naive_grads": naive,
                    "local_only_loss": float(local_only[0] / local_only[1]),
                    "grads": grads},
                   os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()
