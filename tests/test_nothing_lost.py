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


def test_an_unwritable_destination_is_one_line_and_leaves_no_temporary_file(tmp_path):
    from tbray import outputs

    missing = tmp_path / "no-such-folder" / "report.md"
    with pytest.raises(UserError, match=r"no-such-folder/report.md: can't be written \(No such file or directory\)"):
        outputs.write_atomic(missing, "text")
    target = tmp_path / "taken"
    target.mkdir()  # a folder where the file should go: the rename fails after the write
    with pytest.raises(UserError, match="taken: can't be written"):
        outputs.write_atomic(target, "text")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no .taken.<pid>.tmp left


def test_copied_ray_logs_and_the_token_are_not_open_to_other_users(tmp_path):
    from tbray.rayops import cluster
    from tbray.search import console

    session = tmp_path / "session"
    (session / "logs" / "events").mkdir(parents=True)
    (session / "logs" / "raylet.out").write_text("log")
    for path in (session / "logs", session / "logs" / "events", session / "logs" / "raylet.out"):
        path.chmod(0o777)  # as Ray leaves its log folders
    copied = console.keep_ray_logs(str(session), tmp_path / "run")
    for path in [copied, *copied.rglob("*")]:
        assert not path.stat().st_mode & 0o022, path
    token = tmp_path / "auth_token"
    token.write_text("secret")
    token.chmod(0o644)  # as Ray writes it
    assert cluster.tighten_token(token) and token.stat().st_mode & 0o777 == 0o600
    assert not cluster.tighten_token(token)  # already private: left alone


def test_a_local_ray_that_fails_to_start_is_one_line_exit_2(run_cli, tiny_data, tmp_path):
    from conftest import TINY

    blocked = tmp_path / "a-file"
    blocked.write_text("")  # Ray's temporary folder can't be made under a file
    done = run_cli("--data", tiny_data, "--results", tmp_path, "--name", "x", "--num-samples", "1", *TINY,
                   env={"RAY_TMPDIR": str(blocked / "ray"), "RAY_ADDRESS": ""})  # a Ray of its own, not the session's
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith("tbray: error: the local Ray did not start (")
    assert "Traceback" not in done.stderr and "try again" in done.stderr


def test_a_formula_in_a_file_name_reaches_no_spreadsheet_as_a_formula(tmp_path):
    from tbray.outputs import spreadsheet_safe
    from tbray.predict.local import Results

    table = spreadsheet_safe(pd.DataFrame({"path": ["=1+1", "+x", "-y", "@z", "a=b"], "score": [-0.5] * 5}))
    assert table["path"].tolist() == ["'=1+1", "'+x", "'-y", "'@z", "a=b"] and (table["score"] == -0.5).all()
    # predict's CSV: a path typed as "=cmd|' -C calc'!A0.png" (run from the images' folder) is written inert.
    results = Results(tmp_path / "p.csv")
    results.add(pd.DataFrame({"path": ["=cmd|' -C calc'!A0.png"], "p_tb": [0.7], "prediction": ["Tuberculosis"],
                              "error": [None], "threshold": [0.5]}))
    results.finish([tmp_path])
    assert pd.read_csv(tmp_path / "p.csv")["path"].tolist() == ["'=cmd|' -C calc'!A0.png"]


def _ended_pid() -> int:
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_stale_temporary_files_of_killed_commands_go_and_an_interrupted_write_leaves_none(tmp_path, monkeypatch):
    from tbray import outputs

    target = tmp_path / "site.pt"
    stale = tmp_path / f".site.pt.{_ended_pid()}.tmp"  # SIGKILL during calibrate.py runs no cleanup
    live = tmp_path / f".site.pt.{os.getppid()}.tmp"  # a live process's write in progress is not ours to touch
    other = tmp_path / f".other.pt.{_ended_pid()}.tmp"  # another output's leftovers: that command's to clear
    for path in (stale, live, other):
        path.write_bytes(b"half a model")
    outputs.write_atomic(target, b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, live.name, other.name])

    def killed(*_):  # Ctrl-C or SIGTERM (KeyboardInterrupt through tbray's handler) during the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        outputs.write_atomic(tmp_path / "m.onnx", b"graph")
    assert not list(tmp_path.glob(".m.onnx.*.tmp")) and not (tmp_path / "m.onnx").exists()


@pytest.fixture
def evaluation(tmp_path):
    """An evaluation set as tune/evaluate.py writes it, and the arguments that would write it again."""
    from tbray import outputs

    names = ["external-site_scores.csv", "external-site.md", "external-site.json"]
    manifest = tmp_path / "external-site.sha256"
    outputs.write_set({tmp_path / n: f"first {n}" for n in names}, manifest)
    return tmp_path, names, manifest


def test_an_evaluation_is_one_set_and_a_kill_mid_replace_is_seen_as_cut_off(evaluation, tmp_path, monkeypatch):
    from tbray import outputs
    from tbray.external import site

    folder, names, manifest = evaluation
    assert outputs.set_problem(manifest, names) is None
    # A kill between the renames of --replace: the new scores beside the old page and .json (40 vs 60 images).
    renames = []

    def killed_after_one(src, dst):
        if renames:
            raise KeyboardInterrupt
        renames.append(dst)
        os.rename(src, dst)

    monkeypatch.setattr(os, "replace", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        outputs.write_set({folder / n: f"second {n}" for n in names}, manifest)
    monkeypatch.undo()
    assert (folder / names[0]).read_text() == f"second {names[0]}" and (folder / names[2]).read_text() == f"first {names[2]}"
    assert not list(folder.glob(".*.tmp"))
    assert outputs.set_problem(manifest, names) == f"{', '.join(names)} without the manifest external-site.sha256 written last"
    # The next evaluate says so, before reading the model (which here does not even exist).
    with pytest.raises(UserError, match=r"external-site.json: the evaluation named 'site' there is not whole: .* "
                                        r"without the manifest .*; pass --replace to write it again"):
        site.evaluate(tmp_path / "no-model.pt", tmp_path, "site")
    # A file changed after the manifest was written is seen too.
    outputs.write_set({folder / n: f"third {n}" for n in names}, manifest)
    (folder / names[1]).write_text("edited")
    assert outputs.set_problem(manifest, names) == ("external-site.md is not the file its manifest "
                                                    "external-site.sha256 records (cut off, or changed since)")


def test_two_evaluations_under_one_name_cannot_both_write(evaluation, tmp_path, capfd):
    """The second waits for the first (a lock on the folder), then finds its set and refuses to write over it."""
    import threading
    import time

    from tbray import outputs
    from tbray.external import site

    folder, names, manifest = evaluation
    for name in names + [manifest.name]:
        (folder / name).unlink()
    first_in = threading.Event()

    def first():  # an evaluation still scoring, which writes its set at the end
        with outputs.held(folder, "an evaluation"):
            first_in.set()
            time.sleep(1.5)
            outputs.write_set({folder / n: f"first {n}" for n in names}, manifest)

    writer = threading.Thread(target=first)
    writer.start()
    first_in.wait()
    began = time.monotonic()
    with pytest.raises(UserError, match="external-site.json: an evaluation named 'site' is already there"):
        site.evaluate(tmp_path / "no-model.pt", tmp_path, "site")
    writer.join()
    assert time.monotonic() - began >= 1.0  # it waited for the first, then saw its files
    assert "tbray: waiting for another command writing an evaluation (external-site.json) in" in capfd.readouterr().err
    assert outputs.set_problem(manifest, names) is None and not list(folder.glob(".*"))  # the first's set, whole
