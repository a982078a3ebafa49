"""The whole search through the real command line, on tiny synthetic data and a local Ray."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO
from sklearn.metrics import roc_auc_score

from tbray.stats import threshold

OUTPUTS = ["split.csv", "trials.csv", "report.json", "classification_report.txt", "confusion_matrix.png",
           "best_model.pt", "optuna.db", "skipped.csv", "report.md", "roc.png", "pr.png", "reliability.png",
           "optuna_history.png", "optuna_importance.png", "metric_per_epoch.png", "model.onnx"]


@pytest.fixture(scope="module")
def e2e(finished_run):
    """The session's tiny search with an external set (conftest.finished_run): (results, external, console)."""
    return finished_run.folder.parent, finished_run.external, finished_run.console


def _cli(script: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tune" / script), *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def test_search_end_to_end(e2e, tiny_data):
    tmp_path, _, done = e2e
    run = tmp_path / "e2e"
    for name in OUTPUTS:
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name

    split = pd.read_csv(run / "split.csv")
    assert list(split.columns) == ["path", "source", "label", "split", "sha256", "phash"]
    assert set(split["source"]) == {"data"}  # one --data: its source is named by its folder
    assert len(split) == 72 and set(split["split"]) == {"train", "val", "test"}

    trials = pd.read_csv(run / "trials.csv", dtype={"trial_id": str})
    assert len(trials) == 2
    assert set(trials["status"]) <= {"completed", "stopped_early"}
    assert (trials["best_val_loss"] > 0).all() and trials["last_val_auroc"].between(0, 1).all()
    assert {"epochs", "batch_size", "image_size", "lr", "checkpoint_path"} <= set(trials.columns)

    report = json.loads((run / "report.json").read_text())
    test_rows = int((split["split"] == "test").sum())
    assert report["evaluation"]["n_test"] == test_rows
    assert 0 <= report["evaluation"]["auroc"]["value"] <= 1
    assert 0 < report["evaluation"]["threshold"] < 1
    text = (run / "classification_report.txt").read_text()
    assert "Normal" in text and "Tuberculosis" in text

    best = torch.load(run / "best_model.pt", weights_only=True)
    assert best["model_name"] == "test_efficientnet" and best["image_size"] == 32
    assert best["threshold"] == report["evaluation"]["threshold"]
    # Provenance: which images it learnt from, by digest of its split.csv rows; not synthetic (no --demo).
    from tbray.data import dataset

    split = pd.read_csv(run / "split.csv", dtype={"path": str, "sha256": str})
    assert best["provenance"] == {"synthetic": False, "sources": {"data": {
        "folder": str(tmp_path / "data"), "images": len(split), "split_sha256": dataset.split_hash(split)}}}
    assert (best["preprocess"], best["crop"]) == ("none", "none")
    assert "Best trial" in done.stdout and "Test AUROC" in done.stdout

    # The confound check ran before any trial, and the console, the report and the model card state it.
    check = report["data_summary"]["confound"]["tb_vs_normal"]["all"]
    assert 0 <= check["ci_low"] <= check["value"] <= check["ci_high"] <= 1 and check["n"] == 72
    assert f"tells TB from Normal at AUROC {check['value']:.3f}" in done.stdout
    assert done.stdout.index("confound check") < done.stdout.index("Best trial")  # before any trial
    assert "Confound check (before training)" in (run / "model_card.md").read_text()

    # One page a person reads, with every section and plot.
    page = (run / "report.md").read_text()
    for heading in ("Headline test metrics", "What acquisition alone tells apart", "Operating threshold", "WHO triage target", "Confusion matrices",
                    "Calibration", "Best configuration", "Search summary", "Cross-split duplicates",
                    "Limits of this data set"):
        assert heading in page, heading
    for plot in ("roc.png", "pr.png", "reliability.png", "optuna_history.png", "optuna_importance.png",
                 "metric_per_epoch.png", "confusion_matrix.png"):
        assert f"({plot})" in page, plot

    # Later predictions use the saved model and its threshold, and reproduce the test scores.
    scores = pd.read_csv(run / "test_scores.csv")
    files = [str(tiny_data / p) for p in scores["path"]]
    out = subprocess.run([sys.executable, str(REPO / "tune" / "predict.py"), str(run / "best_model.pt"), *files,
                          "--out", str(tmp_path / "pred.csv")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "from the search's validation split" in out.stderr  # where its threshold came from
    pred = pd.read_csv(tmp_path / "pred.csv")
    assert pred["path"].tolist() == files
    assert np.allclose(pred["p_tb"], scores["score"], atol=1e-5)
    called_tb = pred["p_tb"] >= best["threshold"]
    assert (pred["prediction"] == called_tb.map({True: "Tuberculosis", False: "Normal"})).all()


def test_model_onnx_beside_the_best_model_reproduces_the_test_scores(e2e, tiny_data):
    import onnxruntime as ort

    from tbray.data import dataset
    from tbray.model import export

    run = e2e[0] / "e2e"
    best = torch.load(run / "best_model.pt", weights_only=True)
    facts = export.facts(export.read_metadata(run / "model.onnx"))
    assert facts["threshold"] == best["threshold"] and facts["threshold_source"] == best["threshold_source"]
    assert facts["provenance"] == best["provenance"] and (facts["preprocess"], facts["crop"]) == ("none", "none")
    scores = pd.read_csv(run / "test_scores.csv")
    images = np.stack([dataset.resize(dataset.load_gray(tiny_data / p), best["image_size"]) for p in scores["path"]])
    session = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    assert np.abs(session.run(None, {"image": images})[0] - scores["score"].to_numpy()).max() < 1e-4


def test_external_set_is_scored_once_and_reported(e2e):
    tmp_path, other, done = e2e
    run = tmp_path / "e2e"
    report = json.loads((run / "report.json").read_text())
    ext = report["external"]["other"]
    scores = pd.read_csv(run / "external_scores.csv")
    assert ext["n"] == len(scores) == 48 and ext["n_tb"] == int(scores["label"].sum())
    assert ext["auroc"] == pytest.approx(roc_auc_score(scores["label"], scores["score"]))
    assert ext["auroc_ci"][0] <= ext["auroc"] <= ext["auroc_ci"][1]
    called = scores["score"] >= report["threshold"]
    assert ext["sensitivity"] == pytest.approx(called[scores["label"] == 1].mean())
    assert ext["specificity"] == pytest.approx((~called[scores["label"] == 0]).mean())
    for key in ("sensitivity_ci", "specificity_ci", "ppv", "npv", "brier", "local_threshold", "average_precision_ci"):
        assert key in ext, key
    assert ext["local_threshold"]["threshold"] == pytest.approx(
        threshold.operating_threshold(scores["label"], scores["score"], 0.9))
    page = (run / "report.md").read_text()
    assert "## External validation" in page and "**other** (48 images" in page and "(roc_external.png)" in page
    assert (run / "roc_external.png").stat().st_size > 0
    assert "External other" in done.stdout


def test_evaluate_later_gives_the_numbers_the_search_gave(e2e):
    tmp_path, other, _ = e2e
    run = tmp_path / "e2e"
    done = _cli("evaluate.py", run / "best_model.pt", other, "--name", "later")
    assert done.returncode == 0, done.stderr[-2000:]
    later = json.loads((run / "external-later.json").read_text())
    during = json.loads((run / "report.json").read_text())["external"]["other"]
    for key in ("n", "n_tb", "auroc", "sensitivity", "specificity", "brier"):
        assert later[key] == pytest.approx(during[key], abs=1e-6), key
    assert "# External evaluation: later" in (run / "external-later.md").read_text()

    # The same name again: refused before any scoring, the first evaluation's files kept byte for byte.
    written = {p.name: p.read_bytes() for p in run.glob("external-later*")}
    assert set(written) == {"external-later.json", "external-later.md", "external-later_scores.csv",
                            "external-later.sha256"}  # the manifest, written last: `sha256sum -c` agrees
    checked = subprocess.run(["sha256sum", "-c", "external-later.sha256"], cwd=run, capture_output=True, text=True)
    assert checked.returncode == 0 and checked.stdout.count(": OK") == 3, checked.stdout
    again = _cli("evaluate.py", run / "best_model.pt", other, "--name", "later")
    lines = again.stderr.strip().splitlines()
    assert again.returncode == 2 and len(lines) == 1, again.stderr[-2000:]
    assert "external-later.json: an evaluation named 'later' is already there (of " in lines[0]
    assert {p.name: p.read_bytes() for p in run.glob("external-later*")} == written
    # --replace writes all three over, whole, and leaves no temporary file behind.
    replaced = _cli("evaluate.py", run / "best_model.pt", other, "--name", "later", "--replace")
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    assert (run / "external-later_scores.csv").read_bytes() == written["external-later_scores.csv"]
    assert json.loads((run / "external-later.json").read_text())["auroc"] == later["auroc"]
    assert not list(run.glob(".*.tmp"))
    # --out DIR: the same three files elsewhere (a read-only run folder, a shared report folder).
    elsewhere = tmp_path / "evaluations"
    moved = _cli("evaluate.py", run / "best_model.pt", other, "--name", "moved", "--out", elsewhere)
    assert moved.returncode == 0, moved.stderr[-2000:]
    assert {p.name for p in elsewhere.glob("external-*")} == {"external-moved.json", "external-moved.md",
                                                              "external-moved_scores.csv", "external-moved.sha256"}
    assert json.loads((elsewhere / "external-moved.json").read_text())["auroc"] == later["auroc"]
    assert not list(run.glob("external-moved*"))


def test_calibration_writes_a_new_model_and_predict_says_where_its_threshold_came_from(e2e):
    tmp_path, other, _ = e2e
    model = tmp_path / "e2e" / "best_model.pt"
    before = hashlib.sha256(model.read_bytes()).hexdigest()
    done = _cli("calibrate.py", model, other, "--target-sensitivity", "0.9", "--out", tmp_path / "site.pt")
    assert done.returncode == 0, done.stderr[-2000:]
    assert hashlib.sha256(model.read_bytes()).hexdigest() == before  # the original is kept unchanged
    site = torch.load(tmp_path / "site.pt", weights_only=True)
    record = site["calibration"]
    scores = pd.read_csv(tmp_path / "e2e" / "external_scores.csv")
    assert site["threshold"] == record["threshold"] == pytest.approx(
        threshold.operating_threshold(scores["label"], scores["score"], 0.9), abs=1e-6)
    assert record["n"] == 48 and len(record["site_data_sha256"]) == 64 and record["sensitivity"] >= 0.9
    assert record["previous_threshold"] == torch.load(model, weights_only=True)["threshold"]

    image = next((other / "Tuberculosis").iterdir())
    calibrated = _cli("predict.py", tmp_path / "site.pt", image)
    assert calibrated.returncode == 0 and f"threshold {record['threshold']:.4f} from site calibration on" in calibrated.stderr

    same = _cli("calibrate.py", model, other, "--out", model)
    assert same.returncode == 2 and same.stderr.strip().splitlines() == [
        f"tbray: error: {model}: --out would overwrite {model}, which this command reads; name another file"]


def test_model_card_is_filled_from_the_report(e2e):
    tmp_path, _, _ = e2e
    run = tmp_path / "e2e"
    card = (run / "model_card.md").read_text()
    report = json.loads((run / "report.json").read_text())
    for section in ("## Model details", "## Intended use", "## Training data", "## Metrics",
                    "## Operating threshold", "## Caveats"):
        assert section in card, section
    ev = report["evaluation"]
    assert f"AUROC {ev['auroc']['value']:.3f} [{ev['auroc']['ci_low']:.3f}" in card
    assert f"Threshold {report['threshold']:.4f}" in card and "not fit for" in card.lower()
    assert "External set other (48 images" in card and "Synthetic demo data" not in card


def test_mlflow_holds_one_run_per_trial_under_the_search_run(e2e):
    import mlflow
    from mlflow.tracking import MlflowClient

    tmp_path, _, done = e2e
    run = tmp_path / "e2e"
    uri = f"sqlite:///{run / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        runs = mlflow.search_runs(experiment_names=["e2e"])
    finally:
        mlflow.set_tracking_uri(None)
    table = pd.read_csv(run / "trials.csv", dtype={"trial_id": str}).set_index("trial_id")
    children = runs[runs["tags.tune_trial_id"].notna()].set_index("tags.tune_trial_id")
    assert sorted(children.index) == sorted(table.index)
    for trial_id, row in table.iterrows():
        child = children.loc[trial_id]
        for param in ("epochs", "batch_size", "image_size"):
            assert int(child[f"params.{param}"]) == row[param]
        assert float(child["params.lr"]) == pytest.approx(row["lr"], rel=1e-12)
        assert child["metrics.best_val_loss"] == pytest.approx(row["best_val_loss"], rel=1e-9)  # the last epoch's
        assert child["metrics.val_auroc"] == pytest.approx(row["last_val_auroc"], rel=1e-9)
        assert child["tags.tune_status"] == row["status"]
        steps = [m.step for m in MlflowClient(uri).get_metric_history(child["run_id"], "val_loss")]
        assert sorted(steps) == list(range(1, row["epochs_done"] + 1))  # every epoch, step = epoch
    parent = runs[runs["tags.tune_trial_id"].isna()]
    assert len(parent) == 1 and set(children["tags.mlflow.parentRunId"]) == {parent["run_id"].iloc[0]}
    report = json.loads((run / "report.json").read_text())
    parent = parent.iloc[0]
    assert parent["params.best_trial_id"] == report["best"]["trial_id"]
    assert parent["metrics.test_auroc"] == pytest.approx(report["evaluation"]["auroc"]["value"])
    assert parent["metrics.external_other_auroc"] == pytest.approx(report["external"]["other"]["auroc"])
    files = {a.path for a in MlflowClient(uri).list_artifacts(parent["run_id"])}
    assert {"report.md", "model_card.md", "roc.png", "trials.csv"} <= files
    assert f"mlflow ui --backend-store-uri {uri}" in done.stdout
    experiment = MlflowClient(uri).get_experiment_by_name("e2e")
    assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development"  # opens on runs, not traces


def test_mlflow_was_written_while_the_trials_ran(e2e):
    """Logged live: each epoch at the time it was reported, each trial run open as long as its trial, and the
    trials' runs inside the parent's span (once every metric had one timestamp and runs lasted 0.1 s)."""
    from mlflow.tracking import MlflowClient

    tmp_path, _, _ = e2e
    run = tmp_path / "e2e"
    client = MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("e2e")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("tbray_search") == "parent")
    trials = [r for r in runs if "tune_trial_id" in r.data.tags]
    history = pd.read_csv(run / "history.csv", dtype={"trial_id": str})
    for trial in trials:
        epochs = client.get_metric_history(trial.info.run_id, "val_loss")
        times = sorted(m.timestamp for m in epochs)
        assert len(set(times)) == len(epochs) >= 2, times  # one report per epoch, each at its own time
        took = history.loc[history["trial_id"] == trial.data.tags["tune_trial_id"], "epoch_s"].iloc[-1]
        assert times[-1] - times[0] >= 0.5 * 1000 * took  # epochs apart by at least about one epoch's training
        assert trial.info.start_time <= times[0] <= times[-1] <= trial.info.end_time
        assert parent.info.start_time <= trial.info.start_time and trial.info.end_time <= parent.info.end_time


def test_optuna_trials_carry_their_tune_trial_id_and_status(e2e):
    import optuna

    tmp_path, _, _ = e2e
    run = tmp_path / "e2e"
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{run / 'optuna.db'}")
    # Named after the run and its metric, as optuna-dashboard lists and plots them (not "tbray", "Objective 0").
    assert (study.study_name, study.metric_names) == ("e2e", ["best_val_loss"])
    labelled = {t.user_attrs["tune_trial_id"]: t for t in study.trials if "tune_trial_id" in t.user_attrs}
    table = pd.read_csv(run / "trials.csv", dtype={"trial_id": str}).set_index("trial_id")
    assert sorted(labelled) == sorted(table.index)
    for trial_id, row in table.iterrows():
        optuna_trial = labelled[trial_id]
        assert optuna_trial.user_attrs["tune_status"] == row["status"]
        assert optuna_trial.params["lr"] == pytest.approx(row["lr"], rel=1e-12)
        assert optuna_trial.params["batch_size"] == row["batch_size"]


def test_the_console_holds_no_library_warnings_or_per_trial_tables(e2e):
    tmp_path, _, done = e2e
    lines = (done.stdout + done.stderr).splitlines()
    noisy = [line for line in lines if "Warning" in line or "started with configuration" in line]
    assert not noisy, noisy[:5]
    # One Tune table a minute, plus the first and the last: not one per reported epoch.
    hours, minutes, seconds = re.findall(r"running for (\d+):(\d+):([0-9.]+)", done.stdout + done.stderr)[-1]
    seconds = 3600 * int(hours) + 60 * int(minutes) + float(seconds)
    assert sum("== Status ==" in line for line in lines) <= seconds / 60 + 2
    assert not [line for line in lines if "INFO tune.py" in line], "Tune's INFO lines reach the console"
    # It ends with where the report is and how to open the viewers.
    run = (tmp_path / "e2e").resolve()
    last = done.stdout.strip().splitlines()[-2:]
    assert last == [f"tbray: report: {run / 'report.md'}", "tbray: viewers (MLflow, optuna-dashboard, TensorBoard; "
                    f"Ctrl-C stops them): python tune/ui.py {run}"], last


def test_damaged_run_files_and_output_slips_are_refused_before_any_work(e2e):
    """evaluate, calibrate, export and audit on a copy of the run folder whose files were damaged by hand (or
    with an output path that slipped): one line, exit 2, no file of the folder changed. One copy per case,
    so the cases run two at a time (each spends seconds importing torch)."""
    tmp_path, other, _ = e2e
    n_test = int((pd.read_csv(tmp_path / "e2e" / "split.csv")["split"] == "test").sum())
    short = (tmp_path / "e2e" / "test_scores.csv").read_text().splitlines()[:2]
    garbage = b"\xee\x01\x02 not a table \xff\n" * 10
    cases = {  # name: (script, its arguments after the model or folder, a damaged file, the refusal)
        "split": ("evaluate.py", [other], ("split.csv", garbage), "split.csv: unreadable split file"),
        "report": ("evaluate.py", [other], ("report.json", b"[1, 2]"), "report.json: not the report.json a search writes"),
        "export_out": ("export.py", ["--out", "MODEL"], None, "--out would overwrite"),
        "calibrate_out": ("calibrate.py", [other, "--out", tmp_path], None, "is a folder; --out takes a file name"),
        "scores": ("audit.py", [], ("test_scores.csv", "\n".join(short).encode()),
                   f"1 score row(s) for the {n_test} test images"),
    }

    def refused(name: str) -> tuple[str, str]:
        script, args, damage, _ = cases[name]
        copy = tmp_path / f"damaged-{name}"
        copy.mkdir()
        for file in ("best_model.pt", "search.json", "split.csv", "report.json", "test_scores.csv"):
            (copy / file).write_bytes((tmp_path / "e2e" / file).read_bytes())
        if damage:
            (copy / damage[0]).write_bytes(damage[1])
        model = copy / "best_model.pt"
        before = {p.name: p.read_bytes() for p in copy.iterdir()}
        first = copy if script == "audit.py" else model
        done = _cli(script, first, *[model if a == "MODEL" else a for a in args])
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("tbray: error: "), done.stderr[-3000:]
        assert {p.name: p.read_bytes() for p in copy.iterdir()} == before  # nothing written, nothing left behind
        return name, lines[0]

    with ThreadPoolExecutor(max_workers=2) as pool:
        lines = dict(pool.map(refused, cases))
    for name, (_, _, _, message) in cases.items():
        assert message in lines[name], (name, lines[name])
