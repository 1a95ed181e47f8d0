"""``anatplane experiment run``: data → arms (pretrain + publish) → every cell → results.

The grid is arms × labelled counts × seeds.  The split is drawn once (``split_seed``): a fixed
test set, optional validation subjects, and the labelled pool; per seed a permutation of the
pool whose first ``n`` subjects are the subset for count ``n`` (different per seed, nested
across counts).  All of it is written to ``split.json`` and into every cell record.

Each cell is cached in ``cells/<arm>/n<NNN>-seed<S>.json`` under a fingerprint of everything
its answer depends on (the arm's published weights, the fine-tune schedule, the subsets, the
test set, the data); a file with the same fingerprint is reused, so a killed run resumes
without re-running a finished cell and a changed arm re-runs only its own cells.  Files are
written atomically when a cell finishes, never partially.
"""
from __future__ import annotations

import json
import multiprocessing
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from anatplane_dist.core.atomic import atomic_write_json, atomic_write_text, json_safe
from anatplane_dist.core.hashing import json_fingerprint
from anatplane_dist.experiment.arms import ArmResult, prepare_arm
from anatplane_dist.experiment.cell import CellData, CellJob, init_worker, run_cell, run_cell_in_worker
from anatplane_dist.experiment.spec import ExperimentSpec, SpecError

__all__ = ["draw_split", "draw_subsets", "prepare_data", "load_cell_data", "run_experiment", "cell_path"]


# -- the protocol's draws ---------------------------------------------------------------------

def draw_split(subjects: list[str], n_test: int, n_val: int, split_seed: int,
               test_ids: list[str] | None = None) -> dict[str, list[str]]:
    """Fixed test, validation and pool subjects: one seeded permutation of the sorted ids
    (the test set is ``test_ids`` when given; validation is then drawn from the rest)."""
    if test_ids:
        test = sorted(test_ids)
        rest = sorted(set(subjects) - set(test))
        order = np.random.default_rng(split_seed).permutation(len(rest))
        return {"test": test, "val": sorted(rest[i] for i in order[:n_val]),
                "pool": sorted(rest[i] for i in order[n_val:])}
    ids = sorted(subjects)
    order = np.random.default_rng(split_seed).permutation(len(ids))
    test = sorted(ids[i] for i in order[:n_test])
    val = sorted(ids[i] for i in order[n_test:n_test + n_val])
    pool = sorted(ids[i] for i in order[n_test + n_val:])
    return {"test": test, "val": val, "pool": pool}


def draw_subsets(pool: list[str], counts: list[int], seed: int) -> dict[int, list[str]]:
    """Per seed, the first ``n`` of one seeded permutation of the pool: nested across ``n``."""
    order = np.random.default_rng(10_000 + seed).permutation(len(pool))
    return {n: sorted(pool[i] for i in order[:n]) for n in counts}


# -- data ------------------------------------------------------------------------------------

def _anatplane(argv: list[str], what: str) -> None:
    from anatplane_dist.cli import main as anatplane

    rc = anatplane(argv)
    if rc:
        raise SpecError(f"{what} failed: 'anatplane {' '.join(argv)}' exited {rc}")


def prepare_data(spec: ExperimentSpec, out: Path, log: Callable[[str], None] = print) -> tuple[Path, Path]:
    """(pretraining shard dir, fine-tuning data root): the paths given, or the phantom made here.

    Phantom pretraining and labelled subjects are disjoint (labelled indices start at 1001),
    so no test subject was seen, even unlabelled, in pretraining.
    """
    d = spec.data
    if d.volumes:
        return _prepare_volumes(spec, out, log)
    if d.phantom is None:
        shards, root = Path(d.pretrain_shards), Path(d.finetune)
        for p in (shards, root):
            if not p.exists():
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


def load_cell_data(spec: ExperimentSpec, root: Path) -> tuple[CellData, list[Any]]:
    """The fine-tuning data on the model grid, and the inputs skipped while loading."""
    from anatplane_dist.finetune.classification import ClsTrainConfig
    from anatplane_dist.finetune.data import FinetuneDataError, GridSpec, load_acdc, load_knee
    from anatplane_dist.finetune.segmentation import SegTrainConfig

    grid = GridSpec(spec.data.grid, spec.data.spacing)
    ft = spec.finetune
    try:
        if spec.task == "seg":
            cfg = SegTrainConfig(steps=ft.steps, batch_size=ft.batch_size, lr=ft.lr,
                                 largest_component=ft.largest_component)
            subjects, skipped = load_acdc(root, grid, cfg.num_classes)
            return CellData("seg", seg={s.subject: s for s in subjects}, seg_cfg=cfg, root=str(root)), skipped
        ccfg = ClsTrainConfig(steps=ft.steps, stacks_per_step=ft.batch_size, lr=ft.lr)
        stacks, names, skipped = load_knee(root, grid, view=spec.data.view)
        return (CellData("cls", cls={s.subject: s for s in stacks}, cls_cfg=ccfg, cls_names=tuple(names),
                         root=str(root)), skipped)
    except FinetuneDataError as exc:
        raise SpecError(str(exc)) from exc


def _subjects(data: CellData) -> list[str]:
    return sorted(data.seg if data.task == "seg" else data.cls)


def _train_config(data: CellData) -> dict[str, Any]:
    return (data.seg_cfg.to_dict() if data.task == "seg"
            else {**data.cls_cfg.to_dict(), "label_names": list(data.cls_names)})


# -- architecture ------------------------------------------------------------------------------

def _architecture(spec: ExperimentSpec, shards: Path) -> tuple[str, int]:
    """(ModelConfig YAML, K) of the shared preset: the network the random arm builds (the
    pretrained arms build the same one from their published weights' header)."""
    from anatplane_dist.core.mapping import ConfigError
    from anatplane_dist.experiment.arms import _config_path
    from anatplane_dist.shards.manifest import read_shard_facts
    from anatplane_dist.train.config import load_config

    try:
        cfg = load_config(_config_path(spec), [f"data.shards={shards}", *spec.pretrain.overrides])
    except ConfigError as exc:
        raise SpecError(f"pretrain: {exc}") from exc
    return cfg.model.to_yaml(), read_shard_facts(shards).num_channels


def _arm_transfer(spec: ExperimentSpec, res: ArmResult) -> str:
    """What one arm transfers: the spec's choice, reduced to the encoder when the arm published
    no decoder (location, SimCLR and rotation pretraining train none) or for classification."""
    from anatplane_dist.finetune.backbone import read_pretrained_info

    if spec.task != "seg" or not res.published:
        return "encoder"
    if spec.finetune.transfer == "encoder+decoder" and "decoder" not in read_pretrained_info(res.published).parts:
        return "encoder"
    return spec.finetune.transfer


# -- cells -----------------------------------------------------------------------------------



def cell_path(out: Path, arm: str, n: int, seed: int) -> Path:
    return out / "cells" / arm / f"n{n:03d}-seed{seed}.json"


def _read_cell(path: Path, fingerprint: str) -> dict[str, Any] | None:
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("fingerprint") == fingerprint else None



def run_experiment(spec: ExperimentSpec, out: str | Path, *, slurm: bool = False,
                   slurm_args: list[str] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the whole experiment under ``out``; returns the run summary."""
    import torch

    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shards, root = prepare_data(spec, out, log)
    data, skipped = load_cell_data(spec, root)
    subjects = _subjects(data)
    spec.check_pool(len(subjects), subjects)           # refused before any pretraining
    proto = spec.protocol
    split = draw_split(subjects, proto.test_subjects, proto.val_subjects, proto.split_seed, proto.test_ids)
    subsets = {seed: draw_subsets(split["pool"], proto.labels, seed) for seed in proto.seeds}
    atomic_write_json(out / "split.json", {**split, "subsets": {str(s): {str(n): v for n, v in d.items()}
                                                               for s, d in subsets.items()},
                                           "skipped": [s.to_dict() for s in skipped]})
    atomic_write_json(out / "experiment.json", spec.to_dict())
    atomic_write_json(out / "data.json", {"pretrain_shards": str(shards.resolve()), "finetune": str(root.resolve())})
    log(f"{spec.name}: {len(subjects)} labelled subjects -> {len(split['test'])} test, {len(split['val'])} "
        f"validation, pool {len(split['pool'])}; counts {proto.labels}, seeds {proto.seeds}, "
        f"arms {[a.name for a in spec.arms]}")

    arms: dict[str, ArmResult] = {}
    for arm in tqdm(spec.arms, desc="pretrain arms", unit="arm", disable=None):
        arms[arm.name] = prepare_arm(spec, arm, out, shards, slurm=slurm, slurm_args=slurm_args, log=log)
    atomic_write_json(out / "arms.json", {k: v.to_dict() for k, v in arms.items()})
    arch_yaml, k = _architecture(spec, shards)

    data_id = {"root": str(root.resolve()), "subjects": subjects, "grid": [spec.data.grid, spec.data.spacing]}
    ft = spec.finetune
    jobs: list[tuple[CellJob, dict[str, Any], Path]] = []
    cached = 0
    transfers: dict[str, str] = {}
    for arm in spec.arms:
        res = arms[arm.name]
        if res.status == "failed":
            continue
        transfers[arm.name] = _arm_transfer(spec, res)
        for n in proto.labels:
            for seed in proto.seeds:
                path = cell_path(out, arm.name, n, seed)
                job = CellJob(arm=arm.name, n_labelled=n, seed=seed, train=tuple(subsets[seed][n]),
                              val=tuple(split["val"]), test=tuple(split["test"]), pretrained=res.published,
                              transfer=transfers[arm.name], select=ft.select,
                              val_every=ft.val_every, cell_dir=str(path.with_suffix("")),
                              predictions=ft.predictions and spec.task == "seg", model_config_yaml=arch_yaml,
                              num_channels=k, grid=(spec.data.grid, spec.data.spacing))
                weights = Path(res.published).name if res.published else None   # version = step + weights hash
                key = {"task": spec.task, "arm": arm.name, "weights": weights, "n_labelled": n, "seed": seed,
                       "train": job.train, "val": job.val, "test": job.test, "select": ft.select,
                       "val_every": ft.val_every if ft.select == "best-val" else None,
                       "transfer": job.transfer if res.published else None, "architecture": [arch_yaml, k],
                       "train_config": _train_config(data), "data": data_id, "predictions": job.predictions}
                key["fingerprint"] = json_fingerprint(key)
                if _read_cell(path, key["fingerprint"]) is not None:
                    cached += 1
                    continue
                jobs.append((job, key, path))
    total = cached + len(jobs)
    log(f"cells: {total} ({cached} cached, {len(jobs)} to run) with {spec.workers} worker(s)")

    def finish(job: CellJob, key: dict[str, Any], path: Path, result: dict[str, Any]) -> None:
        atomic_write_json(path, json_safe({**key, **result}))

    bar = tqdm(total=total, initial=cached, desc="fine-tune cells", unit="cell", disable=None, smoothing=0.1)
    failures: list[str] = []
    if spec.workers <= 1 or len(jobs) <= 1:
        torch.set_num_threads(1)
        for job, key, path in jobs:
            try:
                finish(job, key, path, run_cell(job, data))
            except Exception as exc:  # noqa: BLE001 - one broken cell is reported, the grid goes on
                failures.append(f"{job.arm} n={job.n_labelled} seed={job.seed}: {type(exc).__name__}: {exc}")
            bar.update()
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(spec.workers, len(jobs)), mp_context=ctx, initializer=init_worker,
                                 initargs=(data, 1)) as ex:
            futures = {ex.submit(run_cell_in_worker, job): (job, key, path) for job, key, path in jobs}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    job, key, path = futures[fut]
                    try:
                        finish(job, key, path, fut.result())
                    except Exception as exc:  # noqa: BLE001 - one broken cell is reported, the grid goes on
                        failures.append(f"{job.arm} n={job.n_labelled} seed={job.seed}: {type(exc).__name__}: {exc}")
                    bar.update()
    bar.close()
    for f in failures:
        log(f"cell failed: {f}")
    summary = {"name": spec.name, "task": spec.task, "seconds": round(time.perf_counter() - t_start, 1),
               "cells": total, "cells_run": len(jobs), "cells_cached": cached, "cell_failures": failures,
               "arms": {k: v.to_dict() for k, v in arms.items()}}
    atomic_write_json(out / "run.json", summary)
    return summary
