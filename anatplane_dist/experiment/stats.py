"""Statistics of a low-label comparison: per-cell means with bootstrap CIs, paired arm-vs-random tests.

Why these: with a handful of seeds and test subjects, a mean ± std hides how unsure the
estimate is, and an unpaired comparison wastes the design (every arm sees the same labelled
subset, the same batches and the same test subjects for one seed).  So:

- a cell (arm, labelled count) is summarised by the mean over its (seed, test subject)
  observations and a percentile bootstrap 95% CI that resamples those observations;
- an arm is compared with ``random`` on the *paired* differences (same seed, same subject),
  with a bootstrap CI of the mean difference and a two-sided Wilcoxon signed-rank p
  (:func:`scipy.stats.wilcoxon`, exact for small samples without ties).

Classification has one AUC per (seed, label) computed over all test subjects, so there the
bootstrap resamples test subjects (the same draw for every seed and arm) and recomputes AUC.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy import stats as sps

__all__ = ["Estimate", "Paired", "bootstrap_ci", "paired_difference", "wilcoxon_p", "auc",
           "bootstrap_auc", "paired_auc_difference", "N_BOOT"]

#: bootstrap resamples (enough for stable 2.5/97.5 percentiles; seeded, so reports are reproducible)
N_BOOT = 4000


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95% CI over ``n`` observations (NaN bounds when undefined)."""
    mean: float
    lo: float
    hi: float
    n: int

    def text(self, digits: int = 3) -> str:
        if not math.isfinite(self.mean):
            return "n/a"
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"


@dataclass(frozen=True)
class Paired:
    """Mean paired difference (arm − reference), its 95% CI, the Wilcoxon p and the pair count."""
    diff: Estimate
    p: float

    def text(self, digits: int = 3) -> str:
        if not math.isfinite(self.diff.mean):
            return "n/a"
        d = self.diff
        ci = f" [{d.lo:+.{digits}f}, {d.hi:+.{digits}f}]" if math.isfinite(d.lo) else ""
        p = f"p={self.p:.3g}" if math.isfinite(self.p) else "p n/a"
        return f"{d.mean:+.{digits}f}{ci}, {p}"


def _percentiles(stat: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(stat, alpha)), float(np.quantile(stat, 1.0 - alpha))


def bootstrap_ci(values: Sequence[float], *, n_boot: int = N_BOOT, level: float = 0.95,
                 seed: int = 0) -> Estimate:
    """Mean of the finite ``values`` and a percentile-bootstrap CI of that mean.

    One observation gives its value and no interval (NaN bounds): a bootstrap of one point
    would claim a zero-width CI it cannot know.
    """
    x = np.asarray(values, float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    if x.size == 1:
        return Estimate(float(x[0]), float("nan"), float("nan"), 1)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, (n_boot, x.size))].mean(1)
    lo, hi = _percentiles(means, level)
    return Estimate(float(x.mean()), lo, hi, int(x.size))


def wilcoxon_p(diffs: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p of paired differences (NaN when fewer than 2 pairs;
    1.0 when every difference is zero: no evidence of any difference)."""
    d = np.asarray(diffs, float)
    d = d[np.isfinite(d)]
    if d.size < 2:
        return float("nan")
    if not np.any(d != 0):
        return 1.0
    return float(sps.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def paired_difference(arm: Mapping[object, float], ref: Mapping[object, float], *,
                      n_boot: int = N_BOOT, level: float = 0.95, seed: int = 0) -> Paired:
    """``arm − ref`` over the keys (e.g. ``(seed, subject)``) both define with finite values."""
    keys = [k for k in arm if k in ref and math.isfinite(arm[k]) and math.isfinite(ref[k])]
    diffs = [arm[k] - ref[k] for k in sorted(keys, key=repr)]
    return Paired(bootstrap_ci(diffs, n_boot=n_boot, level=level, seed=seed), wilcoxon_p(diffs))


# -- classification: AUC over test subjects ---------------------------------------------------

def auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney, ties count half); NaN when ``y`` holds one class only."""
    y = np.asarray(y).astype(bool)
    s = np.asarray(score, float)
    npos, nneg = int(y.sum()), int((~y).sum())
    if npos == 0 or nneg == 0:
        return float("nan")
    ranks = sps.rankdata(s)
    return float((ranks[y].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def _auc_cols(y: np.ndarray, s: np.ndarray) -> float:
    """AUC of one label, or the mean over the defined labels of (N, L) arrays."""
    if y.ndim == 1:
        return auc(y, s)
    vals = [auc(y[:, j], s[:, j]) for j in range(y.shape[1])]
    vals = [v for v in vals if math.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def _auc_over_seeds(by_seed: Mapping[int, tuple[np.ndarray, np.ndarray]], idx: np.ndarray | None) -> float:
    vals = []
    for y, s in by_seed.values():
        y, s = np.asarray(y), np.asarray(s)
        vals.append(_auc_cols(y if idx is None else y[idx], s if idx is None else s[idx]))
    vals = [v for v in vals if math.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def _subject_bootstrap(stat: Callable[[np.ndarray | None], float], n_subjects: int, n_boot: int,
                       level: float, seed: int) -> Estimate:
    point = stat(None)
    if not math.isfinite(point):
        return Estimate(float("nan"), float("nan"), float("nan"), n_subjects)
    rng = np.random.default_rng(seed)
    boots = np.array([stat(rng.integers(0, n_subjects, n_subjects)) for _ in range(n_boot)])
    boots = boots[np.isfinite(boots)]   # a resample holding one class has no AUC: left out
    if boots.size < n_boot // 2:
        return Estimate(point, float("nan"), float("nan"), n_subjects)
    lo, hi = _percentiles(boots, level)
    return Estimate(point, lo, hi, n_subjects)


def bootstrap_auc(by_seed: Mapping[int, tuple[np.ndarray, np.ndarray]], *, n_boot: int = 1000,
                  level: float = 0.95, seed: int = 0) -> Estimate:
    """Mean over seeds of the AUC on the test subjects, CI by resampling test subjects.

    ``by_seed[seed] = (labels, scores)``, arrays over the same test subjects in the same order
    ((N,) for one label, or (N, L): the mean AUC over the labels defined on the draw).
    """
    n = len(next(iter(by_seed.values()))[0]) if by_seed else 0
    return _subject_bootstrap(lambda idx: _auc_over_seeds(by_seed, idx), n, n_boot, level, seed)


def paired_auc_difference(arm: Mapping[int, tuple[np.ndarray, np.ndarray]],
                          ref: Mapping[int, tuple[np.ndarray, np.ndarray]], *, n_boot: int = 1000,
                          level: float = 0.95, seed: int = 0) -> Paired:
    """Mean over shared seeds of AUC(arm) − AUC(ref); CI by resampling test subjects (the same
    draw for both arms); Wilcoxon over the per-seed differences (few seeds: little power)."""
    seeds = sorted(set(arm) & set(ref))
    a = {s: arm[s] for s in seeds}
    r = {s: ref[s] for s in seeds}
    n = len(next(iter(a.values()))[0]) if a else 0

    def stat(idx: np.ndarray | None) -> float:
        d = [_auc_over_seeds({s: a[s]}, idx) - _auc_over_seeds({s: r[s]}, idx) for s in seeds]
        d = [x for x in d if math.isfinite(x)]
        return float(np.mean(d)) if d else float("nan")

    est = _subject_bootstrap(stat, n, n_boot, level, seed)
    per_seed = [_auc_over_seeds({s: a[s]}, None) - _auc_over_seeds({s: r[s]}, None) for s in seeds]
    return Paired(est, wilcoxon_p(per_seed))
