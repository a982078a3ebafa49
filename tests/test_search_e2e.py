"""The whole search through the real command line, on tiny synthetic data and a local Ray."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import torch

from conftest import REPO, TINY, run_cli

OUTPUTS = ["split.csv", "trials.csv", "report.json", "classification_report.txt", "confusion_matrix.png",
           "best_model.pt", "optuna.db", "skipped.csv", "report.md", "roc.png", "pr.png", "reliability.png",
           "optuna_history.png", "optuna_importance.png", "val_auroc_per_epoch.png"]


def test_search_end_to_end(ray_address, tiny_data, tmp_path):
    done = run_cli("--data", tiny_data, "--results", tmp_path, "--name", "e2e", "--num-samples", "2",
                   "--address", ray_address, *TINY)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "e2e"
    for name in OUTPUTS:
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name

    split = pd.read_csv(run / "split.csv")
    assert list(split.columns) == ["path", "label", "split", "sha256"]
    assert len(split) == 72 and set(split["split"]) == {"train", "val", "test"}

    trials = pd.read_csv(run / "trials.csv")
    assert len(trials) == 2
    assert set(trials["status"]) <= {"completed", "stopped_early"}
    assert trials["best_val_auroc"].between(0, 1).all()
    assert {"epochs", "batch_size", "image_size", "lr", "checkpoint_path"} <= set(trials.columns)

    report = json.loads((run / "report.json").read_text())
    test_rows = int((split["split"] == "test").sum())
    assert report["evaluation"]["n_test"] == test_rows
    assert 0 <= report["evaluation"]["test_auroc"] <= 1
    assert 0 < report["evaluation"]["threshold"] < 1
    text = (run / "classification_report.txt").read_text()
    assert "Normal" in text and "Tuberculosis" in text

    best = torch.load(run / "best_model.pt", weights_only=True)
    assert best["model_name"] == "test_efficientnet" and best["image_size"] == 32
    assert best["threshold"] == report["evaluation"]["threshold"]
    assert "Best trial" in done.stdout and "Test AUROC" in done.stdout

    # One page a person reads, with every section and plot.
    page = (run / "report.md").read_text()
    for heading in ("Headline test metrics", "Operating threshold", "WHO triage target", "Confusion matrices",
                    "Calibration", "Best configuration", "Search summary", "Cross-split duplicates",
                    "Limits of this data set"):
        assert heading in page, heading
    for plot in ("roc.png", "pr.png", "reliability.png", "optuna_history.png", "optuna_importance.png",
                 "val_auroc_per_epoch.png", "confusion_matrix.png"):
        assert f"({plot})" in page, plot

    # Later predictions use the saved model and its threshold, and reproduce the test scores.
    scores = pd.read_csv(run / "test_scores.csv")
    files = [str(tiny_data / p) for p in scores["path"]]
    out = subprocess.run([sys.executable, str(REPO / "tune" / "predict.py"), str(run / "best_model.pt"), *files,
                          "--out", str(tmp_path / "pred.csv")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    pred = pd.read_csv(tmp_path / "pred.csv")
    assert pred["path"].tolist() == files
    assert np.allclose(pred["p_tb"], scores["score"], atol=1e-5)
    called_tb = pred["p_tb"] >= best["threshold"]
    assert (pred["prediction"] == called_tb.map({True: "Tuberculosis", False: "Normal"})).all()
