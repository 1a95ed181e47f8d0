"""All-gather with gradients, for losses whose negatives come from every rank (SimCLR).

``torch.distributed.all_gather`` returns tensors with no autograd history, so a contrastive loss
over gathered embeddings would train each rank's encoder only through the anchors it holds,
not through its embeddings' role as other ranks' negatives. :func:`all_gather_with_grad`
returns the concatenation of every rank's tensor, and its backward sums the incoming gradient
over ranks (one all-reduce) and hands each rank the slice of its own tensor: that is the
gradient of ``sum_r loss_r`` with respect to the local tensor, so after DDP / DeepSpeed average
the parameter gradients over ranks, training sees the gradient of the mean loss over the
global batch - exactly what one process would compute on the concatenated batch.

An all-reduce rather than ``reduce_scatter`` (what ``torch.distributed.nn.all_gather`` uses)
because gloo has no reduce-scatter: the same code runs on CPU test ranks and on nccl.
Kept here, not in :mod:`anatplane_dist.dist`, because only objectives need it; it uses the
queries of that module.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from anatplane_dist.dist import is_multi_rank, rank, reduce_device, world_size

__all__ = ["all_gather_with_grad"]


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.rank, ctx.n, ctx.device = rank(), x.shape[0], x.device
        work = x.detach().contiguous().to(reduce_device())
        parts = [torch.empty_like(work) for _ in range(world_size())]
        dist.all_gather(parts, work)
        return torch.cat(parts).to(x.device)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        work = grad.contiguous().to(reduce_device())
        dist.all_reduce(work, op=dist.ReduceOp.SUM)
        return work[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n].to(ctx.device)


def all_gather_with_grad(x: Tensor) -> tuple[Tensor, int]:
    """Every rank's ``x`` concatenated along dim 0 (rank order), and where this rank's rows start.

    Every rank must call it with the same shape (the training stream drops partial batches, so
    micro-batches are equal). Without a process group, or with one rank, ``(x, 0)``.
    """
    if not is_multi_rank():
        return x, 0
    return _GatherWithGrad.apply(x), rank() * x.shape[0]
