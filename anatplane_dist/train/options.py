"""Config dataclasses of the training run: optimiser, loop, publishing.

They live outside ``anatplane_dist.train`` so that ``config.py`` (which composes them) and
the trainer (which reads them) do not import each other, and they import without torch:
the SLURM launcher resolves a config on the login node before any heavy import. Choice
fields are ``Literal`` types, so ``config.py`` refuses a bad choice with the dotted key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class OptimConfig:
    """Optimiser and per-iteration LR schedule.

    The peak LR is ``base_lr`` scaled by ``lr_rule`` from ``ref_batch`` to the real global
    batch (micro × accumulation × world), so one YAML serves any number of ranks.
    """
    name: Literal["adamw", "lamb", "sgd"] = "adamw"
    base_lr: float = 1.0e-3        #: LR at a global batch of ``ref_batch``
    lr_rule: Literal["linear", "sqrt", "none"] = "linear"
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
    backend: Literal["auto", "deepspeed", "ddp", "single"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    zero_stage: int = 0            #: DeepSpeed ZeRO stage 0-2
    grad_accum: int = 1            #: micro-batches per optimiser step (adapts when global_batch is fixed)
    #: samples per optimiser step over all ranks; 0 = micro x grad_accum x world at the first start.
    #: Fixed for the life of a run: a resume on another number of ranks adapts grad_accum to keep it.
    global_batch: int = 0
    log_every: int = 10            #: optimiser steps between metric rows
    val_every: int = 0             #: optimiser steps between validations; 0 = end of each epoch
    val_batches: int = 0           #: cap on validation batches per rank; 0 = the whole split
    ckpt_every: int = 0            #: optimiser steps between checkpoints; 0 = end of each epoch
    keep_last: int = 3
    #: auto: resume when the run dir holds checkpoints; never: refuse a run dir that holds some;
    #: must: refuse one that holds none. A checkpoint that exists but does not load stops the run.
    resume: Literal["auto", "never", "must"] = "auto"
    #: start a new run from these weights: a checkpoint's fp32/ dir, a checkpoint dir, or a
    #: published model (version dir or its ``latest``); checksums verified; ignored on resume
    init_from: str = ""
    seed: int = 0
    compile: bool = False          #: torch.compile the network (every backend; state dicts unchanged)
    #: NHWC layout (every backend; DeepSpeed: NHWC batches, NCHW weights - see train/backends.py)
    channels_last: bool = False
    #: metric rows get ms/<phase> per optimiser step (host_to_device, augment, forward, loss,
    #: backward, optimiser_step; CUDA events, no extra host sync - see train/phases.py)
    phase_times: bool = False
    #: auto (tqdm on a TTY, lines otherwise) | tqdm | lines | none
    progress: Literal["auto", "tqdm", "lines", "none"] = "auto"


@dataclass
class PublishConfig:
    """Where rank 0 publishes the final weights (empty ``dir`` = do not publish)."""
    dir: str = ""
    name: str = ""


def resolve_backend(train: TrainConfig, world_size: int, launcher: str) -> str:
    """The backend a run uses, decided the same way by the trainer and by ``submit --dry-run``.

    ``auto``: **deepspeed** under the deepspeed launcher or when the config asks for a ZeRO
    stage (a DeepSpeed-only option must never be dropped silently), else **ddp** for several
    ranks, else **single**. An explicit ``ddp``/``single`` with ``zero_stage > 0`` is refused.
    """
    from anatplane_dist.core.errors import AnatplaneError

    requested = train.backend
    if requested in ("ddp", "single") and train.zero_stage > 0:
        raise AnatplaneError(f"train.zero_stage={train.zero_stage} is a DeepSpeed option but train.backend="
                             f"{requested}; use train.backend=deepspeed (or auto), or train.zero_stage=0")
    if requested == "single" and world_size > 1:
        raise AnatplaneError(f"train.backend=single with {world_size} ranks; use ddp or deepspeed")
    if requested != "auto":
        chosen = requested
    elif launcher == "deepspeed" or train.zero_stage > 0:
        chosen = "deepspeed"
    else:
        chosen = "ddp" if world_size > 1 else "single"
    return chosen
