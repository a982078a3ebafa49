"""report.md's opening section: how far the model's figures travel.

One table, one row per place the model was measured: the internal test (all sources, then each source),
every external set (never trained on), and with leave-source-out each source while it was left out of
training. Each row has AUROC with its interval, sensitivity and specificity at the threshold, average
precision beside its chance level (the prevalence), and a verdict in words, so a reader meets "below
chance" before any internal figure. From report.json: "evaluation", "external" and "sources".
"""

from __future__ import annotations

RULES = {
    "pooled": "validation images of every source together ranked the configurations",
    "worst-source": "each configuration was ranked by its worst source's validation figure",
    "leave-source-out": ("each configuration was trained with one source left out, in turn, and ranked by the "
                         "mean of the left-out sources' validation figures; the chosen one was then trained on "
                         "every source, and that model is the one tested here"),
}


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _ci(value, low, high) -> str:
    low, high = (None if v is None or v != v else v for v in (low, high))  # NaN: no interval
    if value is None:
        return "n/a"
    return f"{value:.3f} [{_num(low)}, {_num(high)}]" if low is not None else f"{value:.3f}"


def _est(estimate: dict | None) -> tuple:
    estimate = estimate or {}
    return estimate.get("value"), estimate.get("ci_low"), estimate.get("ci_high")


def verdict(auroc, low, high) -> str:
    """The AUROC in words, its interval taken into account."""
    low, high = (None if v is None or v != v else v for v in (low, high))  # NaN: no interval
    if auroc is None:
        return "no AUROC (one class only)"
    if high is not None and high < 0.5:
        return "**Below chance**: the model ranks these images the wrong way round"
    if low is not None and low <= 0.5:
        return "**Near chance**: its interval includes 0.5; the model does not rank these images"
    if low is None:
        return "one validation figure, no interval"
    if auroc < 0.75:
        return "ranks these images, but weakly"
    if auroc < 0.9:
        return "ranks these images fairly"
    return "ranks these images well"


def _row(where: str, n, n_tb, auroc: tuple, sens: tuple, spec: tuple, ap=None) -> str:
    prevalence = f" (chance {n_tb / n:.3f})" if n and ap is not None else ""
    return (f"| {where} | {n if n is not None else ''} | {n_tb if n_tb is not None else ''} | {_ci(*auroc)} | "
            f"{_ci(*sens)} | {_ci(*spec)} | {_num(ap) if ap is not None else ''}{prevalence} | {verdict(*auroc)} |")


def rows(report: dict) -> list[str]:
    """The table's rows: internal test, its sources, external sets, left-out sources."""
    ev, record = report["evaluation"], report.get("sources") or {}
    at = ev["at_threshold"]
    out = [_row("internal test" + (" (all sources)" if len(record.get("names", [])) > 1 else ""), ev["n_test"],
                ev["n_test_tb"], _est(ev["auroc"]), _est(at["sensitivity"]), _est(at["specificity"]),
                ev["average_precision"]["value"])]
    if len(record.get("test", {})) > 1:
        for name, r in record["test"].items():
            out.append(_row(f"internal test: {name}", r["n"], r["n_tb"], _est(r.get("auroc")),
                            _est(r.get("sensitivity")), _est(r.get("specificity"))))
    for name, e in (report.get("external") or {}).items():
        out.append(_row(f"external: {name} (never trained on)", e["n"], e["n_tb"],
                        (e["auroc"], *(e.get("auroc_ci") or (None, None))),
                        (e["sensitivity"], *(e.get("sensitivity_ci") or (None, None))),
                        (e["specificity"], *(e.get("specificity_ci") or (None, None))), e.get("average_precision")))
    for source, f in left_out(record.get("chosen")).items():
        n, n_tb = f.get("val_n"), f.get("val_n_tb")
        out.append(_row(f"left out: {source} (validation, while not trained on)", int(n) if n else None,
                        int(n_tb) if n_tb is not None else None,
                        (f.get("val_auroc"), f.get("val_auroc_ci_low"), f.get("val_auroc_ci_high")),
                        (f.get("val_sensitivity"), None, None), (f.get("val_specificity"), None, None)))
    return out


def left_out(chosen: dict | None) -> dict[str, dict]:
    """{source: {val_auroc: ..., ...}} from the chosen configuration's left-out figures."""
    figures = {}
    for key, value in ((chosen or {}).get("left_out") or {}).items():
        figure, _, source = key.partition("/")
        figures.setdefault(source, {})[figure] = value
    return figures


def section(report: dict) -> list[str]:
    record = report.get("sources") or {}
    names = record.get("names") or []
    lines = ["## How far the figures travel", ""]
    if names:
        lines.append(f"Trained on {len(names)} source{'s' if len(names) > 1 else ''}: {', '.join(names)}. "
                     f"Selection: {record['selection']}: {RULES.get(record['selection'], '')}.")
        lines.append("")
    lines += ["| measured on | images | TB | AUROC [95% CI] | sensitivity [95% CI] | specificity [95% CI] | AP | "
              "verdict |", "| --- | ---: | ---: | --- | --- | --- | --- | --- |", *rows(report), ""]
    chosen = record.get("chosen")
    if chosen:
        lines += [f"Left-out rows: configuration {chosen['chosen_trial_id']} at epoch {chosen['chosen_epoch']}, the "
                  f"one the search chose (mean {chosen['objective']} {chosen['value']:.4f}); sensitivity and "
                  "specificity there are at 0.5, as every epoch reports them.", ""]
    if not report.get("external") and not chosen:
        lines += ["Every row comes from images of the sources the model trained on: nothing here measures a "
                  "hospital it has not seen. Add --external sets, or search over several sources with "
                  "--selection leave-source-out.", ""]
    lines += ["AP: average precision, beside its chance level (the share of TB images). Intervals: stratified "
              "bootstrap for AUROC, Wilson for sensitivity and specificity.", ""]
    return lines
