"""Config dataclasses owned by the training package: optimiser, loop, publishing.

They live here (not in ``config.py``) so that ``config.py`` only composes module-owned
configs, and so they import without torch: the launcher resolves a config before any
heavy import.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class OptimConfig:
    """Optimiser and per-iteration LR schedule.

    The peak LR is ``base_lr`` scaled by ``lr_rule`` from ``ref_batch`` to the real global
    batch (micro × accumulation × world), so one YAML serves any number of ranks.
    """
    name: str = "adamw"            #: adamw | lamb | sgd
    base_lr: float = 1.0e-3        #: LR at a global batch of ``ref_batch``
    lr_rule: str = "linear"        #: linear | sqrt | none
    ref_batch: int = 256
    weight_decay: float = 0.05     #: not applied to biases and norm weights (ndim <= 1)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    momentum: float = 0.9          #: sgd only
    warmup_steps: int = 0          #: optimiser steps; wins over warmup_epochs when > 0
    warmup_epochs: float = 0.0
    cosine: bool = True            #: cosine decay to min_lr after warm-up, else constant
    min_lr: float = 0.0
    clip: float = 1.0              #: global grad-norm clipping; 0 disables


@dataclass
class TrainConfig:
    """The loop: length, backend, precision, intervals, resume policy."""
    epochs: int = 1
    max_steps: int = 0             #: optimiser-step budget; 0 = epochs decide
    backend: str = "auto"          #: deepspeed | ddp | single | auto
    precision: str = "fp32"        #: fp32 | bf16 | fp16
    zero_stage: int = 0            #: DeepSpeed ZeRO stage 0-2
    grad_accum: int = 1            #: micro-batches per optimiser step
    log_every: int = 10            #: optimiser steps between metric rows
    val_every: int = 0             #: optimiser steps between validations; 0 = end of each epoch
    val_batches: int = 0           #: cap on validation batches per rank; 0 = the whole split
    ckpt_every: int = 0            #: optimiser steps between checkpoints; 0 = end of each epoch
    keep_last: int = 3
    resume: str = "auto"           #: auto | never | <checkpoint dir>
    seed: int = 0
    compile: bool = False
    channels_last: bool = False
    progress: str = "auto"         #: auto (tqdm on a TTY, lines otherwise) | tqdm | lines | none


@dataclass
class PublishConfig:
    """Where rank 0 publishes the final weights (empty ``dir`` = do not publish)."""
    dir: str = ""
    name: str = ""
