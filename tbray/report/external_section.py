"""The external-validation part of report.md, and the page `tune/evaluate.py` writes for a later set.

Each set gets a table and a paragraph in words that sets it against the internal test: a reader who
skips the table still learns how far the figures travelled and what a local threshold would give.
"""

from __future__ import annotations


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _with_ci(record: dict, key: str) -> str:
    low, high = record.get(f"{key}_ci") or (None, None)
    return f"{_num(record[key])} [{_num(low)}, {_num(high)}]"


def _change(name: str, before, after) -> str:
    """'sensitivity fell from 0.962 to 0.013' in words."""
    if before is None or after is None:
        return f"{name} {_num(after)}"
    verb = "rose" if after > before + 0.005 else "fell" if after < before - 0.005 else "held"
    return f"{name} {verb} from {_num(before)} to {_num(after)}" if verb != "held" else f"{name} held at {_num(after)}"


def internal_summary(evaluation: dict) -> dict:
    """The internal test in the flat form of an external record, for the comparison."""
    point = evaluation["at_threshold"]
    return {"auroc": evaluation["auroc"]["value"], "sensitivity": point["sensitivity"]["value"],
            "specificity": point["specificity"]["value"], "n": evaluation["n_test"], "n_tb": evaluation["n_test_tb"]}


def in_words(name: str, record: dict, internal: dict | None) -> str:
    """One paragraph: how the figures changed from the internal test, and what a local threshold gives."""
    local = record["local_threshold"]
    head = (f"**{name}** ({record['n']} images, {record['n_tb']} TB): AUROC {_with_ci(record, 'auroc')}; at the "
            f"model's threshold {record['threshold']:.4f}, sensitivity {_with_ci(record, 'sensitivity')} and "
            f"specificity {_with_ci(record, 'specificity')}.")
    if internal:
        head += (f" Against the internal test, {_change('AUROC', internal['auroc'], record['auroc'])}, "
                 f"{_change('sensitivity', internal['sensitivity'], record['sensitivity'])} and "
                 f"{_change('specificity', internal['specificity'], record['specificity'])}.")
    head += (f" TB images scored a median P(TB) of {record['median_score_tb']:.3f} here and Normal images "
             f"{record['median_score_normal']:.3f}.")
    tail = (f" A threshold chosen on this set's own images ({local['threshold']:.4f}, target sensitivity "
            f"{local['target_sensitivity']:.2f}) would give sensitivity {_num(local['sensitivity'])} and specificity "
            f"{_num(local['specificity'])}; it is chosen and measured on the same images, so this is what local "
            "calibration can recover at best, not a promise (`tune/calibrate.py` chooses one on local data).")
    return head + tail


def table(records: dict[str, dict], internal: dict | None) -> list[str]:
    """A markdown table: one row per set, the internal test first."""
    keys = ("auroc", "average_precision", "sensitivity", "specificity", "ppv", "npv")
    lines = ["| set | n | TB | AUROC | AP | sensitivity | specificity | PPV | NPV | Brier | chance AP, PPV |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    if internal:
        lines.append(f"| internal test | {internal['n']} | {internal['n_tb']} | {_num(internal['auroc'])} | | "
                     f"{_num(internal['sensitivity'])} | {_num(internal['specificity'])} | | | | "
                     f"{_num(internal['n_tb'] / internal['n'])} |")
    for name, r in records.items():
        cells = [_with_ci(r, key) for key in keys]
        lines.append(f"| {name} | {r['n']} | {r['n_tb']} | " + " | ".join(cells) + f" | {_num(r['brier'])} | "
                     f"{_num(r['n_tb'] / r['n'])} |")
    return lines


def section(records: dict[str, dict], internal: dict | None, plot: str | None = "roc_external.png") -> list[str]:
    """The 'External validation' section of report.md (empty when no external set was given)."""
    if not records:
        return []
    lines = ["## External validation", "",
             "Each set below was scored once by the best model at the operating threshold chosen on validation. "
             "No external image played any part in a choice; images that duplicate a training, validation or "
             "test image were left out. Intervals: Wilson for proportions, stratified bootstrap for AUROC and AP.",
             "", *table(records, internal), ""]
    for name, record in records.items():
        lines += [in_words(name, record, internal), ""]
        if record.get("left_out_as_copies"):
            lines += [f"{record['left_out_as_copies']} image(s) of {name} were left out as copies of the search's "
                      "own images (listed in report.json).", ""]
    if plot:
        lines += [f"![ROC curves: internal test and external sets]({plot})", ""]
    return lines


def page(name: str, record: dict, internal: dict | None, model_file: str) -> str:
    """external-<NAME>.md: one set evaluated after the search."""
    return "\n".join([f"# External evaluation: {name}", "", f"Model: `{model_file}`; data: `{record['data_root']}`.",
                      "", *table({name: record}, internal), "", in_words(name, record, internal), ""])
