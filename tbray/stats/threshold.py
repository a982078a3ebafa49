"""The operating threshold: chosen on labelled scores (validation, or a site's own data) for a target sensitivity.

The rule, for a TB triage test that must find at least `target` of TB cases:
  1. keep the operating points (ROC points) whose sensitivity reaches the target;
  2. among them, take the best specificity; among equal specificities, the best sensitivity;
  3. put the threshold in the middle, on the logit scale, of the score gap that gives exactly that point.

Step 2 means a separable validation set (some threshold gives sensitivity 1 and specificity 1) never
costs sensitivity on purpose; the old rule, "the highest threshold that reaches the target", picked a
threshold inside the TB scores and missed 10% of TB by design. Step 3 keeps the same margin on both
sides of the gap; the logit scale is the one the model's output is linear in, so a gap between 0.001
and 0.2 is split at 0.016, not at 0.1, which sits where the model is already sure an image is TB.

Small validation sets can't promise a target: with 20 TB images, 20 of 20 found still leaves the
95% lower bound at 0.84. `selection` reports the interval and how many TB images would promise it.
Rule "lower-bound" asks step 1 for more: the 95% Wilson lower bound of the point's sensitivity, not the
point itself, must reach the target (with 40 TB images: all 40 found, since 39 of 40 bound at 0.87).
It trades specificity for a promise the validation split can back; where no count of found TB images
would reach it, the most sensitive point is the closest it gets, and the warning says so.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import expit, logit

from tbray.config import THRESHOLD_RULES
from tbray.stats import metrics

LOGIT_CLIP = 1e-7  # scores of exactly 0 or 1 have infinite logits; the clip keeps the gap's middle finite
MAX_TB_SEARCHED = 100_000  # enough_tb_images gives up above this many TB images
RULES = THRESHOLD_RULES  # --threshold-rule: what step 1 asks of an operating point's sensitivity


def required_sensitivity(n_tb: int, target: float, rule: str = "point", level: float = 0.95) -> float:
    """The sensitivity an operating point must reach under `rule`, on a split with `n_tb` TB images.

    "point": the target. "lower-bound": the smallest found/n_tb whose Wilson lower bound reaches the
    target, or 1.0 (every TB image found) when none does.
    """
    if rule not in RULES:
        raise metrics.MetricsError(f"threshold rule must be one of {', '.join(RULES)}, got {rule!r}")
    if rule == "point":
        return target
    for found in range(max(math.floor(target * n_tb), 1), n_tb + 1):  # below target * n_tb the bound is too
        if metrics.wilson_ci(found, n_tb, level)[0] >= target:
            return found / n_tb
    return 1.0


def operating_threshold(labels, scores, target: float = 0.90, split_name: str = "validation",
                        rule: str = "point", level: float = 0.95) -> float:
    """The threshold of the rule in the module docstring; an image is TB when P(TB) >= threshold."""
    if not 0 < target <= 1:
        raise metrics.MetricsError(f"target sensitivity must be in (0, 1], got {target}")
    y, s = metrics.checked_binary(labels, scores, split_name)
    required = required_sensitivity(int(y.sum()), target, rule, level)
    fpr, tpr, thresholds = metrics.roc_points(y, s)
    # Index 0 is sklearn's "predict nothing" point (threshold +inf); every later index is a distinct score,
    # in decreasing order, and point i predicts TB for scores >= thresholds[i].
    meets = np.flatnonzero(tpr[1:] >= required - 1e-12) + 1  # tolerance: 9/10 is 0.8999999999999999 in floats
    best_fpr = fpr[meets].min()
    chosen = meets[fpr[meets] == best_fpr].max()  # sensitivity only grows with i, so the last is the best
    upper = thresholds[chosen]
    if chosen + 1 == len(thresholds):
        return float(upper)  # every image called TB: no score below to leave a margin to
    lower = thresholds[chosen + 1]
    clipped = np.clip([lower, upper], LOGIT_CLIP, 1 - LOGIT_CLIP)
    middle = float(expit(logit(clipped).mean()))
    # Scores closer than the clip collapse to one value; the point must stay exactly the chosen one.
    return middle if lower < middle <= upper else float(upper)


def enough_tb_images(sensitivity: float, target: float, level: float = 0.95) -> int | None:
    """The fewest TB images at which this observed sensitivity has a Wilson lower bound >= target.

    None when no number would do (the observed sensitivity is at or below the target) or more than
    MAX_TB_SEARCHED would be needed. Binary search: the lower bound grows with n at a fixed proportion.
    """
    if sensitivity <= target:
        return None

    def lower(n: int) -> float:
        return metrics.wilson_ci(round(sensitivity * n), n, level)[0]

    if lower(MAX_TB_SEARCHED) < target:
        return None
    lo, hi = 1, MAX_TB_SEARCHED
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if lower(mid) >= target else (mid + 1, hi)
    return lo


def selection(labels, scores, target: float, split_name: str = "validation", level: float = 0.95,
              rule: str = "point") -> dict:
    """The chosen threshold and what it gives on the data it was chosen on, with intervals and a warning."""
    y, s = metrics.checked_binary(labels, scores, split_name)
    threshold = operating_threshold(y, s, target, split_name, rule, level)
    tn, fp, fn, tp = metrics.counts(y, s, threshold)
    sens_ci, spec_ci = metrics.wilson_ci(tp, tp + fn, level), metrics.wilson_ci(tn, tn + fp, level)
    result = {
        "threshold": threshold,
        "split": split_name,
        "method": (f"best specificity among thresholds whose {split_name} sensitivity {RULES[rule]} "
                   f"({target:g}; ties: higher sensitivity), placed mid-gap on the logit scale"),
        "rule": rule,
        "target_sensitivity": float(target),
        "sensitivity": tp / (tp + fn), "sensitivity_ci": list(sens_ci),
        "specificity": tn / (tn + fp), "specificity_ci": list(spec_ci),
        "youden_threshold": metrics.youden_threshold(y, s, split_name),
        "n": int(y.size), "n_tb": int(y.sum()),
        "tb_images_needed": enough_tb_images(tp / (tp + fn), target, level),
        "warning": None,
    }
    if sens_ci[0] < target:
        result["warning"] = _too_few_warning(result, split_name)
    return result


def _too_few_warning(sel: dict, split_name: str) -> str:
    """Why the chosen threshold can't promise the target, and how many TB images would."""
    needed = sel["tb_images_needed"]
    more = (f"it would take about {needed} TB images at this sensitivity" if needed else
            "no number of TB images would, since this sensitivity does not clear the target")
    return (f"the {split_name} split has {sel['n_tb']} TB images: sensitivity {sel['sensitivity']:.3f} "
            f"[{sel['sensitivity_ci'][0]:.3f}, {sel['sensitivity_ci'][1]:.3f}] there cannot promise "
            f"{sel['target_sensitivity']:.2f} (its 95% lower bound is below it); {more}")
