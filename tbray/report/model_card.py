"""model_card.md: the sections of Mitchell et al. 2019, "Model Cards for Model Reporting", from report.json.

Every figure comes from the report; nothing here is typed by hand for a particular run, so the card
can't drift from the numbers it summarises.
"""

from __future__ import annotations

from tbray.report import confound_section
from tbray.report.page import escape

SECTIONS = ("Model details", "Intended use", "Training data", "Metrics", "Operating threshold", "Caveats")


def _estimate(record: dict) -> str:
    if record.get("value") is None:
        return "n/a"
    return f"{record['value']:.3f} [{record['ci_low']:.3f}, {record['ci_high']:.3f}]"


def _details(report: dict) -> list[str]:
    config, best = report["config"], report["best"]
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(best["params"].items()))
    return [f"- Architecture: timm `{config['model']}`, one grayscale input channel, one logit (P(TB) by sigmoid).",
            f"- Pretrained start: {'ImageNet weights' if config.get('pretrained', True) else 'random initialisation'}.",
            f"- Chosen by a Ray Tune + Optuna (TPE) + ASHA search of {report['search']['n_trials']} trials on "
            f"{config['metric']} ({config['mode']}); best trial {best['trial_id']}, epoch {best['epoch']}: {params}.",
            "- Output: P(TB) for a frontal chest X-ray; an image is called TB when P(TB) >= the operating threshold."]


def _intended_use() -> list[str]:
    return ["- Intended: research on computer-aided TB triage, and as a starting point that a programme "
            "validates and calibrates on its own images (`tune/evaluate.py`, `tune/calibrate.py`).",
            "- Not fit for: diagnosis; use on patients without local validation; children, lateral films or "
            "other diseases; any use as the sole reader. It has not been validated prospectively."]


def _data(report: dict) -> list[str]:
    data = report["data_summary"]
    counts = ", ".join(f"{k} {v}" for k, v in sorted(data["counts"].items()))
    lines = [f"- Data: {escape(data['data_root'])} ({counts}); {data['skipped']} file(s) skipped as unusable.",
             "- Split 70/20/10 (train/test/validation), stratified, with exact and near duplicates kept in one split.",
             "- Known biases: in the public TB Chest X-ray Database the Normal and TB images come largely from "
             "different hospitals and countries, so source cues (processing, tint, markers) separate the classes "
             "without any disease being seen.", *confound_section.card_line(data)]
    if report.get("demo"):
        lines.append("- **Synthetic demo data: not medical.** No figure on this card says anything about TB.")
    return lines


def _metrics(report: dict) -> list[str]:
    ev = report["evaluation"]
    point = ev["at_threshold"]
    lines = [f"- Internal test ({ev['n_test']} images, {ev['n_test_tb']} TB), 95% intervals: AUROC "
             f"{_estimate(ev['auroc'])}; sensitivity {_estimate(point['sensitivity'])}; specificity "
             f"{_estimate(point['specificity'])}."]
    for name, ext in (report.get("external") or {}).items():
        lines.append(f"- External set {name} ({ext['n']} images, {ext['n_tb']} TB): AUROC {ext['auroc']:.3f} "
                     f"[{ext['auroc_ci'][0]:.3f}, {ext['auroc_ci'][1]:.3f}]; at the operating threshold sensitivity "
                     f"{ext['sensitivity']:.3f}, specificity {ext['specificity']:.3f}.")
    if not report.get("external"):
        lines.append("- No external set was scored: how far these figures travel to another site is unknown.")
    if audit := report.get("shortcut_audit"):
        lines.append(f"- Shortcut audit: {audit['verdict']}")
    return lines


def _threshold(report: dict) -> list[str]:
    sel = report["threshold_selection"]
    return [f"- Threshold {report['threshold']:.4f}, chosen on the validation split ({sel['n']} images, "
            f"{sel['n_tb']} TB) for sensitivity >= {sel['target_sensitivity']:.2f}: {sel['method']}.",
            f"- There: sensitivity {sel['sensitivity']:.3f} [{sel['sensitivity_ci'][0]:.3f}, "
            f"{sel['sensitivity_ci'][1]:.3f}], specificity {sel['specificity']:.3f}."
            + (f" Warning: {sel['warning']}." if sel.get("warning") else ""),
            "- WHO asks programmes to set CAD thresholds on local data: recalibrate with `tune/calibrate.py`."]


def _caveats(report: dict) -> list[str]:
    return ["- Intervals cover sampling variation within each set, not the shift to another hospital, scanner "
            "or population.",
            "- Scores are not calibrated probabilities at another site; the Brier score and reliability diagram "
            "in report.md describe the internal test only.",
            "- Research data sets are not screening cohorts: published CAD evaluations on real cohorts report "
            "AUROC 0.77-0.91 (Qin et al. 2021)."]


def markdown(report: dict) -> str:
    """The whole card."""
    bodies = (_details(report), _intended_use(), _data(report), _metrics(report), _threshold(report),
              _caveats(report))
    lines = ["# Model card: TB vs Normal chest X-ray classifier", ""]
    for title, body in zip(SECTIONS, bodies):
        lines += [f"## {title}", "", *body, ""]
    return "\n".join(lines)
