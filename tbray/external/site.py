"""After the search: a saved model meets a labelled set from a site, to be measured there or calibrated for it.

`evaluate` writes `external-<NAME>.json`, `.md` and `_scores.csv` beside the model, with the numbers an
external set gets in the search; a name evaluated there before is refused unless `replace` is given.
`calibrate` chooses a new operating threshold on the site's own images with the search's rule
(`tbray.stats.threshold`) and writes a new model file carrying it and a calibration record; the original file
is never changed. Both leave out copies of the search's own images, found through the
perceptual hashes in the run folder's split.csv.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import tempfile
from pathlib import Path

import pandas as pd

from tbray import outputs
from tbray.data import dataset
from tbray.errors import UserError
from tbray.external import sets
from tbray.model import modelfile
from tbray.report import external_section
from tbray.stats import metrics
from tbray.stats import threshold as thresholds


def search_split(model_file: Path, saved: dict) -> pd.DataFrame | None:
    """The split of the search that made the model, with image hashes: split.csv beside the model file,
    else in the run folder the model file names (a calibrated copy lives elsewhere), else None."""
    for folder in (Path(model_file).parent, Path(saved.get("run_folder") or Path(model_file).parent)):
        csv = folder / "split.csv"
        if csv.is_file():
            split = dataset.read_table(csv, [], "split file", str)
            if {"sha256", "phash", "split"} <= set(split.columns):
                if not (ok := split["phash"].str.fullmatch(r"[0-9a-f]{64}", na=False)).all():
                    raise UserError(f"{csv}: row {int((~ok).argmax()) + 2} has phash {split['phash'][~ok].iloc[0]!r}, "
                                    "not the 64 hex digits the search writes")
                return split
    return None


def load(name: str, folder: Path, model_file: Path, saved: dict, min_side: int = 64) -> sets.ExternalSet:
    """A site's labelled folder, checked as --data is, with the search's own images left out."""
    with dataset.named("site data"):
        found = dataset.discover(folder, min_side=min_side)
    internal = search_split(model_file, saved)
    if internal is None:
        print(f"tbray: WARNING no split.csv with image hashes beside {model_file}: copies of the images the model "
              "was trained on cannot be left out")
    return sets.without_copies(name, found, internal)


def scored(ext: sets.ExternalSet, saved: dict, target: float) -> tuple[dict, pd.DataFrame]:
    """The set scored once (decoded in a temporary cache that goes with the call)."""
    with tempfile.TemporaryDirectory(prefix="tbray-site-") as cache_dir:
        return sets.evaluate(ext, saved, target, Path(cache_dir))


def evaluate(model_file: Path, folder: Path, name: str, target: float | None = None,
             replace: bool = False, out_dir: Path | None = None) -> tuple[Path, Path]:
    """Score a labelled set that arrived after the search; write external-<NAME>.json, .md and _scores.csv into
    `out_dir` (default: beside the model) as one set with its manifest, and return the .json and .md paths."""
    folder_of_model = Path(model_file).parent
    out = outputs.output_folder(out_dir, "--out") if out_dir is not None else folder_of_model
    json_path, md_path = out / f"external-{name}.json", out / f"external-{name}.md"
    csv_path, manifest = out / f"external-{name}_scores.csv", out / f"external-{name}{outputs.MANIFEST}"
    out.mkdir(parents=True, exist_ok=True)
    # Held until the set is written: a second evaluation into this folder waits, then sees this one's files.
    with outputs.held(out, f"an evaluation ({json_path.name})"):
        _check_earlier(json_path, manifest, [csv_path.name, md_path.name, json_path.name], name, replace)
        saved = modelfile.load_model_file(model_file)
        if warning := modelfile.synthetic_warning(saved):
            print(warning)
        target = target or (saved.get("threshold_source") or {}).get("target_sensitivity",
                                                                       metrics.WHO_TARGET["sensitivity"])
        internal = internal_figures(folder_of_model / "report.json")  # checked before the scoring
        record, table = scored(load(name, folder, model_file, saved), saved, target)
        outputs.write_set({csv_path: outputs.spreadsheet_safe(table).to_csv(index=False),
                           md_path: external_section.page(name, record, internal, str(model_file)),
                           json_path: json.dumps({"name": name, "model": str(model_file), **record}, indent=2,
                                                 default=str)}, manifest)
    return json_path, md_path


def _check_earlier(json_path: Path, manifest: Path, names: list[str], name: str, replace: bool) -> None:
    """Refuse, before any scoring, to write over an earlier evaluation of this name, whole or cut off, unless
    `replace`: an earlier site's figures are never lost to a reused name."""
    if replace:
        return
    if problem := outputs.set_problem(manifest, names):
        raise UserError(f"{json_path}: the evaluation named {name!r} there is not whole: {problem}; pass --replace "
                        "to write it again, or --name to keep it")
    if json_path.exists():
        raise UserError(f"{json_path}: an evaluation named {name!r} is already there{_of(json_path)}; "
                        "pass --name to keep both, or --replace to write over it")


def _of(json_path: Path) -> str:
    """Which images the earlier evaluation scored, when its file says."""
    try:
        return f" (of {json.loads(json_path.read_text())['data_root']})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def internal_figures(report_file: Path) -> dict | None:
    """The search's own test figures from the report.json beside the model, if there is one."""
    if not report_file.is_file():
        return None
    try:
        return external_section.internal_summary(json.loads(report_file.read_text())["evaluation"])
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise UserError(f"{report_file}: not the report.json a search writes ({type(exc).__name__}: {exc}); "
                        "move it away to evaluate without the search's figures") from None


def data_hash(ext: sets.ExternalSet) -> str:
    """One sha256 for exactly the images and labels a calibration used."""
    rows = ext.files.sort_values("path")[["path", "label", "sha256"]].astype(str)
    return hashlib.sha256("\n".join(rows.agg(",".join, axis=1)).encode()).hexdigest()


def calibrate(model_file: Path, folder: Path, target: float, out: Path) -> dict:
    """A copy of the model with a threshold chosen on the site's own labelled images; returns the record."""
    outputs.output_file(out, "--out", [model_file])  # the original model is kept unchanged
    saved = modelfile.load_model_file(model_file)
    if warning := modelfile.synthetic_warning(saved):
        print(warning)
    ext = load(Path(folder).resolve().name, folder, model_file, saved)
    record, table = scored(ext, saved, target)
    try:
        chosen = thresholds.selection(table["label"], table["score"], target, split_name="site")
    except metrics.MetricsError as exc:
        raise UserError(f"{folder}: {exc}")
    calibration = {
        "site_data": str(Path(folder).resolve()), "site_data_sha256": data_hash(ext),
        "date": datetime.date.today().isoformat(), "n": chosen["n"], "n_tb": chosen["n_tb"],
        "left_out_as_copies": int(len(ext.overlap)), "previous_threshold": float(saved["threshold"]),
        **{k: chosen[k] for k in ("threshold", "method", "target_sensitivity", "sensitivity", "sensitivity_ci",
                                  "specificity", "specificity_ci", "warning")},
        "at_previous_threshold": {k: record[k] for k in ("sensitivity", "sensitivity_ci", "specificity",
                                                         "specificity_ci")},
    }
    modelfile.save_atomic({**saved, "threshold": float(chosen["threshold"]), "calibration": calibration}, out)
    return calibration


def calibration_text(cal: dict) -> str:
    """What a calibration did, for the console."""
    before = cal["at_previous_threshold"]
    lines = [
        f"site data        : {cal['site_data']} ({cal['n']} images, {cal['n_tb']} TB; sha256 {cal['site_data_sha256'][:16]}...)",
        f"threshold        : {cal['previous_threshold']:.4f} -> {cal['threshold']:.4f} (target sensitivity "
        f"{cal['target_sensitivity']:.2f})",
        f"at the old one   : sensitivity {_ci(before, 'sensitivity')}, specificity {_ci(before, 'specificity')}",
        f"at the new one   : sensitivity {_ci(cal, 'sensitivity')}, specificity {_ci(cal, 'specificity')} "
        "(chosen on these images: measure it on other local images before relying on it)",
    ]
    if cal.get("warning"):
        lines.append(f"WARNING          : {cal['warning']}")
    return "\n".join(lines)


def _ci(record: dict, key: str) -> str:
    low, high = record[f"{key}_ci"]
    return f"{record[key]:.3f} [{low:.3f}, {high:.3f}]"
