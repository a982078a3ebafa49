"""Nothing lost, round three (issue 25): split files that can't leak, folders that don't vanish, films read
upright. Each test fails without its fix."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tbray.data import dataset, demo
from tbray.errors import UserError


@pytest.fixture(scope="module")
def demo72(tmp_path_factory):
    return demo.make(tmp_path_factory.mktemp("d72") / "db", n_images=72, size=64)


@pytest.fixture
def split_csv(demo72, tmp_path):
    files = dataset.discover(demo72, min_side=32).files
    dataset.write_split(dataset.make_split(files, 0), tmp_path / "split.csv")
    return files, tmp_path / "split.csv"


def doctored(csv, change) -> pd.DataFrame:
    table = pd.read_csv(csv, dtype={"path": str, "sha256": str, "label": object})
    table = change(table)
    table.to_csv(csv, index=False)
    return table


def test_a_file_in_two_splits_is_refused(split_csv):
    files, csv = split_csv
    train_row = lambda t: t[t["split"] == "train"].iloc[[0]]  # noqa: E731
    doctored(csv, lambda t: pd.concat([t, train_row(t).assign(split="test")]))
    with pytest.raises(UserError, match=r"1 file\(s\) in more than one split, first .* in train and test; a file "
                                        "belongs to one split"):
        dataset.read_split(csv, files)


def test_repeated_rows_are_refused(split_csv):
    files, csv = split_csv
    doctored(csv, lambda t: pd.concat([t, t.iloc[[3]]]))
    with pytest.raises(UserError, match=r"1 row\(s\) repeated, first .*; keep one row per file"):
        dataset.read_split(csv, files)


@pytest.mark.parametrize("label", ["7", "abc", "-1"])
def test_labels_other_than_0_and_1_are_refused(split_csv, label):
    files, csv = split_csv
    doctored(csv, lambda t: t.assign(label=[label] + list(t["label"][1:])))
    with pytest.raises(UserError, match=f"label '{label}' for .* labels are 0 \\(Normal\\) or 1 \\(Tuberculosis\\)"):
        dataset.read_split(csv, files)


def test_labels_that_contradict_the_class_folder_are_refused(split_csv):
    files, csv = split_csv
    doctored(csv, lambda t: t.assign(label=[1 - int(v) for v in t["label"]]))  # every label flipped
    with pytest.raises(UserError, match=r"72 label\(s\) contradict the class folder, first .* labelled 1 in a Normal "
                                        "folder"):
        dataset.read_split(csv, files)
    # The split as written still reads, labels as integers.
    dataset.write_split(dataset.make_split(files, 0), csv)
    assert dataset.read_split(csv, files)["label"].dtype == np.int64


def test_a_linked_folder_inside_a_class_folder_is_followed_and_a_loop_is_listed(demo72, tmp_path):
    root = shutil.copytree(demo72, tmp_path / "db")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for i in range(5):
        shutil.copy(root / "Normal" / f"Normal-{i + 1}.png", elsewhere / f"more-{i}.png")
        (root / "Normal" / f"Normal-{i + 1}.png").unlink()  # so the linked copies are no duplicates of used files
    os.symlink(elsewhere, root / "Normal" / "more")
    os.symlink(root / "Normal", root / "Normal" / "loop")  # a link back up: must end, and say so
    found = dataset.discover(root, min_side=32)
    assert sum(p.startswith("Normal/more/") for p in found.files["path"]) == 5
    loop = found.skipped[found.skipped["path"] == "Normal/loop"]
    assert len(loop) == 1 and "already listed" in loop["reason"].iloc[0]


def test_exif_orientation_is_applied_when_reading(tmp_path):
    upright = np.zeros((40, 80), np.uint8)  # wide: 80 across, 40 down
    upright[:, :10] = 255  # a bright band on the left edge
    stored = Image.fromarray(np.rot90(upright, k=1).copy())  # stored turned (40 wide, 80 high)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    stored.save(tmp_path / "film.jpg", exif=exif, quality=100)
    read = dataset.load_gray(tmp_path / "film.jpg")
    assert read.shape == (40, 80)
    assert read[:, :10].mean() > 200 and read[:, 20:].mean() < 50
