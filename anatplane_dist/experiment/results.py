"""From finished cells to ``results.csv``, the statistics tables and ``results.md``.

Everything here reads only the stored cell records (``cells/<arm>/*.json``) and the run's
``experiment.json`` / ``arms.json`` / ``split.json``, so ``anatplane experiment report DIR``
re-renders the same files without training anything.

results.csv has one row per (arm, n_labelled, seed, subject, structure): segmentation Dice
and HD95 (mm, averaged over the subject's labelled frames, ED and ES); classification rows
hold each test subject's label and predicted probability per class, plus one row per
(arm, n_labelled, seed, class) with subject ``ALL`` and the AUC over the test subjects.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anatplane_dist.core.atomic import atomic_write_text
from anatplane_dist.experiment.spec import RANDOM
from anatplane_dist.experiment.stats import (
    Estimate,
    Paired,
    auc,
    bootstrap_auc,
    hierarchical_mean,
    paired_auc_difference,
    paired_seed_difference,
    verdict,
)

__all__ = ["Results", "load_results", "csv_rows", "write_csv", "CellStats", "cell_stats", "comparisons",
           "results_markdown", "CSV_COLUMNS", "STRUCTURES"]

CSV_COLUMNS = ["arm", "n_labelled", "seed", "subject", "structure", "dice", "hd95", "label", "prob", "auc"]
STRUCTURES = ("RV", "MYO", "LV")


@dataclass
class Results:
    """The stored state of one experiment directory."""
    out: Path
    spec: dict[str, Any]
    arms: dict[str, dict[str, Any]]
    split: dict[str, Any]
    cells: list[dict[str, Any]] = field(default_factory=list)
    unreadable: list[dict[str, Any]] = field(default_factory=list)   # cell files that exist but cannot be read

    @property
    def task(self) -> str:
        return self.spec["task"]

    @property
    def arm_names(self) -> list[str]:
        """Rows of the grid: the spec's arms, plus ``ARM@transfer`` rows of extra transfer scopes."""
        return list(self.spec.get("cell_arms") or [a["name"] for a in self.spec["arms"]])

    @property
    def counts(self) -> list[int]:
        return list(self.split.get("counts") or self.spec["protocol"]["labels"])

    def failed_arms(self) -> dict[str, str]:
        return {k: v.get("reason", "") for k, v in self.arms.items() if v.get("status") == "failed"}

    def base_arm(self, arm: str) -> str:
        return arm.split("@", 1)[0]

    def of(self, arm: str, n: int) -> list[dict[str, Any]]:
        return [c for c in self.cells if c["arm"] == arm and c["n_labelled"] == n]


def load_results(out: str | Path) -> Results:
    """Read an experiment directory; only cells of the stored spec's grid are used."""
    from anatplane_dist.experiment.spec import SpecError

    out = Path(out)
    try:
        spec = json.loads((out / "experiment.json").read_text())
        split = json.loads((out / "split.json").read_text())
    except FileNotFoundError as exc:
        raise SpecError(f"{out}: not an experiment directory (no {Path(exc.filename).name}); "
                        f"run 'anatplane experiment run' first") from exc
    arms = json.loads((out / "arms.json").read_text()) if (out / "arms.json").is_file() else {}
    res = Results(out, spec, arms, split)
    seeds, counts = set(spec["protocol"]["seeds"]), set(res.counts)
    for arm in res.arm_names:
        if res.base_arm(arm) in res.failed_arms():
            continue
        # a pretrained arm's cells must come from the weights it published last: after the arm
        # changed, cells of its old weights (a run killed before they were redone) are left out
        published = (arms.get(res.base_arm(arm)) or {}).get("published")
        version = Path(published).name if published else None
        for path in sorted((out / "cells" / arm).glob("n*-seed*.json")):
            try:
                rec = json.loads(path.read_text())
                if not isinstance(rec, dict) or not {"arm", "n_labelled", "seed", "rows"} <= set(rec):
                    raise ValueError("not a cell record")
            except (OSError, ValueError) as exc:
                # listed as failed (never silently dropped): a row's seeds must not shrink unseen
                m = _CELL_NAME.match(path.name)
                res.unreadable.append({"arm": arm, "n_labelled": int(m.group(1)) if m else None,
                                       "seed": int(m.group(2)) if m else None, "path": str(path.relative_to(out)),
                                       "why": f"{type(exc).__name__}: {exc}"})
                continue
            if version is not None and rec.get("weights") != version:
                continue
            if rec.get("seed") in seeds and rec.get("n_labelled") in counts and rec.get("test") == split["test"]:
                res.cells.append(rec)
    return res


_CELL_NAME = re.compile(r"^n(\d+)-seed(-?\d+)\.json$")


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


# -- results.csv --------------------------------------------------------------------------------

def _seg_subject_rows(cell: dict[str, Any]) -> list[dict[str, Any]]:
    by_subject: dict[str, list[dict[str, Any]]] = {}
    for r in cell["rows"]:
        by_subject.setdefault(r["subject"], []).append(r)
    out = []
    for subj in sorted(by_subject):
        frames = by_subject[subj]
        for s in STRUCTURES:
            d = np.array([_num(f["dice"].get(s)) for f in frames])
            h = np.array([_num(f["hd95"].get(s)) for f in frames])
            out.append({"arm": cell["arm"], "n_labelled": cell["n_labelled"], "seed": cell["seed"], "subject": subj,
                        "structure": s, "dice": float(np.nanmean(d)) if np.isfinite(d).any() else float("nan"),
                        "hd95": float(np.nanmean(h)) if np.isfinite(h).any() else float("nan")})
    return out


def _cls_arrays(cell: dict[str, Any], names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    rows = sorted(cell["rows"], key=lambda r: r["subject"])
    y = np.array([[r["labels"][n] for n in names] for r in rows], float)
    p = np.array([[_num(r["prob"][n]) for n in names] for r in rows], float)
    return y, p


def _cls_names(cell: dict[str, Any]) -> list[str]:
    return list(cell["train_config"]["label_names"])


def csv_rows(res: Results) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for cell in sorted(res.cells, key=lambda c: (res.arm_names.index(c["arm"]), c["n_labelled"], c["seed"])):
        if res.task == "seg":
            rows += _seg_subject_rows(cell)
            continue
        names = _cls_names(cell)
        base = {"arm": cell["arm"], "n_labelled": cell["n_labelled"], "seed": cell["seed"]}
        for r in sorted(cell["rows"], key=lambda r: r["subject"]):
            for n in names:
                rows.append({**base, "subject": r["subject"], "structure": n, "label": r["labels"][n],
                             "prob": _num(r["prob"][n])})
        y, p = _cls_arrays(cell, names)
        for j, n in enumerate(names):
            rows.append({**base, "subject": "ALL", "structure": n, "auc": auc(y[:, j], p[:, j])})
    return rows


def write_csv(res: Results, path: Path) -> Path:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in csv_rows(res):
        w.writerow({k: ("" if isinstance(v, float) and not math.isfinite(v) else
                        (f"{v:.6g}" if isinstance(v, float) else v)) for k, v in r.items()})
    return atomic_write_text(path, buf.getvalue())


# -- statistics ---------------------------------------------------------------------------------

@dataclass
class CellStats:
    """One (arm, count): the headline estimate, per-structure/class estimates, observations."""
    arm: str
    n_labelled: int
    seeds: int
    metric: Estimate
    parts: dict[str, Estimate]
    hd95: Estimate | None = None
    obs: dict[Any, float] = field(default_factory=dict)       # seg: (seed, subject) -> mean Dice
    by_seed: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)   # cls


def _seg_obs(cells: list[dict[str, Any]], key: str, structures: tuple[str, ...] = STRUCTURES) -> dict[Any, float]:
    """(seed, subject) -> the mean over ``structures`` of ``key`` (NaN-skipping for HD95)."""
    acc: dict[Any, list[float]] = {}
    for cell in cells:
        for r in _seg_subject_rows(cell):
            if r["structure"] in structures:
                acc.setdefault((cell["seed"], r["subject"]), []).append(r[key])
    out: dict[Any, float] = {}
    for k, v in acc.items():
        a = np.asarray(v, float)
        out[k] = float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")
    return out


def _by_seed(obs: dict[Any, float]) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for (seed, _subject), v in sorted(obs.items(), key=lambda kv: repr(kv[0])):
        out.setdefault(seed, []).append(v)
    return out


def cell_stats(res: Results) -> list[CellStats]:
    """Per (arm, count): mean over seeds of the per-seed mean, hierarchical CI (seeds, subjects)."""
    out = []
    for arm in res.arm_names:
        for n in res.counts:
            cells = res.of(arm, n)
            if not cells:
                continue
            if res.task == "seg":
                obs = _seg_obs(cells, "dice")
                parts = {s: hierarchical_mean(_by_seed(_seg_obs(cells, "dice", (s,)))) for s in STRUCTURES}
                hd = hierarchical_mean(_by_seed(_seg_obs(cells, "hd95")))
                out.append(CellStats(arm, n, len(cells), hierarchical_mean(_by_seed(obs)), parts, hd, obs=obs))
            else:
                names = _cls_names(cells[0])
                by_seed = {c["seed"]: _cls_arrays(c, names) for c in cells}
                parts = {nm: bootstrap_auc({s: (y[:, j], p[:, j]) for s, (y, p) in by_seed.items()})
                         for j, nm in enumerate(names)}
                out.append(CellStats(arm, n, len(cells), bootstrap_auc(by_seed), parts, by_seed=by_seed))
    return out


def reference_of(arm: str) -> str:
    """What a row is compared with: ``random``, or ``random@frozen`` for a readout row."""
    return f"{RANDOM}@frozen" if arm.endswith("@frozen") else RANDOM


def comparisons(res: Results, stats: list[CellStats], against: str | None = None) -> dict[tuple[str, int], Paired]:
    """Every other arm against ``random`` (or against the arm ``against``) at every count:
    per-seed paired differences.  Every arm of a seed trains on the same subset with the same
    batches, head init and test subjects, so any two arms pair, not only an arm and random."""
    by = {(s.arm, s.n_labelled): s for s in stats}
    out = {}
    for (arm, n), s in by.items():
        ref_name = against or reference_of(arm)
        ref = by.get((ref_name, n))
        if arm == ref_name or ref is None or (against and (arm == RANDOM or arm.endswith("@frozen"))):
            continue
        out[(arm, n)] = (paired_seed_difference(s.obs, ref.obs) if res.task == "seg"
                         else paired_auc_difference(s.by_seed, ref.by_seed))
    return out


def compare_to_lines(res: Results, stats: list[CellStats], against: list[str]) -> list[str]:
    """A section per extra reference arm (``protocol.compare_to`` / ``report --vs``), e.g. the
    generic self-supervised baselines the paper's pretexts must beat: the same paired,
    seed-level statistics and verdict rule as the comparison with random."""
    out: list[str] = []
    for ref in against:            # names checked by the spec (compare_to) and render_report (--vs)
        comps = comparisons(res, stats, against=ref)
        if not comps:
            continue
        out += ["", f"## Against {ref} (per-seed paired difference, as against random)", "",
                f"| arm | n | Δ vs {ref} [95% CI], wins/seeds | reading |", "|---|---|---|---|"]
        for arm in res.arm_names:
            for n in res.counts:
                if (arm, n) in comps:
                    p = comps[(arm, n)]
                    out.append(f"| {arm} | {n} | {p.text()} | {verdict(p, than=ref)} |")
    return out


# -- results.md --------------------------------------------------------------------------------

def _verdict(p: Paired) -> str:
    return verdict(p)


def _schedule_text(res: Results) -> str:
    sch = next((c.get("schedule") for c in res.cells if c.get("schedule")), None)
    if not sch:
        ft = res.spec["finetune"]
        return f"{ft.get('steps')} steps, batch {ft.get('batch_size')}, lr {ft.get('lr')}"
    length = (f"{sch['epochs']:g} epochs of the labelled items" if sch.get("epochs") else f"{sch['steps']} steps")
    decay = ("cosine to 0" if sch["decay"] == "cosine" else
             f"LR x{sch['step_factor']:g} every {sch['step_epochs']:g} epochs")
    lr = "LR chosen per arm and count on validation (lr.json)" if res.spec["finetune"].get("lr_grid") \
        else f"lr {sch['lr']:g}"
    return (f"schedule `{sch['name']}`: {sch['optimizer']}, {length}, batch {sch['batch_size']}, {decay}, "
            f"warm-up {sch.get('warmup_steps', 0)} steps, {lr}")


def training_lines(res: Results) -> list[str]:
    """Per (arm, count): the LR used, steps, cells still rising at the end (not converged),
    and how far the encoder / decoder weights moved (median relative L2 over seeds)."""
    head = ["| arm | n | lr | steps | still rising (of seeds) | moved encoder | moved decoder |",
            "|---|---|---|---|---|---|---|"]
    lines = []
    for arm in res.arm_names:
        for n in res.counts:
            cells = res.of(arm, n)
            if not cells:
                continue
            lrs = sorted({float(c["lr"]) for c in cells if c.get("lr") is not None})
            steps = sorted({int(c["steps"]) for c in cells if c.get("steps") is not None})
            rising = [c.get("still_rising") for c in cells]
            known = [r for r in rising if r is not None]
            rise = f"{sum(bool(r) for r in known)}/{len(known)}" if known else "n/a (no validation curve)"
            mv = {p: [c["moved"][p] for c in cells if (c.get("moved") or {}).get(p) is not None]
                  for p in ("encoder", "decoder")}
            mtxt = {p: f"{np.median(v):.3f}" if v else "n/a" for p, v in mv.items()}
            lines.append(f"| {arm} | {n} | {', '.join(f'{x:.3g}' for x in lrs) or 'n/a'} | "
                         f"{', '.join(map(str, steps)) or 'n/a'} | {rise} | {mtxt['encoder']} | {mtxt['decoder']} |")
    if not lines:
        return []
    out = ["", "## Training: learning rate, convergence, weight movement", "",
           "'still rising': the best validation score of the last quarter of the curve beats the "
           "earlier best by > 0.005 (the schedule stopped a network still learning: read that row "
           "with care). 'moved': ||w_final − w_start|| / ||w_start|| of the fine-tuned network's "
           "encoder / decoder (median over seeds); for pretrained arms, how much of the pretrained "
           "weights the fine-tune overwrote.", ""] + head + lines
    lr_file = res.out / "lr.json"
    if lr_file.is_file():
        lr = json.loads(lr_file.read_text())
        out += ["", f"Learning-rate search on the validation subjects (mean best validation {lr.get('metric')} "
                f"of the first seeds; chosen per arm and count):", "",
                "| arm | n | validation score by LR | chosen | Δ vs random's best |", "|---|---|---|---|---|"]
        arms = lr.get("arms", {})
        for arm, by_n in arms.items():
            for n, info in by_n.items():
                ref = arms.get(RANDOM, {}).get(n)
                ref_best = max((v for v in (ref or {}).get("scores", {}).values()
                                if v is not None and math.isfinite(v)), default=float("nan"))
                best = info["scores"].get(f"{info['chosen']:.3g}")
                scores = ", ".join(f"{k}: {v:.3f}" if v is not None and math.isfinite(v) else f"{k}: n/a"
                                   for k, v in info["scores"].items())
                d = (best - ref_best) if best is not None and math.isfinite(ref_best) else float("nan")
                widened = int(info.get("widened") or 0)
                edge = ""
                if info.get("on_edge"):
                    edge = f" (on the grid's edge, after widening {widened}x)" if widened else " (on the grid's edge)"
                out.append(f"| {arm} | {n} | {scores} | {info['chosen']:.3g}{edge} | "
                           f"{d:+.3f} |" if math.isfinite(d) else f"| {arm} | {n} | {scores} | "
                           f"{info['chosen']:.3g}{edge} | n/a |")
    return out


#: pretext metrics shown per arm: (card key, column title, warn(value) -> reason or "")
PRETEXT_METRICS = (
    ("val/angle_err_deg", "angle error °", lambda v: "orientation not learnt (angle error >= 15°)" if v >= 15 else ""),
    ("val/offset_err_px", "offset px", lambda v: ""),
    ("val/loc_mae", "location MAE", lambda v: "location not learnt (MAE >= 0.2; predicting 0.5 gives 0.25)"
     if v >= 0.2 else ""),
    ("val/top1", "SimCLR positive-pair top-1", lambda v: "SimCLR positives not found (top-1 < 0.5)" if v < 0.5 else ""),
    ("val/rot_acc", "rotation accuracy", lambda v: "rotation not learnt (accuracy < 0.5; chance 0.25)" if v < 0.5
     else ""),
    ("val/restore_mae", "Genesis restore MAE", lambda v: ""),
    ("val/loss", "val loss", lambda v: ""),
)


def pretext_lines(res: Results) -> list[str]:
    """Each pretrained arm's own pretext quality on the pretraining validation subjects (from
    its model card: the last validation pass of the published step), with a warning when the
    pretext was not learnt: a fine-tune comparison of an arm that learnt nothing says nothing
    about the method."""
    from anatplane_dist.finetune.backbone import PretrainedError, read_pretrained_info

    rows, warnings = [], []
    for arm, info in res.arms.items():
        if info.get("status") != "ok" or not info.get("published"):
            continue
        try:
            card = read_pretrained_info(info["published"]).extra
        except PretrainedError as exc:
            rows.append((arm, {}, f"card unreadable: {exc}"))
            continue
        m = card.get("pretext_metrics") or {}
        rows.append((arm, m, ""))
        for key, _title, warn in PRETEXT_METRICS:
            if isinstance(m.get(key), (int, float)) and warn(float(m[key])):
                warnings.append(f"- **{arm}**: {warn(float(m[key]))} ({key} = {float(m[key]):.3g})")
    if not rows:
        return []
    cols = [(k, t) for k, t, _ in PRETEXT_METRICS if any(isinstance(m.get(k), (int, float)) for _, m, _ in rows)]
    out = ["", "## Pretext quality per arm (pretraining validation subjects, published step)", "",
           "| arm | step | " + " | ".join(t for _, t in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for arm, m, err in rows:
        vals = [f"{float(m[k]):.3g}" if isinstance(m.get(k), (int, float)) else "—" for k, _ in cols]
        out.append(f"| {arm} | {m.get('step', '?') if not err else err} | " + " | ".join(vals) + " |")
    if warnings:
        out += ["", "Warnings (read these arms' fine-tune rows as 'pretext not learnt', not as the method):", ""]
        out += warnings
    return out


def _auc_warnings(res: Results) -> list[str]:
    if res.task != "cls" or not res.cells:
        return []
    cell = res.cells[0]
    names = _cls_names(cell)
    y, _ = _cls_arrays(cell, names)
    bad = [n for j, n in enumerate(names) if len(set(y[:, j].tolist())) < 2]
    return [f"- **test set too small for AUC** for {', '.join(bad)}: its {y.shape[0]} test subjects hold one "
            f"class only; those AUCs are n/a (use more test subjects)"] if bad else []


def results_markdown(res: Results, stats: list[CellStats], comps: dict[tuple[str, int], Paired],
                     figures: list[str] | None = None, against: list[str] | None = None) -> str:
    """results.md: the set-up, the table against random, pretext quality, training, the
    sections against each ``against`` arm (default: the spec's ``protocol.compare_to``), the
    reading and the figures."""
    spec, split = res.spec, res.split
    proto, ft = spec["protocol"], spec["finetune"]
    metric = "Dice (mean of RV, MYO, LV)" if res.task == "seg" else "AUC (mean over labels)"
    select = ("final model after the fixed schedule (no model selection)" if ft["select"] == "final" else
              f"**best on validation**: the step with the best validation "
              f"{'Dice' if res.task == 'seg' else 'AUC'} on {len(split['val'])} validation subjects "
              f"({', '.join(split['val'])}), evaluated every {ft['val_every']} steps")
    lines = [f"# Experiment `{spec['name']}`: {res.task}, {metric}", "",
             f"- test subjects (fixed): {len(split['test'])} ({', '.join(split['test'])})",
             f"- labelled pool: {len(split['pool'])} subjects; counts {res.counts}; seeds {proto['seeds']}; "
             f"subsets per seed nested across counts (split.json)",
             f"- fine-tuning: {_schedule_text(res)}, "
             f"transfer {ft['transfer'] if res.task == 'seg' else 'encoder'}; scored: {select}",
             f"- pretraining: `{spec['pretrain']['config']}` {' '.join(spec['pretrain']['overrides'])} "
             f"({spec['pretrain']['ranks']} rank(s)), one budget for every arm",
             "- the replicate is the seed (one labelled-subset draw = one trained model): a cell is the mean "
             "over seeds of the per-seed mean over test subjects; 95% CIs by a hierarchical percentile "
             "bootstrap (seeds, then test subjects inside each seed)",
             "- vs random: per-seed paired difference (same subset, batches, head init and test subjects); "
             "mean over seeds, hierarchical bootstrap CI, wins = seeds with a positive difference",
             "- reading: 'better'/'worse' than random only when that interval excludes 0, with at least 5 seeds "
             "(fewer: undetermined)"]
    transferred = {}
    for c in res.cells:
        if c["arm"] != RANDOM:
            transferred.setdefault(c["arm"], "+".join(c.get("transferred") or []) or "nothing")
    if transferred:
        lines.append("- transferred weights per arm: " + ", ".join(f"{a}: {t}" for a, t in transferred.items())
                     + " (the rest of each network starts random)")
    lines += _auc_warnings(res)
    failed = res.failed_arms()
    if failed:
        lines += ["", "## Failed arms (their cells are missing from every table)", ""]
        lines += [f"- `{a}`: {why}" for a, why in failed.items()]
    run_file = res.out / "run.json"
    run_info = json.loads(run_file.read_text()) if run_file.is_file() else {}
    cell_failures = run_info.get("cell_failures", [])
    lines += [f"- **warning**: {w}" for w in run_info.get("warnings", [])]
    if cell_failures or res.unreadable:
        lines += ["", "## Failed cells (left out of the tables; rerun to retry them)", ""]
        lines += [f"- {f}" for f in cell_failures]
        lines += [f"- {u['arm']} n={u['n_labelled']} seed={u['seed']}: unreadable cell file {u['path']} "
                  f"({u['why']})" for u in res.unreadable]
    parts = list(STRUCTURES) if res.task == "seg" else (_cls_names(res.cells[0]) if res.cells else [])
    head = ["arm", "n", "seeds", metric.split(" ")[0]] + [f"{'Dice' if res.task == 'seg' else 'AUC'} {p}" for p in parts]
    if res.task == "seg":
        head.append("HD95 mm")
    head.append("Δ vs random [95% CI], wins/seeds")
    lines += ["", "## Results", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in stats:
        bad = sum(1 for u in res.unreadable if u["arm"] == s.arm and u["n_labelled"] == s.n_labelled)
        cells = [s.arm, str(s.n_labelled), str(s.seeds) + (f" ({bad} unreadable)" if bad else ""), s.metric.text()] + [s.parts[p].text() for p in parts]
        if res.task == "seg":
            cells.append(s.hd95.text(1) if s.hd95 else "n/a")
        cells.append(comps[(s.arm, s.n_labelled)].text() if (s.arm, s.n_labelled) in comps else "—")
        lines.append("| " + " | ".join(cells) + " |")
    lines += compare_to_lines(res, stats, list(against if against is not None
                                               else spec["protocol"].get("compare_to") or []))
    lines += pretext_lines(res)
    lines += training_lines(res)
    lines += ["", "## Reading", ""]
    by = {(s.arm, s.n_labelled): s for s in stats}
    for n in res.counts:
        present = [s for s in stats if s.n_labelled == n and math.isfinite(s.metric.mean)]
        if not present:
            lines.append(f"- n={n}: no results")
            continue
        best = max(present, key=lambda s: s.metric.mean)
        vs = [f"{a} {comps[(a, n)].text()} ({_verdict(comps[(a, n)])})"
              for a in res.arm_names if (a, n) in comps]
        ref = by.get((RANDOM, n))
        lines.append(f"- n={n}: highest mean {best.arm} {best.metric.text()}"
                     + (f"; random {ref.metric.text()}" if ref else "") + ("; " + "; ".join(vs) if vs else ""))
    if figures:
        lines += ["", "## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures]
    return "\n".join(lines) + "\n"
