"""Auditing a finished search: the lung-mask check figure, the shortcut audit, Grad-CAM, the report updated.

Called at the end of `tune/search.py --shortcut-audit`, and by `tune/audit.py results/<name>` on a run
folder whose search has finished (its search.json, split.csv, best_model.pt and report.json).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd

from tbray.audit import controls
from tbray.config import SearchConfig
from tbray.data import cache, dataset, lungs, sources
from tbray.data.preprocess import Input
from tbray.errors import UserError
from tbray.model import factory as tbmodel
from tbray.model import modelfile, saliency
from tbray.rayops import cluster
from tbray.report import grids, run_report
from tbray.runs import runfolder
from tbray.train import trainable as trainables
from tbray.train.settings import TrainSettings, TrialParams


def run(cfg: SearchConfig, settings: TrainSettings, plan: cluster.Plan, split: pd.DataFrame, images: np.ndarray,
        weights: dict | None) -> dict:
    """Every audit output into the run folder; returns the updated report."""
    run_dir = runfolder.path(cfg)
    # Each control is one model on pooled validation, whatever rule chose the configuration (the controls
    # carry no source per image, and retrain the one chosen configuration only).
    cfg, settings = dataclasses.replace(cfg, selection="pooled"), dataclasses.replace(settings, selection="pooled")
    saved = modelfile.load_model_file(run_dir / "best_model.pt")
    current = json.loads((run_dir / "report.json").read_text())
    test = cache.subset(split, images, "test")
    grids.lung_examples_png(test["images"], test["labels"], run_dir / "lung_mask_examples.png")
    params = TrialParams(image_size=saved["image_size"], preprocess=saved.get("preprocess", "none"),
                         crop=saved.get("crop", "none"), **saved["params"])
    job = controls.AuditJob(settings=settings, params=params, split=split, images=images, weights=weights,
                         storage=runfolder.storage_root(cfg), max_concurrent=plan.max_concurrent)
    print(f"tbray: shortcut audit: training the best configuration on {' and '.join(lungs.CONTROLS)} images")
    current["shortcut_audit"] = controls.run(job, cfg, current["evaluation"]["auroc"]["value"], plan.use_gpu)
    scores = pd.read_csv(run_dir / "test_scores.csv")  # in split order, as evaluate wrote it
    current["saliency"] = saliency.report(saved, test["images"], test["labels"], scores["score"].to_numpy(),
                                          scores["path"].tolist(), run_dir)
    print(f"tbray: shortcut audit: {current['shortcut_audit']['verdict']}")
    if current["saliency"]["mostly_outside"]:
        print("tbray: Grad-CAM: most of the map's mass lies outside the lung fields for at least one class (report.md)")
    return run_report.publish(run_dir, current)


def readable_inputs(run_dir: Path, n_test: int) -> None:
    """The search's files that the audit reads only at its end, checked at its start: report.json (the
    test AUROC the controls are set against) and test_scores.csv (one score per test image)."""
    report_file = run_dir / "report.json"
    try:
        float(json.loads(report_file.read_text())["evaluation"]["auroc"]["value"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{report_file}: not the report.json a search writes ({type(exc).__name__}: {exc})") from None
    scores = dataset.read_table(run_dir / "test_scores.csv", ["path", "score"], "test score table")
    if len(scores) != n_test:
        raise UserError(f"{run_dir / 'test_scores.csv'}: {len(scores)} score row(s) for the {n_test} test images of "
                        "split.csv")


def for_folder(run_dir: Path, address: str | None = None) -> dict:
    """`tune/audit.py`: audit a run folder whose search has finished."""

    run_dir = Path(run_dir)
    for name in ("search.json", "split.csv", "best_model.pt", "report.json", "test_scores.csv"):
        if not (run_dir / name).is_file():
            raise UserError(f"{run_dir / name}: not found; audit a run folder whose search has finished")
    cfg = runfolder.load_config(run_dir)
    cfg.results, cfg.name, cfg.address = run_dir.parent, run_dir.name, address or cfg.address
    split = dataset.read_table(run_dir / "split.csv", dataset.SPLIT_COLUMNS, "split file")
    readable_inputs(run_dir, int((split["split"] == "test").sum()))  # before Ray starts and anything trains
    roots = {name: dataset.find_root(folder) for name, folder in runfolder.data_roots(cfg).items()}
    if "source" not in split:  # written before several sources: its one source
        split["source"] = next(iter(roots))
    spec = Input.of_model(modelfile.load_model_file(run_dir / "best_model.pt"))
    images = cache.load(cache.build(sources.files_of(split, roots), split, [spec], runfolder.cache_dir(cfg))[spec])
    weights, _ = tbmodel.pretrained_state(cfg.model, cfg.weights, cfg.pretrained)
    plan = cluster.plan(cfg, cluster.connect(cfg))
    runfolder.lock(run_dir)
    return run(cfg, trainables.train_settings(cfg, plan), plan, split, np.asarray(images), weights)
