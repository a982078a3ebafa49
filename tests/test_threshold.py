"""The operating-threshold rule: best specificity among thresholds that reach the target sensitivity."""

import numpy as np
import pytest
from scipy.special import expit, logit

from tbray.stats import metrics, threshold


def _rates(labels, scores, t):
    labels, scores = np.asarray(labels), np.asarray(scores)
    called = scores >= t
    return called[labels == 1].mean(), (~called[labels == 0]).mean()


def test_separable_scores_never_cost_sensitivity():
    # 40 TB and 40 Normal, perfectly separated (as validation was on real X-rays). The old rule ("the
    # highest threshold reaching 0.90") put the threshold inside the TB scores and missed 4 TB on purpose.
    rng = np.random.default_rng(0)
    tb, normal = rng.uniform(0.55, 0.99, 40), rng.uniform(0.01, 0.30, 40)
    labels, scores = [1] * 40 + [0] * 40, np.r_[tb, normal]
    t = threshold.operating_threshold(labels, scores, 0.90)
    assert _rates(labels, scores, t) == (1.0, 1.0)
    # Mid-gap on the logit scale between the highest Normal and the lowest TB score.
    assert t == pytest.approx(expit((logit(normal.max()) + logit(tb.min())) / 2))
    assert normal.max() < t < tb.min()


def test_ties_in_specificity_go_to_higher_sensitivity():
    # TB 0.9, 0.8, 0.7, 0.6; Normal 0.5, 0.2. Target 0.75: the cuts at 0.7 (3/4) and at 0.6 (4/4) both keep
    # specificity 1, so the rule takes 0.6's operating point: sensitivity 1.
    labels, scores = [1, 1, 1, 1, 0, 0], [0.9, 0.8, 0.7, 0.6, 0.5, 0.2]
    t = threshold.operating_threshold(labels, scores, 0.75)
    assert _rates(labels, scores, t) == (1.0, 1.0)
    assert 0.5 < t <= 0.6


def test_tied_scores_across_classes_move_together():
    # Two Normal and two TB images share 0.5: they can only be called together.
    labels, scores = [0, 0, 1, 1, 1, 0], [0.5, 0.5, 0.5, 0.5, 0.8, 0.2]
    t = threshold.operating_threshold(labels, scores, 0.6)  # 1/3 at 0.8 is too low; 0.5 gives 3/3
    assert _rates(labels, scores, t) == (1.0, pytest.approx(1 / 3))
    assert 0.2 < t <= 0.5
    assert _rates(labels, scores, threshold.operating_threshold(labels, scores, 0.3)) == (pytest.approx(1 / 3), 1.0)


@pytest.mark.parametrize("seed", range(5))
def test_rule_is_best_specificity_reaching_target_on_random_tied_scores(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1).round(2)
    t = threshold.operating_threshold(labels, scores, 0.9)
    sens, spec = _rates(labels, scores, t)
    assert sens >= 0.9
    # Brute force over every distinct cut: none reaching the target beats it, or ties it with more sensitivity.
    for cut in np.unique(scores):
        s, p = _rates(labels, scores, cut)
        if s >= 0.9:
            assert (p, s) <= (spec, sens)


def test_everything_called_tb_when_only_that_reaches_target():
    labels, scores = [1, 0, 1, 0], [0.9, 0.8, 0.1, 0.2]
    t = threshold.operating_threshold(labels, scores, 1.0)
    assert t == 0.1 and _rates(labels, scores, t) == (1.0, 0.0)


def test_scores_of_exactly_0_and_1_give_a_finite_mid_gap_threshold():
    labels, scores = [1, 1, 0, 0], [1.0, 1.0, 0.0, 0.0]
    t = threshold.operating_threshold(labels, scores, 0.9)
    assert 0 < t <= 1 and _rates(labels, scores, t) == (1.0, 1.0)


def test_five_tb_images_cannot_promise_the_target_and_the_warning_says_what_would():
    labels = [1] * 5 + [0] * 45
    scores = [0.9, 0.85, 0.8, 0.75, 0.7] + list(np.linspace(0.0, 0.5, 45))
    sel = threshold.selection(labels, scores, 0.90)
    assert sel["sensitivity"] == 1.0 and sel["n_tb"] == 5
    low, high = sel["sensitivity_ci"]
    assert (low, high) == metrics.wilson_ci(5, 5) and low < 0.9
    # All found: the Wilson lower bound n / (n + 1.96^2) first reaches 0.90 at n = 35.
    assert sel["tb_images_needed"] == 35
    assert metrics.wilson_ci(34, 34)[0] < 0.9 <= metrics.wilson_ci(35, 35)[0]
    assert "5 TB images" in sel["warning"] and "about 35 TB images" in sel["warning"]


def test_no_warning_when_validation_is_large_enough():
    rng = np.random.default_rng(1)
    labels = [1] * 200 + [0] * 200
    scores = np.r_[rng.uniform(0.6, 1, 200), rng.uniform(0, 0.4, 200)]
    sel = threshold.selection(labels, scores, 0.90)
    assert sel["warning"] is None and sel["sensitivity_ci"][0] >= 0.9


def test_observed_sensitivity_at_target_can_never_promise_it():
    assert threshold.enough_tb_images(0.90, 0.90) is None
    assert threshold.enough_tb_images(0.95, 0.90) > 35


def test_the_lower_bound_rule_finds_enough_tb_for_its_interval_to_clear_the_target():
    # 40 TB, 60 Normal. The lowest TB score sits among the Normals: finding all 40 costs 10 Normals.
    # The point rule stops at 37 of 40 (0.925); its Wilson lower bound, 0.80, can't promise 0.90. The
    # lower-bound rule needs 40 of 40 (bound 0.912; 39 of 40 bound at 0.87) and pays the specificity.
    rng = np.random.default_rng(1)
    tb = np.r_[rng.uniform(0.7, 0.99, 37), [0.45, 0.35, 0.25]]
    normal = np.r_[rng.uniform(0.01, 0.2, 50), np.linspace(0.3, 0.5, 10)]
    labels, scores = [1] * 40 + [0] * 60, np.r_[tb, normal]
    point = threshold.selection(labels, scores, 0.90)
    bound = threshold.selection(labels, scores, 0.90, rule="lower-bound")
    assert point["sensitivity"] == pytest.approx(37 / 40) and point["sensitivity_ci"][0] < 0.90
    assert point["warning"] is not None and point["rule"] == "point"
    assert bound["sensitivity"] == 1.0 and bound["sensitivity_ci"][0] >= 0.90
    assert bound["warning"] is None and bound["specificity"] < point["specificity"]
    assert "lower bound" in bound["method"]
    assert threshold.required_sensitivity(40, 0.90, "lower-bound") == 1.0
    assert threshold.required_sensitivity(200, 0.90, "lower-bound") == pytest.approx(189 / 200)
    assert metrics.wilson_ci(188, 200)[0] < 0.90 <= metrics.wilson_ci(189, 200)[0]


def test_the_lower_bound_rule_on_too_few_tb_finds_them_all_and_warns():
    labels, scores = [1] * 10 + [0] * 10, np.r_[np.linspace(0.5, 0.95, 10), np.linspace(0.05, 0.6, 10)]
    bound = threshold.selection(labels, scores, 0.90, rule="lower-bound")
    assert bound["sensitivity"] == 1.0 and "10 TB images" in bound["warning"]
    with pytest.raises(metrics.MetricsError, match="threshold rule must be one of point, lower-bound"):
        threshold.operating_threshold(labels, scores, 0.9, rule="bound")


def test_bad_target_is_refused():
    with pytest.raises(metrics.MetricsError, match="target sensitivity"):
        threshold.operating_threshold([0, 1], [0.1, 0.9], 1.5)


def test_predict_names_the_origin_of_every_kind_of_threshold():
    from tbray.predict import local

    assert "no record of how the threshold was chosen" in local.threshold_origin({"threshold": 0.5})
    source = {"kind": "validation split", "n": 80, "n_tb": 40, "target_sensitivity": 0.9}
    assert local.threshold_origin({"threshold_source": source}).startswith("the search's validation split (80 images")
    calibration = {"site_data": "/site", "n": 10, "n_tb": 5, "date": "2026-11-25", "sensitivity": 1.0,
                   "specificity": 0.5}
    both = {"threshold_source": source, "calibration": calibration}
    assert local.threshold_origin(both).startswith("site calibration on /site (10 images, 5 TB, 2026-11-25")
