"""The robust intensity rescale: one function for the sharder and fine-tuning.

A fine-tuned encoder only transfers if it sees intensities on the scale it was pretrained on.
MR intensities have no absolute unit and are often 12-bit: the pretraining pipeline rescales
each slice in float by its 0.5th/99.5th percentiles over all its frames (never a cast to
uint8, which wraps values above 255), resamples onto the model grid, and the stream z-scores
each image (:func:`anatplane_dist.data.decode.zscore_`).  Fine-tuning does the same steps with
these functions (the sharder estimates the percentiles from a strided sample, `max_samples`).
"""
from __future__ import annotations

import numpy as np

__all__ = ["robust_range", "robust_rescale", "LOW_PCT", "HIGH_PCT"]

LOW_PCT = 0.5
HIGH_PCT = 99.5


def robust_range(x: np.ndarray, percentiles: tuple[float, float] = (LOW_PCT, HIGH_PCT),
                 max_samples: int | None = None) -> tuple[float, float] | None:
    """The ``percentiles`` of the finite values of ``x`` (all of it: a slice, or all frames of a
    slice); ``None`` when nothing is finite.

    ``max_samples`` estimates them from every ``ceil(n / max_samples)``-th value of the flattened
    array instead (deterministic, spread over all frames and rows): the sharder's choice, since
    an exact percentile over a 10-frame 192^2 slice partitions 370k values (~3 ms per slice, a
    sixth of the sharder's own time) and a 2^16 stride estimates the 0.5/99.5 percentiles to
    well under 1 % of the range, which is all a rescale needs.
    """
    flat = np.asarray(x).reshape(-1)
    if max_samples:
        flat = flat[::max(1, -(-flat.size // max_samples))]
    finite = flat[np.isfinite(flat)]
    if finite.size == 0:
        return None
    lo, hi = np.percentile(finite, percentiles)
    return float(lo), float(hi)


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
    bounds = robust_range(arr, (low_pct, high_pct))
    if bounds is None:
        return np.zeros_like(arr)
    lo, hi = bounds
    if not hi > lo:
        return np.zeros_like(arr)
    out = (np.nan_to_num(arr, nan=float(lo), posinf=float(hi), neginf=float(lo)) - lo) / (hi - lo)
    if clip:
        out = np.clip(out, 0.0, 1.0)
    return out.astype(np.float32)
