"""Intensity normalisation shared by pretraining and fine-tuning.

One definition, used by both sides, because a fine-tuned encoder only transfers if it sees
intensities on the scale it was pretrained on.  MR intensities have no absolute unit and are
often 12-bit: a robust float rescale (never a cast to uint8, which wraps values above 255)
followed by a z-score of the image the model actually sees.
"""
from __future__ import annotations

import numpy as np

__all__ = ["robust_rescale", "zscore", "LOW_PCT", "HIGH_PCT"]

LOW_PCT = 0.5
HIGH_PCT = 99.5


def robust_rescale(x: np.ndarray, low_pct: float = LOW_PCT, high_pct: float = HIGH_PCT,
                   clip: bool = False) -> np.ndarray:
    """Map the ``low_pct``/``high_pct`` percentiles of ``x`` (all of it: a slice, or all
    frames of a slice) to 0 and 1, as float32.

    Percentiles instead of min/max so that a few hot pixels (flow artefacts, fat) do not
    squash the anatomy into a narrow band.  Values beyond the percentiles are kept (not
    clipped) by default, as the sharder stores them ("about [0, 1]").  A constant image maps
    to zeros.
    """
    arr = np.asarray(x, dtype=np.float32)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return np.zeros_like(arr)
    lo, hi = np.percentile(finite, [low_pct, high_pct])
    if not hi > lo:
        return np.zeros_like(arr)
    out = (np.nan_to_num(arr, nan=float(lo)) - lo) / (hi - lo)
    if clip:
        out = np.clip(out, 0.0, 1.0)
    return out.astype(np.float32)


def zscore(x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Zero mean, unit variance over the whole array (float32); a constant array maps to 0."""
    arr = np.asarray(x, dtype=np.float32)
    std = float(arr.std())
    return ((arr - float(arr.mean())) / max(std, eps)).astype(np.float32)
