"""Leave-source-out on a local Ray with tiny data (issue 22): folds as Ray Train runs inside Tune trials,
one number per configuration for Optuna, and the chosen configuration trained again on every source."""

from __future__ import annotations

import json
import shutil

import optuna
import pandas as pd
import pytest

from conftest import TINY


@pytest.fixture(scope="module")
def left_out_run(run_cli, ray_address, tmp_path_factory):
    from tbray.data import demo

    base = tmp_path_factory.mktemp("lso")
    a = demo.make(base / "data" / "site-a", n_images=72, size=64, seed=1)
    b = demo.make(base / "data" / "site-b", n_images=72, size=64, seed=2)
    shutil.copy(a / "Tuberculosis" / "Tuberculosis-3.png", b / "Tuberculosis" / "copied-from-a.png")
    # The steps before the network are searched too (item 3): each trial draws its own.
    done = run_cli("--data", a, "--data", f"b={b}", "--selection", "leave-source-out", "--results", base,
                   "--name", "lso", "--num-samples", "1", "--address", ray_address, *TINY,
                   "--preprocess", "none,equalize,clahe", "--crop", "none,lungs")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return base / "lso", done.stdout


def test_each_configuration_trains_one_fold_per_source_and_optuna_sees_their_mean(left_out_run):
    run, console = left_out_run
    table = pd.read_csv(run / "trials.csv", dtype={"trial_id": str})
    assert len(table) == 1  # one configuration: its folds, then its refit on every source, are three Train runs
    # Fold-to-trial mapping: every trial ran one Ray Train run per left-out source.
    runs = {p.name for p in (run / "train").iterdir()}
    for trial_id in table["trial_id"]:
        assert {f"train-{trial_id}-without-site-a", f"train-{trial_id}-without-b"} <= runs
    history = pd.read_csv(run / "history.csv", dtype={"trial_id": str})
    assert {"heldout_val_loss", "val_loss/site-a", "val_loss/b", "best_heldout_val_loss"} <= set(history.columns)
    means = (history["val_loss/site-a"] + history["val_loss/b"]) / 2
    assert (history["heldout_val_loss"] - means).abs().max() < 1e-9
    assert history.groupby("trial_id")["epoch"].max().tolist() == [2]
    # Optuna saw one value per configuration: the best fold mean of its trial.
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{run / 'optuna.db'}")
    values = sorted(t.value for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
    assert values == pytest.approx(sorted(history.groupby("trial_id")["heldout_val_loss"].min()))
    assert "1 configuration costs 2 runs, plus 1 on every source for the chosen one (3 in all, against 1" in console
    assert "tbray: trials' training images: 1 through a DataLoader each epoch" in console  # a CPU trial


def test_the_chosen_configuration_is_trained_on_every_source_and_reported_per_source(left_out_run):
    run, console = left_out_run
    report = json.loads((run / "report.json").read_text())
    history = pd.read_csv(run / "history.csv", dtype={"trial_id": str})
    chosen = report["sources"]["chosen"]
    top = history.loc[history["heldout_val_loss"].idxmin()]
    assert chosen["chosen_trial_id"] == top["trial_id"] and chosen["value"] == pytest.approx(top["heldout_val_loss"])
    assert set(chosen["left_out"]) >= {"val_auroc/site-a", "val_auroc/b"}
    # The model tested is the refit on every source: its own trial, and its Train run, not a fold's.
    refit = pd.read_csv(run / "refit_history.csv", dtype={"trial_id": str})
    assert report["best"]["trial_id"] == refit["trial_id"].iloc[0] != chosen["chosen_trial_id"]
    assert (run / "train" / f"train-{report['best']['trial_id']}").is_dir()
    chosen_row = pd.read_csv(run / "trials.csv", dtype={"trial_id": str}).set_index("trial_id").loc[chosen["chosen_trial_id"]]
    assert report["best"]["params"] == pytest.approx({k: chosen_row[k] for k in report["best"]["params"]})
    assert set(report["sources"]["test"]) == {"site-a", "b"}
    assert sum(r["n"] for r in report["sources"]["test"].values()) == report["evaluation"]["n_test"]
    split = pd.read_csv(run / "split.csv")
    page = (run / "report.md").read_text()
    assert page.splitlines()[2] == "## How far the figures travel"
    assert "| internal test: b |" in page
    row = next(line for line in page.splitlines() if line.startswith("| left out: site-a (validation, while not trained on) |"))
    n_val = int((split["source"].eq("site-a") & split["split"].eq("val")).sum())
    assert row.split(" | ")[1] == str(n_val)  # its images (an AUROC interval too, when each class has 2 or more)
    assert set(split["source"]) == {"site-a", "b"}
    where = split.set_index("path")["split"]
    assert where["site-a/Tuberculosis/Tuberculosis-3.png"] == where["b/Tuberculosis/copied-from-a.png"]
    assert "tbray: test site-a (" in console and "tbray: test b (" in console


def test_the_chosen_steps_travel_with_the_model_and_score_alike_everywhere(left_out_run):
    from tbray.data import dataset
    from tbray.model import export, modelfile
    from tbray.predict import local
    from tbray.predict.scorer import open_model

    run, _ = left_out_run
    table = pd.read_csv(run / "trials.csv", dtype={"trial_id": str})
    assert {"preprocess", "crop"} <= set(table.columns)
    report = json.loads((run / "report.json").read_text())
    chosen = report["best"]["params"]
    saved = modelfile.load_model_file(run / "best_model.pt")
    assert (saved["preprocess"], saved["crop"]) == (chosen["preprocess"], chosen["crop"])
    meta = export.read_metadata(run / "model.onnx")
    assert (meta["preprocess"], meta["crop"]) == (chosen["preprocess"], chosen["crop"])
    # Parity: the search's test pass, predict.py's .pt and .onnx paths, on the same test films.
    scores = pd.read_csv(run / "test_scores.csv").head(6)
    roots = {name: dataset.find_root(folder) for name, folder in report["data_summary"]["sources"].items()}
    files = [roots[s] / p.split("/", 1)[1] for s, p in zip(scores["source"], scores["path"])]
    for model in (run / "best_model.pt", run / "model.onnx"):
        predicted = local.run(open_model(model), files)["p_tb"].to_numpy()
        assert abs(predicted - scores["score"].to_numpy()).max() < 1e-4, model.name
