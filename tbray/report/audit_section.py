"""report.md's "What the model looks at" section: the shortcut audit and Grad-CAM, from report.json."""

from __future__ import annotations


def _ci(record: dict, control: str) -> str:
    low, high = record[f"{control}_ci"]
    return f"{record[f'{control}_auroc']:.3f} [{low:.3f}, {high:.3f}]"


def _audit(audit: dict, full_ci: list | None) -> list[str]:
    full = f"{audit['full_auroc']:.3f}" + (f" [{full_ci[0]:.3f}, {full_ci[1]:.3f}]" if full_ci else "")
    mask = audit["lung_mask"]
    return [
        "### Shortcut audit", "",
        "The best configuration retrained, same hyperparameters, split and seed, on two controls; each scored on "
        f"the test split masked the same way (the masked area painted gray {mask['fill']}; lung fields from an "
        f"{mask['method']}, {mask['area_share']:.0%} of the image; see `lung_mask_examples.png`).", "",
        "| images | test AUROC [95% CI] |", "|---|---|",
        f"| full | {full} |",
        f"| outside the lungs (lung fields removed) | {_ci(audit, 'outside_lungs')} |",
        f"| lungs only (everything else removed) | {_ci(audit, 'lungs_only')} |", "",
        f"**Verdict:** {audit['verdict']}", "",
        f"Thresholds on the outside-lungs AUROC: strong cues at >= {audit['thresholds']['strong']:.2f}, some at "
        f">= {audit['thresholds']['some']:.2f} (docs/method.md, \"The shortcut audit\"). The two trainings took "
        f"{audit['time_s']:.0f} s, scoring included.", "",
        "![Lung fields used by the audit](lung_mask_examples.png)", "",
    ]


def _saliency(sal: dict) -> list[str]:
    rows = []
    for name, label in (("normal", "Normal"), ("tb", "Tuberculosis")):
        c = sal["lung_share"][name]
        if c["median"] is None:
            rows.append(f"| {label} | {c['n']} | n/a | n/a | n/a | {c['empty_maps']} |")
        else:
            rows.append(f"| {label} | {c['n']} | {c['median']:.2f} | {c['q1']:.2f} - {c['q3']:.2f} | "
                        f"{c['below_half']} | {c['empty_maps']} |")
    lines = [
        "### Grad-CAM", "",
        f"{sal['method']}. Share of each test image's map on the lung fields (a map spread evenly would put "
        f"{sal['uniform_share']:.2f} there; per image in `cam_lung_share.csv`):", "",
        "| class | images | median share | quartiles | images under 0.5 | empty maps |", "|---|---|---|---|---|---|",
        *rows, "",
    ]
    if sal["mostly_outside"]:
        lines += ["> **Most of the Grad-CAM mass lies outside the lung fields** for at least one class: the model "
                  "weighs evidence where TB is not.", ""]
    for file, n in sal["grids"].items():
        title = file.removeprefix("cam_").removesuffix(".png").replace("_", " ")
        lines += [f"![Grad-CAM, {title}]({file})", ""] if n else [f"No {title} on the test split.", ""]
    return lines


def section(report: dict) -> list[str]:
    """The section, or nothing when the run was not audited."""
    audit, sal = report.get("shortcut_audit"), report.get("saliency")
    if not audit and not sal:
        return []
    auroc = report.get("evaluation", {}).get("auroc") or {}
    full_ci = [auroc["ci_low"], auroc["ci_high"]] if auroc.get("ci_low") is not None else None
    lines = ["## What the model looks at", ""]
    if audit:
        lines += _audit(audit, full_ci)
    if sal:
        lines += _saliency(sal)
    return lines
