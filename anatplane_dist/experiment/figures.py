"""Figures of an experiment, drawn with matplotlib (Agg, no display needed).

- :func:`plot_curves`: headline metric vs labelled subjects per arm, mean with a 95% CI band;
- :func:`plot_paired`: each arm's paired difference to random init with its 95% CI;
- :func:`plot_overlays`: one test subject per arm, ground truth and prediction contours;
- :func:`plot_heatmaps`: predicted vs ground-truth orientation heatmaps on validation images
  (the paper's Fig. 4 / 5), also ``anatplane figures heatmaps --model ... --shards ...``.

Each function returns the :class:`matplotlib.figure.Figure` it saved, so tests can check
what was drawn (the data of each line and band) rather than that a file exists.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from anatplane_dist.core.atomic import atomic_path  # noqa: E402

__all__ = ["plot_curves", "plot_paired", "plot_overlays", "plot_heatmaps", "heatmap_panels",
           "save", "add_arguments", "run"]

_COLOURS = {"random": "0.45"}


def _colour(arm: str, i: int) -> Any:
    return _COLOURS.get(arm, plt.get_cmap("tab10")(i % 10))


def save(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Write a figure atomically (PNG by the suffix) and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png", bbox_inches="tight")
    plt.close(fig)
    return path


def plot_curves(stats: Sequence[Any], path: str | Path, *, metric: str, title: str = "") -> Any:
    """``stats``: objects with ``arm``, ``n_labelled``, ``metric`` (mean, lo, hi); one line +
    CI band per arm over log2(labelled subjects)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    arms = list(dict.fromkeys(s.arm for s in stats))
    for i, arm in enumerate(arms):
        rows = sorted((s for s in stats if s.arm == arm and math.isfinite(s.metric.mean)), key=lambda s: s.n_labelled)
        if not rows:
            continue
        x = np.array([s.n_labelled for s in rows], float)
        y = np.array([s.metric.mean for s in rows])
        lo = np.array([s.metric.lo for s in rows])
        hi = np.array([s.metric.hi for s in rows])
        c = _colour(arm, i)
        ax.plot(x, y, "o-", color=c, label=arm, lw=2 if arm != "random" else 1.5)
        ok = np.isfinite(lo) & np.isfinite(hi)
        if ok.any():
            ax.fill_between(x[ok], lo[ok], hi[ok], color=c, alpha=0.18, lw=0, label=f"_{arm} 95% CI")
    ax.set_xscale("log", base=2)
    counts = sorted({s.n_labelled for s in stats})
    ax.set_xticks(counts, [str(c) for c in counts])
    ax.set_xlabel("labelled subjects")
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} on the test subjects (mean, 95% CI)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    save(fig, path)
    return fig


def plot_paired(comps: dict[tuple[str, int], Any], path: str | Path, *, metric: str) -> Any:
    """Paired difference (arm − random) per count with its 95% CI; dodged per arm."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    arms = list(dict.fromkeys(a for a, _ in comps))
    counts = sorted({n for _, n in comps})
    width = 0.8 / max(len(arms), 1)
    for i, arm in enumerate(arms):
        xs, ys, err = [], [], [[], []]
        for j, n in enumerate(counts):
            p = comps.get((arm, n))
            if p is None or not math.isfinite(p.diff.mean):
                continue
            xs.append(j + (i - (len(arms) - 1) / 2) * width)
            ys.append(p.diff.mean)
            lo = p.diff.lo if math.isfinite(p.diff.lo) else p.diff.mean
            hi = p.diff.hi if math.isfinite(p.diff.hi) else p.diff.mean
            err[0].append(p.diff.mean - lo)
            err[1].append(hi - p.diff.mean)
        ax.errorbar(xs, ys, yerr=err, fmt="o", capsize=3, color=_colour(arm, i + 1), label=arm)
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xticks(range(len(counts)), [str(c) for c in counts])
    ax.set_xlabel("labelled subjects")
    ax.set_ylabel(f"Δ {metric} vs random (paired)")
    ax.set_title("arm − random init: paired mean difference, 95% CI")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    save(fig, path)
    return fig


def _outline(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a 2D mask (pixels of the mask with a 4-neighbour outside it)."""
    m = np.pad(mask.astype(bool), 1)
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask.astype(bool) & ~inner


#: RV, MYO, LV outline colours (RGB 0-1)
_STRUCT_RGB = {1: (0.1, 0.5, 1.0), 2: (0.1, 0.9, 0.2), 3: (1.0, 0.2, 0.2)}


def overlay_rgb(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Grey image (2D) with each structure's outline painted in its colour: (H, W, 3) in [0, 1]."""
    lo, hi = np.percentile(image, [1, 99])
    g = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat(g[..., None], 3, -1)
    for value, colour in _STRUCT_RGB.items():
        rgb[_outline(labels == value)] = colour
    return rgb


def plot_overlays(panels: Sequence[tuple[str, np.ndarray, np.ndarray]], gt: np.ndarray, path: str | Path,
                  *, subject: str = "") -> Any:
    """``panels``: (arm, image slice, predicted labels) per arm, all of the same test slice;
    the first panel shows the ground truth ``gt``.  Outlines: RV blue, MYO green, LV red."""
    n = len(panels) + 1
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.9))
    axes = np.atleast_1d(axes)
    image = panels[0][1]
    axes[0].imshow(overlay_rgb(image, gt), origin="upper")
    axes[0].set_title("ground truth", fontsize=9)
    for ax, (arm, img, pred) in zip(axes[1:], panels):
        ax.imshow(overlay_rgb(img, pred), origin="upper")
        ax.set_title(arm, fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"test subject {subject}: RV blue, MYO green, LV red", fontsize=9)
    save(fig, path)
    return fig


# -- heatmaps ------------------------------------------------------------------------------------

def heatmap_panels(model: str | Path, shards: str | Path, *, count: int = 2) -> list[dict[str, Any]]:
    """Image, ground-truth and predicted heatmaps of ``count`` validation samples.

    Loads the whole published network (:func:`anatplane_dist.publish.load_pretrained`,
    ``part="full"``) and renders the ground truth from the stored lines with the run's own
    ridge width (:mod:`anatplane_dist.experiment.heatmaps`).  The network sees the image as
    training showed it: the stored image (~[0, 1]) through the stream's own per-image z-score
    (:func:`anatplane_dist.data.decode.zscore_`, the one normalisation of the package); the
    panel keeps the stored image for display.
    """
    import torch

    from anatplane_dist.data.decode import zscore_
    from anatplane_dist.experiment.heatmaps import (
        pick_samples,
        read_validation_samples,
        sigma_px_of,
        target_heatmaps,
    )
    from anatplane_dist.finetune.backbone import read_pretrained_info
    from anatplane_dist.publish import load_pretrained
    from anatplane_dist.shards.manifest import read_shard_facts

    info = read_pretrained_info(model)
    net = load_pretrained(info.path.parent, part="full").eval()
    facts = read_shard_facts(shards)
    samples = read_validation_samples(shards)
    sigma = sigma_px_of(info.extra, facts.spacing_mm)
    out = []
    for key, title in pick_samples(samples, count):
        s = samples[key]
        image = np.asarray(s["image"], np.float32)
        seen = zscore_(torch.from_numpy(image.copy())[None])      # (1, H, W), as the stream feeds it
        with torch.no_grad():
            pred = net(seen[:, None]).get("heatmaps")
        if pred is None:
            raise ValueError(f"{info.path.parent}: this network has no heatmap decoder to show")
        gt = target_heatmaps(s, image.shape, sigma)
        valid = np.asarray(s["valid"], bool)
        corr = [float(np.corrcoef(pred[0, c].numpy().ravel(), gt[c].ravel())[0, 1]) if valid[c] else float("nan")
                for c in range(gt.shape[0])]
        out.append({"key": key, "title": title, "image": image, "pred": pred[0].numpy(), "gt": gt,
                    "lines": np.asarray(s["lines"]), "valid": valid, "channel_names": list(facts.channels),
                    "corr": corr})
    if not out:
        raise ValueError(f"{shards}: no validation sample with a valid line")
    return out


def plot_heatmaps(panels: Sequence[dict[str, Any]], path: str | Path, channel_names: Sequence[str] = ()) -> Any:
    """Rows: samples; columns: image, then per channel the ground truth and the prediction."""
    k = panels[0]["gt"].shape[0]
    names = list(channel_names) or [f"ch{c}" for c in range(k)]
    fig, axes = plt.subplots(len(panels), 1 + 2 * k, figsize=(2.3 * (1 + 2 * k), 2.4 * len(panels)), squeeze=False)
    for r, p in enumerate(panels):
        axes[r, 0].imshow(p["image"], cmap="gray")
        axes[r, 0].set_title(p.get("title", "image"), fontsize=8)
        for c in range(k):
            axes[r, 1 + 2 * c].imshow(p["gt"][c], cmap="magma", vmin=0, vmax=1)
            axes[r, 1 + 2 * c].set_title(f"{names[c]} truth", fontsize=8)
            axes[r, 2 + 2 * c].imshow(p["pred"][c], cmap="magma", vmin=0, vmax=1)
            axes[r, 2 + 2 * c].set_title(f"{names[c]} predicted", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    save(fig, path)
    return fig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="figure", required=True, metavar="FIGURE")
    h = sub.add_parser("heatmaps", help="predicted vs ground-truth heatmaps on validation images")
    h.add_argument("--model", type=Path, required=True, help="published weights (version dir or name dir)")
    h.add_argument("--shards", type=Path, required=True, help="shard directory (its val-*.tar are used)")
    h.add_argument("--out", type=Path, default=Path("heatmaps.png"), help="PNG to write")
    h.add_argument("--count", type=int, default=2, help="validation samples (rows)")


def run(args: argparse.Namespace) -> int:
    panels = heatmap_panels(args.model, args.shards, count=args.count)
    plot_heatmaps(panels, args.out, panels[0].get("channel_names", ()))
    print(f"wrote {args.out}")
    return 0
