"""Real chest X-rays (../shared/realcxr/): does what tbray prints hold where it matters?

One small real search (Lite0 with its bundled ImageNet weights, 96 px, CPU) is shared by every test
here: trained on `tbdb-dev`, with half of `second-source-dev` (another hospital and country) as an external set.
Skipped, with the reason, where the folder is absent; CI has it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from conftest import REPO, built_once

REAL = REPO.parent / "shared" / "realcxr"
pytestmark = pytest.mark.skipif(not (REAL / "tbdb-dev").is_dir() or not (REAL / "second-source-dev").is_dir(),
                                reason=f"real chest X-rays not found at {REAL} (tbdb-dev/, second-source-dev/)")
SEARCH = ["--model", "tf_efficientnet_lite0", "--image-sizes", "96", "--epochs", "3", "--batch-sizes", "32",
          "--num-samples", "2", "--grace-period", "2", "--gpus-per-trial", "0"]


def _half(folder: Path, out: Path, keep: int) -> Path:
    """Every other image of each class (sorted by name), as symbolic links: a site's two labelled batches."""
    for cls in ("Normal", "Tuberculosis"):
        (out / cls).mkdir(parents=True)
        for i, f in enumerate(sorted((folder / cls).iterdir())):
            if i % 2 == keep:
                os.symlink(f, out / cls / f.name)
    return out


@pytest.fixture(scope="session")
def real_run(run_cli, ray_address, tmp_path_factory) -> Path:
    """The default rule and metric, on real X-rays, with an external set: 2-4 minutes on 2 cores. (The
    shortcut audit is tested on a finished tiny run, tests/test_audit.py: here its round of two trainings
    added 66 s and checked nothing that test does not.)"""
    built_once(tmp_path_factory, "real_run")
    results = tmp_path_factory.mktemp("real")
    # Half of the other hospital's images: the other half is for the site calibration test below.
    second = _half(REAL / "second-source-dev", results / "second-b", 1)
    done = run_cli("--data", REAL / "tbdb-dev", "--external", f"second={second}",
                   "--results", results, "--name", "real", "--address", ray_address, *SEARCH,
                   timeout=2400)
    assert done.returncode == 0, done.stderr[-3000:]
    print(done.stdout[-3000:])
    return results / "real"


def _cli(script: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tune" / script), *map(str, args)], capture_output=True,
                          text=True, timeout=900)


def test_chosen_threshold_keeps_the_target_sensitivity_on_test(real_run):
    report = json.loads((real_run / "report.json").read_text())
    ev = report["evaluation"]
    assert ev["at_threshold"]["sensitivity"]["value"] >= 0.90, ev["at_threshold"]
    selection = ev["threshold_selection"]
    assert selection["sensitivity"] >= 0.90 and selection["sensitivity_ci"][0] <= selection["sensitivity"]
    assert selection["n_tb"] == int(pd.read_csv(real_run / "split.csv").query("split == 'val'")["label"].sum())


def test_optuna_learns_the_value_the_best_trial_choice_ranks_by(real_run):
    trials = pd.read_csv(real_run / "trials.csv", dtype={"trial_id": str})
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{real_run / 'optuna.db'}")
    told = sorted(t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE)
    assert told == pytest.approx(sorted(trials["best_val_loss"]), rel=1e-9)
    # val_loss does not saturate: every trial has its own value (val_auroc gave 1.0 to 5 of 6 trials here).
    assert trials["best_val_loss"].nunique() == len(trials)
    best = json.loads((real_run / "report.json").read_text())["best"]
    assert best["metric"] == "val_loss" and best["value"] == pytest.approx(trials["best_val_loss"].min())


def test_external_set_is_reported_with_intervals_and_a_local_threshold(real_run):
    report = json.loads((real_run / "report.json").read_text())
    ext = report["external"]["second"]
    half = list((real_run.parent / "second-b").rglob("*.*"))  # every other file of each class
    assert ext["n"] + ext["left_out_as_copies"] == len(half) == 1490 and ext["n_tb"] > 1000
    for key in ("auroc", "sensitivity", "specificity", "ppv", "npv", "average_precision"):
        low, high = ext[f"{key}_ci"]
        assert low <= ext[key] <= high, key
    assert 0 <= ext["brier"] <= 1
    local = ext["local_threshold"]
    assert local["sensitivity"] >= 0.90
    page = (real_run / "report.md").read_text()
    assert "## External validation" in page and "**second** (" in page and "Against the internal test" in page
    assert (real_run / "roc_external.png").stat().st_size > 10_000


def test_site_calibration_on_one_half_holds_on_the_other(real_run, tmp_path):
    site = REAL / "second-source-dev"
    first = _half(site, tmp_path / "a", 0)
    model, calibrated = real_run / "best_model.pt", tmp_path / "calibrated.pt"
    done = _cli("calibrate.py", model, first, "--target-sensitivity", "0.90", "--out", calibrated)
    assert done.returncode == 0, done.stderr[-2000:]
    record = torch.load(calibrated, weights_only=True)["calibration"]
    assert record["sensitivity"] >= 0.90 and record["site_data"] == str(first.resolve())

    # The other half, as the search scored it (the calibrated file changes the threshold, not the weights).
    other = pd.read_csv(real_run / "external_scores.csv")
    assert not set(other["path"]) & {f"{f.parent.name}/{f.name}" for f in first.rglob("*.*")}
    left_out = json.loads((real_run / "report.json").read_text())["external"]["second"]["left_out_as_copies"]
    assert record["n"] + len(other) + left_out == 2982  # the two halves are the whole site
    tb = other[other["label"] == 1]
    saved = torch.load(model, weights_only=True)["threshold"]
    before, after = (tb["score"] >= saved).mean(), (tb["score"] >= torch.load(calibrated, weights_only=True)["threshold"]).mean()
    print(f"other half: sensitivity {before:.3f} at the saved threshold, {after:.3f} at the calibrated one")
    # The threshold chosen on one half keeps most of its sensitivity on images it never saw.
    assert after >= 0.85
    assert after >= before or before >= 0.90


def test_the_confound_check_finds_tbdb_devs_acquisition_cues(real_run):
    # tbdb-dev's TB films are tinted and stored partly as L, its Normal films all RGB (shared README): a
    # model that sees only thumbnails, intensities and file facts tells them apart (measured 0.986 at 96 px).
    record = json.loads((real_run / "report.json").read_text())["data_summary"]["confound"]
    whole = record["tb_vs_normal"]["all"]
    assert record["confounded"] and whole["ci_low"] > 0.9 and whole["n"] == 796, whole
    assert record["storage_modes"]["Normal"] == {"RGB": 400}
    page = (real_run / "report.md").read_text()
    assert "**The classes can be told apart without looking at disease**" in page
