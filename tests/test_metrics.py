"""Known-answer tests for tbray.metrics."""

import json
import math

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from tbray import metrics

# Five Normal then five TB images, perfectly separated.
SEPARATED_LABELS = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
SEPARATED_SCORES = [0.05, 0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9, 0.95]


def _sensitivity(labels, scores, threshold):
    labels, scores = np.asarray(labels), np.asarray(scores)
    return np.mean(scores[labels == 1] >= threshold)


def _overlapping(n=840, seed=1, decimals=2):
    """Realistic overlapping scores, rounded so that many ties occur."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1).round(decimals)
    return labels, scores


def test_epoch_metrics_perfect_separation():
    result = metrics.epoch_metrics(SEPARATED_LABELS, SEPARATED_SCORES)
    assert result == {"accuracy": 1.0, "auroc": 1.0, "sensitivity": 1.0, "specificity": 1.0, "f1": 1.0}
    assert all(type(v) is float for v in result.values())


def test_epoch_metrics_counts_at_threshold():
    # At 0.75: TB predicted for 0.8, 0.9, 0.95 -> tp 3, fn 2, fp 0, tn 5.
    result = metrics.epoch_metrics(SEPARATED_LABELS, SEPARATED_SCORES, threshold=0.75)
    assert result["sensitivity"] == pytest.approx(3 / 5)
    assert result["specificity"] == 1.0
    assert result["accuracy"] == pytest.approx(8 / 10)
    assert result["f1"] == pytest.approx(2 * 3 / (2 * 3 + 0 + 2))


@pytest.mark.parametrize("target, expected", [(0.9, 0.6), (1.0, 0.6), (0.8, 0.7), (0.6, 0.8), (0.2, 0.95)])
def test_threshold_for_sensitivity_separated(target, expected):
    threshold = metrics.threshold_for_sensitivity(SEPARATED_LABELS, SEPARATED_SCORES, target)
    assert threshold == expected
    assert threshold >= min(s for s, y in zip(SEPARATED_SCORES, SEPARATED_LABELS) if y == 1)
    # Reaches the target, and no higher score would.
    assert _sensitivity(SEPARATED_LABELS, SEPARATED_SCORES, threshold) >= target
    higher = [s for s in SEPARATED_SCORES if s > threshold]
    assert all(_sensitivity(SEPARATED_LABELS, SEPARATED_SCORES, h) < target for h in higher)


def test_threshold_for_sensitivity_exactly_reaches_target():
    # Ten TB images: target 0.9 needs exactly 9 of them at or above the threshold.
    labels = [1] * 10 + [0] * 10
    scores = list(np.linspace(0.5, 0.95, 10)) + list(np.linspace(0.0, 0.45, 10))
    threshold = metrics.threshold_for_sensitivity(labels, scores, 0.9)
    assert threshold == pytest.approx(scores[1])
    assert _sensitivity(labels, scores, threshold) == pytest.approx(0.9)


def test_threshold_with_ties_across_classes():
    # Two Normal and two TB images share the score 0.5, so they can only be called together.
    labels = [0, 0, 1, 1, 1, 0]
    scores = [0.5, 0.5, 0.5, 0.5, 0.8, 0.2]
    assert metrics.threshold_for_sensitivity(labels, scores, 0.3) == 0.8
    # 2/3 sensitivity is unreachable: lowering to 0.5 jumps from 1/3 straight to 3/3.
    assert metrics.threshold_for_sensitivity(labels, scores, 0.6) == 0.5
    assert metrics.threshold_for_sensitivity(labels, scores, 1.0) == 0.5
    assert metrics.epoch_metrics(labels, scores)["auroc"] == pytest.approx(skm.roc_auc_score(labels, scores))


def test_threshold_is_highest_reaching_target_on_random_tied_scores():
    labels, scores = _overlapping(n=300, decimals=1)
    threshold = metrics.threshold_for_sensitivity(labels, scores, 0.9)
    assert _sensitivity(labels, scores, threshold) >= 0.9
    assert all(_sensitivity(labels, scores, s) < 0.9 for s in np.unique(scores) if s > threshold)


def test_youden_threshold():
    # J at 0.6 is 1.0 (perfect split); every other cut is worse.
    assert metrics.youden_threshold(SEPARATED_LABELS, SEPARATED_SCORES) == 0.6
    labels, scores = [0, 0, 1, 0, 1, 1], [0.1, 0.2, 0.3, 0.4, 0.5, 0.9]
    # Candidates: 0.5 -> J = 2/3 - 0; 0.3 -> J = 1 - 1/3; ties go to the higher threshold.
    assert metrics.youden_threshold(labels, scores) == 0.5


def test_one_class_test_split_raises_clear_error():
    with pytest.raises(metrics.MetricsError, match="the test split has no Tuberculosis image, so sensitivity"):
        metrics.evaluate_scores(SEPARATED_LABELS, SEPARATED_SCORES, [0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(metrics.MetricsError, match="validation split has no Normal image"):
        metrics.epoch_metrics([1, 1], [0.4, 0.9])
    with pytest.raises(metrics.MetricsError, match="no Tuberculosis image"):
        metrics.threshold_for_sensitivity([0, 0], [0.4, 0.9])
    assert issubclass(metrics.MetricsError, ValueError)


@pytest.mark.parametrize("scores, message", [
    ([0.1, float("nan")], "NaN or infinite"),
    ([0.1, 3.2], "outside \\[0, 1\\]"),
    ([0.1], "equal length"),
])
def test_bad_scores_raise(scores, message):
    with pytest.raises(metrics.MetricsError, match=message):
        metrics.epoch_metrics([0, 1], scores)


def test_wilson_ci_known_values():
    low, high = metrics.wilson_ci(45, 50)
    expected = stats.binomtest(45, 50).proportion_ci(method="wilson")
    assert (low, high) == pytest.approx((expected.low, expected.high))
    # Independent check with the textbook formula.
    p, n, z = 0.9, 50, stats.norm.ppf(0.975)
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    assert (low, high) == pytest.approx((centre - half, centre + half))
    assert (low, high) == pytest.approx((0.7864, 0.9565), abs=1e-4)
    assert metrics.wilson_ci(45, 50, level=0.99)[0] < low
    with pytest.raises(metrics.MetricsError):
        metrics.wilson_ci(0, 0)


def test_bootstrap_is_deterministic_and_contains_estimate():
    labels, scores = _overlapping(n=200)
    first = metrics.bootstrap_ci(labels, scores, metrics.auroc_rows, n_resamples=500, seed=3, vectorized=True)
    again = metrics.bootstrap_ci(labels, scores, metrics.auroc_rows, n_resamples=500, seed=3, vectorized=True)
    other = metrics.bootstrap_ci(labels, scores, metrics.auroc_rows, n_resamples=500, seed=4, vectorized=True)
    assert first == again
    assert first != other
    assert first[0] < skm.roc_auc_score(labels, scores) < first[1]


def test_bootstrap_scalar_and_vectorized_paths_agree():
    labels, scores = _overlapping(n=120)
    scalar = metrics.bootstrap_ci(labels, scores, skm.roc_auc_score, n_resamples=100, seed=7)
    vectorized = metrics.bootstrap_ci(labels, scores, metrics.auroc_rows, n_resamples=100, seed=7, vectorized=True)
    assert scalar == pytest.approx(vectorized)


def test_bootstrap_is_stratified():
    labels, scores = _overlapping(n=100)
    n_tb = int(np.sum(labels))
    assert metrics.bootstrap_ci(labels, scores, lambda y, s: y.sum(), n_resamples=50) == (n_tb, n_tb)


def test_vectorized_statistics_match_sklearn_with_ties():
    labels, scores = _overlapping(n=150, decimals=1)
    y, rows = metrics._stratified_resamples(labels, scores, 40, seed=0)
    predicted = rows >= 0.5
    checks = [
        (metrics.auroc_rows(y, rows), [skm.roc_auc_score(y, r) for r in rows]),
        (metrics.average_precision_rows(y, rows), [skm.average_precision_score(y, r) for r in rows]),
        (metrics.balanced_accuracy_rows(0.5)(y, rows), [skm.balanced_accuracy_score(y, p) for p in predicted]),
        (metrics.f1_rows(0.5)(y, rows), [skm.f1_score(y, p) for p in predicted]),
    ]
    for ours, sklearn_values in checks:
        np.testing.assert_allclose(ours, sklearn_values, rtol=1e-12)


def test_bootstrap_2000_resamples_of_840_bracket_the_point_estimate():
    labels, scores = _overlapping(n=840)
    low, high = metrics.bootstrap_ci(labels, scores, metrics.average_precision_rows, vectorized=True)
    assert low < skm.average_precision_score(labels, scores) < high
    assert 0 < high - low < 0.15  # 840 images: a few points either side, not the whole range


def test_calibration_perfectly_calibrated_bins_have_zero_ece():
    # Bin [0.2, 0.3): four images at 0.25, one TB. Bin [0.7, 0.8): four at 0.75, three TB.
    labels = [1, 0, 0, 0, 1, 1, 1, 0]
    scores = [0.25] * 4 + [0.75] * 4
    result = metrics.calibration(labels, scores)
    assert result["ece"] == pytest.approx(0.0)
    assert result["brier"] == pytest.approx(skm.brier_score_loss(labels, scores))
    filled = [b for b in result["bins"] if b["count"]]
    assert [(b["lower"], b["count"], b["mean_score"], b["fraction_tb"]) for b in filled] == [
        (pytest.approx(0.2), 4, 0.25, 0.25), (pytest.approx(0.7), 4, 0.75, 0.75)]


def test_calibration_ece_known_value_and_edges():
    # One bin per half: [0, 0.5] holds 0.0 (Normal) and 0.5 (TB); (0.5, 1] holds 1.0 (Normal).
    result = metrics.calibration([0, 1, 0], [0.0, 0.5, 1.0], n_bins=2)
    assert [b["count"] for b in result["bins"]] == [2, 1]
    # Bin 1: |0.5 - 0.25| * 2/3; bin 2: |0 - 1| * 1/3.
    assert result["ece"] == pytest.approx(0.25 * 2 / 3 + 1 / 3)


def test_ppv_undefined_when_nothing_predicted_tb():
    result = metrics.at_threshold(SEPARATED_LABELS, SEPARATED_SCORES, threshold=0.99, n_resamples=50)
    assert (result["tp"], result["fp"], result["tn"], result["fn"]) == (0, 0, 5, 5)
    assert result["ppv"]["value"] is None
    assert "no image was predicted Tuberculosis" in result["ppv"]["note"]
    assert result["npv"]["value"] == 0.5
    assert result["sensitivity"]["value"] == 0.0
    assert result["f1"] == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    json.dumps(result, allow_nan=False)


def test_at_threshold_intervals():
    result = metrics.at_threshold(SEPARATED_LABELS, SEPARATED_SCORES, threshold=0.75, n_resamples=200)
    assert result["sensitivity"]["value"] == pytest.approx(0.6)
    assert (result["sensitivity"]["ci_low"], result["sensitivity"]["ci_high"]) == metrics.wilson_ci(3, 5)
    for key in ("sensitivity", "specificity", "ppv", "npv", "accuracy", "balanced_accuracy", "f1"):
        estimate = result[key]
        assert estimate["ci_low"] <= estimate["value"] <= estimate["ci_high"], key


def test_evaluate_scores_uses_validation_threshold_and_is_json():
    val_labels, val_scores = _overlapping(n=300, seed=2)
    test_labels, test_scores = _overlapping(n=200, seed=3)
    result = metrics.evaluate_scores(val_labels, val_scores, test_labels, test_scores, n_resamples=200)
    text = json.dumps(result, allow_nan=False)
    assert json.loads(text) == result
    assert result["threshold"] == metrics.threshold_for_sensitivity(val_labels, val_scores, 0.9)
    assert result["threshold"] != metrics.threshold_for_sensitivity(test_labels, test_scores, 0.9)
    selection = result["threshold_selection"]
    assert selection["validation_sensitivity"] >= 0.9
    assert selection["youden_threshold"] == metrics.youden_threshold(val_labels, val_scores)
    chosen = result["at_threshold"]
    assert result["test_sensitivity"] == chosen["sensitivity"]["value"]
    assert result["test_specificity"] == chosen["specificity"]["value"]
    assert result["test_accuracy"] == chosen["accuracy"]["value"]
    assert result["test_f1"] == chosen["f1"]["value"]
    assert result["test_auroc"] == pytest.approx(skm.roc_auc_score(test_labels, test_scores))
    assert result["at_0.5"]["threshold"] == 0.5
    assert result["confusion_matrix"] == [[chosen["tn"], chosen["fp"]], [chosen["fn"], chosen["tp"]]]
    assert sum(map(sum, result["confusion_matrix_0.5"])) == result["n_test"] == 200
    assert result["n_test_tb"] == int(np.sum(test_labels))
    assert result["meets_who_target"] == (
        chosen["sensitivity"]["value"] >= 0.9 and chosen["specificity"]["value"] >= 0.7)


def test_meets_who_target_on_well_separated_scores():
    result = metrics.evaluate_scores(
        SEPARATED_LABELS, SEPARATED_SCORES, SEPARATED_LABELS, SEPARATED_SCORES, n_resamples=50)
    assert result["meets_who_target"] is True
    assert result["auroc"] == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0}
