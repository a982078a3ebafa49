"""Metrics for the TB-vs-Normal classifier: per-epoch scores, threshold choice and test evaluation.

Conventions: labels are 0 (Normal) / 1 (Tuberculosis, the positive class); scores are
P(TB) in [0, 1]; an image is predicted TB when score >= threshold.  Every result is
made of plain Python numbers so it can go straight into JSON.  Input that makes a
metric undefined raises MetricsError instead of letting NaN leak into a report.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from scipy import stats
from sklearn import metrics as skm

WHO_TARGET = {"sensitivity": 0.90, "specificity": 0.70}


class MetricsError(ValueError):
    """Input for which a metric is undefined (e.g. a split without any TB image)."""


def _checked(labels, scores, split_name: str = "given") -> tuple[np.ndarray, np.ndarray]:
    """Return labels/scores as numpy arrays after checking shape, label values and score range."""
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=float)
    if y.ndim != 1 or s.shape != y.shape:
        raise MetricsError(
            f"the {split_name} split needs 1-D labels and scores of equal length, "
            f"got shapes {y.shape} and {s.shape}"
        )
    if y.size == 0:
        raise MetricsError(f"the {split_name} split is empty")
    if not np.isin(y, (0, 1)).all():
        raise MetricsError(f"the {split_name} split has labels other than 0 (Normal) and 1 (Tuberculosis)")
    if not np.isfinite(s).all():
        raise MetricsError(f"the {split_name} split has NaN or infinite scores (did training diverge?)")
    if s.min() < 0 or s.max() > 1:
        raise MetricsError(
            f"the {split_name} split has scores outside [0, 1] (min {s.min():.3g}, max {s.max():.3g}); "
            "pass P(TB), not logits"
        )
    return y.astype(int), s


def _require_both_classes(y: np.ndarray, split_name: str) -> None:
    """Raise MetricsError unless y holds at least one TB and one Normal image."""
    n_tb = int(y.sum())
    if n_tb == 0:
        raise MetricsError(
            f"the {split_name} split has no Tuberculosis image, so sensitivity and AUROC are undefined"
        )
    if n_tb == y.size:
        raise MetricsError(f"the {split_name} split has no Normal image, so specificity and AUROC are undefined")


def checked_binary(labels, scores, split_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate input as _checked does and also require both classes."""
    y, s = _checked(labels, scores, split_name)
    _require_both_classes(y, split_name)
    return y, s


def counts(y: np.ndarray, s: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    """Return (tn, fp, fn, tp) when predicting TB for score >= threshold."""
    tn, fp, fn, tp = skm.confusion_matrix(y, (s >= threshold).astype(int), labels=[0, 1]).ravel()
    return int(tn), int(fp), int(fn), int(tp)


def confusion(labels, scores, threshold: float) -> list[list[int]]:
    """Return the 2x2 confusion matrix as lists: rows true Normal/TB, columns predicted Normal/TB."""
    y, s = _checked(labels, scores)
    tn, fp, fn, tp = counts(y, s, threshold)
    return [[tn, fp], [fn, tp]]


def epoch_metrics(labels, scores, threshold: float = 0.5, split_name: str = "validation") -> dict:
    """Return accuracy, auroc, sensitivity, specificity and f1 (cheap enough for every epoch)."""
    y, s = checked_binary(labels, scores, split_name)
    tn, fp, fn, tp = counts(y, s, threshold)
    return {
        "accuracy": (tp + tn) / y.size,
        "auroc": float(skm.roc_auc_score(y, s)),
        "sensitivity": tp / (tp + fn),
        "specificity": tn / (tn + fp),
        # tp + fn > 0 here, so the F1 denominator 2tp + fp + fn is never zero.
        "f1": 2 * tp / (2 * tp + fp + fn),
    }


def roc_points(y: np.ndarray, s: np.ndarray):
    """Return sklearn's ROC curve with every distinct score kept as a threshold."""
    # drop_intermediate=False: the dropped points may include the exact one we look for.
    return skm.roc_curve(y, s, drop_intermediate=False)


def youden_threshold(labels, scores, split_name: str = "validation") -> float:
    """Return the threshold maximising Youden's J = sensitivity + specificity - 1 (highest on ties)."""
    y, s = checked_binary(labels, scores, split_name)
    fpr, tpr, thresholds = roc_points(y, s)
    youden = (tpr - fpr)[1:]  # index 0 is the "predict nothing" point at +inf
    # Equal J values can differ in the last bit (2/3 - 0 vs 1 - 1/3), hence the tolerance.
    best = 1 + int(np.argmax(youden >= youden.max() - 1e-12))
    return float(thresholds[best])


def wilson_ci(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Return the Wilson score interval for k successes out of n trials."""
    if n <= 0:
        raise MetricsError("a proportion over zero images has no confidence interval")
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def bootstrap_ci(
    labels,
    scores,
    statistic: Callable,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    *,
    split_name: str = "test",
) -> tuple[float, float]:
    """Return a stratified-bootstrap BCa interval for statistic(labels, rows) by scipy.stats.bootstrap.

    The TB and the Normal scores go in as two samples, which scipy resamples independently: a
    stratified bootstrap, so every resample keeps the split's class counts. `statistic` is row-wise
    (one resample per row, TB columns first, see below), so scipy's vectorized path takes all
    resamples in one call. BCa corrects the percentile interval for bias and skew (AUROC near 1 is
    skewed). Where it is undefined, because every resample gives the same value (AUROC 1.0 on
    separable scores), the interval is that value.
    """
    y, s = checked_binary(labels, scores, split_name)
    tb, normal = s[y == 1], s[y == 0]

    def two_sample(tb_rows: np.ndarray, normal_rows: np.ndarray, axis: int = -1) -> np.ndarray:
        # Resamples, the observed data and BCa's jackknife (one image fewer) all come through here.
        batch = np.broadcast_shapes(tb_rows.shape[:-1], normal_rows.shape[:-1])
        n_tb, n_normal = tb_rows.shape[-1], normal_rows.shape[-1]
        rows = np.concatenate([np.broadcast_to(tb_rows, batch + (n_tb,)),
                               np.broadcast_to(normal_rows, batch + (n_normal,))], axis=-1)
        order = np.r_[np.ones(n_tb, dtype=int), np.zeros(n_normal, dtype=int)]
        return np.asarray(statistic(order, rows.reshape(-1, n_tb + n_normal)), dtype=float).reshape(batch)

    with warnings.catch_warnings():  # scipy warns, then returns NaN, when BCa is undefined; handled below
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        warnings.simplefilter("ignore", RuntimeWarning)  # its acceleration term 0/0 on a constant jackknife
        result = stats.bootstrap((tb, normal), two_sample, n_resamples=n_resamples, vectorized=True, paired=False,
                                 confidence_level=level, method="BCa", rng=np.random.default_rng(seed))
    values = result.bootstrap_distribution
    if np.ptp(values) == 0:
        return float(values[0]), float(values[0])
    low, high = result.confidence_interval
    if not (np.isfinite(low) and np.isfinite(high)):  # BCa undefined for a near-degenerate distribution
        alpha = (1 - level) / 2
        low, high = np.percentile(values, [100 * alpha, 100 * (1 - alpha)])
    return float(low), float(high)


# Row-wise statistics for bootstrap_ci: labels (TB first) and one resample per row.  Calling
# sklearn once per resample costs ~5 ms, i.e. ~10 s for 2000 resamples; these take a fraction of a second.
# tests/test_metrics.py checks each against its sklearn counterpart, ties included.


def auroc_rows(labels: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Return AUROC per row via the Mann-Whitney rank sum (average ranks handle ties)."""
    tb = labels == 1
    n_tb, n_normal = int(tb.sum()), int((~tb).sum())
    rank_sum = stats.rankdata(rows, axis=1)[:, tb].sum(axis=1)
    return (rank_sum - n_tb * (n_tb + 1) / 2) / (n_tb * n_normal)


def average_precision_rows(labels: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Return average precision per row: mean over TB images of precision at their score."""
    tb = labels == 1
    # With "min" ranks, n + 1 - rank counts the images scoring >= each image (ties included).
    at_or_above_all = rows.shape[1] + 1 - stats.rankdata(rows, method="min", axis=1)[:, tb]
    at_or_above_tb = int(tb.sum()) + 1 - stats.rankdata(rows[:, tb], method="min", axis=1)
    return (at_or_above_tb / at_or_above_all).mean(axis=1)


def _row_counts(labels: np.ndarray, rows: np.ndarray, threshold: float):
    """Return per-row (tn, fp, fn, tp) arrays at threshold."""
    predicted_tb = rows >= threshold
    tb = labels == 1
    tp = predicted_tb[:, tb].sum(axis=1)
    fp = predicted_tb[:, ~tb].sum(axis=1)
    return (~tb).sum() - fp, fp, tb.sum() - tp, tp


def balanced_accuracy_rows(threshold: float) -> Callable:
    """Return a row-wise balanced-accuracy statistic at threshold."""

    def statistic(labels: np.ndarray, rows: np.ndarray) -> np.ndarray:
        tn, fp, fn, tp = _row_counts(labels, rows, threshold)
        return (tp / (tp + fn) + tn / (tn + fp)) / 2

    return statistic


def f1_rows(threshold: float) -> Callable:
    """Return a row-wise F1 statistic at threshold."""

    def statistic(labels: np.ndarray, rows: np.ndarray) -> np.ndarray:
        tn, fp, fn, tp = _row_counts(labels, rows, threshold)
        return 2 * tp / (2 * tp + fp + fn)

    return statistic


def estimate(value: float, interval: tuple[float, float]) -> dict:
    """Return the {"value", "ci_low", "ci_high"} record used throughout the report."""
    return {"value": float(value), "ci_low": interval[0], "ci_high": interval[1]}


def _proportion(k: int, n: int, level: float, undefined_note: str) -> dict:
    """Return a Wilson-interval estimate of k/n, or value None with a note when n is 0."""
    if n == 0:
        return {"value": None, "ci_low": None, "ci_high": None, "note": undefined_note}
    return estimate(k / n, wilson_ci(k, n, level))


def at_threshold(
    labels,
    scores,
    threshold: float,
    *,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    split_name: str = "test",
) -> dict:
    """Return confusion counts and every threshold metric with its confidence interval."""
    y, s = checked_binary(labels, scores, split_name)
    tn, fp, fn, tp = counts(y, s, threshold)
    predicted = (s >= threshold).astype(int)
    boot = {"n_resamples": n_resamples, "seed": seed, "level": level, "split_name": split_name}
    return {
        "threshold": float(threshold),
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "sensitivity": _proportion(tp, tp + fn, level, "no Tuberculosis image"),
        "specificity": _proportion(tn, tn + fp, level, "no Normal image"),
        "ppv": _proportion(tp, tp + fp, level, "undefined: no image was predicted Tuberculosis"),
        "npv": _proportion(tn, tn + fn, level, "undefined: no image was predicted Normal"),
        "accuracy": _proportion(tp + tn, y.size, level, "no image"),
        "balanced_accuracy": estimate(
            skm.balanced_accuracy_score(y, predicted),
            bootstrap_ci(y, s, balanced_accuracy_rows(threshold), **boot),
        ),
        "f1": estimate(
            skm.f1_score(y, predicted, zero_division=0.0),
            bootstrap_ci(y, s, f1_rows(threshold), **boot),
        ),
    }


def calibration(labels, scores, n_bins: int = 10, split_name: str = "test") -> dict:
    """Return the Brier score, expected calibration error and equal-width reliability bins."""
    y, s = _checked(labels, scores, split_name)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Same binning as sklearn.calibration.calibration_curve(strategy="uniform"), which
    # returns only non-empty bins and no counts, hence computed here.
    bin_of = np.searchsorted(edges[1:-1], s)
    count = np.bincount(bin_of, minlength=n_bins)
    score_sum = np.bincount(bin_of, weights=s, minlength=n_bins)
    tb_sum = np.bincount(bin_of, weights=y, minlength=n_bins)
    bins, ece = [], 0.0
    for i in range(n_bins):
        mean_score = score_sum[i] / count[i] if count[i] else None
        fraction_tb = tb_sum[i] / count[i] if count[i] else None
        if count[i]:
            ece += count[i] / y.size * abs(fraction_tb - mean_score)
        bins.append({
            "lower": float(edges[i]), "upper": float(edges[i + 1]), "count": int(count[i]),
            "mean_score": None if mean_score is None else float(mean_score),
            "fraction_tb": None if fraction_tb is None else float(fraction_tb),
        })
    return {
        "brier": float(skm.brier_score_loss(y, s, pos_label=1)),
        "ece": float(ece),
        "n_bins": n_bins,
        "bins": bins,
    }
