"""Render results.csv, results.md and the figures of an experiment directory from its cells."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from anatplane_dist.core.atomic import atomic_write_text
from anatplane_dist.experiment.results import (
    RANDOM,
    Results,
    cell_stats,
    comparisons,
    load_results,
    results_markdown,
    write_csv,
)

__all__ = ["render_report", "overlay_panels"]


def overlay_panels(res: Results) -> tuple[str, np.ndarray, list[tuple[str, np.ndarray, np.ndarray]]] | None:
    """One test subject (the first), its ED mid slice, and every arm's prediction of it from the
    cell with the most labels and the first seed (from the stored NIfTI predictions)."""
    from anatplane_dist.sources.nifti import open_nifti

    if res.task != "seg" or not res.cells:
        return None
    subject = res.split["test"][0]
    n = max(res.counts)
    # the first seed every arm has predictions for (the LR-search seeds' cells keep none)
    with_preds = [{c["seed"] for c in res.cells if c["arm"] == a and c["n_labelled"] == n and c.get("predictions")}
                  for a in res.arm_names]
    common = set.intersection(*with_preds) if with_preds and all(with_preds) else set()
    seed = min(common) if common else min(res.spec["protocol"]["seeds"])
    panels = []
    gt = None
    for arm in res.arm_names:
        cell = next((c for c in res.cells if c["arm"] == arm and c["n_labelled"] == n and c["seed"] == seed), None)
        if cell is None or not cell.get("predictions"):
            continue
        pred_rel = next((p for p in cell["predictions"] if f"/{subject}/" in f"/{p}"), None)
        if pred_rel is None:
            continue
        cell_dir = res.out / (cell.get("cell_dir") or f"cells/{arm}/n{n:03d}-seed{seed}")
        pred = np.asarray(open_nifti(cell_dir / pred_rel).dataobj)
        image_rel = Path(pred_rel).relative_to("predictions")
        image_path = Path(cell["data"]["root"]) / str(image_rel).replace("_pred.nii", ".nii")
        image = np.asarray(open_nifti(image_path).dataobj, float)
        gt_path = Path(str(image_path).replace(".nii", "_gt.nii"))
        k = image.shape[2] // 2
        if gt is None:
            gt = np.asarray(open_nifti(gt_path).dataobj)[:, :, k]
        panels.append((arm, image[:, :, k], pred[:, :, k]))
    if gt is None or not panels:
        return None
    return subject, gt, panels


def _heatmap_figures(res: Results, notes: list[str]) -> list[str]:
    """figures/heatmaps-<arm>.png for every published arm with a heatmap decoder (drawn once;
    an arm without one, e.g. a location-only objective, is left out with a note)."""
    from anatplane_dist.experiment import figures

    data = res.out / "data.json"
    if not data.is_file():
        return []
    shards = json.loads(data.read_text())["pretrain_shards"]
    out = []
    for arm, info in res.arms.items():
        if info.get("status") != "ok" or not info.get("published"):
            continue
        path = res.out / "figures" / f"heatmaps-{arm}.png"
        try:
            panels = figures.heatmap_panels(info["published"], shards, count=2)
            if not path.is_file():
                figures.plot_heatmaps(panels, path, panels[0]["channel_names"])
        except Exception as exc:  # noqa: BLE001 - a figure never fails the report; say why
            print(f"heatmaps of arm {arm}: not drawn ({type(exc).__name__}: {exc})")
            continue
        out.append(f"figures/{path.name}")
        corr = ", ".join(f"{p['title']} {n}: {c:.2f}" for p in panels for n, c in zip(p["channel_names"], p["corr"])
                         if np.isfinite(c))
        notes.append(f"- {arm}: correlation of the drawn prediction with the target heatmap: {corr}")
    return out


def _pretext_fit_lines(res: Results) -> list[str]:
    """Each published arm's pretext on training vs held-out pretraining subjects
    (:mod:`anatplane_dist.experiment.pretext_fit`): memorised, or not learnt."""
    from anatplane_dist.experiment.pretext_fit import FIT_METRICS, fit_verdict, pretext_fit

    data = res.out / "data.json"
    if not data.is_file():
        return []
    shards = json.loads(data.read_text())["pretrain_shards"]
    rows, verdicts = [], []
    for arm, info in res.arms.items():
        if info.get("status") != "ok" or not info.get("published"):
            continue
        try:
            fit = pretext_fit(info["published"], shards)
        except Exception as exc:  # noqa: BLE001 - a diagnostic never fails the report; say why
            print(f"pretext fit of arm {arm}: not measured ({type(exc).__name__}: {exc})")
            continue
        cells = [f"{fit[part][k]:.3g}" if k in fit[part] else "—" for k, _t, _p in FIT_METRICS
                 for part in ("train", "held_out")]
        if any(c != "—" for c in cells):
            rows.append(f"| {arm} | " + " | ".join(cells) + " |")
            verdicts += [f"- **{arm}**: {v}" for v in fit_verdict(fit)]
    if not rows:
        return []
    head = " | ".join(f"{t} ({part})" for _k, t, _p in FIT_METRICS for part in ("training", "held-out"))
    out = ["", "## Pretext fit: training vs held-out pretraining subjects", "",
           "The published network on up to 256 samples of a training shard and of the validation shard "
           "(the same metrics as the model card's): good on training subjects but poor held out is "
           "memorisation, poor on both is a pretext not learnt.", "",
           f"| arm | {head} |", "|---|" + "---|" * (2 * len(FIT_METRICS)), *rows]
    return out + (["", *verdicts] if verdicts else []) + [""]


def render_report(out: str | Path, against: list[str] | None = None) -> dict[str, Any]:
    """Re-render everything from the stored cells; returns the paths written.  ``against``: the
    arms every arm is also compared with (default: the spec's ``protocol.compare_to``)."""
    from anatplane_dist.experiment import figures

    out = Path(out)
    res = load_results(out)
    unknown = [a for a in against or [] if a not in res.arm_names or a == RANDOM]
    if unknown:
        from anatplane_dist.experiment.spec import SpecError

        raise SpecError(f"--vs: {unknown} are not pretrained arms of {out} ({res.arm_names})")
    stats = cell_stats(res)
    comps = comparisons(res, stats)
    write_csv(res, out / "results.csv")
    metric = "Dice" if res.task == "seg" else "AUC"
    figs = []
    if stats:
        figures.plot_curves(stats, out / "figures" / "curves.png", metric=f"{metric} (mean)",
                            title=f"{res.spec['name']}: {metric} vs labelled subjects (95% CI)")
        figs.append("figures/curves.png")
    if comps:
        figures.plot_paired(comps, out / "figures" / "paired.png", metric=metric)
        figs.append("figures/paired.png")
    ov = overlay_panels(res)
    if ov is not None:
        subject, gt, panels = ov
        figures.plot_overlays(panels, gt, out / "figures" / "overlays.png", subject=subject)
        figs.append("figures/overlays.png")
    notes: list[str] = []
    figs += _heatmap_figures(res, notes)
    md = results_markdown(res, stats, comps, figs, against=against) + "\n".join(_pretext_fit_lines(res))
    if notes:
        md += "\nHeatmap figures (the network's input z-scored as in training):\n\n" + "\n".join(notes) + "\n"
    atomic_write_text(out / "results.md", md)
    return {"csv": str(out / "results.csv"), "md": str(out / "results.md"), "figures": figs,
            "cells": len(res.cells), "unreadable": [u["path"] for u in res.unreadable]}
