"""The one evaluation of the best checkpoint on the held-out test split, at the end of a search.

The operating threshold is chosen on validation scores; the test split is scored once, here.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import ray

from tbray import outputs
from tbray.config import SearchConfig
from tbray.data import cache, dataset
from tbray.data.preprocess import Input
from tbray.errors import UserError
from tbray.external import sets
from tbray.model import export, modelfile, scoring
from tbray.report import plots, run_report
from tbray.runs import runfolder, trials
from tbray.search import study as studies
from tbray.stats import assess, metrics


def run(cfg: SearchConfig, prepared: runfolder.Prepared, arrays: dict, best: dict, plan, table: pd.DataFrame,
        history: pd.DataFrame, externals: list | None = None) -> dict:
    """Score val (threshold) and test (once), then each external set; save the best model and the report."""
    run_dir = runfolder.path(cfg)
    state = trials.load_best(best["checkpoint"], cfg)
    spec = Input.of_model(state)
    if spec not in arrays:
        raise UserError(f"best checkpoint uses image size {spec.size} ({spec.steps or 'no steps'}), which this run "
                        "never decoded")
    images = cache.load(arrays[spec])
    parts = {name: cache.subset(prepared.split, images, name) for name in ("val", "test")}
    # On GPUs, scored where a trial's worker would run (a GPU node, not the CPU head); on CPUs, here,
    # in the driver, which holds the images already and needs no scheduling.
    if plan.use_gpu:
        scores = ray.get(ray.remote(num_gpus=1, num_cpus=0)(scoring.score_parts).remote(state, parts))
    else:
        scores = scoring.score_parts(state, parts)
    try:
        evaluation = assess.test(parts["val"]["labels"], scores["val"], parts["test"]["labels"], scores["test"],
                                 target_sensitivity=cfg.target_sensitivity, seed=cfg.seed,
                                 rule=cfg.threshold_rule)
    except metrics.MetricsError as exc:
        raise UserError(str(exc))
    if warning := evaluation["threshold_selection"]["warning"]:
        print(f"tbray: WARNING {warning}")
    saved = save_model(run_dir / "best_model.pt", state, best, evaluation, provenance(cfg, prepared))
    export.beside(saved, run_dir, parts["test"]["images"])  # model.onnx, checked on test images against PyTorch
    outputs.spreadsheet_safe(pd.DataFrame({"path": prepared.split.loc[prepared.split["split"] == "test", "path"].to_numpy(),
                  "source": prepared.split.loc[prepared.split["split"] == "test", "source"].to_numpy(),
                  "label": parts["test"]["labels"], "score": scores["test"]})).to_csv(run_dir / "test_scores.csv", index=False)
    outside = score_externals(externals or [], saved, cfg, run_dir)
    curves = {"internal test": (parts["test"]["labels"], scores["test"], evaluation["threshold"]), **outside["curves"]}
    if outside["records"]:
        plots.roc_curves_png(curves, run_dir / "roc_external.png")
    study = studies.load(runfolder.study_path(cfg), cfg.name)
    test_sources = prepared.split.loc[prepared.split["split"] == "test", "source"].to_numpy()
    by_source = assess.by_source(parts["test"]["labels"], scores["test"], test_sources, evaluation["threshold"],
                                 seed=cfg.seed)
    print_by_source(by_source)
    return run_report.write(
        run_dir, evaluation=evaluation, val_labels=parts["val"]["labels"], val_scores=scores["val"],
        test_labels=parts["test"]["labels"], test_scores=scores["test"], trials=table, history=history,
        study=study, best=best, config=cfg.to_json(), data_summary=prepared.summary(), external=outside["records"],
        sources={"names": prepared.names, "selection": cfg.selection or "pooled", "test": by_source,
                 "chosen": best.get("selection")},
    )


def print_by_source(by_source: dict) -> None:
    """One console line per source (several sources only): its test AUROC, sensitivity and specificity."""
    if len(by_source) < 2:
        return
    for name, r in by_source.items():
        if "error" in r:
            print(f"tbray: test {name}: {r['error']}")
            continue
        show = {k: f"{r[k]['value']:.3f} [{r[k]['ci_low']:.3f}, {r[k]['ci_high']:.3f}]" if r[k]["value"] is not None
                else "n/a" for k in ("auroc", "sensitivity", "specificity")}
        print(f"tbray: test {name} ({r['n']} images, {r['n_tb']} TB): AUROC {show['auroc']}, sensitivity "
              f"{show['sensitivity']}, specificity {show['specificity']}")


def score_externals(externals: list, saved: dict, cfg: SearchConfig, run_dir: Path) -> dict:
    """Each external set scored once at the saved threshold: records for the report, curves for the plot."""
    records, curves, tables = {}, {}, []
    for ext in externals:
        print(f"tbray: scoring external set {ext.name!r} ({len(ext.files)} images)")
        records[ext.name], scored = sets.evaluate(ext, saved, cfg.target_sensitivity, runfolder.cache_dir(cfg),
                                                      seed=cfg.seed)
        curves[ext.name] = (scored["label"].to_numpy(), scored["score"].to_numpy(), saved["threshold"])
        tables.append(scored)
    if tables:
        outputs.spreadsheet_safe(pd.concat(tables, ignore_index=True)).to_csv(run_dir / "external_scores.csv", index=False)
    return {"records": records, "curves": curves}


def threshold_source(evaluation: dict) -> dict:
    """Where a model's threshold came from, carried in the model file and printed by predict."""
    sel = evaluation["threshold_selection"]
    keys = ("method", "target_sensitivity", "n", "n_tb", "sensitivity", "sensitivity_ci", "specificity",
            "specificity_ci")
    return {"kind": "validation split", **{k: sel[k] for k in keys}}


def provenance(cfg: SearchConfig, prepared: runfolder.Prepared) -> dict:
    """What the model learnt from, carried in its file (and ONNX metadata): synthetic or not, and per source
    its folder, image count and one sha256 over its split.csv rows (path, label, split, file sha256)."""
    out = {"synthetic": bool(cfg.demo), "sources": {}}
    for name, root in prepared.roots.items():
        rows = prepared.split[prepared.split["source"] == name]
        out["sources"][name] = {"folder": str(root), "images": int(len(rows)), "split_sha256": dataset.split_hash(rows)}
    return out


def save_model(path: Path, state: dict, best: dict, evaluation: dict, origin: dict | None = None) -> dict:
    """The best model as one loadable file, with the threshold every later prediction must use."""
    payload = {k: state[k] for k in ("model", "model_name", "image_size", "mean", "std", "params")}
    spec = Input.of_model(state)  # the steps before the network, which every later scoring repeats
    payload |= {"preprocess": spec.preprocess, "crop": spec.crop}
    payload |= {"threshold": float(evaluation["threshold"]), "threshold_source": threshold_source(evaluation),
                "trial_id": best["trial_id"], "epoch": best["epoch"],
                "run_folder": str(Path(path).parent.resolve())}  # its split.csv: which images the model has seen
    if origin is not None:
        payload["provenance"] = origin
    modelfile.save_atomic(payload, path)
    return payload
