"""The shortcut audit: does the model need the lungs? The best configuration retrained on two controls.

    outside_lungs   the lung fields painted over (tbray.data.lungs): what is left is the film's source, not TB
    lungs_only      everything outside the lung fields painted over

Each control is one Ray Tune trial running the search's own Ray Train trial (tbray.train.driver.trial) with the
best trial's hyperparameters, split, seed, workers and GPUs; both run at once when the cluster holds two.
Each control's best checkpoint (by the search metric on its own masked validation split) is scored once
on the masked test split. The verdict compares the test AUROCs; its thresholds are justified in docs/method.md.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import ray
from ray import tune

from tbray.config import SearchConfig
from tbray.data import cache, lungs
from tbray.model import scoring
from tbray.runs import trials
from tbray.stats import assess
from tbray.train import trainable as trainables
from tbray.train.driver import control_trial
from tbray.train.settings import TrainSettings, TrialParams

STRONG = 0.80  # outside-lungs AUROC at or above: strong non-disease cues (docs/method.md: "The shortcut audit")
SOME = 0.65  # at or above (below STRONG): some; TB signs outside the drawn lung fields explain less than this


@dataclass(frozen=True)
class AuditJob:
    """What the two control trainings need: the search's choices and its images at the best image size."""

    settings: TrainSettings  # as every trial of the search: model, workers, GPUs, seed, metric
    params: TrialParams  # the best trial's hyperparameters
    split: pd.DataFrame  # split.csv: path, label, split (rows in the order of `images`)
    images: np.ndarray  # uint8 [N, S, S] at params.image_size, every image of the split
    weights: dict | None  # the backbone state the search started from (None: random initialisation)
    storage: str  # the run's storage root; the audit writes under <storage>/audit
    max_concurrent: int  # trials the cluster holds at once (tbray.rayops.cluster.Plan)


def control_parts(job: AuditJob) -> dict[str, dict]:
    """{control: {"train", "val", "test"}}: each split's images with that control's paint applied."""
    fill = lungs.fill_value(job.settings.mean)
    out = {}
    for control in lungs.CONTROLS:
        painted = lungs.apply(job.images, control, fill)
        out[control] = {part: cache.subset(job.split, painted, part) for part in ("train", "val", "test")}
    return out


def fit(job: AuditJob, cfg: SearchConfig, parts: dict[str, dict]) -> dict[str, dict]:
    """Both controls trained through Tune -> Ray Train; {control: the best epoch's record, as trials.best}."""
    audit_root = f"{job.storage}/audit"
    if "://" not in audit_root and Path(audit_root).exists():
        shutil.rmtree(audit_root)  # an earlier audit of this run: its trials would mix with these
    size = job.params.image_size
    refs = {"data": {c: {job.params.input: ray.put({p: parts[c][p] for p in ("train", "val")})} for c in lungs.CONTROLS},
            "weights": ray.put(job.weights) if job.weights is not None else None}
    trainable = trainables.build(control_trial, settings=job.settings, refs=refs, storage=f"{audit_root}/train",
                                 metric=cfg.metric, mode=cfg.mode, max_failures=cfg.max_failures)
    params = {"epochs": job.params.epochs, "batch_size": job.params.batch_size, "image_size": size,
              "lr": job.params.lr, "weight_decay": job.params.weight_decay, "preprocess": job.params.preprocess,
              "crop": job.params.crop}
    tuner = tune.Tuner(trainable, param_space={**params, "control": tune.grid_search(list(lungs.CONTROLS))},
                       tune_config=tune.TuneConfig(max_concurrent_trials=min(2, job.max_concurrent)),
                       run_config=tune.RunConfig(name="tune", storage_path=audit_root, verbose=0))
    grid = tuner.fit()
    table, history = trials.collect(grid, cfg)
    out = {}
    for result, row in zip(grid, table.itertuples()):
        control = result.config["control"]
        best = trials.best(table[table["trial_id"] == row.trial_id], history[history["trial_id"] == row.trial_id], cfg)
        if best is None:
            raise RuntimeError(f"the {control} control trained no checkpoint: {row.error}")
        out[control] = best
    return out


def score(cfg: SearchConfig, best: dict, test: dict, use_gpu: bool) -> np.ndarray:
    """P(TB) of a control's masked test images with its best checkpoint (on a GPU when the trials had one)."""
    state = trials.load_best(best["checkpoint"], cfg)
    parts = {"test": test}
    if use_gpu:
        return ray.get(ray.remote(num_gpus=1, num_cpus=0)(scoring.score_parts).remote(state, parts))["test"]
    return scoring.score_parts(state, parts)["test"]


def verdict(full: float, outside: dict, inside: dict) -> str:
    """The audit in words, with its numbers; thresholds STRONG and SOME on the outside-lungs AUROC."""
    text = _level(full, outside, inside)
    if outside["value"] >= SOME and outside["ci_low"] <= 0.5:
        text += " Its interval still includes chance (0.5): too few test images to be sure."
    return text


def _level(full: float, outside: dict, inside: dict) -> str:
    """The verdict's main sentence."""
    o = f"{outside['value']:.3f} [{outside['ci_low']:.3f}, {outside['ci_high']:.3f}]"
    numbers = (f"(full images {full:.3f}, lungs only {inside['value']:.3f} [{inside['ci_low']:.3f}, "
               f"{inside['ci_high']:.3f}])")
    if outside["value"] >= STRONG:
        return (f"A model that never sees the lungs reaches test AUROC {o} {numbers}: these images carry strong "
                f"non-disease cues (outside-lungs AUROC >= {STRONG:.2f}), so the full-image figures do not show "
                f"that the model learned TB.")
    if outside["value"] >= SOME:
        return (f"A model that never sees the lungs reaches test AUROC {o} {numbers}: these images carry some "
                f"non-disease cues ({SOME:.2f} <= outside-lungs AUROC < {STRONG:.2f}); part of the full-image "
                f"figures may come from the image source rather than the disease.")
    return (f"A model that never sees the lungs reaches only test AUROC {o} {numbers}: little of the "
            f"performance comes from outside the lung fields (outside-lungs AUROC < {SOME:.2f}).")


def run(job: AuditJob, cfg: SearchConfig, full_auroc: float, use_gpu: bool) -> dict:
    """Train and score both controls; the report's "shortcut_audit" record."""
    started = time.time()
    parts = control_parts(job)
    bests = fit(job, cfg, parts)
    record = {"full_auroc": float(full_auroc)}
    estimates = {}
    for control in lungs.CONTROLS:
        test = parts[control]["test"]
        scores = score(cfg, bests[control], test, use_gpu)
        auroc = assess.ranking(test["labels"], scores, cfg.seed, f"{control} test")["auroc"]
        estimates[control] = auroc
        record[f"{control}_auroc"] = auroc["value"]
        record[f"{control}_ci"] = [auroc["ci_low"], auroc["ci_high"]]
        record[f"{control}_trial"] = {k: bests[control][k] for k in ("trial_id", "epoch", "metric", "value")}
    record["verdict"] = verdict(full_auroc, estimates["outside_lungs"], estimates["lungs_only"])
    record |= {"thresholds": {"strong": STRONG, "some": SOME}, "params": dict(vars(job.params)),
               "lung_mask": {"method": "anatomical prior (tbray.data.lungs)", "area_share": float(lungs.mask(
                   job.params.image_size).mean()), "fill": lungs.fill_value(job.settings.mean)},
               "time_s": round(time.time() - started, 1)}  # both trainings and scorings
    return record
