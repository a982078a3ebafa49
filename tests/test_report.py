"""tbray.report.run_report.write on synthetic inputs: every file, every section, the summary table."""

import json

import numpy as np
import optuna
import pandas as pd
import pytest

from tbray.errors import UserError

from tbray.report import page, plots, run_report
from tbray.stats import assess

PNGS = [
    "confusion_matrix.png", "confusion_matrix_0.5.png", "roc.png", "pr.png", "reliability.png",
    "optuna_history.png", "optuna_importance.png", "metric_per_epoch.png",
]
FILES = ["report.json", "report.md", "model_card.md", "classification_report.txt", *PNGS]
SECTIONS = [
    "## Headline test metrics", "## Operating threshold", "## WHO triage target", "## Confusion matrices",
    "## Calibration", "## Best configuration", "## Search summary", "## Data",
    "## Cross-split duplicates (leakage check)", "## Plots", "## Limits of this data set",
]


def _scores(n, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    return labels, np.clip(rng.normal(0.3 + 0.4 * labels, 0.2), 0, 1)


def _study(n_trials=4):
    """A real in-memory Optuna study whose parameters vary across trials."""
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(
        lambda trial: 0.8 + 0.1 * np.log10(trial.suggest_float("lr", 1e-5, 1e-2, log=True)) / 5
        + 0.01 * trial.suggest_categorical("batch_size", [16, 32]),
        n_trials=n_trials,
    )
    return study


def _trials_and_history():
    """Trials 0-2 ran all 3 epochs, trial 3 was stopped after 1 epoch, trial 4 errored (trials.csv words)."""
    trials = pd.DataFrame({
        "trial_id": ["t0", "t1", "t2", "t3", "t4"],
        "status": ["completed"] * 3 + ["stopped_early", "error"],
        "epochs": [3] * 5,
        "batch_size": [16, 32, 16, 32, 16],
        "image_size": [224] * 5,
        "lr": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2],
        "best_val_auroc": [0.91, 0.93, 0.95, 0.80, np.nan],
        "last_val_auroc": [0.90, 0.93, 0.94, 0.80, np.nan],
        "error": [None, None, None, None, "CUDA out of memory | at epoch 0\nTraceback ..."],
    })
    history = pd.DataFrame(
        [{"trial_id": t, "epoch": e, "val_auroc": 0.7 + 0.05 * e + 0.01 * i, "val_loss": 0.5}
         for i, t in enumerate(["t0", "t1", "t2"]) for e in range(3)]
        + [{"trial_id": "t3", "epoch": 0, "val_auroc": 0.8, "val_loss": 0.6}]
    )
    return trials, history


def _write(run_dir, *, demo, duplicates):
    val_labels, val_scores = _scores(200, seed=1)
    test_labels, test_scores = _scores(160, seed=2)
    trials, history = _trials_and_history()
    evaluation = assess.test(val_labels, val_scores, test_labels, test_scores, n_resamples=200)
    return run_report.write(
        run_dir, evaluation=evaluation, val_labels=val_labels, val_scores=val_scores,
        test_labels=test_labels, test_scores=test_scores, trials=trials, history=history, study=_study(n_trials=9),
        best={"trial_id": "t2", "epoch": 2, "params": {"lr": np.float64(1e-3), "batch_size": np.int64(16)},
              "checkpoint": run_dir / "t2" / "checkpoint", "metric": "val_auroc", "value": 0.95},
        config={"demo": demo, "num_samples": 5, "metric": "val_auroc", "mode": "max", "target_sensitivity": 0.9,
                "model": "test_efficientnet", "pretrained": True},
        data_summary={"data_root": "/data/TB_Chest_Radiography_Database",
                      "counts": {"train_normal": 400, "train_tb": 300, "test_normal": 80, "test_tb": 80},
                      "skipped": 2, "duplicates": duplicates},
    )


DUPLICATE = {"splits": "test/train", "kind": "near", "pairs": 2, "files": 3, "max_distance": 3,
             "examples": [["a.png", "b.png"]]}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("demo_run")
    return run_dir, _write(run_dir, demo=True, duplicates=[DUPLICATE])


def test_every_file_is_written(demo_run):
    run_dir, _ = demo_run
    for name in FILES:
        assert (run_dir / name).stat().st_size > 0, name
    for name in PNGS:
        assert (run_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_report_md_has_every_section_and_links_every_png(demo_run):
    run_dir, result = demo_run
    text = (run_dir / "report.md").read_text(encoding="utf-8")
    for heading in SECTIONS:
        assert f"\n{heading}\n" in text, heading
    for name in PNGS:
        assert f"]({name})" in text, name
    assert text.splitlines()[2] == "> **SYNTHETIC DEMO DATA — NOT MEDICAL**"
    assert "WARNING: 2 pair(s) of exact or near-duplicate images" in text
    assert "different hospitals and countries" in text
    assert "not evidence of clinical performance" in text
    assert f"{result['threshold']:.4f}" in text
    assert f"{result['threshold_selection']['youden_threshold']:.4f}" in text
    assert "3 completed, 1 stopped early by the scheduler, 1 errored" in text
    # A pipe or newline inside a cell must not break the markdown table.
    assert "CUDA out of memory \\| at epoch 0 Traceback" in text


def test_report_json(demo_run):
    run_dir, result = demo_run
    on_disk = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    assert on_disk == result
    assert {"demo", "threshold", "threshold_selection", "evaluation", "validation_at_threshold", "best",
            "search", "config", "data_summary"} <= set(on_disk)
    assert on_disk["threshold"] == on_disk["evaluation"]["threshold"]
    assert on_disk["best"]["params"] == {"lr": 1e-3, "batch_size": 16}
    assert on_disk["best"]["checkpoint"].endswith("checkpoint")
    search = on_disk["search"]
    assert (search["n_trials"], search["completed"], search["stopped_early"], search["errored"]) == (5, 3, 1, 1)
    assert search["trials"][4]["best_val_auroc"] is None  # NaN became null
    assert [t["status"] for t in search["trials"]] == ["completed"] * 3 + ["stopped_early", "error"]


def test_classification_report_has_both_thresholds(demo_run):
    run_dir, result = demo_run
    text = (run_dir / "classification_report.txt").read_text(encoding="utf-8")
    assert f"== At the chosen threshold {result['threshold']:.4f}" in text
    assert "== At the threshold 0.5, for comparison ==" in text
    assert text.count("Tuberculosis") >= 3 and text.count("Normal") >= 2


def test_summary_table_contains_the_numbers(demo_run):
    _, result = demo_run
    table = page.summary_table(result)
    ev = result["evaluation"]
    chosen = ev["at_threshold"]
    assert table.splitlines()[0] == "SYNTHETIC DEMO DATA — NOT MEDICAL"
    for expected in [
        "t2 (epoch 2)", "batch_size=16", "lr=0.001", "val_auroc", "0.9500",
        f"{ev['auroc']['value']:.3f} [{ev['auroc']['ci_low']:.3f}, {ev['auroc']['ci_high']:.3f}]",
        f"{ev['threshold']:.4f}",
        f"{chosen['sensitivity']['value']:.3f} [{chosen['sensitivity']['ci_low']:.3f}",
        f"{chosen['specificity']['value']:.3f} [{chosen['specificity']['ci_low']:.3f}",
        f"{chosen['accuracy']['value']:.3f}",
        "WHO target met",
    ]:
        assert expected in table, expected


def test_clean_real_run_has_no_banner_and_says_none_found(demo_run):
    _, result = demo_run
    clean = {**result, "demo": False, "data_summary": {**result["data_summary"], "duplicates": []}}
    text = page.markdown(clean)
    assert "SYNTHETIC" not in text and "SYNTHETIC" not in page.summary_table(clean)
    assert "None found. Method: exact duplicates share the sha256" in text
    assert "sit in different splits" not in text  # no leakage warning


def test_threshold_warning_reaches_the_page(demo_run):
    _, result = demo_run
    selection = result["evaluation"]["threshold_selection"]
    assert (selection["warning"] is None) == (selection["sensitivity_ci"][0] >= selection["target_sensitivity"])
    warned = {**selection, "warning": "the validation split has 5 TB images: ..."}
    text = page.markdown({**result, "evaluation": {**result["evaluation"], "threshold_selection": warned}})
    assert "> **WARNING:** the validation split has 5 TB images" in text


def test_the_threshold_rule_and_its_validation_interval_reach_page_and_console(demo_run):
    _, result = demo_run
    selection = result["evaluation"]["threshold_selection"]
    low, high = selection["sensitivity_ci"]
    for rule, words in (("point", "reaches the target"), ("lower-bound", "has a 95% lower bound that reaches")):
        ruled = {**result, "evaluation": {**result["evaluation"], "threshold_selection": {**selection, "rule": rule}}}
        assert f"whose sensitivity {words}" in page.markdown(ruled)
        line = next(row for row in page.summary_table(ruled).splitlines() if row.startswith("Threshold"))
        assert f"validation sensitivity {selection['sensitivity']:.3f} [{low:.3f}, {high:.3f}]" in line, line
        assert ("for its 95% lower bound" in line) == (rule == "lower-bound"), line


@pytest.mark.parametrize("study", [None, "one trial", "constant params"])
def test_importance_png_explains_instead_of_crashing(tmp_path, study):
    if study == "one trial":
        study = _study(n_trials=1)
    elif study == "constant params":
        study = optuna.create_study()
        study.optimize(lambda trial: trial.suggest_categorical("lr", [0.1]) + trial.number, n_trials=3)
    path = plots.optuna_importance_png(study, tmp_path / "importance.png")
    assert path.stat().st_size > 0
    history = plots.search_history_png(pd.DataFrame(), "val_loss", "min", None, tmp_path / "history.png")
    assert history.stat().st_size > 0


def test_importance_needs_eight_finished_trials_and_ranks_only_what_varied(tmp_path):
    few = _study(n_trials=7)
    assert plots._study_problem(few, plots.IMPORTANCE_MIN_TRIALS) == (
        "Only 7 completed trial(s); at least 8 are needed.")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-2, log=True) + 0 * t.suggest_categorical("size", [224]),
                   n_trials=9)
    assert plots._varying_params(study) == ["lr"]  # size had one value: not ranked
    assert plots.optuna_importance_png(study, tmp_path / "importance.png").stat().st_size > 0


def test_history_and_per_epoch_plots_use_tune_ids_and_mark_the_chosen_trial(tmp_path):
    trials, history = _trials_and_history()
    history = history.assign(train_loss=0.3)
    assert plots.search_history_png(trials, "val_auroc", "max", "t2", tmp_path / "h.png").stat().st_size > 0
    assert plots.metric_per_epoch_png(history, "val_auroc", "t2", tmp_path / "e.png").stat().st_size > 0


def test_per_epoch_plot_without_history(tmp_path):
    path = plots.metric_per_epoch_png(pd.DataFrame(), "val_loss", None, tmp_path / "epochs.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_a_write_that_fails_leaves_the_old_file_whole_and_no_temporary_file(tmp_path):
    from tbray.outputs import write_atomic

    target = tmp_path / "report.json"
    write_atomic(target, '{"old": 1}')
    blocked = tmp_path / "folder.json"
    blocked.mkdir()  # the rename onto a folder fails after the temporary file is written
    with pytest.raises(UserError, match="folder.json: can't be written"):  # one line, not a traceback
        write_atomic(blocked, "new")
    assert target.read_text() == '{"old": 1}' and blocked.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.json", "report.json"]


def test_names_from_outside_reach_report_md_inert(tmp_path):
    hostile = {**DUPLICATE, "examples": [["<img src=x onerror=alert(1)>.png", "[click](http://evil)|`x`.png"]]}
    _write(tmp_path, demo=False, duplicates=[hostile])
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "<img" not in text and "&lt;img src=x onerror=alert(1)&gt;.png" in text
    assert "[click](http://evil)" not in text and "\\[click\\](http://evil)\\|\\`x\\`" in text
