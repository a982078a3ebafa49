"""report.md's confound-check section and the model card's line: what acquisition alone tells apart.

Every figure comes from report.json's data_summary.confound (tbray.data.confound.check).
"""

from __future__ import annotations


def _estimate(record: dict | None) -> str:
    if record is None:
        return "too few images to cross-validate"
    return f"{record['value']:.3f} [{record['ci_low']:.3f}, {record['ci_high']:.3f}]"


def _rows(record: dict) -> list[list[str]]:
    rows = []
    for name, estimate in record["tb_vs_normal"].items():
        what = "TB vs Normal, all images" if name == "all" else f"TB vs Normal within {name}"
        rows.append([what, _estimate(estimate), str(estimate["n"]) if estimate else "", str(estimate["n_positive"])
                     if estimate else ""])
    for name, estimate in record["source_vs_rest"].items():
        rows.append([f"{name} vs the other sources", _estimate(estimate), str(estimate["n"]) if estimate else "",
                     str(estimate["n_positive"]) if estimate else ""])
    return rows


def verdict(record: dict) -> str:
    """The check in words: confounded or not, and why it matters."""
    whole = record["tb_vs_normal"]["all"]
    if whole is None:
        return "Too few images of a class to cross-validate the check."
    if record["confounded"]:
        return (f"**The classes can be told apart without looking at disease** (AUROC {_estimate(whole)} >= "
                f"{record['threshold']:.2f} from thumbnails, intensities and file facts alone). A network can reach "
                "the headline figures by learning where and how the images were made; they say little about a "
                "hospital whose films look different. Judge the model on sources it never trained on.")
    return (f"Acquisition alone separates the classes at AUROC {_estimate(whole)}, below {record['threshold']:.2f}: "
            "no strong sign that image source stands in for disease here (a network can still find cues this "
            "small model misses).")


def section(data: dict) -> list[str]:
    record = data.get("confound")
    if not record:
        return []
    table = ["| what is told apart | AUROC [95% CI] | images | positives |", "| --- | --- | ---: | ---: |"]
    table += ["| " + " | ".join(row) + " |" for row in _rows(record)]
    modes = "; ".join(f"{cls}: " + ", ".join(f"{mode} {n}" for mode, n in counts.items())
                      for cls, counts in record["storage_modes"].items())
    return ["## What acquisition alone tells apart (confound check)", "", verdict(record), "", *table, "",
            f"Method: {record['method']}. Storage modes: {modes}. Measured before any trial; used for no choice.", ""]


def card_line(data: dict) -> list[str]:
    record = data.get("confound")
    if not record:
        return []
    return [f"- Confound check (before training): {verdict(record)}"]
