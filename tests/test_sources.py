"""Several sources in one search (issue 22): the split, duplicates across sources, the options, and the
numbers each selection rule ranks by, on crafted scores."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score as skm_auroc

from tbray.commands import search as cli
from tbray.config import SearchConfig, objective
from tbray.data import dataset, demo
from tbray.errors import UserError
from tbray.report import transfer_section
from tbray.runs import runfolder
from tbray.stats import assess, selection


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory):
    """Two synthetic sources; one TB film of the first is copied, byte for byte, into the second."""
    base = tmp_path_factory.mktemp("sources")
    a = demo.make(base / "site-a", n_images=80, size=48, seed=1)
    b = demo.make(base / "site-b", n_images=90, size=48, seed=2)
    shutil.copy(a / "Tuberculosis" / "Tuberculosis-3.png", b / "Tuberculosis" / "copied-from-a.png")
    return {"site-a": a, "site-b": b}


def prepared(two_sources, tmp_path, **options):
    cfg = SearchConfig(data=two_sources, results=tmp_path, name="multi", min_image_size=32, **options)
    return runfolder.prepare(cfg)


def test_split_is_stratified_by_source_and_class_and_keeps_cross_source_copies_together(two_sources, tmp_path, capsys):
    p = prepared(two_sources, tmp_path)
    split = p.split
    assert set(split["source"]) == {"site-a", "site-b"}
    assert split["path"].is_unique and all(path.startswith(f"{s}/") for s, path in zip(split["source"], split["path"]))
    # Every source x class is in every split, near the 70/20/10 shares.
    shares = split.groupby(["source", "label"])["split"].value_counts(normalize=True).unstack(fill_value=0)
    assert (shares > 0).all().all()
    assert np.allclose(shares["train"], 0.7, atol=0.08) and np.allclose(shares["test"], 0.2, atol=0.08)
    # The copy and its original: found across sources, and in one split.
    pair = p.cross_source_duplicates
    assert len(pair) == 1 and {pair.iloc[0]["source_a"], pair.iloc[0]["source_b"]} == {"site-a", "site-b"}
    where = split.set_index("path")["split"]
    assert where["site-a/Tuberculosis/Tuberculosis-3.png"] == where["site-b/Tuberculosis/copied-from-a.png"]
    # Each row's file is found again from its source.
    assert all(f.is_file() for f in p.files())
    out = capsys.readouterr().out
    assert "images per source, class and split" in out and "site-b" in out
    assert "1 exact duplicate pair(s) between sources site-a and site-b" in out
    summary = p.summary()
    assert summary["sources"] == {k: str(v) for k, v in two_sources.items()}
    rows = {(r["source"], r["class"]): r for r in summary["source_counts"]}
    assert rows[("site-b", "TB")]["all"] == int(((split["source"] == "site-b") & (split["label"] == 1)).sum())


def test_split_csv_carries_the_source_and_a_resume_reads_it_back(two_sources, tmp_path):
    first = prepared(two_sources, tmp_path)
    saved = pd.read_csv(tmp_path / "multi" / "split.csv")
    assert list(saved.columns[:2]) == ["path", "source"]
    again = runfolder.choose_split(SearchConfig(data=two_sources, results=tmp_path, name="multi", resume=True),
                                   runfolder.discover(SearchConfig(data=two_sources, min_image_size=32))[1])
    assert dict(zip(again["path"], again["split"])) == dict(zip(first.split["path"], first.split["split"]))
    assert dict(zip(again["path"], again["source"])) == dict(zip(first.split["path"], first.split["source"]))


def test_a_split_made_before_sources_still_reads(tmp_path):
    root = demo.make(tmp_path / "one", n_images=72, size=48)
    cfg = SearchConfig(data=root, min_image_size=32)
    files = runfolder.discover(cfg)[1].files
    old = dataset.make_split(files.drop(columns="source"), 0)
    old[dataset.SPLIT_COLUMNS + ["phash"]].to_csv(tmp_path / "old.csv", index=False)  # no source column
    read = dataset.read_split(tmp_path / "old.csv", files)
    assert set(read["source"]) == {"one"} and len(read) == len(files)
    # One source splits exactly as before sources existed.
    assert dict(zip(read["path"], read["split"])) == dict(zip(*dataset.make_split(files, 0)[["path", "split"]].T.values))


def test_too_few_images_of_a_class_in_one_source_is_refused_naming_it(tmp_path):
    a = demo.make(tmp_path / "a", n_images=72, size=48)
    b = demo.make(tmp_path / "b", n_images=30, size=48, tb_fraction=0.2, seed=4)  # 6 TB: too few to split
    with pytest.raises(UserError, match="b:TB.*need 10 per class in each source"):
        prepared({"a": a, "b": b}, tmp_path)


def test_data_options_name_sources_and_selection_needs_two(tmp_path):
    args = cli.parser().parse_args(["--data", f"site={tmp_path}", "--data", str(tmp_path / "tbdb-dev")])
    cfg = cli.to_config(args)
    assert list(cfg.data) == ["site", "tbdb-dev"] and cfg.selection == "worst-source"
    assert cfg.objective == "worst_val_loss"
    one = cli.to_config(cli.parser().parse_args(["--data", str(tmp_path)]))
    assert one.selection == "pooled" and one.objective == "val_loss" and list(one.data) == [tmp_path.name]
    with pytest.raises(UserError, match="--selection leave-source-out compares sources: give two or more --data"):
        cli.to_config(cli.parser().parse_args(["--data", str(tmp_path), "--selection", "leave-source-out"]))
    with pytest.raises(UserError, match="--data names must differ"):
        cli.to_config(cli.parser().parse_args(["--data", f"x={tmp_path}", "--data", f"x={tmp_path}/y"]))


def test_resume_keeps_the_sources_it_started_with(two_sources, tmp_path):
    prepared(two_sources, tmp_path, selection="leave-source-out")
    again = runfolder.for_resume(SearchConfig(results=tmp_path, name="multi", resume=True))
    assert again.data == two_sources and again.selection == "leave-source-out"
    moved = {"site-a": two_sources["site-a"], "site-c": two_sources["site-b"]}
    with pytest.raises(UserError, match="name the same sources"):
        runfolder.for_resume(SearchConfig(data=moved, results=tmp_path, name="multi", resume=True))


def test_each_rule_ranks_crafted_scores_as_it_says():
    # Source 0 is easy (perfectly ranked), source 1 is inverted: pooled hides it, worst-source does not.
    labels = np.array([0, 0, 1, 1] * 2 + [0] * 12)
    scores = np.array([0.1, 0.2, 0.8, 0.9, 0.9, 0.8, 0.2, 0.1] + [0.05] * 12)
    codes = np.array([0] * 4 + [1] * 4 + [0] * 12)
    by = selection.per_source(labels, scores, codes, ["easy", "inverted"])
    assert by["easy"]["val_auroc"] == 1.0 and by["inverted"]["val_auroc"] == 0.0
    worst = selection.worst_source(by)
    assert worst["worst_val_auroc"] == 0.0 and worst["worst_val_loss"] == by["inverted"]["val_loss"]
    assert worst["worst_val_loss"] > by["easy"]["val_loss"]
    flat = selection.flat(by)
    assert flat["val_auroc/inverted"] == 0.0 and flat["val_loss/easy"] == by["easy"]["val_loss"]
    # Leave-source-out: the mean over the left-out folds, each fold's own figure kept.
    held = selection.heldout({"a": {"epoch": 1, "val_loss": 0.2, "val_auroc": 0.9, "val_n": 80},
                              "b": {"epoch": 1, "val_loss": 0.6, "val_auroc": 0.5, "val_n": 300}})
    assert held["heldout_val_loss"] == pytest.approx(0.4) and held["heldout_val_auroc"] == pytest.approx(0.7)
    assert held["val_auroc/b"] == 0.5 and "heldout_epoch" not in held
    assert held["val_n/a"] == 80 and "heldout_val_n" not in held  # counts are kept per source, not averaged
    detail = selection.left_out_detail(labels, scores, seed=0)
    assert detail["val_n"] == 20 and detail["val_n_tb"] == 4
    assert detail["val_auroc_ci_low"] <= skm_auroc(labels, scores) <= detail["val_auroc_ci_high"]
    assert [objective("val_auroc", r) for r in ("pooled", "worst-source", "leave-source-out")] == [
        "val_auroc", "worst_val_auroc", "heldout_val_auroc"]


def test_test_figures_per_source_and_the_report_section():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(40), np.ones(20), np.zeros(30), np.ones(10)].astype(int)
    scores = np.r_[rng.uniform(0, 0.5, 40), rng.uniform(0.5, 1, 20), rng.uniform(0, 1, 40)]
    names = np.array(["a"] * 60 + ["b"] * 40)
    by = assess.by_source(labels, scores, names, threshold=0.5, n_resamples=200)
    assert by["a"]["auroc"]["value"] == 1.0 and by["a"]["n"] == 60 and by["a"]["n_tb"] == 20
    assert by["b"]["auroc"]["ci_low"] < by["b"]["auroc"]["value"] < by["b"]["auroc"]["ci_high"]
    one_class = assess.by_source(labels[:40], scores[:40], names[:40], threshold=0.5, n_resamples=50)
    assert "error" in one_class["a"]
    chosen = {"chosen_trial_id": "t1", "chosen_epoch": 2, "objective": "heldout_val_loss", "value": 0.4,
              "left_out": {"val_auroc/a": 0.91, "val_loss/a": 0.3, "val_auroc/b": 0.55, "val_loss/b": 0.5}}
    evaluation = assess.test(labels, scores, labels, scores, n_resamples=200)
    external = {"far": {"n": 50, "n_tb": 40, "auroc": 0.38, "auroc_ci": [0.30, 0.45], "sensitivity": 0.9,
                        "sensitivity_ci": [0.8, 0.95], "specificity": 0.1, "specificity_ci": [0.03, 0.25],
                        "average_precision": 0.75},
                "near": {"n": 50, "n_tb": 10, "auroc": 0.6, "auroc_ci": [0.45, 0.75], "sensitivity": 0.5,
                         "sensitivity_ci": [0.2, 0.8], "specificity": 0.6, "specificity_ci": [0.45, 0.73],
                         "average_precision": 0.3}}
    report = {"evaluation": evaluation, "external": external,
              "sources": {"names": ["a", "b"], "selection": "leave-source-out", "test": by, "chosen": chosen}}
    text = "\n".join(transfer_section.section(report))
    assert text.startswith("## How far the figures travel") and "Trained on 2 sources: a, b" in text
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "| 60 | 20 | 1.000 [" in rows["internal test: a"]
    assert "**Below chance**" in rows["external: far (never trained on)"]
    assert "0.750 (chance 0.800)" in rows["external: far (never trained on)"]  # AP beside its prevalence
    assert "**Near chance**" in rows["external: near (never trained on)"]
    assert rows["left out: b (validation, while not trained on)"].startswith("| left out: b (validation, while not trained on) |  |  | 0.550 |")
