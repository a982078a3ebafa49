"""Scores of a labelled set -> what a reader needs to judge the model on it.

Two uses: `test` for the one evaluation of the held-out test split (threshold from validation), and
`site` for a data set from elsewhere (an external set in the search, `tune/evaluate.py` later), scored
at the threshold the model carries. Everything returned is plain JSON-able numbers.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from tbray.stats import metrics
from tbray.stats import threshold as thresholds

N_RESAMPLES = 2000  # bootstrap resamples for AUROC, AP, balanced accuracy and F1


def ranking(labels, scores, seed: int, split_name: str, n_resamples: int = N_RESAMPLES) -> dict:
    """AUROC and average precision with stratified-bootstrap 95% intervals."""
    y, s = metrics.checked_binary(labels, scores, split_name)
    boot = {"n_resamples": n_resamples, "seed": seed, "split_name": split_name}
    return {
        "auroc": metrics.estimate(skm.roc_auc_score(y, s), metrics.bootstrap_ci(y, s, metrics.auroc_rows, **boot)),
        "average_precision": metrics.estimate(skm.average_precision_score(y, s),
                                              metrics.bootstrap_ci(y, s, metrics.average_precision_rows, **boot)),
    }


def meets_who(point: dict) -> bool:
    """Whether an at_threshold record meets the WHO triage target (point estimates)."""
    sens, spec = point["sensitivity"]["value"], point["specificity"]["value"]
    return (sens is not None and spec is not None and sens >= metrics.WHO_TARGET["sensitivity"]
            and spec >= metrics.WHO_TARGET["specificity"])


def test(val_labels, val_scores, test_labels, test_scores, target_sensitivity: float = 0.90, seed: int = 0,
         n_resamples: int = N_RESAMPLES, rule: str = "point") -> dict:
    """The full test evaluation; the threshold comes from validation only (`rule`: thresholds.RULES)."""
    selection = thresholds.selection(val_labels, val_scores, target_sensitivity, "validation", rule=rule)
    yt, st = metrics.checked_binary(test_labels, test_scores, "test")
    threshold = selection["threshold"]
    boot = {"n_resamples": n_resamples, "seed": seed}
    chosen = metrics.at_threshold(yt, st, threshold, **boot)
    return {
        "threshold": threshold,
        "threshold_selection": selection,
        "n_test": int(yt.size),
        "n_test_tb": int(yt.sum()),
        **ranking(yt, st, seed, "test", n_resamples),
        "at_threshold": chosen,
        "at_0.5": metrics.at_threshold(yt, st, 0.5, **boot),
        "confusion_matrix": metrics.confusion(yt, st, threshold),
        "confusion_matrix_0.5": metrics.confusion(yt, st, 0.5),
        "calibration": metrics.calibration(yt, st),
        "who_target": dict(metrics.WHO_TARGET),
        "meets_who_target": meets_who(chosen),
        "bootstrap": {"n_resamples": n_resamples, "seed": seed, "level": 0.95, "stratified": True},
    }


def _flat(point: dict, keys=("sensitivity", "specificity", "ppv", "npv", "accuracy")) -> dict:
    """{"sensitivity": {"value", "ci_low", "ci_high"}} -> {"sensitivity": v, "sensitivity_ci": [lo, hi]}."""
    out = {}
    for key in keys:
        out[key] = point[key]["value"]
        out[f"{key}_ci"] = [point[key]["ci_low"], point[key]["ci_high"]]
    return out


def site(labels, scores, threshold: float, target_sensitivity: float, seed: int = 0,
         split_name: str = "external", n_resamples: int = N_RESAMPLES) -> dict:
    """A data set from elsewhere at the model's own threshold, and what a threshold chosen there would give.

    The local threshold is chosen and measured on the same images, so its figures are optimistic: they
    show what calibrating on local data can recover, not what a calibrated model will reach.
    """
    y, s = metrics.checked_binary(labels, scores, split_name)
    rank = ranking(y, s, seed, split_name, n_resamples)
    point = metrics.at_threshold(y, s, threshold, n_resamples=n_resamples, seed=seed, split_name=split_name)
    local = thresholds.selection(y, s, target_sensitivity, split_name)
    return {
        "n": int(y.size), "n_tb": int(y.sum()),
        "auroc": rank["auroc"]["value"], "auroc_ci": [rank["auroc"]["ci_low"], rank["auroc"]["ci_high"]],
        "average_precision": rank["average_precision"]["value"],
        "average_precision_ci": [rank["average_precision"]["ci_low"], rank["average_precision"]["ci_high"]],
        "threshold": float(threshold),
        **_flat(point),
        "confusion_matrix": metrics.confusion(y, s, threshold),
        "meets_who_target": meets_who(point),
        "brier": float(skm.brier_score_loss(y, s)),
        "median_score_tb": float(np.median(s[y == 1])),
        "median_score_normal": float(np.median(s[y == 0])),
        "local_threshold": {key: local[key] for key in ("threshold", "target_sensitivity", "sensitivity",
                                                        "sensitivity_ci", "specificity", "specificity_ci")},
    }



def by_source(labels, scores, sources, threshold: float, seed: int = 0, n_resamples: int = N_RESAMPLES) -> dict:
    """Each source's test figures: AUROC, and sensitivity and specificity at the threshold, with 95% intervals.

    A source whose test images hold one class has no AUROC; its record says why instead.
    """
    y, s, src = np.asarray(labels), np.asarray(scores, dtype=float), np.asarray(sources).astype(str)
    out = {}
    for name in dict.fromkeys(src):  # in order of first appearance
        rows = src == name
        record = {"n": int(rows.sum()), "n_tb": int(y[rows].sum())}
        try:
            record["auroc"] = ranking(y[rows], s[rows], seed, f"test images of {name}", n_resamples)["auroc"]
            at = metrics.at_threshold(y[rows], s[rows], threshold, n_resamples=n_resamples, seed=seed)
            record |= {k: at[k] for k in ("sensitivity", "specificity")}
        except metrics.MetricsError as exc:
            record["error"] = str(exc)
        out[name] = record
    return out
