"""Multitask pretraining: one loop (:mod:`.loop`), DeepSpeed / DDP / single-process backends
(:mod:`.backends`), LR schedule and optimisers (:mod:`.schedule`), metrics (:mod:`.metrics`),
pretext validation (:mod:`.validate`) and the command line (:mod:`.cli`).

Heavy imports (torch, DeepSpeed) happen in the submodules, not here, so that
``anatplane_dist.train.options`` stays cheap for config handling.
"""
from __future__ import annotations


def train(*args, **kwargs):
    """See :func:`anatplane_dist.train.loop.train`."""
    from anatplane_dist.train.loop import train as _train
    return _train(*args, **kwargs)
