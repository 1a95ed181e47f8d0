"""What a run must carry across a restart, counted so that the number of ranks does not matter.

Positions are in **global samples** and optimiser steps of a fixed global batch: a checkpoint
written on 1 rank resumes on 2 (or 2 on 1) at the same step, the same LR and the same place in
the epoch, with gradient accumulation adapted to keep the global batch (``RunPlan``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainState:
    """Counters restored from a checkpoint besides weights and optimiser state."""
    step: int = 0                 #: optimiser steps done
    epoch: int = 0                #: current epoch
    samples_in_epoch: int = 0     #: global samples of ``epoch`` already trained on
    samples_seen: int = 0         #: global samples trained on in the whole run
    data_seed: int = 0
    global_batch: int = 0         #: samples per optimiser step, fixed for the life of the run

    def to_client_state(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_client_state(cls, d: dict[str, Any]) -> "TrainState":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: int(v) for k, v in d.items() if k in names})

    def advance(self, steps_per_epoch: int) -> None:
        """One optimiser step of ``global_batch`` samples; roll the epoch over at its end."""
        self.step += 1
        self.samples_seen += self.global_batch
        self.samples_in_epoch += self.global_batch
        if self.samples_in_epoch >= steps_per_epoch * self.global_batch:
            self.epoch, self.samples_in_epoch = self.epoch + 1, 0


@dataclass(frozen=True)
class RunPlan:
    """How this process group trains the run: derived once at set-up, never mutated."""
    world_size: int
    micro_batch: int              #: samples per rank per forward pass
    grad_accum: int               #: micro-batches per optimiser step on this world size
    global_batch: int             #: micro x accum x world (fixed for the run)
    steps_per_epoch: int          #: optimiser steps per epoch (world-size independent)
    total_steps: int
    peak_lr: float

    @property
    def micro_per_epoch(self) -> int:
        """Micro-batches each rank trains on per epoch."""
        return self.steps_per_epoch * self.grad_accum

    def micro_done_in_epoch(self, state: TrainState) -> int:
        """Micro-batches of ``state.epoch`` this rank already consumed (skipped after a restart)."""
        return state.samples_in_epoch // (self.micro_batch * self.world_size)


@dataclass
class RunSummary:
    run_dir: Path
    backend: str
    world_size: int
    global_batch: int
    peak_lr: float
    steps: int
    start_step: int
    epochs: int
    last_checkpoint: Path | None
    interrupted: bool = False     #: stopped by SIGTERM/SIGINT after writing a checkpoint
    final_metrics: dict[str, float] = field(default_factory=dict)
    val_history: list[dict[str, float]] = field(default_factory=list)
