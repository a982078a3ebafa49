"""report.md's opening section: which sources the model trained on, and how it did where it had not trained.

From report.json's "sources" record (tbray.search.final): the selection rule, each source's test figures
with 95% intervals, the left-out figures that chose the configuration (leave-source-out), and the
external sets, which no trial ever saw.
"""

from __future__ import annotations

RULES = {
    "pooled": "validation images of every source together ranked the configurations",
    "worst-source": "each configuration was ranked by its worst source's validation figure",
    "leave-source-out": ("each configuration was trained with one source left out, in turn, and ranked by the "
                         "mean of the left-out sources' validation figures; the chosen one was then trained on "
                         "every source, and that model is the one tested here"),
}


def _ci(estimate: dict | None) -> str:
    if not estimate or estimate.get("value") is None:
        return "n/a"
    low, high = estimate.get("ci_low"), estimate.get("ci_high")
    return f"{estimate['value']:.3f} [{low:.3f}, {high:.3f}]" if low is not None else f"{estimate['value']:.3f}"


def _test_rows(test: dict) -> list[str]:
    rows = ["| source | test images | TB | AUROC [95% CI] | sensitivity [95% CI] | specificity [95% CI] |",
            "| --- | ---: | ---: | --- | --- | --- |"]
    for name, r in test.items():
        if "error" in r:
            rows.append(f"| {name} | {r['n']} | {r['n_tb']} | {r['error']} | | |")
        else:
            rows.append(f"| {name} | {r['n']} | {r['n_tb']} | {_ci(r['auroc'])} | {_ci(r.get('sensitivity'))} | "
                        f"{_ci(r.get('specificity'))} |")
    return rows


def _left_out_rows(chosen: dict) -> list[str]:
    figures = {}
    for key, value in chosen["left_out"].items():
        figure, _, source = key.partition("/")
        figures.setdefault(source, {})[figure] = value
    rows = ["| source left out | validation AUROC | validation loss | sensitivity at 0.5 | specificity at 0.5 |",
            "| --- | ---: | ---: | ---: | ---: |"]
    for source, f in figures.items():
        rows.append(f"| {source} | {f.get('val_auroc', float('nan')):.3f} | {f.get('val_loss', float('nan')):.3f} | "
                    f"{f.get('val_sensitivity', float('nan')):.3f} | {f.get('val_specificity', float('nan')):.3f} |")
    return rows


def section(report: dict) -> list[str]:
    record = report.get("sources")
    if not record:
        return []
    names = record["names"]
    lines = ["## Where the model trained, and how it did elsewhere", ""]
    lines.append(f"Trained on {len(names)} source{'s' if len(names) > 1 else ''}: {', '.join(names)}. "
                 f"Selection: {record['selection']}: {RULES.get(record['selection'], '')}.")
    chosen = record.get("chosen")
    if chosen:
        lines += ["", f"How the chosen configuration ({chosen['chosen_trial_id']}, epoch {chosen['chosen_epoch']}) "
                  f"did on each source while it was left out of training (mean {chosen['objective']} "
                  f"{chosen['value']:.4f}): these are the figures on sources it had not trained on.", "",
                  *_left_out_rows(chosen)]
    external = report.get("external") or {}
    if external:
        shown = "; ".join(f"{name} AUROC {e['auroc']:.3f} [{e['auroc_ci'][0]:.3f}, {e['auroc_ci'][1]:.3f}] "
                          f"({e['n']} images)" for name, e in external.items())
        lines += ["", f"Never trained on (external sets, section below): {shown}."]
    elif not chosen:
        lines += ["", "Every figure below comes from images of the sources it trained on; nothing here measures "
                  "a hospital it has not seen. Add --external sets, or search over several sources with "
                  "--selection leave-source-out."]
    lines += ["", "Test split by source (threshold chosen on validation):", "", *_test_rows(record["test"]), ""]
    return lines
