"""The data an experiment runs on: the paths given, a phantom made here, or pseudo-acquisitions
of a volume cohort; pretraining shards and the labelled fine-tuning root, always disjoint."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from anatplane_dist.core.atomic import atomic_write_text
from anatplane_dist.experiment.spec import ExperimentSpec, SpecError

__all__ = ["prepare_data"]


def _anatplane(argv: list[str], what: str) -> None:
    from anatplane_dist.cli import main as anatplane

    rc = anatplane(argv)
    if rc:
        raise SpecError(f"{what} failed: 'anatplane {' '.join(argv)}' exited {rc}")


def prepare_data(spec: ExperimentSpec, out: Path, log: Callable[[str], None] = print, *,
                 needs_shards: bool = True) -> tuple[Path | None, Path]:
    """(pretraining shard dir, fine-tuning data root): the paths given, or the phantom made here.

    Phantom pretraining and labelled subjects are disjoint (labelled indices start at 1001),
    so no test subject was seen, even unlabelled, in pretraining.
    """
    d = spec.data
    if d.volumes:
        return _prepare_volumes(spec, out, log)
    if d.phantom is None:
        shards = Path(d.pretrain_shards) if d.pretrain_shards else None
        root = Path(d.finetune)
        for p in (shards, root):
            if p is not None and not p.exists():
                raise SpecError(f"data: {p} does not exist")
        return shards, root
    ph = d.phantom
    base = out / "data"
    pre, lab, shards = base / f"{ph.kind}-pretrain", base / f"{ph.kind}-labelled", base / "shards"
    common = ["--seed", str(ph.seed), "--size", str(ph.size)]
    if not (pre / ".complete").exists():
        log(f"data: phantom {ph.kind}, {ph.pretrain_subjects} pretraining subjects -> {pre}")
        _anatplane(["phantom", ph.kind, "--subjects", str(ph.pretrain_subjects), "--out", str(pre), *common],
                   "phantom (pretraining)")
        atomic_write_text(pre / ".complete", "ok\n")
    if not (lab / ".complete").exists():
        log(f"data: phantom {ph.kind}, {ph.labelled_subjects} labelled subjects -> {lab}")
        if ph.kind == "heart":
            from anatplane_dist.sources.phantom.acdc import AcdcCohortConfig, write_acdc_cohort

            write_acdc_cohort(lab, AcdcCohortConfig(patients=ph.labelled_subjects, seed=ph.seed,
                                                    matrix=(ph.size, ph.size), first_index=1001))
        else:
            _anatplane(["phantom", "knee", "--subjects", str(ph.labelled_subjects), "--out", str(lab),
                        "--first-index", "1001", *common], "phantom (labelled)")
        atomic_write_text(lab / ".complete", "ok\n")
    if not (shards / "manifest.json").exists():
        log(f"data: shards on a {d.grid} px @ {d.spacing} mm grid -> {shards}")
        _anatplane(["shard", "--profile", ph.kind, "--input", str(pre), "--out", str(shards), "--grid", str(d.grid),
                    "--spacing", str(d.spacing), "--val-fraction", "0.25", "--workers", "1"], "shard")
    return shards, lab


def _prepare_volumes(spec: ExperimentSpec, out: Path, log: Callable[[str], None]) -> tuple[Path, Path]:
    """Pseudo-acquisitions of a volume cohort: pretraining shards from the ``pretrain`` volumes,
    the ``heldout`` volumes sharded apart and used as the pretraining validation set (the pretext
    error on anatomy never trained on), the ``labelled`` volumes as the fine-tuning root."""
    from anatplane_dist.sources.prescription import PrescriptionError
    from anatplane_dist.sources.volumes import build_cohort, load_cohort

    d = spec.data
    cohort_path = Path(d.volumes)
    if not cohort_path.is_absolute() and spec.source:
        near = Path(spec.source).parent / cohort_path
        cohort_path = near if near.is_file() else cohort_path
    try:
        paths = build_cohort(load_cohort(cohort_path), out / "data", log)
    except PrescriptionError as exc:
        raise SpecError(f"data.volumes: {exc}") from exc
    shards, heldout = out / "data" / "shards", out / "data" / "heldout-shards"
    for src, dst in ((paths["pretrain"], shards), (paths["heldout"], heldout)):
        if not (dst / "manifest.json").exists():
            log(f"data: shards on a {d.grid} px @ {d.spacing} mm grid -> {dst}")
            _anatplane(["shard", "--profile", str(paths["profile"]), "--input", str(src), "--out", str(dst),
                        "--grid", str(d.grid), "--spacing", str(d.spacing), "--val-fraction", "0",
                        "--workers", "1"], "shard")
    names = sorted(n for n in json.loads((heldout / "sizes.json").read_text()) if n.endswith(".tar"))
    override = "data.val_shards=" + "::".join(str(heldout / n) for n in names)
    if override not in spec.pretrain.overrides:
        spec.pretrain.overrides.append(override)
    return shards, paths["labelled"]
