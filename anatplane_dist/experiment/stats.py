"""Statistics of a low-label comparison, with the subset draw (the seed) as the replicate.

Why this unit: one seed is one labelled subset, one head init and one batch order, i.e. one
trained model; every test subject scored by that model shares all of it.  Treating each
(seed, test subject) pair as independent (what this module did before) counts one model many
times and reports p-values and intervals far too small.  So:

- a cell (arm, labelled count) is the mean over seeds of the per-seed mean over test subjects,
  with a **hierarchical** percentile bootstrap 95% CI: resample seeds with replacement, then,
  inside each drawn seed, the test subjects with replacement (both sources of variance);
- an arm is compared with ``random`` on per-seed paired differences (same subset, batches,
  head init and test subjects), summarised by their mean, the same hierarchical bootstrap CI
  (one subject draw shared by both arms: they are paired) and the wins out of seeds.  The
  reading calls an arm better/worse only when that interval excludes 0 and there are at least
  :data:`MIN_SEEDS` seeds (fewer are reported as undetermined: one seed's interval covers the
  test subjects only, and 3 seeds give 10 distinct seed resamples);
- classification has one AUC per (seed, label) over all test subjects, so the subject level of
  the bootstrap recomputes the AUC on the drawn subjects.

The Wilcoxon signed-rank p is still computed for callers that want it on independent values
(e.g. per-seed differences), never on (seed, subject) pairs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy import stats as sps

__all__ = ["Estimate", "Paired", "bootstrap_ci", "paired_difference", "wilcoxon_p", "auc",
           "bootstrap_auc", "paired_auc_difference", "hierarchical_mean", "paired_seed_difference",
           "verdict", "N_BOOT"]

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
    """Mean paired difference (arm − reference) and its 95% CI.

    ``wins``/``seeds``: seeds whose mean difference is > 0, out of the seeds compared (set by
    the seed-level comparisons; -1 when the difference is not per seed).  ``p``: a Wilcoxon p
    over independent units (per-seed differences), NaN when not computed.
    """
    diff: Estimate
    p: float = float("nan")
    wins: int = -1
    seeds: int = -1

    def text(self, digits: int = 3) -> str:
        if not math.isfinite(self.diff.mean):
            return "n/a"
        d = self.diff
        ci = f" [{d.lo:+.{digits}f}, {d.hi:+.{digits}f}]" if math.isfinite(d.lo) else ""
        if self.seeds >= 0:
            return f"{d.mean:+.{digits}f}{ci}, wins {self.wins}/{self.seeds}"
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


def _auc_stat(y: np.ndarray, p: np.ndarray) -> Callable[[np.ndarray | None], float]:
    y, p = np.asarray(y), np.asarray(p)
    return lambda idx: _auc_cols(y if idx is None else y[idx], p if idx is None else p[idx])


def bootstrap_auc(by_seed: Mapping[int, tuple[np.ndarray, np.ndarray]], *, n_boot: int = 1000,
                  level: float = 0.95, seed: int = 0) -> Estimate:
    """Mean over seeds of the AUC on the test subjects, hierarchical CI (seeds, then subjects).

    ``by_seed[seed] = (labels, scores)``, arrays over the same test subjects in the same order
    ((N,) for one label, or (N, L): the mean AUC over the labels defined on the draw).
    """
    seeds = sorted(by_seed)
    stats = [_auc_stat(*by_seed[s]) for s in seeds]
    sizes = [len(by_seed[s][0]) for s in seeds]
    point, lo, hi = _hier_boot(stats, sizes, n_boot, level, seed) if seeds else (float("nan"),) * 3
    return Estimate(point, lo, hi, len(seeds))


def paired_auc_difference(arm: Mapping[int, tuple[np.ndarray, np.ndarray]],
                          ref: Mapping[int, tuple[np.ndarray, np.ndarray]], *, n_boot: int = 1000,
                          level: float = 0.95, seed: int = 0) -> Paired:
    """Mean over shared seeds of AUC(arm) − AUC(ref); hierarchical CI (seeds, then test subjects,
    one subject draw shared by both arms of a seed); wins out of seeds."""
    seeds = sorted(set(arm) & set(ref))

    def diff(s: int) -> Callable[[np.ndarray | None], float]:
        fa, fr = _auc_stat(*arm[s]), _auc_stat(*ref[s])
        return lambda idx: fa(idx) - fr(idx)

    stats = [diff(s) for s in seeds]
    sizes = [len(arm[s][0]) for s in seeds]
    point, lo, hi = _hier_boot(stats, sizes, n_boot, level, seed) if seeds else (float("nan"),) * 3
    per_seed = [f(None) for f in stats]
    per_seed = [d for d in per_seed if math.isfinite(d)]
    return Paired(Estimate(point, lo, hi, len(seeds)), wilcoxon_p(per_seed),
                  int(sum(d > 0 for d in per_seed)), len(per_seed))


# -- the seed as the replicate ------------------------------------------------------------------

def _hier_boot(per_seed: Sequence[Callable[[np.ndarray | None], float]], n_subjects: Sequence[int],
               n_boot: int, level: float, seed: int) -> tuple[float, float, float]:
    """(point, lo, hi) of the mean over seeds of ``stat_s(subject index draw)``: seeds resampled
    with replacement, then the subjects inside every drawn seed (NaN draws are left out)."""
    point_vals = [f(None) for f in per_seed]
    point_vals = [v for v in point_vals if math.isfinite(v)]
    if not point_vals:
        return float("nan"), float("nan"), float("nan")
    point = float(np.mean(point_vals))
    rng = np.random.default_rng(seed)
    k = len(per_seed)
    boots = np.empty(n_boot)
    for b in range(n_boot):
        vals = []
        for i in rng.integers(0, k, k):
            v = per_seed[i](rng.integers(0, n_subjects[i], n_subjects[i]))
            if math.isfinite(v):
                vals.append(v)
        boots[b] = np.mean(vals) if vals else np.nan
    boots = boots[np.isfinite(boots)]
    if boots.size < n_boot // 2:
        return point, float("nan"), float("nan")
    lo, hi = _percentiles(boots, level)
    return point, lo, hi


def _mean_of(x: np.ndarray) -> Callable[[np.ndarray | None], float]:
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]

    def stat(idx: np.ndarray | None) -> float:
        if x.size == 0:
            return float("nan")
        return float(x.mean() if idx is None else x[idx % x.size].mean())
    return stat


def hierarchical_mean(by_seed: Mapping[int, Sequence[float]], *, n_boot: int = 2000, level: float = 0.95,
                      seed: int = 0) -> Estimate:
    """Mean over seeds of the per-seed mean over subjects, with the hierarchical bootstrap CI.

    ``by_seed[seed]`` = the values of that seed's test subjects.  ``n`` of the estimate is the
    number of seeds (the replicates).  One seed gives a subject-only interval (the only variance
    one model shows); callers must not read it as a seed-level interval.
    """
    xs = [np.asarray(by_seed[s], float) for s in sorted(by_seed)]
    xs = [x[np.isfinite(x)] for x in xs]
    xs = [x for x in xs if x.size]
    if not xs:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    point = float(np.mean([x.mean() for x in xs]))
    k = len(xs)
    if k == 1 and xs[0].size == 1:
        return Estimate(point, float("nan"), float("nan"), 1)
    rng = np.random.default_rng(seed)
    # subject level: for every seed, n_boot x k independent subject resamples (vectorised)
    sub = np.stack([x[rng.integers(0, x.size, (n_boot, k, x.size))].mean(-1) for x in xs])   # (k, B, k)
    drawn = rng.integers(0, k, (n_boot, k))                                                   # seed level
    boots = sub[drawn, np.arange(n_boot)[:, None], np.arange(k)[None, :]].mean(1)
    lo, hi = _percentiles(boots, level)
    return Estimate(point, lo, hi, k)


def paired_seed_difference(arm: Mapping[object, float], ref: Mapping[object, float], *, n_boot: int = 2000,
                           level: float = 0.95, seed: int = 0) -> Paired:
    """``arm − ref`` over ``(seed, subject)`` keys both define, summarised per seed.

    The per-seed difference is the mean over that seed's shared subjects; the estimate is their
    mean over seeds with the hierarchical bootstrap CI; ``wins`` counts seeds with a positive
    difference; ``p`` is the Wilcoxon p over the per-seed differences (NaN below 2 seeds).
    """
    by_seed: dict[object, list[float]] = {}
    for k in sorted((k for k in arm if k in ref), key=repr):
        a, r = arm[k], ref[k]
        if math.isfinite(a) and math.isfinite(r):
            by_seed.setdefault(k[0], []).append(a - r)   # type: ignore[index]
    est = hierarchical_mean(by_seed, n_boot=n_boot, level=level, seed=seed)
    per_seed = [float(np.mean(v)) for v in by_seed.values()]
    return Paired(est, wilcoxon_p(per_seed), int(sum(d > 0 for d in per_seed)), len(per_seed))


#: seeds (subset draws) below which no verdict is given: with 3 seeds a percentile bootstrap has
#: 10 distinct seed resamples and a 3/3 sign pattern has p = 0.25; 5 draws is the presets' minimum
MIN_SEEDS = 5


def verdict(p: Paired, min_seeds: int = MIN_SEEDS, than: str = "random") -> str:
    """'better'/'worse' than ``than`` (the reference arm) only when the seed-level 95% interval
    excludes 0 (and there are at least ``min_seeds`` seeds to make that interval mean something)."""
    d = p.diff
    n_seeds = p.seeds if p.seeds >= 0 else d.n
    if not (math.isfinite(d.lo) and math.isfinite(d.hi)) or n_seeds < min_seeds:
        return f"undetermined ({n_seeds} seed{'s' if n_seeds != 1 else ''}: a seed-level interval needs {min_seeds})"
    if d.lo > 0:
        return f"better than {than}"
    if d.hi < 0:
        return f"worse than {than}"
    return f"no clear difference from {than}"
