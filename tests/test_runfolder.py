"""The run folder's data decisions, without Ray: external splits matched by name, leftover leakage
warned about, the options saved for --resume."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from tbray.config import SearchConfig
from tbray.data import demo
from tbray.errors import UserError
from tbray.runs import runfolder


@pytest.fixture
def data(tmp_path):
    return demo.make(tmp_path / "TB_Chest_Radiography_Database", n_images=72, size=64)


def test_tbnet_split_files_are_matched_and_missing_ones_reported(data, tmp_path, capsys):
    folder = tmp_path / "tbnet"
    folder.mkdir()
    names = {"train": [f"Normal-{i}.png,0" for i in range(1, 31)] + [f"TB-{i}.png,1" for i in range(1, 7)],
             "val": [f"Normal-{i}.png,0" for i in range(31, 41)] + ["TB-7.png,1", "TB-8.png,1"],
             "test": [f"Normal-{i}.png,0" for i in range(41, 61)] + ["TB-9.png,1", "TB-10.png,1", "TB-2563.png,1"]}
    for split, rows in names.items():
        (folder / f"{split}_split.csv").write_text("\n".join(rows) + "\n")
    cfg = SearchConfig(data=data, results=tmp_path / "results", name="tbnet", split_file=folder, min_image_size=32)
    prepared = runfolder.prepare(cfg)
    out = capsys.readouterr().out
    assert "1 file(s) named in" in out and "TB-2563.png" in out
    split = pd.read_csv(tmp_path / "results" / "tbnet" / "split.csv")
    assert len(split) == 70  # the 60 Normal and 10 TB named and on disk; TB 11-12 are not named
    assert split.loc[split["path"] == "Tuberculosis/Tuberculosis-9.png", "split"].item() == "test"
    assert split.loc[split["path"] == "Normal/Normal-35.png", "split"].item() == "val"
    assert prepared.cross_split_duplicates.empty


def test_duplicates_left_across_splits_by_a_split_file_are_warned_about(data, tmp_path, capsys):
    shutil.copy(data / "Normal" / "Normal-1.png", data / "Normal" / "Normal-copy.png")
    cfg = SearchConfig(data=data, results=tmp_path / "results", name="first", min_image_size=32)
    split = runfolder.prepare(cfg).split
    pair = split[split["path"].isin(["Normal/Normal-1.png", "Normal/Normal-copy.png"])]
    assert pair["split"].nunique() == 1  # a new split keeps the copies together
    forced = split.copy()
    forced.loc[forced["path"] == "Normal/Normal-1.png", "split"] = "train"
    forced.loc[forced["path"] == "Normal/Normal-copy.png", "split"] = "test"
    forced[["path", "label", "split", "sha256"]].to_csv(tmp_path / "forced.csv", index=False)
    capsys.readouterr()
    cfg = SearchConfig(data=data, results=tmp_path / "results", name="forced", split_file=tmp_path / "forced.csv",
                       min_image_size=32)
    prepared = runfolder.prepare(cfg)
    assert "WARNING 1 duplicate pair(s) across splits" in capsys.readouterr().out
    row = prepared.cross_split_duplicates.iloc[0]
    assert {row["path_a"], row["path_b"]} == {"Normal/Normal-1.png", "Normal/Normal-copy.png"}
    assert row["kind"] == "exact"
    assert prepared.summary()["duplicates"], "the report lists them"


def test_saved_options_come_back_for_resume(data, tmp_path):
    cfg = SearchConfig(data=data, results=tmp_path, name="saved", num_samples=3, min_image_size=32)
    runfolder.prepare(cfg)
    again = runfolder.for_resume(SearchConfig(results=tmp_path, name="saved", resume=True))
    assert again.num_samples == 3 and again.data == {data.name: data} and again.resume
    (tmp_path / "saved" / "tune").mkdir()  # once trials have run there, a new search may not use the name
    with pytest.raises(UserError, match="run folder exists"):
        runfolder.prepare(cfg)


def test_a_start_that_stopped_before_its_first_trial_does_not_block_a_retry(data, tmp_path, capsys):
    first = SearchConfig(data=data, results=tmp_path, name="retry", gpus_per_trial=4, min_image_size=32)
    runfolder.prepare(first)  # ...and then the cluster had no GPU for it: nothing trained
    runfolder.release()
    retry = SearchConfig(data=data, results=tmp_path, name="retry", gpus_per_trial=0, seed=1, min_image_size=32)
    runfolder.prepare(retry)
    runfolder.release()
    assert "holds no trial" in capsys.readouterr().out
    assert runfolder.load_config(tmp_path / "retry").gpus_per_trial == 0  # the retry's options, not the first's
