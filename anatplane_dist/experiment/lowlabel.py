"""The low-label protocol: how much do pretrained weights help when few subjects are labelled?

For one target task: a fixed test split, then for every labelled-subject count in
``{1, 2, 4, 8, all}`` (those the data allow), every seed and every initialisation, fine-tune
and score on the same test subjects.  Within one seed the labelled subsets are nested (the 2
subjects include the 1), so a curve reflects more labels rather than a different draw; across
seeds they differ.  Random and pretrained runs of one (count, seed) see the same subjects, the
same batches and the same new-head initialisation: only the transferred weights differ.

There is no validation split and no model selection: every run trains a fixed number of
steps and the final model is scored once (selecting on the test split is a known flaw of the
paper's code).  Each finished run is written to ``runs/`` and reused when the same run is
asked for again, so an interrupted protocol resumes.

Outputs (atomic): ``results.json`` (config, split, skips, every run with per-subject rows),
``results.md`` (mean +- std over seeds), ``results.png`` (the curve, matplotlib).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from anatplane_dist.core.atomic import atomic_write_bytes, json_safe
from anatplane_dist.core.errors import AnatplaneError
from anatplane_dist.core.hashing import json_fingerprint
from anatplane_dist.finetune.backbone import INITS, Backbone
from anatplane_dist.finetune.classification import ClsTrainConfig, fit_and_evaluate_classifier
from anatplane_dist.finetune.data import KneeStack, SegSubject
from anatplane_dist.finetune.segmentation import SegTrainConfig, fit_and_evaluate_segmentation
from anatplane_dist.sources.base import Skip

__all__ = ["ProtocolConfig", "Task", "SegTask", "ClsTask", "split_subjects", "label_counts",
           "labelled_subset", "run_protocol", "aggregate", "results_markdown", "plot_results"]


@dataclass
class ProtocolConfig:
    labels: list[str] = field(default_factory=lambda: ["auto"])
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    inits: list[str] = field(default_factory=lambda: list(INITS))
    transfer: str = "encoder+decoder"
    test_fraction: float = 0.25
    split_seed: int = 0

    def __post_init__(self) -> None:
        self.labels = [str(x).strip() for x in self.labels]
        bad = [x for x in self.labels if x != "all" and not (x.isdigit() and int(x) >= 1)]
        if self.labels == ["auto"]:
            bad = []
        if bad or not self.labels:
            raise ValueError(f"labels must be positive integers or 'all' (or just 'auto'), got {self.labels}")
        unknown = [i for i in self.inits if i not in INITS]
        if unknown or not self.inits:
            raise ValueError(f"inits must be among {INITS}, got {self.inits}")
        if not self.seeds:
            raise ValueError("at least one seed is needed")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")


# -- splits ---------------------------------------------------------------------------------

def split_subjects(ids: Sequence[str], test_fraction: float, split_seed: int) -> tuple[list[str], list[str]]:
    """(labelled pool, test) from sorted ids: a seeded draw of ``ceil(fraction * N)`` test
    subjects (at least 1), leaving at least 1 for training.

    Raises:
        ValueError: fewer than two subjects (no train/test split possible).
    """
    ids = sorted(ids)
    if len(ids) < 2:
        raise ValueError(f"the low-label protocol needs at least 2 labelled subjects, got {len(ids)}")
    n_test = min(max(1, math.ceil(test_fraction * len(ids))), len(ids) - 1)
    order = np.random.default_rng(split_seed).permutation(len(ids))
    test = sorted(ids[i] for i in order[:n_test])
    return [i for i in ids if i not in set(test)], test


class LabelCountError(AnatplaneError, ValueError):
    """A requested labelled-subject count the pool cannot supply (refused, never dropped)."""


def label_counts(requested: Sequence[str], pool_size: int) -> list[int]:
    """The requested labelled-subject counts (``all`` = the whole pool), sorted.

    Raises:
        LabelCountError: a count below 1 or above the pool: the comparison the user asked for
            cannot be made, so nothing runs (a silently shorter table reads like a result).
    """
    if list(requested) == ["auto"]:  # the default: powers of two the pool allows, and the whole pool
        return sorted({c for c in (1, 2, 4, 8) if c <= pool_size} | {pool_size})
    try:
        counts = {pool_size if r == "all" else int(r) for r in requested}
    except ValueError:
        raise LabelCountError(f"--labels {','.join(requested)}: counts are integers or 'all'") from None
    bad = sorted(c for c in counts if not 1 <= c <= pool_size)
    if bad:
        raise LabelCountError(f"--labels {','.join(requested)}: {', '.join(map(str, bad))} does not fit the "
                              f"{pool_size} labelled subjects left after the test split (use counts <= "
                              f"{pool_size}, or 'all')")
    return sorted(counts)


def labelled_subset(pool: Sequence[str], n: int, seed: int) -> list[str]:
    """The first ``n`` of a seeded permutation of the pool: nested in ``n`` for one seed."""
    order = np.random.default_rng(10_000 + seed).permutation(len(pool))
    return sorted(pool[i] for i in order[:n])


# -- tasks ----------------------------------------------------------------------------------

class Task:
    """A target task the protocol can run: its subjects, its headline metric, one run."""

    name: str
    metric: str                 # headline key in a run summary (higher is better)
    columns: list[tuple[str, str]]   # (summary key, column title) for the table
    subjects: list[str]

    def run(self, backbone: Backbone, train: Sequence[str], test: Sequence[str], seed: int,
            desc: str) -> dict[str, Any]:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        raise NotImplementedError


class SegTask(Task):
    name = "seg"
    metric = "dice_mean"

    def __init__(self, data: Sequence[SegSubject], cfg: SegTrainConfig) -> None:
        self.data = {s.subject: s for s in data}
        self.subjects = sorted(self.data)
        self.cfg = cfg
        self.columns = [("dice_mean", "Dice (mean)"), ("dice_RV", "Dice RV"), ("dice_MYO", "Dice MYO"),
                        ("dice_LV", "Dice LV"), ("hd95_mean", "HD95 mm (mean)")]

    def run(self, backbone: Backbone, train: Sequence[str], test: Sequence[str], seed: int,
            desc: str) -> dict[str, Any]:
        if backbone.decoder is None:
            raise ValueError("segmentation needs a decoder")
        return fit_and_evaluate_segmentation(backbone.encoder, backbone.decoder,
                                             [self.data[s] for s in train], [self.data[s] for s in test],
                                             self.cfg, seed, desc=desc)

    def config(self) -> dict[str, Any]:
        return self.cfg.to_dict()


class ClsTask(Task):
    name = "cls"
    metric = "auc_mean"

    def __init__(self, data: Sequence[KneeStack], names: Sequence[str], cfg: ClsTrainConfig) -> None:
        self.data = {s.subject: s for s in data}
        self.subjects = sorted(self.data)
        self.names = list(names)
        self.cfg = cfg
        self.columns = [("auc_mean", "AUC (mean)")] + [(f"auc_{n}", f"AUC {n}") for n in self.names] + \
                       [("acc_mean", "accuracy (mean)")]

    def run(self, backbone: Backbone, train: Sequence[str], test: Sequence[str], seed: int,
            desc: str) -> dict[str, Any]:
        return fit_and_evaluate_classifier(backbone.encoder, [self.data[s] for s in train],
                                           [self.data[s] for s in test], self.names, self.cfg, seed, desc=desc)

    def config(self) -> dict[str, Any]:
        return {**self.cfg.to_dict(), "label_names": self.names}


# -- the protocol ---------------------------------------------------------------------------



def _write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(json_safe(obj), indent=1, allow_nan=False).encode())


def _num(value: Any) -> float:
    """A metric from a summary (null in a cached run file) as a float (NaN when undefined)."""
    return float("nan") if value is None else float(value)


# one task and backbone factory per worker process, handed over once (not once per run)
_WORKER: dict[str, Any] = {}


def _init_worker(task: Task, make_backbone: Callable[[str, int], Backbone], threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER.update(task=task, make_backbone=make_backbone)


def _execute(init: str, seed: int, train: list[str], test: list[str], desc: str,
             task: Task | None = None, make_backbone: Callable[[str, int], Backbone] | None = None
             ) -> dict[str, Any]:
    """One run (in this process or a worker): fresh backbone, fine-tune, score."""
    task = task or _WORKER["task"]
    make_backbone = make_backbone or _WORKER["make_backbone"]
    t0 = time.perf_counter()
    backbone = make_backbone(init, seed)
    result = task.run(backbone, train, test, seed, desc=desc)
    return {"transferred": backbone.transferred, "seconds": round(time.perf_counter() - t0, 2),
            "summary": result["summary"], "final_loss": float(np.mean(result["losses"][-10:])),
            "rows": result["rows"]}


def run_protocol(task: Task, cfg: ProtocolConfig, make_backbone: Callable[[str, int], Backbone],
                 out: str | Path, *, skipped: Sequence[Skip] = (), provenance: dict[str, Any] | None = None,
                 workers: int = 1, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every (count, seed, init) of the protocol and write the results under ``out``.

    ``make_backbone(init, seed)`` returns a fresh network for one run.  ``provenance`` (the
    pretrained weights, grid, data root...) is stored with the results and is part of each
    run's fingerprint, so a cached run is only reused for the same question.

    ``workers > 1`` runs that many runs at once in spawned processes, each with this
    process's torch thread count (runs are independent and seeded, so the results do not depend on the schedule);
    ``task`` and ``make_backbone`` must then be picklable (e.g. a ``functools.partial`` of a
    module-level function).
    """
    out = Path(out)
    pool, test = split_subjects(task.subjects, cfg.test_fraction, cfg.split_seed)
    counts = label_counts(cfg.labels, len(pool))   # refused before anything is written
    (out / "runs").mkdir(parents=True, exist_ok=True)
    provenance = dict(provenance or {})
    log(f"{task.name}: {len(task.subjects)} subjects -> {len(pool)} labelled pool, {len(test)} test; "
        f"counts {counts}, seeds {cfg.seeds}, inits {cfg.inits}, transfer {cfg.transfer}")
    done: dict[str, dict[str, Any]] = {}
    pending: list[tuple[dict[str, Any], Path]] = []
    order: list[str] = []
    for n in counts:
        for seed in cfg.seeds:
            train = labelled_subset(pool, n, seed)
            for init in cfg.inits:
                key = {"task": task.name, "init": init, "transfer": cfg.transfer if init == "pretrained" else None,
                       "n_labelled": n, "seed": seed, "train": train, "test": test,
                       "train_config": task.config(), "provenance": provenance}
                key["fingerprint"] = json_fingerprint(key)
                path = out / "runs" / f"{init}-n{n:03d}-seed{seed}.json"
                order.append(path.name)
                cached = _read_cached(path, key["fingerprint"])
                if cached is not None:
                    done[path.name] = cached
                    log(f"  {init:<10} n={n:<3} seed={seed}: {task.metric}="
                        f"{_num(cached['summary'].get(task.metric)):.3f} (cached)")
                else:
                    pending.append((key, path))

    def finish(key: dict[str, Any], path: Path, result: dict[str, Any]) -> None:
        record = {**key, **result}
        _write_json(path, record)
        done[path.name] = record
        log(f"  {key['init']:<10} n={key['n_labelled']:<3} seed={key['seed']}: "
            f"{task.metric}={_num(result['summary'].get(task.metric)):.3f} ({result['seconds']:.1f} s)")

    def desc(key: dict[str, Any]) -> str:
        return f"{key['init']} n={key['n_labelled']} seed={key['seed']}"

    if workers <= 1 or len(pending) <= 1:
        for key, path in pending:
            finish(key, path, _execute(key["init"], key["seed"], key["train"], test, desc(key), task, make_backbone))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        threads = torch.get_num_threads()
        with ProcessPoolExecutor(min(workers, len(pending)), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_worker, initargs=(task, make_backbone, threads)) as ex:
            futures = {ex.submit(_execute, key["init"], key["seed"], key["train"], test, desc(key)): (key, path)
                       for key, path in pending}
            for fut in as_completed(futures):
                finish(*futures[fut], fut.result())
    runs = [done[name] for name in order]
    table = aggregate(runs, task)
    results = {"task": task.name, "metric": task.metric, "protocol": asdict(cfg),
               "train_config": task.config(), "provenance": provenance,
               "split": {"pool": pool, "test": test}, "counts": counts,
               "skipped": [s.to_dict() for s in skipped], "table": table, "runs": runs}
    _write_json(out / "results.json", results)
    atomic_write_bytes(out / "results.md", results_markdown(results, task).encode())
    plot_results(results, out / "results.png")
    return results


def _read_cached(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """A finished run's record when it answers the same question (same fingerprint)."""
    if not path.is_file():
        return None
    try:
        cached = json.loads(path.read_text())
    except ValueError:          # a torn or foreign file: run again (it is rewritten atomically)
        return None
    return cached if isinstance(cached, dict) and cached.get("fingerprint") == fingerprint else None


def aggregate(runs: Sequence[dict[str, Any]], task: Task) -> list[dict[str, Any]]:
    """Mean and std over seeds per (init, count), for every table column."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["init"], r["n_labelled"]), []).append(r)
    table = []
    for (init, n), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], INITS.index(kv[0][0]))):
        row: dict[str, Any] = {"init": init, "n_labelled": n, "runs": len(rs)}
        for key, _ in task.columns:
            vals = np.array([_num(r["summary"].get(key)) for r in rs], float)
            ok = vals[np.isfinite(vals)]
            row[key] = float(ok.mean()) if ok.size else float("nan")
            row[f"{key}_std"] = float(ok.std()) if ok.size else float("nan")
        table.append(row)
    return table


def _fmt(mean: float, std: float, runs: int) -> str:
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.3f} ± {std:.3f}" if runs > 1 and np.isfinite(std) else f"{mean:.3f}"


def _grid_text(grid: Any) -> str:
    if isinstance(grid, dict) and "size" in grid and "spacing" in grid:
        return f"{grid['size']}x{grid['size']} px at {grid['spacing']} mm"
    return "-" if grid is None else str(grid)


def results_markdown(results: dict[str, Any], task: Task) -> str:
    """The results table (mean ± std over seeds) and the pretrained − random difference."""
    prov = results.get("provenance", {})
    proto = results["protocol"]
    lines = [f"### Low-label fine-tuning: {task.name} ({task.metric})", "",
             f"- test subjects: {len(results['split']['test'])} ({', '.join(results['split']['test'])}); "
             f"labelled pool: {len(results['split']['pool'])}; seeds: {proto['seeds']}",
             f"- pretrained weights: `{prov.get('pretrained', 'none')}` (step {prov.get('pretrained_step', '-')}); "
             f"transfer: {proto['transfer']}; grid: {_grid_text(prov.get('grid'))}",
             f"- schedule: {results['train_config'].get('steps')} steps per run; final model scored once "
             f"(no model selection)", ""]
    if results["skipped"]:
        lines.insert(-1, f"- inputs skipped while loading: {len(results['skipped'])} (listed in results.json)")
    cols = task.columns
    lines.append("| init | labelled subjects | runs | " + " | ".join(t for _, t in cols) + " |")
    lines.append("|---|---|---|" + "---|" * len(cols))
    for row in results["table"]:
        cells = [_fmt(row[k], row[f"{k}_std"], row["runs"]) for k, _ in cols]
        lines.append(f"| {row['init']} | {row['n_labelled']} | {row['runs']} | " + " | ".join(cells) + " |")
    by = {(r["init"], r["n_labelled"]): r for r in results["table"]}
    diffs = [(n, by[("pretrained", n)][task.metric] - by[("random", n)][task.metric])
             for n in results["counts"] if ("pretrained", n) in by and ("random", n) in by]
    if diffs:
        lines += ["", f"pretrained − random ({task.metric}): " +
                  ", ".join(f"n={n}: {d:+.3f}" for n, d in diffs)]
    return "\n".join(lines) + "\n"


# -- plot -----------------------------------------------------------------------------------

def plot_results(results: dict[str, Any], path: str | Path) -> Any:
    """Headline metric vs labelled subjects (log2 axis), mean with a ± std band over seeds, one
    line per init (matplotlib, via :func:`anatplane_dist.experiment.figures.plot_curves`); returns the figure."""
    from anatplane_dist.experiment.figures import plot_curves
    from anatplane_dist.experiment.stats import Estimate

    metric = results["metric"]

    @dataclass
    class _Row:
        arm: str
        n_labelled: int
        metric: Estimate

    rows = []
    for r in results["table"]:
        m, sd = r[metric], r.get(f"{metric}_std", float("nan"))
        lo, hi = (m - sd, m + sd) if r["runs"] > 1 and np.isfinite(sd) else (float("nan"), float("nan"))
        rows.append(_Row(r["init"], r["n_labelled"], Estimate(m, lo, hi, r["runs"])))
    return plot_curves(rows, path, metric=metric,
                       title=f"{results['task']}: {metric} on the test subjects (mean ± std over seeds)")
