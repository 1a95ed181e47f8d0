"""Pretraining: the trainer (:mod:`.trainer`: ``setup`` → ``train_step`` → ``fit``), its state
(:mod:`.state`), checkpoints and resume (:mod:`.checkpointing`, :mod:`.resume_rules`), the run-dir
lock (:mod:`.runlock`), signals (:mod:`.signals`), ``init_from`` (:mod:`.init_weights`), the
DeepSpeed / DDP / single-process backends (:mod:`.backends`), LR schedule and optimisers
(:mod:`.schedule`), metrics (:mod:`.metrics`), pretext validation (:mod:`.validate`) and the
command line (:mod:`.cli`).

Heavy imports (torch, DeepSpeed) happen in the submodules, not here.
"""
from __future__ import annotations


def train(*args, **kwargs):
    """See :func:`anatplane_dist.train.trainer.train`."""
    from anatplane_dist.train.trainer import train as _train
    return _train(*args, **kwargs)
