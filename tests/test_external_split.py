"""Tests for tbray.data.external_split with TB-Net-format split files written in tmp_path."""

import pandas as pd
import pytest

from tbray.data import external_split as ext

# Headerless filename,label lines, as in darwinai/TuberculosisNet's *_split.csv.
TRAIN = "Normal-1.png,0\nTB-1.png,1\nNormal-2.png,0\nTB-2.png,1\n"
VAL = "Normal-3.png,0\nTB-3.png,1\n"
TEST = "Normal-4.png,0\nTB-4.png,1\nTB-2563.png,1\n"  # TB-2563 has no public counterpart


def write_split(folder, train=TRAIN, val=VAL, test=TEST):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("train_split.csv", train), ("val_split.csv", val), ("test_split.csv", test)):
        (folder / name).write_text(text)
    return folder


def disk_files(normal=range(1, 6), tb=range(1, 5)):
    rows = [{"path": f"Normal/Normal-{i}.png", "label": 0} for i in normal]
    rows += [{"path": f"Tuberculosis/Tuberculosis-{i}.png", "label": 1} for i in tb]
    return pd.DataFrame(rows)


def test_is_external_split(tmp_path):
    assert not ext.is_external_split(tmp_path)
    folder = write_split(tmp_path / "tbnet")
    assert ext.is_external_split(folder)
    assert ext.is_external_split(folder / "val_split.csv")
    assert not ext.is_external_split(folder / "nope.csv")
    (folder / "val_split.csv").unlink()
    assert not ext.is_external_split(folder)


def test_read_gives_filename_label_split(tmp_path):
    df = ext.read(write_split(tmp_path))
    assert list(df.columns) == ["filename", "label", "split"]
    assert len(df) == 9
    assert df.groupby("split").size().to_dict() == {"test": 3, "train": 4, "val": 2}
    assert df.set_index("filename").loc["TB-3.png"].tolist() == [1, "val"]
    assert ext.read(tmp_path / "train_split.csv").equals(df)  # path to one file reads all three


def test_match_assigns_splits_and_reports_missing(tmp_path):
    files = disk_files()
    result = ext.match(ext.read(write_split(tmp_path)), files)
    matched, missing, unused = result  # also unpacks as a plain 3-tuple
    assert missing == ["TB-2563.png"]
    assert unused == 1  # Normal-5.png is on disk but not in the split
    assert list(matched.columns) == ["path", "label", "split"]
    got = dict(zip(matched["path"], zip(matched["split"], matched["label"])))
    assert got == {
        "Normal/Normal-1.png": ("train", 0),
        "Normal/Normal-2.png": ("train", 0),
        "Normal/Normal-3.png": ("val", 0),
        "Normal/Normal-4.png": ("test", 0),
        "Tuberculosis/Tuberculosis-1.png": ("train", 1),
        "Tuberculosis/Tuberculosis-2.png": ("train", 1),
        "Tuberculosis/Tuberculosis-3.png": ("val", 1),
        "Tuberculosis/Tuberculosis-4.png": ("test", 1),
    }
    assert matched["path"].tolist() == [p for p in files["path"] if p in got]  # files' order kept


def test_match_label_conflict_names_the_file(tmp_path):
    split = ext.read(write_split(tmp_path, val="Normal-3.png,1\nTB-3.png,1\n"))
    with pytest.raises(ValueError, match=r"Normal-3\.png.*label 1.*Normal/Normal-3\.png.*label 0"):
        ext.match(split, disk_files())


def test_name_key_aliases_and_older_tbnet_names():
    key = ext.name_key
    assert key("TB-12.png") == key("Tuberculosis-12.png") == key("tuberculosis/TUBERCULOSIS-12.PNG")
    assert key("data/TB (12).png") == key("Tuberculosis-12.png")
    assert key("Normal (7).jpg") == key("Normal/Normal-7.png")
    assert key("Normal-7.png") != key("Normal-17.png") != key("TB-7.png")
    assert key("something_else.png") == "something_else"


def test_match_accepts_header_and_class_names(tmp_path):
    header_and_names = "filename,label\nNormal-1.png,Normal\nTB-1.png,Tuberculosis\n"
    write_split(tmp_path, train=header_and_names, val="Normal-2.png,0\n", test="TB-2.png,1\n")
    matched, missing, unused = ext.match(ext.read(tmp_path), disk_files(normal=[1, 2], tb=[1, 2]))
    assert missing == [] and unused == 0 and len(matched) == 4


@pytest.mark.parametrize(
    "train, message",
    [
        ("Normal-1.png,2\n", r"train_split\.csv: unknown label '2'"),
        ("", r"train_split\.csv: empty"),
        ("Normal-1.png\n", r"train_split\.csv: expected 2 columns"),
        ("Normal-3.png,0\n", r"'Normal-3\.png' is listed more than once: train.*val"),
    ],
)
def test_read_bad_files_name_the_file(tmp_path, train, message):
    write_split(tmp_path, train=train)
    with pytest.raises(ValueError, match=message):
        ext.read(tmp_path)


def test_read_missing_file_names_it(tmp_path):
    write_split(tmp_path)
    (tmp_path / "test_split.csv").unlink()
    with pytest.raises(ValueError, match=r"test_split\.csv: missing"):
        ext.read(tmp_path)


def test_match_rejects_ambiguous_disk_names(tmp_path):
    files = pd.concat([disk_files(), pd.DataFrame([{"path": "extra/Normal-1.png", "label": 0}])], ignore_index=True)
    with pytest.raises(ValueError, match=r"Normal/Normal-1\.png: same file name as extra/Normal-1\.png"):
        ext.match(ext.read(write_split(tmp_path)), files)
