"""``anatplane experiment run``: data → arms (pretrain + publish) → every cell → results.

The one low-label engine (``anatplane finetune`` is a two-arm experiment run by it too).  The
grid is arms × labelled counts × seeds.  The split is drawn once (``split_seed``) and
stratified by the task's group (pathology for ACDC-layout data, the label pattern for the
knee): a fixed test set, validation subjects, and the labelled pool; per seed a stratified
permutation of the pool whose first ``n`` subjects are the subset for count ``n`` (different per
seed, nested across counts).  All of it is written to ``split.json`` and into every cell record.

With ``finetune.lr_grid`` the learning rate is chosen per arm and count on the validation
subjects (never the test subjects): the first ``lr_seeds`` seeds train at every grid LR, the LR
with the best mean validation score wins, and a winner on an edge of the grid widens it (up to
``lr_widen`` more points).  The search is recorded in ``lr.json``; its cells at the winning LR are
the grid's cells for those seeds (nothing trains twice).

Each cell is cached under a fingerprint of everything its answer depends on (the arm's
published weights, the fine-tune schedule and LR, the subsets, the test set, the data); a file
with the same fingerprint is reused, so a killed run resumes without re-running a finished cell
and a changed arm re-runs only its own cells.  Files are written atomically when a cell
finishes, never partially.  The experiment directory is locked while a run owns it.
"""
from __future__ import annotations

import json
import math
import multiprocessing
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from anatplane_dist.core.atomic import atomic_write_json, json_safe
from anatplane_dist.core.hashing import json_fingerprint
from anatplane_dist.experiment.arms import ArmResult, prepare_arm
from anatplane_dist.experiment.cell import (
    CellJob,
    init_worker,
    load_task_data,
    run_cell,
    run_cell_in_worker,
)
from anatplane_dist.experiment.data import prepare_data
from anatplane_dist.experiment.draws import draw_split, draw_subsets
from anatplane_dist.experiment.slurm_cells import (
    parse_slurm_args,
    pretrain_submit_args,
    run_on_slurm,
)
from anatplane_dist.experiment.spec import ExperimentSpec, SpecError

__all__ = ["resolve_devices", "validate_up_front", "run_experiment", "cell_path", "cell_arms"]


# -- checks before anything is written ---------------------------------------------------------

def validate_up_front(spec: ExperimentSpec) -> dict[str, Any]:
    """Every arm's trainer configuration (objective name, overrides) and every given published
    weights file, checked before any data is made or any cell trains.  Returns {arm: info} of
    the published arms (their verified headers)."""
    from anatplane_dist.experiment.arms import _config_path
    from anatplane_dist.finetune.backbone import PretrainedError, verify_pretrained
    from anatplane_dist.train.config import ConfigError, load_config

    published: dict[str, Any] = {}
    for arm in spec.arms:
        if arm.objective:
            try:
                load_config(_config_path(spec), ["data.shards=/nonexistent", *spec.pretrain.overrides,
                                                 f"objective.name={arm.objective}", *arm.overrides])
            except (ConfigError, OSError, ValueError) as exc:
                raise SpecError(f"arms.{arm.name}: {exc}") from exc
        if arm.published:
            try:
                published[arm.name] = verify_pretrained(arm.published)
            except PretrainedError as exc:
                raise SpecError(f"arms.{arm.name}.published: {exc}") from exc
    return published


def resolve_devices(devices: str, workers: int, cells_per_device: int) -> list[str]:
    """Worker slots, one device each: ``cpu`` -> ``workers`` CPU slots; ``auto`` -> every visible
    GPU ``cells_per_device`` times (CPU slots when there is none); ``cuda:0,cuda:1`` -> each
    listed device ``cells_per_device`` times (``cpu`` entries are one slot each)."""
    import torch

    text = devices.strip().lower()
    if text == "cpu":
        return ["cpu"] * workers
    if text == "auto":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [f"cuda:{i}" for i in range(n) for _ in range(cells_per_device)] or ["cpu"] * workers
    slots = []
    for d in (x.strip() for x in text.split(",") if x.strip()):
        if d == "cpu":
            slots.append("cpu")
            continue
        if d == "cuda":
            d = "cuda:0"
        if not (d.startswith("cuda:") and d[5:].isdigit()):
            raise SpecError(f"devices: {d!r} is not cpu, cuda or cuda:N (use auto, cpu or cuda:0,cuda:1)")
        if not torch.cuda.is_available() or int(d[5:]) >= torch.cuda.device_count():
            raise SpecError(f"devices: {d} is not available on this machine "
                            f"({torch.cuda.device_count() if torch.cuda.is_available() else 0} GPU(s))")
        slots += [d] * cells_per_device
    if not slots:
        raise SpecError(f"devices: no device in {devices!r}")
    return slots


# -- architecture ------------------------------------------------------------------------------

def _architecture(spec: ExperimentSpec, shards: Path | None, published: dict[str, Any]) -> tuple[str, int]:
    """(ModelConfig YAML, K) of the network every arm builds: the shared pretraining preset's,
    else the published weights' header, else ``data.model_config``."""
    import dataclasses

    from anatplane_dist.core.mapping import ConfigError
    from anatplane_dist.experiment.arms import _config_path
    from anatplane_dist.model import ModelConfig
    from anatplane_dist.train.config import load_config

    if shards is not None:
        from anatplane_dist.shards.manifest import read_shard_facts

        try:
            cfg = load_config(_config_path(spec), [f"data.shards={shards}", *spec.pretrain.overrides])
        except ConfigError as exc:
            raise SpecError(f"pretrain: {exc}") from exc
        return cfg.model.to_yaml(), read_shard_facts(shards).num_channels
    if published:
        info = next(iter(published.values()))
        return info.model_config.to_yaml(), info.num_channels
    if spec.data.model_config:
        try:
            mc = ModelConfig.from_yaml(Path(spec.data.model_config).read_text())
        except (OSError, ValueError, TypeError) as exc:
            raise SpecError(f"data.model_config: {exc}") from exc
        return dataclasses.replace(mc).to_yaml(), spec.data.num_channels
    raise SpecError("the network is unknown: give pretrained weights, a pretraining preset with shards, "
                    "or data.model_config")


#: parameters above which the fixed-steps CPU schedule is called out (the paper's U-Net has 31 M;
#: 200 AdamW steps at 3e-3 did not train it in issue 17's GPU run)
BIG_NETWORK = 5_000_000


def schedule_warnings(schedule: Any, arch_yaml: str, k: int) -> list[str]:
    """A fixed-steps schedule on a network it cannot train is said out loud (run.json, results.md)."""
    from anatplane_dist.model import ModelConfig, build_model

    if schedule.name != "steps" or schedule.epochs > 0:
        return []
    n = sum(p.numel() for p in build_model(ModelConfig.from_yaml(arch_yaml), k).parameters())
    if n <= BIG_NETWORK:
        return []
    return [f"the '{schedule.name}' schedule ({schedule.steps} steps) on a {n / 1e6:.1f} M-parameter network: "
            f"too few updates to train it (use 'schedule: paper', or more steps, and check the 'still rising' "
            f"column)"]


def cell_arms(spec: ExperimentSpec) -> list[tuple[str, str, str]]:
    """(cell arm name, spec arm name, transfer) of every row of the grid: each arm at the spec's
    transfer, plus ``ARM@encoder`` / ``ARM@encoder+decoder`` rows for ``finetune.transfers``, and
    ``ARM@frozen`` rows (the frozen-encoder readout, random included) for ``finetune.readout``."""
    out = []
    for arm in spec.arms:
        out.append((arm.name, arm.name, spec.finetune.transfer))
    for t in spec.finetune.transfers:
        if t == spec.finetune.transfer or spec.task != "seg":
            continue
        out += [(f"{a.name}@{t}", a.name, t) for a in spec.arms if a.pretrained]
    if spec.finetune.readout:
        out += [(f"{a.name}@frozen", a.name, "encoder") for a in spec.arms]
    return out


# -- cells -----------------------------------------------------------------------------------

def cell_path(out: Path, arm: str, n: int, seed: int) -> Path:
    return out / "cells" / arm / f"n{n:03d}-seed{seed}.json"


def search_path(out: Path, arm: str, n: int, seed: int, lr: float) -> Path:
    return out / "cells" / arm / "lr-search" / f"n{n:03d}-seed{seed}-lr{lr:.3g}.json"


def _read_cell(path: Path, fingerprint: str) -> dict[str, Any] | None:
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("fingerprint") == fingerprint else None


class CellPool:
    """Runs cells on worker slots (one device each); in-process when there is one slot or job.

    Workers ignore SIGINT; on Ctrl-C the parent cancels what has not started, terminates the
    workers and re-raises KeyboardInterrupt (finished cells are already on disk)."""

    def __init__(self, data: Any, slots: list[str]) -> None:
        self.data, self.slots = data, slots

    def run(self, jobs: list[tuple[CellJob, dict[str, Any], Path]],
            finish: Callable[[CellJob, dict[str, Any], Path, dict[str, Any] | None, str | None], None]) -> None:
        import torch

        if len(self.slots) <= 1 or len(jobs) <= 1:
            torch.set_num_threads(1)
            for job, key, path in jobs:
                try:
                    result = run_cell(job, self.data, self.slots[0])
                except Exception as exc:  # noqa: BLE001 - one broken cell is reported, the grid goes on
                    finish(job, key, path, None, f"{type(exc).__name__}: {exc}")
                    continue
                finish(job, key, path, result, None)
            return
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        n = min(len(self.slots), len(jobs))
        for slot in self.slots[:n]:
            queue.put(slot)
        ex = ProcessPoolExecutor(n, mp_context=ctx, initializer=init_worker, initargs=(self.data, 1, queue))
        try:
            futures = {ex.submit(run_cell_in_worker, job): (job, key, path) for job, key, path in jobs}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    job, key, path = futures[fut]
                    try:
                        result = fut.result()
                    except Exception as exc:  # noqa: BLE001 - one broken cell is reported, the grid goes on
                        finish(job, key, path, None, f"{type(exc).__name__}: {exc}")
                        continue
                    finish(job, key, path, result, None)
        except KeyboardInterrupt:
            procs = list((getattr(ex, "_processes", None) or {}).values())
            ex.shutdown(wait=False, cancel_futures=True)
            for p in procs:
                p.terminate()
            for p in procs:
                p.join(5)
            ex.shutdown(wait=True)           # the pool notices its dead workers and frees its queues
            queue.close()
            queue.join_thread()
            raise
        ex.shutdown(wait=True)
        queue.close()
        queue.join_thread()


def _mean_val(recs: list[dict[str, Any] | None]) -> float:
    vals = [r.get("val_best") for r in recs if r is not None and r.get("val_best") is not None]
    return float(np.mean(vals)) if vals else float("nan")


def _widen(grid: list[float], best: float) -> float | None:
    """The next LR beyond the edge ``best`` sits on (the grid's own log step, x10 for one point)."""
    g = sorted(grid)
    ratio = (g[-1] / g[0]) ** (1 / (len(g) - 1)) if len(g) > 1 else 10.0
    if best == g[0]:
        return float(f"{g[0] / ratio:.3g}")          # 3 significant digits: file names and lr.json keys
    if best == g[-1]:
        return float(f"{g[-1] * ratio:.3g}")
    return None


def run_experiment(spec: ExperimentSpec, out: str | Path, *, slurm: bool = False,
                   slurm_args: list[str] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the whole experiment under ``out`` (locked while it runs); returns the
    run summary."""
    from anatplane_dist.train.runlock import RunLock

    if slurm:       # a typo in --slurm-args fails now, not after the arms' pretraining
        parse_slurm_args(slurm_args or [])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out):
        return _run_locked(spec, out, slurm=slurm, slurm_args=slurm_args, log=log)


def _run_locked(spec: ExperimentSpec, out: Path, *, slurm: bool, slurm_args: list[str] | None,
                log: Callable[[str], None]) -> dict[str, Any]:
    from anatplane_dist.finetune.tasks import get_task

    t_start = time.perf_counter()
    published = validate_up_front(spec)                 # before any data is written
    slots = resolve_devices(spec.devices, spec.workers, spec.cells_per_device)
    task = get_task(spec.task)
    needs_shards = any(a.objective for a in spec.arms)
    shards, root = prepare_data(spec, out, log, needs_shards=needs_shards)
    data = load_task_data(spec, root)
    subjects = sorted(data.subjects)
    spec.check_pool(len(subjects), subjects)           # refused before any pretraining
    proto = spec.protocol
    groups = {s: task.group(data, s) for s in subjects}
    split = draw_split(subjects, proto.test_subjects, proto.val_subjects, proto.split_seed, proto.test_ids, groups)
    counts = spec.counts(len(split["pool"]))
    subsets = {seed: draw_subsets(split["pool"], counts, seed, groups) for seed in proto.seeds}
    atomic_write_json(out / "split.json", {**split, "counts": counts, "groups": groups,
                                           "subsets": {str(s): {str(n): v for n, v in d.items()}
                                                       for s, d in subsets.items()},
                                           "skipped": [s.to_dict() for s in data.skipped]})
    rows = cell_arms(spec)
    atomic_write_json(out / "experiment.json", {**spec.to_dict(), "cell_arms": [r[0] for r in rows]})
    atomic_write_json(out / "data.json", {"pretrain_shards": str(shards.resolve()) if shards else None,
                                          "finetune": str(root.resolve())})
    log(f"{spec.name}: {len(subjects)} labelled subjects -> {len(split['test'])} test, {len(split['val'])} "
        f"validation, pool {len(split['pool'])} (stratified by group); counts {counts}, seeds {proto.seeds}, "
        f"arms {[r[0] for r in rows]}; cells on {', '.join(sorted(set(slots)))} ({len(slots)} slot(s))")

    arms: dict[str, ArmResult] = {}
    for arm in tqdm(spec.arms, desc="pretrain arms", unit="arm", disable=None):
        if arm.published:
            arms[arm.name] = ArmResult(arm.name, "ok", published=str(published[arm.name].path.parent))
        else:
            arms[arm.name] = prepare_arm(spec, arm, out, shards, slurm=slurm,
                                         slurm_args=pretrain_submit_args(slurm_args or []), log=log)
    atomic_write_json(out / "arms.json", {k: v.to_dict() for k, v in arms.items()})
    arch_yaml, k = _architecture(spec, shards, published)

    data_id = {"root": str(root.resolve()), "subjects": subjects, "grid": [spec.data.grid, spec.data.spacing]}
    ft = spec.finetune
    base = ft.base_schedule()
    warnings = schedule_warnings(base, arch_yaml, k)
    for w in warnings:
        log(f"warning: {w}")
    train_config = task.config(data)
    live = []          # (cell arm, result, transfer)
    for name, arm_name, transfer in rows:
        res = arms[arm_name]
        if res.status == "failed":
            continue
        if res.published:
            from anatplane_dist.finetune.backbone import read_pretrained_info

            transfer = task.transfer(transfer, read_pretrained_info(res.published).parts)
        live.append((name, res, transfer))

    def job_and_key(name: str, res: ArmResult, transfer: str, n: int, seed: int, lr: float,
                    path: Path, predictions: bool) -> tuple[CellJob, dict[str, Any]]:
        sched = base.with_lr(lr)
        job = CellJob(arm=name, n_labelled=n, seed=seed, train=tuple(subsets[seed][n]), val=tuple(split["val"]),
                      test=tuple(split["test"]), pretrained=res.published, transfer=transfer, select=ft.select,
                      val_every=ft.val_every, cell_dir=str(path.with_suffix("")), predictions=predictions,
                      model_config_yaml=arch_yaml, num_channels=k, grid=(spec.data.grid, spec.data.spacing),
                      schedule=sched, frozen_encoder=name.endswith("@frozen"))
        weights = Path(res.published).name if res.published else None   # version = step + weights hash
        key = {"task": spec.task, "arm": name, "weights": weights, "n_labelled": n, "seed": seed,
               "train": job.train, "val": job.val, "test": job.test, "select": ft.select,
               "val_every": ft.val_every if ft.select == "best-val" else None,
               "transfer": transfer if res.published else None, "architecture": [arch_yaml, k],
               "schedule": sched.to_dict(), "train_config": train_config, "data": data_id,
               "predictions": predictions, "frozen_encoder": job.frozen_encoder}
        key["fingerprint"] = json_fingerprint(key)
        return job, key

    pool = CellPool(data, slots)
    failures: list[str] = []
    counters = {"run": 0, "cached": 0}
    records: dict[Path, dict[str, Any]] = {}

    def finish(job: CellJob, key: dict[str, Any], path: Path, result: dict[str, Any] | None, err: str | None) -> None:
        if result is None:
            failures.append(f"{job.arm} n={job.n_labelled} seed={job.seed} lr={job.schedule.lr:g}: {err}")
            return
        rec = json_safe({**key, **result, "cell_dir": str(Path(job.cell_dir).relative_to(out))})
        atomic_write_json(path, rec)
        records[path] = rec
        counters["run"] += 1
        bar.update()

    def run_jobs(wanted: list[tuple[CellJob, dict[str, Any], Path]]) -> None:
        todo = []
        for job, key, path in wanted:
            rec = _read_cell(path, key["fingerprint"])
            if rec is not None:
                records[path] = rec
                counters["cached"] += 1
                bar.update()
            else:
                todo.append((job, key, path))
        if slurm:
            run_on_slurm(todo, spec, root, out, slurm_args or [], finish)
        else:
            pool.run(todo, finish)

    bar = tqdm(desc="fine-tune cells", unit="cell", disable=None, smoothing=0.1)
    # 1. the learning rate, per arm and count, on the validation subjects
    chosen: dict[tuple[str, int], float] = {}
    search: dict[str, dict[str, Any]] = {}
    if ft.lr_grid:
        sweep_seeds = proto.seeds[:ft.lr_seeds]
        grids = {(name, n): list(ft.lr_grid) for name, _, _ in live for n in counts}
        widened = {key: 0 for key in grids}
        pending = set(grids)
        while pending:
            wanted = []
            for name, res, transfer in live:
                for n in counts:
                    if (name, n) not in pending:
                        continue
                    for lr in grids[(name, n)]:
                        for seed in sweep_seeds:
                            path = search_path(out, name, n, seed, lr)
                            job, key = job_and_key(name, res, transfer, n, seed, lr, path, False)
                            wanted.append((job, key, path))
            bar.total = (bar.total or 0) + len(wanted)
            run_jobs(wanted)
            nxt = set()
            for cell_key in pending:
                name, n = cell_key
                scores = {lr: _mean_val([records.get(search_path(out, name, n, s, lr)) for s in sweep_seeds])
                          for lr in grids[cell_key]}
                ok = {lr: v for lr, v in scores.items() if math.isfinite(v)}
                if not ok:
                    continue
                best = max(sorted(ok), key=lambda lr: ok[lr])
                chosen[cell_key] = best
                extra = _widen(grids[cell_key], best)
                if extra is not None and widened[cell_key] < ft.lr_widen:
                    grids[cell_key].append(extra)
                    grids[cell_key].sort()
                    widened[cell_key] += 1
                    nxt.add(cell_key)
                search.setdefault(name, {})[str(n)] = {"scores": {f"{lr:.3g}": scores[lr] for lr in grids[cell_key]
                                                                  if lr in scores},
                                                       "chosen": best, "on_edge": extra is not None,
                                                       "widened": widened[cell_key], "seeds": sweep_seeds}
            pending = nxt
        atomic_write_json(out / "lr.json", json_safe({"grid": ft.lr_grid, "metric": task.metric,
                                                      "on": "validation subjects", "arms": search}))
    # 2. the grid, each (arm, count) at its LR
    # seed-major: an interrupted grid holds whole seeds (every arm and count), which is what the
    # paired, seed-level statistics need
    wanted = []
    for seed in proto.seeds:
        for n in counts:
            for name, res, transfer in live:
                lr = chosen.get((name, n), base.lr)
                path = cell_path(out, name, n, seed)
                predictions = ft.predictions and spec.task == "seg"
                src = search_path(out, name, n, seed, lr)
                if src in records:            # trained during the search: the same cell
                    job, key = job_and_key(name, res, transfer, n, seed, lr, src, False)
                    if _read_cell(path, key["fingerprint"]) is None:
                        atomic_write_json(path, {**records[src], "chosen_lr": True})
                    records[path] = records[src]
                    counters["cached"] += 1
                    continue
                job, key = job_and_key(name, res, transfer, n, seed, lr, path, predictions)
                wanted.append((job, key, path))
    bar.total = (bar.total or 0) + len(wanted)
    run_jobs(wanted)
    bar.close()
    for f in failures:
        log(f"cell failed: {f}")
    total = counters["run"] + counters["cached"]
    summary = {"name": spec.name, "task": spec.task, "seconds": round(time.perf_counter() - t_start, 1),
               "cells": total, "cells_run": counters["run"], "cells_cached": counters["cached"],
               "cell_failures": failures, "devices": slots, "schedule": base.to_dict(), "warnings": warnings,
               "lr_chosen": {f"{a}@n{n}": lr for (a, n), lr in chosen.items()},
               "arms": {k: v.to_dict() for k, v in arms.items()}}
    atomic_write_json(out / "run.json", summary)
    return summary
