"""The end-of-run report: report.json, report.md, classification_report.txt and the plots.

`write` takes the evaluation from `tbray.metrics.evaluate_scores` plus the search
records and writes everything a reader needs into the run folder; `summary_table`
gives the short text the CLI prints at the end.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from sklearn.metrics import classification_report

from tbray import CLASS_NAMES, external_report, plots
from tbray.duplicates import NEAR_DUPLICATE_MAX_DISTANCE
from tbray.metrics import epoch_metrics

DEMO_BANNER = "SYNTHETIC DEMO DATA — NOT MEDICAL"
DUPLICATE_METHOD = (
    "exact duplicates share the sha256 of the file bytes; near duplicates have 256-bit perceptual "
    f"hashes within {NEAR_DUPLICATE_MAX_DISTANCE} bits; every pair of images in different splits is compared"
)
# file name -> caption, in the order they appear in the "Plots" section.
PLOTS = {
    "roc.png": "ROC curve on the test split",
    "pr.png": "Precision-recall curve on the test split",
    "optuna_history.png": "Optuna optimisation history",
    "optuna_importance.png": "Hyperparameter importance",
    "val_auroc_per_epoch.png": "Validation AUROC per epoch, one line per trial",
}
# Metrics of the headline table: (key in at_threshold, label, interval method).
HEADLINE_ROWS = (
    ("sensitivity", "Sensitivity (recall for TB)", "Wilson"),
    ("specificity", "Specificity", "Wilson"),
    ("ppv", "PPV (precision for TB)", "Wilson"),
    ("npv", "NPV", "Wilson"),
    ("accuracy", "Accuracy", "Wilson"),
    ("balanced_accuracy", "Balanced accuracy", "bootstrap"),
    ("f1", "F1 (TB)", "bootstrap"),
)


# ---------------------------------------------------------------- small helpers


def _is_missing(value) -> bool:
    """Return True for None, NaN, NaT and pd.NA (and False for containers)."""
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def _json_safe(obj):
    """Return obj as plain JSON types: numpy scalars unwrapped, paths as text, NaN as None."""
    if isinstance(obj, dict):
        return {str(key): _json_safe(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple, set, np.ndarray)):
        return [_json_safe(value) for value in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return None if _is_missing(obj) else str(obj)


def _fmt(value, digits: int = 3) -> str:
    """Format a number for the report; None and NaN become "n/a"."""
    if _is_missing(value):
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(value)
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value else f"{value:.{digits}f}"
    return str(value)


def _fmt_estimate(estimate: dict) -> str:
    """Format a {"value", "ci_low", "ci_high"} record as "0.917 [0.872, 0.948]"."""
    if estimate["value"] is None:
        return f"n/a ({estimate.get('note', 'undefined')})"
    return f"{_fmt(estimate['value'])} [{_fmt(estimate['ci_low'])}, {_fmt(estimate['ci_high'])}]"


def _cell(value) -> str:
    """Return value as one markdown table cell (no pipes or newlines, long text cut)."""
    text = _fmt(value, digits=4).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 80 else text[:77] + "..."


def markdown_table(header: list[str], rows: list[list]) -> str:
    """Return a GitHub-flavoured markdown table (pandas.to_markdown needs tabulate, not a dependency)."""
    lines = ["| " + " | ".join(map(_cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def _records_table(records: list[dict]) -> str:
    """Return JSON records (one dict per row, None for missing) as a markdown table."""
    header = list(dict.fromkeys(key for record in records for key in record))
    return markdown_table(header, [["" if r.get(k) is None else r[k] for k in header] for r in records])


def _best_metric(best: dict) -> tuple[str, object]:
    """Return (name, value) of the validation metric that picked the best trial."""
    if "metric" in best and "value" in best:
        return str(best["metric"]), best["value"]
    for key, value in best.items():
        if str(key).startswith("val_"):
            return str(key), value
    return "validation metric", None


def _params_text(params: dict) -> str:
    """Return params as "name=value, ..." in name order."""
    return ", ".join(f"{name}={params[name]:.4g}" if isinstance(params[name], float) else f"{name}={params[name]}"
                     for name in sorted(params)) or "n/a"


# ---------------------------------------------------------------- search summary


def search_summary(trials: pd.DataFrame) -> dict:
    """Trial counts per status (as trials.csv has them: completed, stopped_early, error, ...)."""
    counts = trials["status"].value_counts() if "status" in trials else pd.Series(dtype=int)
    return {
        "n_trials": int(len(trials)),
        "completed": int(counts.get("completed", 0)),
        "stopped_early": int(counts.get("stopped_early", 0)),
        "errored": int(counts.get("error", 0)),
        "other": {k: int(v) for k, v in counts.items() if k not in ("completed", "stopped_early", "error")},
        "trials": _json_safe(trials.to_dict("records")),
    }


# ---------------------------------------------------------------- files


def classification_text(test_labels, test_scores, evaluation: dict) -> str:
    """Return sklearn classification reports at the chosen threshold and at 0.5."""
    labels = np.asarray(test_labels)
    scores = np.asarray(test_scores, dtype=float)
    selection = evaluation["threshold_selection"]
    parts = [f"Classification reports on the test split (n={evaluation['n_test']}, "
             f"{evaluation['n_test_tb']} Tuberculosis); predicted TB when P(TB) >= threshold.\n"]
    headings = (
        (evaluation["threshold"], f"chosen threshold {evaluation['threshold']:.4f} ({selection['method']})"),
        (0.5, "threshold 0.5, for comparison"),
    )
    for threshold, heading in headings:
        text = classification_report(
            labels, (scores >= threshold).astype(int), labels=[0, 1],
            target_names=list(CLASS_NAMES), digits=3, zero_division=0,
        )
        parts.append(f"== At the {heading} ==\n\n{text}")
    if evaluation["at_threshold"]["ppv"]["value"] is None or evaluation["at_threshold"]["npv"]["value"] is None:
        parts.append("Precision 0.000 above means no image was predicted in that class (undefined).\n")
    return "\n".join(parts)


def _write_plots(run_dir: Path, evaluation: dict, test_labels, test_scores,
                 history: pd.DataFrame, study: optuna.Study | None) -> None:
    """Write every PNG of the report into run_dir."""
    threshold, cm = evaluation["threshold"], evaluation["confusion_matrix"]
    plots.roc_curve_png(test_labels, test_scores, threshold, run_dir / "roc.png")
    plots.pr_curve_png(test_labels, test_scores, threshold, run_dir / "pr.png")
    plots.confusion_matrix_png(cm, run_dir / "confusion_matrix.png", f"Test, chosen threshold {threshold:.3f}")
    plots.confusion_matrix_png(
        evaluation["confusion_matrix_0.5"], run_dir / "confusion_matrix_0.5.png", "Test, threshold 0.5")
    plots.reliability_png(evaluation["calibration"], run_dir / "reliability.png")
    plots.optuna_history_png(study, run_dir / "optuna_history.png")
    plots.optuna_importance_png(study, run_dir / "optuna_importance.png")
    plots.val_auroc_per_epoch_png(history, run_dir / "val_auroc_per_epoch.png")


def build(*, evaluation: dict, val_labels, val_scores, trials: pd.DataFrame, history: pd.DataFrame,
          best: dict, config: dict, data_summary: dict, external: dict | None = None) -> dict:
    """Return the JSON-safe report dict written to report.json."""
    threshold = evaluation["threshold"]
    return _json_safe({
        "demo": bool(config.get("demo", False)),
        "threshold": threshold,
        "threshold_selection": evaluation["threshold_selection"],
        "evaluation": evaluation,
        "validation_at_threshold": epoch_metrics(val_labels, val_scores, threshold),
        "best": best,
        "search": search_summary(trials),
        "config": config,
        "data_summary": data_summary,
        "external": external or {},
    })


def write(run_dir: Path, *, evaluation: dict, val_labels, val_scores, test_labels, test_scores,
          trials: pd.DataFrame, history: pd.DataFrame, study: optuna.Study | None, best: dict,
          config: dict, data_summary: dict, external: dict | None = None) -> dict:
    """Write report.json, report.md, classification_report.txt and all plots; return the report."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_plots(run_dir, evaluation, test_labels, test_scores, history, study)
    (run_dir / "classification_report.txt").write_text(
        classification_text(test_labels, test_scores, evaluation), encoding="utf-8")
    report = build(evaluation=evaluation, val_labels=val_labels, val_scores=val_scores, trials=trials,
                   history=history, best=best, config=config, data_summary=data_summary, external=external)
    # report.md first, report.json last and atomically: a report.json means the run finished.
    _write_atomic(run_dir / "report.md", markdown(report))
    # allow_nan=False: a NaN that slipped through must fail loudly, not write invalid JSON.
    _write_atomic(run_dir / "report.json", json.dumps(report, indent=2, allow_nan=False))
    return report


def _write_atomic(path: Path, text: str) -> None:
    """Write then rename, so a reader never sees half a report."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------- report.md


def _headline_section(ev: dict) -> list[str]:
    """Return the headline test metrics with 95% intervals."""
    chosen, default = ev["at_threshold"], ev["at_0.5"]
    rows = [["AUROC", _fmt_estimate(ev["auroc"]), "", "bootstrap"],
            ["Average precision", _fmt_estimate(ev["average_precision"]), "", "bootstrap"]]
    rows += [[label, _fmt_estimate(chosen[key]), _fmt_estimate(default[key]), method]
             for key, label, method in HEADLINE_ROWS]
    header = ["Metric", f"At chosen threshold {ev['threshold']:.3f}", "At threshold 0.5", "CI method"]
    return [
        "## Headline test metrics", "",
        f"Test split: {ev['n_test']} images, {ev['n_test_tb']} Tuberculosis. "
        "Values are point estimates with 95% confidence intervals in brackets "
        f"(bootstrap: {ev['bootstrap']['n_resamples']} stratified resamples, seed {ev['bootstrap']['seed']}).",
        "", markdown_table(header, rows), "",
    ]


def _threshold_section(ev: dict) -> list[str]:
    """Return how the operating threshold was chosen, what it gave on validation, and any warning."""
    sel = ev["threshold_selection"]
    sens = f"{_fmt(sel['sensitivity'])} [{_fmt(sel['sensitivity_ci'][0])}, {_fmt(sel['sensitivity_ci'][1])}]"
    spec = f"{_fmt(sel['specificity'])} [{_fmt(sel['specificity_ci'][0])}, {_fmt(sel['specificity_ci'][1])}]"
    lines = [
        "## Operating threshold", "",
        f"An image is called Tuberculosis when P(TB) >= **{ev['threshold']:.4f}**. Rule: among the thresholds "
        f"that reach sensitivity {sel['target_sensitivity']:.2f} on the **validation** split ({sel['n']} images, "
        f"{sel['n_tb']} TB), the one with the best specificity (ties: the higher sensitivity), placed in the "
        f"middle of the score gap on the logit scale. On validation it gives sensitivity {sens} and specificity "
        f"{spec} (Wilson 95% intervals). The test split played no part in choosing it.", "",
        f"For comparison, the Youden threshold (maximum sensitivity + specificity - 1) on validation is "
        f"{sel['youden_threshold']:.4f}; it is not used.", "",
    ]
    if sel.get("warning"):
        lines += [f"> **WARNING:** {sel['warning']}.", ""]
    return lines


def _who_section(ev: dict) -> list[str]:
    """Return whether the WHO triage target is met at the chosen threshold."""
    chosen, target = ev["at_threshold"], ev["who_target"]
    sens, spec = chosen["sensitivity"], chosen["specificity"]
    verdict = "**MET**" if ev["meets_who_target"] else "**NOT MET**"
    caveat = ""
    if ev["meets_who_target"]:
        lower_met = sens["ci_low"] >= target["sensitivity"] and spec["ci_low"] >= target["specificity"]
        caveat = (" This judges point estimates; the lower 95% bounds "
                  + ("meet it too." if lower_met else "do not, so the data are also consistent with missing it."))
    return [
        "## WHO triage target", "",
        f"Target for a TB triage test: sensitivity >= {target['sensitivity']:.0%} and specificity >= "
        f"{target['specificity']:.0%}. On the test split at the chosen threshold: {verdict} "
        f"(sensitivity {_fmt_estimate(sens)}, specificity {_fmt_estimate(spec)}).{caveat}", "",
    ]


def _confusion_table(cm: list[list[int]]) -> str:
    """Return a 2x2 confusion matrix as a markdown table."""
    return markdown_table(["true \\ predicted", *CLASS_NAMES], [[n, *c] for n, c in zip(CLASS_NAMES, cm)])


def _confusion_section(ev: dict) -> list[str]:
    """Return both confusion matrices as tables and images."""
    return [
        "## Confusion matrices", "",
        f"### Chosen threshold {ev['threshold']:.3f}", "", _confusion_table(ev["confusion_matrix"]), "",
        "![Confusion matrix at the chosen threshold](confusion_matrix.png)", "",
        "### Threshold 0.5", "", _confusion_table(ev["confusion_matrix_0.5"]), "",
        "![Confusion matrix at threshold 0.5](confusion_matrix_0.5.png)", "",
    ]


def _calibration_section(ev: dict) -> list[str]:
    """Return the calibration numbers and the reliability diagram."""
    cal = ev["calibration"]
    return [
        "## Calibration", "",
        f"Brier score {_fmt(cal['brier'])} (0 is perfect); expected calibration error {_fmt(cal['ece'])} "
        f"over {cal['n_bins']} equal-width bins, weighted by the number of images per bin.", "",
        "![Reliability diagram](reliability.png)", "",
    ]


def _best_section(best: dict) -> list[str]:
    """Return the best trial's identity, metric, checkpoint and parameters."""
    name, value = _best_metric(best)
    params = best.get("params") or {}
    details = [f"- {key}: {_fmt(best[key], 4)}" for key in best if key not in ("params", "metric", "value")]
    return [
        "## Best configuration", "", f"- {name}: {_fmt(value, 4)}", *details, "",
        markdown_table(["parameter", "value"], [[k, params[k]] for k in sorted(params)]) if params else "",
        "",
    ]


def _search_section(search: dict) -> list[str]:
    """Return trial counts by outcome and the table of trials."""
    other = ", ".join(f"{n} {status}" for status, n in search["other"].items())
    return [
        "## Search summary", "",
        f"{search['n_trials']} trials: {search['completed']} completed, {search['stopped_early']} stopped early "
        f"by the scheduler, {search['errored']} errored" + (f", {other}." if other else "."), "",
        _records_table(search["trials"]) if search["trials"] else "No trial was recorded.", "",
    ]


def _data_section(data: dict) -> list[str]:
    """Return image counts (nested {split: {class: n}} or flat {name: n}) and other facts."""
    lines = ["## Data", ""]
    counts = data.get("counts") or {}
    if counts:
        rows = [[key, json.dumps(value) if isinstance(value, dict) else value] for key, value in counts.items()]
        lines += [markdown_table(["images", "count"], rows), ""]
    for key, value in data.items():
        if key in ("counts", "duplicates", "duplicate_method") or isinstance(value, dict):
            continue
        lines.append(f"- {key}: {len(value) if isinstance(value, list) else _fmt(value)}")
    return lines + [""]


def _duplicates_section(data: dict) -> list[str]:
    """Return the cross-split duplicate (leakage) check, loudly if anything was found."""
    method = data.get("duplicate_method", DUPLICATE_METHOD)
    lines = ["## Cross-split duplicates (leakage check)", ""]
    if "duplicates" not in data:
        return lines + ["**Not checked**: the data summary has no duplicate check.", ""]
    groups = data["duplicates"]
    if not groups:
        return lines + [f"None found. Method: {method}.", ""]
    n_pairs = sum(int(group.get("pairs", 1)) for group in groups)
    header = list(dict.fromkeys(key for group in groups for key in group))
    return lines + [
        f"> **WARNING: {n_pairs} pair(s) of exact or near-duplicate images sit in different splits.** "
        "Test figures may be optimistic: the model may have trained on copies of test images. "
        f"Method: {method}.", "",
        markdown_table(header, [[group.get(key, "") for key in header] for group in groups]), "",
    ]


def _plots_section() -> list[str]:
    """Return the remaining figures embedded with relative links."""
    lines = ["## Plots", ""]
    for file_name, caption in PLOTS.items():
        lines += [f"### {caption}", "", f"![{caption}]({file_name})", ""]
    return lines


def _limits_section(demo: bool) -> list[str]:
    """Return the caveats a reader must see before trusting any number above."""
    lines = [
        "## Limits of this data set", "",
        "- In the public TB Chest X-ray Database, Normal and Tuberculosis images come largely from "
        "different hospitals and countries. A model can learn to recognise the image source (scanner, "
        "processing, text markers, population) rather than the disease, and would then score well here "
        "while failing elsewhere.",
        "- These figures are therefore **not evidence of clinical performance**. That needs an external, "
        "prospective evaluation on images from the population and equipment where the model would be used.",
        "- Intervals describe sampling variation within this test split only; they do not cover the "
        "shift to another hospital.",
    ]
    if demo:
        lines.append(f"- **{DEMO_BANNER}**: this run used generated images, so no number here says "
                     "anything about tuberculosis.")
    return lines + [""]


def markdown(report: dict) -> str:
    """Return report.md: one human-readable page for the whole run."""
    ev = report["evaluation"]
    lines = ["# Tuberculosis vs Normal chest X-ray classifier: run report", ""]
    if report["demo"]:
        lines += [f"> **{DEMO_BANNER}**", ""]
    sections = (
        _headline_section(ev), _threshold_section(ev), _who_section(ev),
        external_report.section(report.get("external") or {}, external_report.internal_summary(ev)),
        _confusion_section(ev),
        _calibration_section(ev), _best_section(report["best"]), _search_section(report["search"]),
        _data_section(report["data_summary"]), _duplicates_section(report["data_summary"]),
        _plots_section(), _limits_section(report["demo"]),
    )
    for section in sections:
        lines += section
    return "\n".join(lines)


def summary_table(report: dict) -> str:
    """Return the short plain-text summary the CLI prints at the end of a run."""
    ev, best = report["evaluation"], report["best"]
    chosen, target = ev["at_threshold"], ev["who_target"]
    name, value = _best_metric(best)
    epoch = f" (epoch {best['epoch']})" if best.get("epoch") is not None else ""
    rows = [
        ("Best trial", f"{best.get('trial_id', 'n/a')}{epoch}"),
        ("Parameters", _params_text(best.get("params") or {})),
        (f"Best {name}", _fmt(value, 4)),
        ("Test AUROC [95% CI]", _fmt_estimate(ev["auroc"])),
        ("Threshold", f"{ev['threshold']:.4f} (validation, target sensitivity "
                      f"{ev['threshold_selection']['target_sensitivity']:.2f})"),
        ("Sensitivity [95% CI]", _fmt_estimate(chosen["sensitivity"])),
        ("Specificity [95% CI]", _fmt_estimate(chosen["specificity"])),
        ("Accuracy [95% CI]", _fmt_estimate(chosen["accuracy"])),
        ("WHO target met", f"{_fmt(ev['meets_who_target'])} (sensitivity >= {target['sensitivity']:.2f} "
                           f"and specificity >= {target['specificity']:.2f})"),
    ]
    for name, ext in (report.get("external") or {}).items():
        rows.append((f"External {name}", f"AUROC {ext['auroc']:.3f}, sensitivity {_fmt(ext['sensitivity'])}, "
                                         f"specificity {_fmt(ext['specificity'])} (n={ext['n']}, {ext['n_tb']} TB)"))
    width = max(len(key) for key, _ in rows)
    lines = [f"{key:<{width}} : {text}" for key, text in rows]
    if report.get("demo"):
        lines.insert(0, DEMO_BANNER)
    return "\n".join(lines)
