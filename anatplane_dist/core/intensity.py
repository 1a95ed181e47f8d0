"""Robust intensity rescale shared by the sharder's semantics and fine-tuning.

A fine-tuned encoder only transfers if it sees intensities on the scale it was pretrained on.
MR intensities have no absolute unit and are often 12-bit: the pretraining pipeline rescales
each slice in float by its 0.5th/99.5th percentiles over all its frames (never a cast to
uint8, which wraps values above 255), resamples onto the model grid, and the stream z-scores
each image (:func:`anatplane_dist.data.decode.zscore_`).  Fine-tuning does the same steps with
this function and that one.
"""
from __future__ import annotations

import numpy as np

__all__ = ["robust_rescale", "LOW_PCT", "HIGH_PCT"]

LOW_PCT = 0.5
HIGH_PCT = 99.5


def robust_rescale(x: np.ndarray, low_pct: float = LOW_PCT, high_pct: float = HIGH_PCT,
                   clip: bool = False) -> np.ndarray:
    """Map the ``low_pct``/``high_pct`` percentiles of ``x`` (all of it: a slice, or all
    frames of a slice) to 0 and 1, as float32.

    Percentiles instead of min/max so that a few hot pixels (flow artefacts, fat) do not
    squash the anatomy into a narrow band.  Values beyond the percentiles are kept (not
    clipped) by default, as the sharder stores them ("about [0, 1]").  Non-finite pixels are
    left out of the percentiles and set to 0.  A constant image maps to zeros.
    """
    arr = np.asarray(x, dtype=np.float32)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return np.zeros_like(arr)
    lo, hi = np.percentile(finite, [low_pct, high_pct])
    if not hi > lo:
        return np.zeros_like(arr)
    out = (np.nan_to_num(arr, nan=float(lo), posinf=float(hi), neginf=float(lo)) - lo) / (hi - lo)
    if clip:
        out = np.clip(out, 0.0, 1.0)
    return out.astype(np.float32)
