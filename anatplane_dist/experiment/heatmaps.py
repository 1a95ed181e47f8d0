"""Validation samples and their target heatmaps for the heatmap figure (paper Fig. 4 / 5).

Which samples: for a cardiac short-axis series, one slice at two cardiac phases, frame 0
(ED in the phantom and in ACDC) and the frame at ~35% of the cycle (systole); for any other
view (the knee), two slices on either side of the centre of one series.  The ground truth is
rendered from the stored lines with :func:`anatplane_dist.core.geometry.render_heatmaps` and the
pretraining run's own ridge width, so the figure compares the network with the exact target
it was trained on.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from anatplane_dist.core.geometry import render_heatmaps

__all__ = ["read_validation_samples", "pick_samples", "sigma_px_of", "target_heatmaps"]


def read_validation_samples(shards: str | Path) -> dict[str, dict[str, Any]]:
    """Every sample of the first validation shard (``val-*.tar``; else the first train shard)."""
    from anatplane_dist.core.errors import AnatplaneError
    from anatplane_dist.shards.reader import read_samples

    shards = Path(shards)
    tars = sorted(shards.glob("val-*.tar")) or sorted(shards.glob("*.tar"))
    if not tars:
        raise AnatplaneError(f"{shards}: no shards (*.tar)")
    return read_samples(tars[0])


def pick_samples(samples: dict[str, dict[str, Any]], count: int = 2) -> list[tuple[str, str]]:
    """(key, title) of the samples to show, chosen as the module docstring says."""
    by_series: dict[tuple[str, str], list[str]] = {}
    for key, s in samples.items():
        m = s["meta"]
        if np.asarray(s["valid"]).any():
            by_series.setdefault((str(m.get("subject")), str(m.get("series"))), []).append(key)
    if not by_series:
        return []
    (subject, series), keys = sorted(by_series.items())[0]
    metas = {k: samples[k]["meta"] for k in keys}
    view = str(next(iter(metas.values())).get("view", ""))
    slices = sorted({int(m.get("slice", 0)) for m in metas.values()})
    if view == "sax" and any(int(m.get("frame", 0)) > 0 for m in metas.values()):
        mid = slices[len(slices) // 2]
        at = {int(m.get("frame", 0)): k for k, m in metas.items() if int(m.get("slice", 0)) == mid}
        n_frames = int(next(iter(metas.values())).get("n_frames", max(at) + 1))
        es = min(at, key=lambda f: abs(f - round(0.35 * n_frames)))
        picks = [(at[min(at)], f"{subject} slice {mid}, frame {min(at)} (ED)"),
                 (at[es], f"{subject} slice {mid}, frame {es} (systole)")]
    else:
        centre = len(slices) // 2
        chosen = sorted({slices[max(0, centre - 2)], slices[min(len(slices) - 1, centre + 2)]})
        picks = []
        for sl in chosen:
            k = min((k for k, m in metas.items() if int(m.get("slice", 0)) == sl), default=None)
            if k is not None:
                picks.append((k, f"{subject} slice {sl} ({'before' if sl < slices[centre] else 'after'} centre)"))
    return picks[:count]


def sigma_px_of(card: dict[str, Any], grid_spacing: float) -> float:
    """The ridge width (pixels) the run trained with: loss.sigma_px, else sigma_mm / spacing."""
    loss = (card.get("config") or {}).get("loss") or {}
    if loss.get("sigma_px"):
        return float(loss["sigma_px"])
    return float(loss.get("sigma_mm", 7.5)) / float(loss.get("spacing_mm") or grid_spacing)


def target_heatmaps(sample: dict[str, Any], shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """(K, H, W) ground-truth ridges of one sample (zero for a channel without a line)."""
    valid = np.asarray(sample["valid"], bool)
    return render_heatmaps(np.nan_to_num(sample["lines"]), valid, shape, sigma_px)
