"""Named fine-tuning schedules: how many optimiser steps, which optimiser, which LR curve.

Why named: a schedule that cannot train the network it is given silently turns a comparison
into a measure of under-training (200 AdamW steps at 3e-3 do not train the paper's 31 M U-Net;
random init is still learning when the CPU demo stopped).  So every experiment says which
schedule it uses, and the two the package knows are:

- ``paper``: the official fine-tuning code: Adam 1e-3, LR x0.5 every 50 epochs, 500 epochs of
  the labelled slices (an epoch = every labelled slice once), batch 10, best-val selection.
  The number of steps grows with the labelled slices, as in the paper.
- ``steps``: a fixed number of optimiser steps (cosine to 0 after a linear warm-up), AdamW; the
  CPU presets use it (a run with 1 labelled subject gets as many updates as one with 8).

Any field can be overridden by the experiment file.  Config-only: importable without torch.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

__all__ = ["Schedule", "SCHEDULES", "named_schedule"]

OPTIMIZERS = ("adam", "adamw")
DECAYS = ("cosine", "step")


@dataclass(frozen=True)
class Schedule:
    """One fine-tuning schedule (see the module docstring for the named ones)."""
    name: str = "steps"
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 8
    steps: int = 200               # decay "cosine" with epochs == 0: this many steps
    epochs: float = 0.0            # > 0: steps = ceil(epochs * items / batch_size)
    decay: str = "cosine"          # cosine (to 0) | step (x step_factor every step_epochs)
    step_epochs: float = 50.0
    step_factor: float = 0.5
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.decay not in DECAYS:
            raise ValueError(f"decay must be one of {DECAYS}, got {self.decay!r}")
        if not self.lr > 0 or self.batch_size < 1 or self.steps < 1 or self.epochs < 0 or self.warmup_steps < 0:
            raise ValueError(f"schedule {self.name}: lr > 0, batch_size >= 1, steps >= 1, epochs >= 0, "
                             f"warmup_steps >= 0 (got lr={self.lr}, batch_size={self.batch_size}, "
                             f"steps={self.steps}, epochs={self.epochs}, warmup_steps={self.warmup_steps})")

    def steps_per_epoch(self, items: int) -> float:
        return max(1, items) / self.batch_size

    def total_steps(self, items: int) -> int:
        """Optimiser steps for ``items`` labelled training items (slices or stacks)."""
        if self.epochs > 0:
            return max(1, math.ceil(self.epochs * self.steps_per_epoch(items)))
        return self.steps

    def lr_at(self, step: int, items: int) -> float:
        """LR of the 0-based optimiser ``step`` about to be taken."""
        from anatplane_dist.train.schedule import warmup_cosine

        total = self.total_steps(items)
        if self.decay == "cosine":
            return self.lr * warmup_cosine(step, total, self.warmup_steps)
        warm = (step + 1) / self.warmup_steps if self.warmup_steps and step < self.warmup_steps else 1.0
        every = max(1, round(self.step_epochs * self.steps_per_epoch(items)))
        return self.lr * warm * self.step_factor ** (step // every)

    def with_lr(self, lr: float) -> "Schedule":
        return replace(self, lr=float(lr))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SCHEDULES: dict[str, Schedule] = {
    "paper": Schedule(name="paper", optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=10, epochs=500,
                      decay="step", step_epochs=50, step_factor=0.5),
    "steps": Schedule(name="steps"),
}


def named_schedule(name: str, **overrides: Any) -> Schedule:
    """A named schedule with some fields replaced (unknown names and fields raise ValueError)."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; known: {sorted(SCHEDULES)}")
    known = {f.name for f in fields(Schedule)} - {"name"}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ValueError(f"schedule {name}: unknown field(s) {bad}")
    return replace(SCHEDULES[name], **{k: v for k, v in overrides.items() if v is not None})
