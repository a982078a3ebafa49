"""Per-source validation figures and the number each selection rule ranks a configuration by.

    pooled            the metric on every source's validation images together (the worker's own val_*)
    worst-source      the worst of the per-source figures: a configuration is as good as its worst source
    leave-source-out  each source left out of training in turn, scored on its own validation images; the mean

Pure functions of labels, P(TB) and source codes (int64, an index into the source names), so each rule can
be checked on crafted scores; the worker loop and the leave-source-out trial call them every epoch.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from tbray.stats import metrics

FIGURES = ("loss", "accuracy", "auroc", "sensitivity", "specificity", "f1")  # val_<figure>, as the worker reports


def figures(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """val_loss (binary cross-entropy of P(TB)) and the epoch metrics of one set of validation images."""
    loss = float(skm.log_loss(labels, np.clip(scores, 1e-7, 1 - 1e-7), labels=[0, 1]))
    return {"val_loss": loss, **{f"val_{k}": float(v) for k, v in metrics.epoch_metrics(labels, scores).items()}}


def per_source(labels: np.ndarray, scores: np.ndarray, codes: np.ndarray, names: list[str]) -> dict[str, dict]:
    """{source: figures(...)} over each source's validation images."""
    return {name: figures(labels[codes == i], scores[codes == i]) for i, name in enumerate(names)}


def worst(values: list[float], mode: str) -> float:
    """The worst of per-source values: the highest when lower is better (mode "min"), else the lowest."""
    return float(max(values) if mode == "min" else min(values))


def flat(by_source: dict[str, dict]) -> dict[str, float]:
    """{"val_loss/<source>": ...}: per-source figures as the flat keys a Tune result holds."""
    return {f"{key}/{name}": value for name, row in by_source.items() for key, value in row.items()}


def worst_source(by_source: dict[str, dict]) -> dict[str, float]:
    """worst_val_<figure> over the sources: the highest loss, the lowest of every other figure."""
    out = {}
    for key in next(iter(by_source.values())):
        values = [row[key] for row in by_source.values()]
        out[f"worst_{key}"] = worst(values, "min" if key == "val_loss" else "max")
    return out


def heldout(fold_rows: dict[str, dict]) -> dict[str, float]:
    """Leave-source-out: heldout_val_<figure>, the mean over folds of each left-out source's figure, and each
    fold's own figures (its AUROC interval and image counts too, `left_out_detail`) as val_<...>/<source>."""
    out = {}
    for key in next(iter(fold_rows.values())):
        if key.startswith("val_") and "/" not in key:
            if key[len("val_"):] in FIGURES:
                out[f"heldout_{key}"] = float(np.mean([row[key] for row in fold_rows.values()]))
            out |= {f"{key}/{name}": float(row[key]) for name, row in fold_rows.items()}
    return out


LEFT_OUT_RESAMPLES = 500  # each epoch of a fold; fewer than the final test's 2000, as it runs every epoch


def left_out_detail(labels: np.ndarray, scores: np.ndarray, seed: int) -> dict[str, float]:
    """A left-out source's validation images: their count, TB count and the AUROC's 95% bootstrap interval."""
    low = high = float("nan")  # a class with one image has no interval to resample
    if min(int(labels.sum()), int((labels == 0).sum())) >= 2:
        low, high = metrics.bootstrap_ci(labels, scores, metrics.auroc_rows, n_resamples=LEFT_OUT_RESAMPLES,
                                         seed=seed, split_name="left-out validation")
    return {"val_n": int(len(labels)), "val_n_tb": int(labels.sum()), "val_auroc_ci_low": low,
            "val_auroc_ci_high": high}
