"""Known-answer tests for tbray.stats.metrics."""

import json
import math

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from tbray.stats import assess, metrics, threshold

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


def test_youden_threshold():
    # J at 0.6 is 1.0 (perfect split); every other cut is worse.
    assert metrics.youden_threshold(SEPARATED_LABELS, SEPARATED_SCORES) == 0.6
    labels, scores = [0, 0, 1, 0, 1, 1], [0.1, 0.2, 0.3, 0.4, 0.5, 0.9]
    # Candidates: 0.5 -> J = 2/3 - 0; 0.3 -> J = 1 - 1/3; ties go to the higher threshold.
    assert metrics.youden_threshold(labels, scores) == 0.5


def test_one_class_test_split_raises_clear_error():
    with pytest.raises(metrics.MetricsError, match="the test split has no Tuberculosis image, so sensitivity"):
        assess.test(SEPARATED_LABELS, SEPARATED_SCORES, [0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(metrics.MetricsError, match="validation split has no Normal image"):
        metrics.epoch_metrics([1, 1], [0.4, 0.9])
    with pytest.raises(metrics.MetricsError, match="no Tuberculosis image"):
        threshold.operating_threshold([0, 0], [0.4, 0.9])
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
    first = metrics.bootstrap_ci(labels, scores, metrics.auroc_rows, n_resamples=500, seed=3)
    again = metrics.bootstrap_ci(labels, scores, metrics.auroc_rows, n_resamples=500, seed=3)
    other = metrics.bootstrap_ci(labels, scores, metrics.auroc_rows, n_resamples=500, seed=4)
    assert first == again
    assert first != other
    assert first[0] < skm.roc_auc_score(labels, scores) < first[1]


def test_bootstrap_is_scipys_stratified_bca_interval():
    # The same interval as scipy.stats.bootstrap with sklearn's AUROC, one call per resample, on the two classes.
    labels, scores = _overlapping(n=120)
    tb, normal = scores[labels == 1], scores[labels == 0]

    def auroc(tb_sample, normal_sample):
        return skm.roc_auc_score(np.r_[np.ones(len(tb_sample)), np.zeros(len(normal_sample))],
                                 np.r_[tb_sample, normal_sample])

    direct = stats.bootstrap((tb, normal), auroc, n_resamples=200, vectorized=False, paired=False,
                             method="BCa", rng=np.random.default_rng(7)).confidence_interval
    ours = metrics.bootstrap_ci(labels, scores, metrics.auroc_rows, n_resamples=200, seed=7)
    assert ours == pytest.approx((direct.low, direct.high), rel=1e-12)


def test_bootstrap_is_stratified():
    labels, scores = _overlapping(n=100)
    n_tb = int(np.sum(labels))
    tb_count = lambda y, rows: np.full(len(rows), float((y == 1).sum()))  # noqa: E731
    assert metrics.bootstrap_ci(labels, scores, tb_count, n_resamples=50) == (n_tb, n_tb)


def test_vectorized_statistics_match_sklearn_with_ties():
    labels, scores = _overlapping(n=150, decimals=1)
    rng = np.random.default_rng(0)
    rows = np.stack([scores[rng.integers(0, len(scores), len(scores))] for _ in range(40)])
    y = labels
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
    low, high = metrics.bootstrap_ci(labels, scores, metrics.average_precision_rows)
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
    result = assess.test(val_labels, val_scores, test_labels, test_scores, n_resamples=200)
    text = json.dumps(result, allow_nan=False)
    assert json.loads(text) == result
    assert result["threshold"] == threshold.operating_threshold(val_labels, val_scores, 0.9)
    assert result["threshold"] != threshold.operating_threshold(test_labels, test_scores, 0.9)
    selection = result["threshold_selection"]
    assert selection["sensitivity"] >= 0.9
    assert selection["youden_threshold"] == metrics.youden_threshold(val_labels, val_scores)
    chosen = result["at_threshold"]
    assert result["auroc"]["value"] == pytest.approx(skm.roc_auc_score(test_labels, test_scores))
    assert result["at_0.5"]["threshold"] == 0.5
    assert result["confusion_matrix"] == [[chosen["tn"], chosen["fp"]], [chosen["fn"], chosen["tp"]]]
    assert sum(map(sum, result["confusion_matrix_0.5"])) == result["n_test"] == 200
    assert result["n_test_tb"] == int(np.sum(test_labels))
    assert result["meets_who_target"] == (
        chosen["sensitivity"]["value"] >= 0.9 and chosen["specificity"]["value"] >= 0.7)


def test_meets_who_target_on_well_separated_scores():
    result = assess.test(SEPARATED_LABELS, SEPARATED_SCORES, SEPARATED_LABELS, SEPARATED_SCORES, n_resamples=50)
    assert result["meets_who_target"] is True
    assert result["auroc"] == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0}
