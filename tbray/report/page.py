"""report.md and the console summary: the run's report.json as pages a person reads.

Formatting only: every number comes from report.json (built by `tbray.report.run_report.build`), so the page
and the JSON cannot disagree.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

from tbray import CLASS_NAMES
from tbray.config import THRESHOLD_RULES
from tbray.data.duplicates import NEAR_DUPLICATE_MAX_DISTANCE
from tbray.report import audit_section, confound_section, external_section, transfer_section

DEMO_BANNER = "SYNTHETIC DEMO DATA — NOT MEDICAL"
DUPLICATE_METHOD = (
    "exact duplicates share the sha256 of the file bytes; near duplicates have 256-bit perceptual "
    f"hashes within {NEAR_DUPLICATE_MAX_DISTANCE} bits; every pair of images in different splits is compared"
)
# file name -> caption, in the order they appear in the "Plots" section.
PLOTS = {
    "roc.png": "ROC curve on the test split",
    "pr.png": "Precision-recall curve on the test split",
    "optuna_history.png": "Search history: each trial's best value of the search metric, by Tune id",
    "optuna_importance.png": "Hyperparameter importance",
    "metric_per_epoch.png": "The search metric and the training loss per epoch, the chosen trial drawn thick",
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


def is_missing(value) -> bool:
    """Return True for None, NaN, NaT and pd.NA (and False for containers)."""
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def _fmt(value, digits: int = 3) -> str:
    """Format a number for the report; None and NaN become "n/a"."""
    if is_missing(value):
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


def escape(text: str) -> str:
    """Text from outside (file and folder names) as inert markdown: HTML escaped, and no character that
    would start a link, an image, code, emphasis or a table cell; one line."""
    text = html.escape(str(text), quote=False).replace("\n", " ").replace("\r", " ")
    for char in "\\`*[]|!":
        text = text.replace(char, "\\" + char)
    return text


def _cell(value) -> str:
    """Return value as one markdown table cell (escaped, one line, long text cut)."""
    text = escape(_fmt(value, digits=4))
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


def _threshold_line(ev: dict) -> str:
    """The threshold and what it gave on validation, where it was chosen: the interval against the target."""
    sel = ev["threshold_selection"]
    low, high = sel["sensitivity_ci"]
    whose = " for its 95% lower bound" if sel.get("rule") == "lower-bound" else ""
    return (f"{ev['threshold']:.4f} (validation sensitivity {_fmt(sel['sensitivity'])} [{_fmt(low)}, {_fmt(high)}]; "
            f"target {sel['target_sensitivity']:.2f}{whose})")


def _best_metric(best: dict) -> tuple[str, object]:
    """Return (name, value) of the validation metric that picked the best trial (tbray.runs.trials.best)."""
    return str(best["metric"]), best["value"]


def _params_text(params: dict) -> str:
    """Return params as "name=value, ..." in name order."""
    return ", ".join(f"{name}={params[name]:.4g}" if isinstance(params[name], float) else f"{name}={params[name]}"
                     for name in sorted(params)) or "n/a"


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
        f"(bootstrap: {ev['bootstrap']['n_resamples']} stratified resamples, seed {ev['bootstrap']['seed']}). "
        f"Chance level of average precision and PPV: {ev['n_test_tb'] / ev['n_test']:.3f}, the share of TB images "
        "(a model that ranks at random scores that).",
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
        f"whose sensitivity {THRESHOLD_RULES[sel.get('rule', 'point')]} ({sel['target_sensitivity']:.2f}) on the "
        f"**validation** split ({sel['n']} images, {sel['n_tb']} TB), the one with the best specificity (ties: the "
        f"higher sensitivity), placed in the middle of the score gap on the logit scale. On validation it gives "
        f"sensitivity {sens} and specificity {spec} (Wilson 95% intervals). The test split played no part in choosing it.", "",
        f"For comparison, the Youden threshold (maximum sensitivity + specificity - 1) on validation is "
        f"{sel['youden_threshold']:.4f}; it is not used.", "",
    ]
    if sel.get("warning"):
        lines += [f"> **WARNING:** {sel['warning']}.", ""]
    if one_class := one_class_threshold(sel):
        lines += [f"> **WARNING:** {one_class}", ""]
    return lines


def one_class_threshold(sel: dict) -> str | None:
    """In words, when the chosen threshold calls every validation image one class (it then triages nothing)."""
    if sel.get("specificity") == 0:
        return ("the threshold calls every validation image Tuberculosis (specificity 0): it reaches the target "
                "sensitivity only by sending everyone on, so it triages nothing; the model does not separate "
                "the classes well enough on validation for this target.")
    if sel.get("sensitivity") == 0:
        return "the threshold calls every validation image Normal (sensitivity 0): it finds no TB at all."
    return None


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
    """Return image counts per split and class ({"train_tb": n, ...}) and the other facts."""
    lines = ["## Data", "", markdown_table(["images", "count"], list(map(list, data["counts"].items()))), ""]
    if len(data.get("sources") or {}) > 1:
        rows = data["source_counts"]
        lines += ["Images per source, class and split:", "",
                  markdown_table(list(rows[0]), [list(r.values()) for r in rows]), ""]
        for pair in data.get("cross_source_duplicates") or []:
            lines.append(f"- {pair['pairs']} {pair['kind']} duplicate pair(s) between sources "
                         f"{escape(pair['sources'][0])} and {escape(pair['sources'][1])}, each kept within one split")
    for key, value in data.items():
        if key in ("counts", "duplicates", "confound", "source_counts", "cross_source_duplicates"):
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{name}={folder}" for name, folder in value.items())
        lines.append(f"- {key}: {len(value) if isinstance(value, list) else escape(_fmt(value))}")
    return lines + [""]


def _duplicates_section(data: dict) -> list[str]:
    """Return the cross-split duplicate (leakage) check, loudly if anything was found."""
    method = DUPLICATE_METHOD
    lines = ["## Cross-split duplicates (leakage check)", ""]
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
        transfer_section.section(report), _headline_section(ev), confound_section.section(report["data_summary"]), _threshold_section(ev),
        _who_section(ev),
        external_section.section(report.get("external") or {}, external_section.internal_summary(ev)),
        audit_section.section(report),
        _confusion_section(ev),
        _calibration_section(ev), _best_section(report["best"]), _search_section(report["search"]),
        _data_section(report["data_summary"]), _duplicates_section(report["data_summary"]),
        _plots_section(), _limits_section(report["demo"]),
    )
    for section in sections:
        lines += section
    return "\n".join(lines)


def _with_ci(record: dict, key: str) -> str:
    """'0.380 [0.357, 0.403]' from an external record's value and its _ci pair."""
    low, high = record.get(f"{key}_ci") or (None, None)
    return f"{_fmt(record[key])} [{_fmt(low)}, {_fmt(high)}]" if low is not None else _fmt(record[key])


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
        *([("Chosen by", f"{picked['objective']} {picked['value']:.4f} (trial {picked['chosen_trial_id']}, epoch "
                         f"{picked['chosen_epoch']}, sources left out in turn); then trained on every source")]
          if (picked := (report.get("sources") or {}).get("chosen")) else []),
        ("Test AUROC [95% CI]", _fmt_estimate(ev["auroc"])),
        ("Threshold", _threshold_line(ev)),
        ("Sensitivity [95% CI]", _fmt_estimate(chosen["sensitivity"])),
        ("Specificity [95% CI]", _fmt_estimate(chosen["specificity"])),
        ("Accuracy [95% CI]", _fmt_estimate(chosen["accuracy"])),
        ("WHO target met", f"{_fmt(ev['meets_who_target'])} (sensitivity >= {target['sensitivity']:.2f} "
                           f"and specificity >= {target['specificity']:.2f})"),
    ]
    for name, ext in (report.get("external") or {}).items():
        rows.append((f"External {name}", f"AUROC {_with_ci(ext, 'auroc')}, sensitivity {_with_ci(ext, 'sensitivity')}, "
                                         f"specificity {_with_ci(ext, 'specificity')} (n={ext['n']}, {ext['n_tb']} TB)"))
        low, high = ext.get("auroc_ci") or (None, None)
        rows.append(("", transfer_section.verdict(ext["auroc"], low, high).replace("**", "")))
    if one_class := one_class_threshold(ev["threshold_selection"]):
        rows.append(("Threshold warning", one_class))
    width = max(len(key) for key, _ in rows)
    lines = [f"{key:<{width}} : {text}" for key, text in rows]
    if report.get("demo"):
        lines.insert(0, DEMO_BANNER)
    return "\n".join(lines)
