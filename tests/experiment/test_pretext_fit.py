"""The training-vs-held-out reading of a pretext: memorised, not learnt, or fine."""
from __future__ import annotations

from anatplane_dist.experiment.pretext_fit import fit_verdict


def test_good_on_training_subjects_and_poor_held_out_is_memorisation():
    (v,) = fit_verdict({"train": {"loc_mae": 0.08}, "held_out": {"loc_mae": 0.215}})
    assert v.startswith("location MAE memorised (training subjects 0.08, held-out 0.215)")


def test_poor_on_both_is_not_learnt_and_fine_held_out_says_nothing():
    assert fit_verdict({"train": {"angle_err_deg": 31.0}, "held_out": {"angle_err_deg": 44.0}}) == [
        "angle error ° not learnt (training subjects 31, held-out 44)"]
    assert fit_verdict({"train": {"angle_err_deg": 3.0, "loc_mae": 0.05},
                        "held_out": {"angle_err_deg": 7.0, "loc_mae": 0.1}}) == []


def test_a_missing_side_gives_no_verdict():
    assert fit_verdict({"train": {"loc_mae": 0.05}, "held_out": {}}) == []
