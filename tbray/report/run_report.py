"""The end-of-run report files: report.json, classification_report.txt, the plots, and report.md.

`write` takes the evaluation from `tbray.stats.assess.test` plus the search records, builds report.json
(`build`) and writes every file a reader needs into the run folder; the pages themselves (report.md and
the summary the CLI prints) are rendered from report.json by `tbray.report.page`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from sklearn.metrics import classification_report

from tbray import CLASS_NAMES
from tbray.outputs import write_atomic
from tbray.report import model_card, plots
from tbray.report.page import is_missing, markdown
from tbray.stats.metrics import epoch_metrics


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
    return None if is_missing(obj) else str(obj)



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


def searched(best: dict) -> tuple[str, str | None]:
    """(the search's objective, the trial it chose): leave-source-out's chosen configuration, not its refit."""
    chosen = best.get("selection") or {}
    return chosen.get("objective") or best.get("metric") or "val_loss", chosen.get("chosen_trial_id") or best.get("trial_id")


def _write_plots(run_dir: Path, evaluation: dict, test_labels, test_scores, history: pd.DataFrame,
                 study: optuna.Study | None, trials: pd.DataFrame, best: dict, mode: str) -> None:
    """Write every PNG of the report into run_dir."""
    threshold, cm = evaluation["threshold"], evaluation["confusion_matrix"]
    plots.roc_curve_png(test_labels, test_scores, threshold, run_dir / "roc.png")
    plots.pr_curve_png(test_labels, test_scores, threshold, run_dir / "pr.png")
    plots.confusion_matrix_png(cm, run_dir / "confusion_matrix.png", f"Test, chosen threshold {threshold:.3f}")
    plots.confusion_matrix_png(
        evaluation["confusion_matrix_0.5"], run_dir / "confusion_matrix_0.5.png", "Test, threshold 0.5")
    plots.reliability_png(evaluation["calibration"], run_dir / "reliability.png")
    objective, chosen = searched(best)
    plots.search_history_png(trials, objective, mode, chosen, run_dir / "optuna_history.png")
    plots.optuna_importance_png(study, run_dir / "optuna_importance.png")
    plots.metric_per_epoch_png(history, objective, chosen, run_dir / "metric_per_epoch.png")


def build(*, evaluation: dict, val_labels, val_scores, trials: pd.DataFrame, history: pd.DataFrame,
          best: dict, config: dict, data_summary: dict, external: dict | None = None,
          sources: dict | None = None) -> dict:
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
        "sources": sources,
    })


def write(run_dir: Path, *, evaluation: dict, val_labels, val_scores, test_labels, test_scores,
          trials: pd.DataFrame, history: pd.DataFrame, study: optuna.Study | None, best: dict,
          config: dict, data_summary: dict, external: dict | None = None, sources: dict | None = None) -> dict:
    """Write report.json, report.md, classification_report.txt and all plots; return the report."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_plots(run_dir, evaluation, test_labels, test_scores, history, study, trials, best,
                 config.get("mode", "min"))
    (run_dir / "classification_report.txt").write_text(
        classification_text(test_labels, test_scores, evaluation), encoding="utf-8")
    report = build(evaluation=evaluation, val_labels=val_labels, val_scores=val_scores, trials=trials,
                   history=history, best=best, config=config, data_summary=data_summary, external=external,
                   sources=sources)
    return publish(run_dir, report)


def publish(run_dir: Path, report: dict) -> dict:
    """report.md, model_card.md and report.json from one report dict (also after a later section is added)."""
    report = _json_safe(report)
    # report.md first, report.json last and atomically: a report.json means the run finished.
    write_atomic(run_dir / "report.md", markdown(report))
    write_atomic(run_dir / "model_card.md", model_card.markdown(report))
    # allow_nan=False: a NaN that slipped through must fail loudly, not write invalid JSON.
    write_atomic(run_dir / "report.json", json.dumps(report, indent=2, allow_nan=False))
    return report

