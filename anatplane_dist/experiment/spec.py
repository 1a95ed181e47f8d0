"""The experiment file: one declarative YAML that states the whole comparison.

An experiment is a grid: arms (how the encoder was initialised) × labelled-subject counts ×
seeds, every cell fine-tuned with one schedule and scored on one fixed test set.  Everything
the answer depends on is in this file, so a results directory can be traced to the question
it answers (the spec is copied next to the results and hashed into every cell).

Validation happens here, before anything runs: unknown keys, a ``random`` arm missing, a
label count larger than the pool left after the test (and validation) subjects, a data source
that is neither a phantom recipe nor a path.  Each becomes one :class:`SpecError` line.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from anatplane_dist.core.errors import AnatplaneError
from anatplane_dist.core.mapping import ConfigError, coerce_value, from_dict

__all__ = ["SpecError", "ArmSpec", "PhantomData", "DataSpec", "PretrainSpec", "FinetuneSpec",
           "ProtocolSpec", "ExperimentSpec", "load_spec", "RANDOM", "TASKS", "SELECTIONS"]

RANDOM = "random"
TASKS = ("seg", "cls")
SELECTIONS = ("final", "best-val")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class SpecError(AnatplaneError):
    """An experiment file that cannot be run (the message names the key)."""


def _build(cls: type, data: Any, where: str) -> Any:
    return from_dict(cls, data, where, kind="key", error=SpecError)


def _value(value: Any, typ: Any, key: str) -> Any:
    """One top-level value converted to ``typ`` (a typo such as ``workers: abc`` is one line naming the key)."""
    try:
        return coerce_value(value, typ, key)
    except ConfigError as e:
        raise SpecError(str(e)) from None


@dataclass
class ArmSpec:
    """One initialisation.  ``objective`` is passed to the trainer as ``objective.name=...``;
    the arm named ``random`` has no pretraining.  ``overrides`` are extra trainer ``key=value``."""
    name: str
    objective: str | None = None
    overrides: list[str] = field(default_factory=list)
    published: str | None = None          # weights published elsewhere: no pretraining here

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise SpecError(f"arms: bad arm name {self.name!r} (letters, digits, _ . -)")
        if self.name == RANDOM and (self.objective or self.overrides or self.published):
            raise SpecError("arms: the 'random' arm has no pretraining: no objective, overrides or published")
        if self.published and (self.objective or self.overrides):
            raise SpecError(f"arms.{self.name}: published weights are used as they are: no objective/overrides")
        if self.name != RANDOM and not self.objective and not self.published:
            raise SpecError(f"arms.{self.name}: needs an objective (multitask, orientation, location, "
                            f"simclr, genesis, rotation)")
        if not isinstance(self.overrides, list) or not all(isinstance(o, str) and "=" in o for o in self.overrides):
            raise SpecError(f"arms.{self.name}.overrides: a list of key=value strings")

    @property
    def pretrained(self) -> bool:
        return self.name != RANDOM


@dataclass
class PhantomData:
    """A built-in phantom cohort generated under ``OUT/data`` (same seed: same pixels)."""
    kind: str = "heart"             # heart (ACDC segmentation) | knee (classification)
    pretrain_subjects: int = 6      # unlabelled studies for pretraining shards
    labelled_subjects: int = 16     # labelled cohort for fine-tuning (pool + validation + test)
    size: int = 96                  # image matrix (pixels)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("heart", "knee"):
            raise SpecError(f"data.phantom.kind must be heart or knee, got {self.kind!r}")
        if self.pretrain_subjects < 2 or self.labelled_subjects < 3 or self.size < 32:
            raise SpecError("data.phantom: pretrain_subjects >= 2, labelled_subjects >= 3, size >= 32")


@dataclass
class DataSpec:
    """Where the pretraining shards and the labelled fine-tuning data come from."""
    phantom: PhantomData | None = None
    volumes: str | None = None            # a volume cohort YAML (sources/volumes.py): pseudo-acquisitions
    pretrain_shards: str | None = None    # a sharder output directory (when not a phantom)
    finetune: str | None = None           # ACDC root (seg) or knee root with labels.csv (cls)
    grid: int = 64                        # model grid (pixels) and spacing (mm): as in pretraining
    spacing: float = 3.0
    view: str = "sagittal"                # cls: the knee stack to classify
    labels_csv: str | None = None         # cls: label table (default <finetune>/labels.csv)
    model_config: str | None = None       # random-only runs without a pretraining preset: ModelConfig YAML
    num_channels: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.phantom, dict):
            self.phantom = _build(PhantomData, self.phantom, "data.phantom")
        if self.phantom is not None and self.volumes:
            raise SpecError("data: give phantom or volumes, not both")
        if self.phantom is None and not self.volumes and not self.finetune:
            raise SpecError("data: give phantom: {...}, volumes: <cohort.yaml>, or a finetune path (and "
                            "pretrain_shards for arms pretrained here)")


@dataclass
class PretrainSpec:
    """The one pretraining recipe every arm shares (same encoder, same budget)."""
    config: str = "launch/configs/tiny-cpu.yaml"
    overrides: list[str] = field(default_factory=list)
    ranks: int = 1                        # local processes (torchrun when > 1)
    timeout_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.ranks < 1:
            raise SpecError(f"pretrain.ranks must be >= 1, got {self.ranks}")


@dataclass
class FinetuneSpec:
    """One fine-tune schedule for every arm and cell (a named one, fields overridable), how the
    model is selected, and the learning-rate search on validation subjects."""
    schedule: str = "steps"               # steps (fixed optimiser steps, cosine) | paper (see finetune.schedules)
    steps: int | None = None              # schedule overrides (None: the named schedule's value)
    epochs: float | None = None
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    weight_decay: float | None = None
    warmup_steps: int | None = None
    lr_grid: list[float] = field(default_factory=list)   # per arm and count, chosen on validation
    lr_seeds: int = 2                     # seeds (the first ones) the LR search trains
    lr_widen: int = 2                     # extra grid points allowed when the winner sits on an edge
    transfer: str = "encoder+decoder"     # seg: which pretrained parts are loaded
    transfers: list[str] = field(default_factory=list)   # report more scopes: extra arms ARM@encoder
    readout: bool = False                 # also ARM@frozen rows: encoder frozen, decoder/head trained
    select: str = "final"                 # final | best-val (best validation Dice / AUC)
    val_every: int = 25                   # best-val: evaluate every N steps
    largest_component: bool = True
    predictions: bool = True              # seg: write NIfTI predictions of the test subjects

    def __post_init__(self) -> None:
        if self.select not in SELECTIONS:
            raise SpecError(f"finetune.select must be one of {SELECTIONS}, got {self.select!r}")
        for t in [self.transfer, *self.transfers]:
            if t not in ("encoder", "encoder+decoder"):
                raise SpecError(f"finetune.transfer must be encoder or encoder+decoder, got {t!r}")
        if self.val_every < 1 or self.lr_seeds < 1 or self.lr_widen < 0:
            raise SpecError("finetune: val_every >= 1, lr_seeds >= 1, lr_widen >= 0")
        if any(not isinstance(x, (int, float)) or isinstance(x, bool) or not x > 0 for x in self.lr_grid):
            raise SpecError(f"finetune.lr_grid: positive numbers, got {self.lr_grid}")
        self.lr_grid = sorted({float(x) for x in self.lr_grid})
        try:
            self.base_schedule()
        except ValueError as exc:
            raise SpecError(f"finetune: {exc}") from exc

    def base_schedule(self):
        """The :class:`~anatplane_dist.finetune.schedules.Schedule` every cell starts from."""
        from anatplane_dist.finetune.schedules import named_schedule

        return named_schedule(self.schedule, steps=self.steps, epochs=self.epochs, batch_size=self.batch_size,
                              lr=self.lr, optimizer=self.optimizer, weight_decay=self.weight_decay,
                              warmup_steps=self.warmup_steps)


@dataclass
class ProtocolSpec:
    """Label counts, seeds, and the fixed held-out subjects."""
    labels: list[int | str] = field(default_factory=lambda: [1, 2, 4])   # "all": the whole pool
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    test_subjects: int = 10               # drawn once with split_seed, the same for every cell
    val_subjects: int = 0                 # drawn once from the rest; needed by select: best-val
    split_seed: int = 0
    test_ids: list[str] | None = None     # a fixed, named test set (e.g. ACDC patient065..084)
    test_fraction: float | None = None    # instead of test_subjects: ceil(fraction x labelled subjects)
    compare_to: list[str] = field(default_factory=list)   # arms every arm is also compared with
    #                                       (paired per seed, like random), e.g. generic SSL baselines

    def __post_init__(self) -> None:
        if self.test_ids is not None:
            if not isinstance(self.test_ids, list) or not self.test_ids:
                raise SpecError("protocol.test_ids: a non-empty list of subject ids")
            self.test_ids = sorted(str(t) for t in self.test_ids)
            self.test_subjects = len(self.test_ids)
        if not self.labels or not all((isinstance(n, int) and not isinstance(n, bool) and n >= 1) or n in ("all", "auto")
                                      for n in self.labels):
            raise SpecError(f"protocol.labels: positive integers, 'all' or 'auto', got {self.labels}")
        if self.test_fraction is not None and not 0.0 < self.test_fraction < 1.0:
            raise SpecError(f"protocol.test_fraction must be in (0, 1), got {self.test_fraction}")
        if not self.seeds or not all(isinstance(s, int) for s in self.seeds) or len(set(self.seeds)) != len(self.seeds):
            raise SpecError(f"protocol.seeds: distinct integers, got {self.seeds}")
        if self.test_subjects < 1 or self.val_subjects < 0:
            raise SpecError("protocol: test_subjects >= 1, val_subjects >= 0")
        self.labels = sorted(set(self.labels), key=lambda n: (isinstance(n, str), n if isinstance(n, int) else 0))


@dataclass
class ExperimentSpec:
    name: str
    task: str
    data: DataSpec
    pretrain: PretrainSpec
    arms: list[ArmSpec]
    finetune: FinetuneSpec
    protocol: ProtocolSpec
    workers: int = 2                      # CPU: fine-tune cells trained at once (1 torch thread each)
    devices: str = "cpu"                  # auto | cpu | cuda:0,cuda:1,...  (where cells train)
    cells_per_device: int = 1             # GPU: cells trained at once on each device
    source: str = ""                      # the file it was read from

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise SpecError(f"task must be one of {TASKS}, got {self.task!r}")
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise SpecError(f"arms: duplicate names in {names}")
        if RANDOM not in names:
            raise SpecError("arms: a 'random' arm (no pretraining) is required: every arm is compared with it")
        unknown = [a for a in self.protocol.compare_to if a not in names or a == RANDOM]
        if unknown:
            raise SpecError(f"protocol.compare_to: {unknown} are not pretrained arms of this experiment ({names})")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise SpecError(f"workers: expected an integer >= 1, got {self.workers!r}")
        if isinstance(self.cells_per_device, bool) or not isinstance(self.cells_per_device, int) \
                or self.cells_per_device < 1:
            raise SpecError(f"cells_per_device: expected an integer >= 1, got {self.cells_per_device!r}")
        if not isinstance(self.devices, str) or not self.devices.strip():
            raise SpecError(f"devices: auto, cpu or a comma list such as cuda:0,cuda:1; got {self.devices!r}")
        if self.finetune.lr_grid and self.protocol.val_subjects < 1:
            raise SpecError("finetune.lr_grid: choosing the LR needs validation subjects (protocol.val_subjects >= 1)")
        if any(a.objective for a in self.arms) and self.data.phantom is None and not self.data.volumes \
                and not self.data.pretrain_shards:
            raise SpecError("data.pretrain_shards: arms pretrained here need a shard directory")
        if self.finetune.select == "best-val" and self.protocol.val_subjects < 1:
            raise SpecError("finetune.select: best-val needs protocol.val_subjects >= 1")
        if (self.task == "cls") != (self.data.phantom is not None and self.data.phantom.kind == "knee") \
                and self.data.phantom is not None:
            raise SpecError(f"task {self.task} does not fit data.phantom.kind {self.data.phantom.kind}")

    def check_pool(self, n_subjects: int, subjects: list[str] | None = None) -> None:
        """Refuse up front a label count the labelled pool cannot provide (never drop it).
        A ``test_fraction`` becomes a test-subject count here (at least 1, leaving a pool)."""
        p = self.protocol
        if p.test_fraction is not None and not p.test_ids:
            p.test_subjects = max(1, min(math.ceil(p.test_fraction * n_subjects), n_subjects - 1 - p.val_subjects))
        if self.protocol.test_ids and subjects is not None:
            missing = sorted(set(self.protocol.test_ids) - set(subjects))
            if missing:
                raise SpecError(f"protocol.test_ids not among the labelled subjects: {missing[:5]}")
        pool = n_subjects - self.protocol.test_subjects - self.protocol.val_subjects
        if pool < 1:
            raise SpecError(f"{n_subjects} labelled subjects leave no training pool after "
                            f"{self.protocol.test_subjects} test + {self.protocol.val_subjects} validation subjects")
        too_big = [n for n in self.protocol.labels if n not in ("all", "auto") and n > pool]
        if too_big:
            raise SpecError(f"protocol.labels {too_big} exceed the labelled pool of {pool} subjects "
                            f"({n_subjects} - {self.protocol.test_subjects} test - "
                            f"{self.protocol.val_subjects} validation)")

    def counts(self, pool: int) -> list[int]:
        """The label counts, 'all' resolved to the pool size."""
        out: set[int] = set()
        for n in self.protocol.labels:
            if n == "auto":
                out |= {c for c in (1, 2, 4, 8) if c <= pool} | {pool}
            else:
                out.add(pool if n == "all" else int(n))
        return sorted(out)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("source")
        return d


def load_spec(path: str | Path) -> ExperimentSpec:
    """Read and validate an experiment YAML (every problem is a one-line :class:`SpecError`)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise SpecError(f"experiment file {path} does not exist") from exc
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: top level must be a mapping")
    allowed = {"name", "task", "data", "pretrain", "arms", "finetune", "protocol", "workers", "devices",
               "cells_per_device"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise SpecError(f"{path}: unknown key(s) {unknown}; known: {sorted(allowed)}")
    arms_raw = raw.get("arms")
    if not isinstance(arms_raw, list) or not arms_raw:
        raise SpecError(f"{path}: arms must be a non-empty list of {{name, objective, overrides}}")
    arms = [_build(ArmSpec, a, f"arms[{i}]") for i, a in enumerate(arms_raw)]
    return ExperimentSpec(
        name=str(raw.get("name") or path.stem), task=str(raw.get("task", "seg")),
        data=_build(DataSpec, raw.get("data"), "data"),
        pretrain=_build(PretrainSpec, raw.get("pretrain"), "pretrain"), arms=arms,
        finetune=_build(FinetuneSpec, raw.get("finetune"), "finetune"),
        protocol=_build(ProtocolSpec, raw.get("protocol"), "protocol"),
        workers=_value(raw.get("workers", 2), int, "workers"),
        devices=_value(str(raw.get("devices", "cpu")), str, "devices"),
        cells_per_device=_value(raw.get("cells_per_device", 1), int, "cells_per_device"), source=str(path))
