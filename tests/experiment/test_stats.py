"""Bootstrap CIs, paired differences, Wilcoxon and AUC against hand-computed and scipy cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from anatplane_dist.experiment.stats import (
    auc,
    bootstrap_auc,
    bootstrap_ci,
    paired_auc_difference,
    paired_difference,
    wilcoxon_p,
)


def test_bootstrap_of_two_points_matches_the_exact_bootstrap_distribution():
    # resampling [0, 1] twice: means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4 -> the 2.5 and
    # 97.5 percentiles are 0 and 1
    est = bootstrap_ci([0.0, 1.0], n_boot=4000)
    assert est.mean == 0.5 and est.n == 2
    assert est.lo == 0.0 and est.hi == 1.0


def test_bootstrap_of_a_constant_has_a_zero_width_interval():
    est = bootstrap_ci([0.7] * 5)
    assert (est.mean, est.lo, est.hi) == pytest.approx((0.7, 0.7, 0.7))


def test_bootstrap_agrees_with_scipy_percentile_bootstrap():
    x = np.random.default_rng(3).normal(0.6, 0.1, 30)
    ours = bootstrap_ci(x, n_boot=20000, seed=1)
    ref = sps.bootstrap((x,), np.mean, n_resamples=20000, method="percentile",
                        random_state=np.random.default_rng(2)).confidence_interval
    assert ours.mean == pytest.approx(x.mean())
    assert ours.lo == pytest.approx(ref.low, abs=0.004) and ours.hi == pytest.approx(ref.high, abs=0.004)


def test_bootstrap_drops_nan_and_gives_no_interval_for_one_value():
    est = bootstrap_ci([float("nan"), 0.3])
    assert est.mean == 0.3 and est.n == 1 and math.isnan(est.lo)
    assert bootstrap_ci([]).n == 0 and math.isnan(bootstrap_ci([]).mean)


def test_wilcoxon_exact_p_by_hand_and_against_scipy():
    # five positive differences with distinct ranks: W- = 0, exact two-sided p = 2 / 2^5
    assert wilcoxon_p([1, 2, 3, 4, 5]) == pytest.approx(2 / 32)
    d = [0.3, -0.1, 0.25, 0.4, -0.05, 0.2, 0.15, 0.33]
    assert wilcoxon_p(d) == pytest.approx(sps.wilcoxon(d).pvalue)
    assert wilcoxon_p([0.0, 0.0, 0.0]) == 1.0
    assert math.isnan(wilcoxon_p([0.2]))


def test_paired_difference_pairs_by_key_not_by_position():
    arm = {(0, "a"): 0.9, (0, "b"): 0.5, (1, "a"): 0.8, (1, "c"): 0.1}
    ref = {(0, "b"): 0.4, (0, "a"): 0.6, (1, "a"): 0.7}            # (1, "c") has no partner
    p = paired_difference(arm, ref)
    assert p.diff.n == 3
    assert p.diff.mean == pytest.approx(np.mean([0.3, 0.1, 0.1]))
    assert p.p == pytest.approx(sps.wilcoxon([0.3, 0.1, 0.1]).pvalue)


def test_auc_by_hand_with_ties_and_undefined():
    # pairs (pos, neg): (0.8>0.1) (0.8>0.4) (0.4=0.4 -> 1/2) (0.4>0.1): 3.5 / 4
    assert auc(np.array([1, 0, 1, 0]), np.array([0.8, 0.1, 0.4, 0.4])) == pytest.approx(3.5 / 4)
    assert math.isnan(auc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_bootstrap_auc_perfect_classifier_and_paired_difference():
    y = np.array([0, 1] * 10)
    perfect = {0: (y, y.astype(float)), 1: (y, y.astype(float))}
    chance = {0: (y, np.full(20, 0.5)), 1: (y, np.full(20, 0.5))}
    est = bootstrap_auc(perfect, n_boot=200)
    assert (est.mean, est.lo, est.hi) == (1.0, 1.0, 1.0)
    d = paired_auc_difference(perfect, chance, n_boot=200)
    assert d.diff.mean == pytest.approx(0.5) and d.diff.lo == pytest.approx(0.5)


def test_bootstrap_auc_on_a_single_class_test_set_is_undefined():
    y = np.zeros(6)
    est = bootstrap_auc({0: (y, np.linspace(0, 1, 6))}, n_boot=50)
    assert math.isnan(est.mean)
