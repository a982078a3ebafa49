"""Bad data and bad options through the real command line: exit code 2 and one readable line, no traceback.

Every case must fail before Ray starts (options in cli.to_config, data in search.start.check, both before
cluster.connect). As a safety net each run is pointed at an unreachable --address: a regression that got
past the checks would hang on that address (and time out) rather than start a Ray of its own.

Each run pays for Python imports (~1 s; ~5 s with torch and timm, for a case past the folders' places), so
the runs are started two at a time
by one module fixture and each test reads its own run's result.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import TINY
from PIL import Image

from tbray.data import demo

NOWHERE = ["--address", "127.0.0.1:1"]


def build(base: Path) -> dict[str, Path]:
    """Every folder and file the cases point at."""
    p = {"base": base, "results": base / "results"}
    p["good"] = demo.make(base / "good" / "TB_Chest_Radiography_Database", n_images=72, size=64)

    junk = base / "junk"
    (junk / "stuff").mkdir(parents=True)
    (junk / "a.bin").write_bytes(os.urandom(300))
    (junk / "b.txt").write_text("hello")
    Image.new("L", (64, 64), 5).save(junk / "stuff" / "c.png")
    p["junk"] = junk

    one = base / "one"
    (one / "Normal").mkdir(parents=True)
    for i in range(3):
        Image.new("L", (64, 64), 10 * i).save(one / "Normal" / f"n{i}.png")
    p["one"] = one

    empty = base / "emptyclass"
    (empty / "Normal").mkdir(parents=True)
    (empty / "Tuberculosis").mkdir()
    for i in range(3):
        Image.new("L", (64, 64), 10 * i).save(empty / "Normal" / f"n{i}.png")
    p["emptyclass"] = empty

    broken = base / "broken"
    (broken / "Normal").mkdir(parents=True)
    (broken / "Tuberculosis").mkdir()
    for i in range(3):
        Image.new("L", (64, 64), 10 * i).save(broken / "Normal" / f"n{i}.png")
    good_png = (broken / "Normal" / "n1.png").read_bytes()
    (broken / "Tuberculosis" / "zero.png").write_bytes(b"")
    (broken / "Tuberculosis" / "text.png").write_text("not a png")
    (broken / "Tuberculosis" / "half.png").write_bytes(good_png[: len(good_png) // 2])
    p["broken"] = broken

    existing = p["results"] / "taken"
    (existing / "tune").mkdir(parents=True)  # trials ran here
    (existing / "split.csv").write_text("path,label,split,sha256\n")

    mangled = p["results"] / "mangled"  # a run folder whose options file tbray did not write
    mangled.mkdir(parents=True)
    (mangled / "search.json").write_text('{"space": 3}')

    p["randomcsv"] = base / "random.csv"
    p["randomcsv"].write_text("x,y,z\n1,2,3\n4,5,6\n")
    return p


# name -> (arguments, given the paths; what the one error line must contain, given the paths)
CASES = {
    "missing_data_folder": (lambda p: ["--data", p["base"] / "nope", *TINY, *NOWHERE],
                            lambda p: f"{p['base'] / 'nope'}: data folder not found"),
    "not_a_data_set": (lambda p: ["--data", p["junk"], *TINY, *NOWHERE],
                       lambda p: f"{p['junk']}: not a TB chest X-ray data set"),
    "only_one_class": (lambda p: ["--data", p["one"], *TINY, *NOWHERE],
                       lambda p: f"{p['one']}: only one class present; no Tuberculosis/ folder"),
    "empty_class_folder": (lambda p: ["--data", p["emptyclass"], *TINY, *NOWHERE],
                           lambda p: f"{p['emptyclass'] / 'Tuberculosis'}: class folder is empty"),
    "every_file_of_a_class_broken": (lambda p: ["--data", p["broken"], *TINY, *NOWHERE],
                                     lambda p: f"{p['broken'] / 'Tuberculosis'}: class folder has no usable image"),
    "unknown_model": (lambda p: ["--data", p["good"], *TINY, "--model", "resnet_nope", *NOWHERE],
                      lambda p: "unknown model 'resnet_nope'"),
    "not_an_efficientnet": (lambda p: ["--data", p["good"], *TINY, "--model", "resnet18", *NOWHERE],
                            lambda p: "model 'resnet18' is not an EfficientNet"),
    "lr_range_reversed": (lambda p: ["--data", p["good"], *TINY, "--lr-range", "1", "0", *NOWHERE],
                          lambda p: "--lr-range needs 0 < MIN <= MAX, both finite, got 1.0 0.0"),
    "lr_range_infinite": (lambda p: ["--data", p["good"], *TINY, "--lr-range", "1e-3", "inf", *NOWHERE],
                          lambda p: "--lr-range needs 0 < MIN <= MAX, both finite, got 0.001 inf"),
    "seed_negative": (lambda p: ["--data", p["good"], *TINY, "--seed", "-1", *NOWHERE],
                      lambda p: "--seed must be in [0, 2**32), got -1"),
    "target_sensitivity_above_one": (lambda p: ["--data", p["good"], *TINY, "--target-sensitivity", "2", *NOWHERE],
                                     lambda p: "--target-sensitivity must be in (0, 1], got 2.0"),
    "gpu_fraction_above_one": (lambda p: ["--data", p["good"], *TINY, "--gpus-per-trial", "1.5", *NOWHERE],
                               lambda p: "--gpus-per-trial 1.5: a GPU fraction is for one-worker trials only"),
    "data_and_demo": (lambda p: ["--data", p["good"], "--demo", *TINY, *NOWHERE],
                      lambda p: "--data and --demo exclude each other"),
    "external_not_a_data_set": (lambda p: ["--data", p["good"], *TINY, "--external", f"site={p['junk']}", *NOWHERE],
                                lambda p: f"--external site: {p['junk']}: not a TB chest X-ray data set"),
    "external_one_class": (lambda p: ["--data", p["good"], *TINY, "--external", f"site={p['one']}", *NOWHERE],
                           lambda p: f"--external site: {p['one']}: only one class present"),
    "external_empty_class": (lambda p: ["--data", p["good"], *TINY, "--external", f"x={p['emptyclass']}", *NOWHERE],
                             lambda p: f"--external x: {p['emptyclass'] / 'Tuberculosis'}: class folder is empty"),
    "results_is_a_file": (lambda p: ["--data", p["good"], *TINY, "--results", p["randomcsv"], *NOWHERE],
                          lambda p: f"{p['randomcsv']}: --results is a file, not a folder"),
    "resume_without_name": (lambda p: ["--resume", "--results", p["results"], *NOWHERE],
                            lambda p: "--resume needs --name NAME"),
    "resume_unknown_name": (lambda p: ["--resume", "--name", "ghost", "--results", p["results"], *NOWHERE],
                            lambda p: f"{p['results'] / 'ghost'}: no search to resume there"),
    "resume_unreadable_options": (lambda p: ["--resume", "--name", "mangled", "--results", p["results"], *NOWHERE],
                                  lambda p: f"{p['results'] / 'mangled' / 'search.json'}: can't be read as the "
                                            "search's options"),
    "existing_run_folder": (lambda p: ["--data", p["good"], *TINY, "--results", p["results"], "--name", "taken",
                                       *NOWHERE],
                            lambda p: f"{p['results'] / 'taken'}: run folder exists; pass --resume"),
    "split_file_not_a_split": (lambda p: ["--data", p["good"], *TINY, "--split-file", p["randomcsv"], *NOWHERE],
                               lambda p: f"{p['randomcsv']}: not a split file, missing column(s) "
                                         f"label, path, sha256, split"),
}

# argparse rejects these itself: exit 2 with its usage text, which is fine.
ARGPARSE_CASES = {
    "epochs_zero": (["--epochs", "0"], "argument --epochs: expected positive integers, got '0'"),
    "epochs_not_numbers": (["--epochs", "a,b"], "argument --epochs: expected comma-separated integers, got 'a,b'"),
    "external_without_name": (["--external", "folder"], "argument --external: expected NAME=PATH, got 'folder'"),
}


@pytest.fixture(scope="module")
def runs(run_cli, tmp_path_factory):
    base = tmp_path_factory.mktemp("bad")
    paths = build(base)
    results = base / "default-results"  # cases without --results must not write into the repo
    with ThreadPoolExecutor(2) as pool:
        futures = {
            **{name: pool.submit(run_cli, *args(paths), *([] if "--results" in map(str, args(paths))
                                                          else ["--results", results]), timeout=300)
               for name, (args, _) in CASES.items()},
            **{name: pool.submit(run_cli, *args, "--results", results, timeout=300)
               for name, (args, _) in ARGPARSE_CASES.items()},
        }
        yield paths, futures
        for future in futures.values():
            future.cancel()


@pytest.mark.parametrize("case", CASES)
def test_user_error_is_one_line_and_exit_2(case, runs):
    paths, futures = runs
    done = futures[case].result()
    expected = CASES[case][1](paths)
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("tbray: error: "), lines[0]
    assert expected in lines[0], (expected, lines[0])
    assert "Ray dashboard" not in done.stdout and "weights from" not in done.stdout


@pytest.mark.parametrize("case", ARGPARSE_CASES)
def test_argparse_rejects_bad_option_values(case, runs):
    _, futures = runs
    done = futures[case].result()
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"tune/search.py: error: {ARGPARSE_CASES[case][1]}"


def test_nothing_was_written_for_refused_runs(runs):
    """A refused run leaves no run folder behind (only the pre-made ones exist, as they were)."""
    paths, futures = runs
    for future in futures.values():
        future.result()
    assert sorted(p.name for p in paths["results"].iterdir()) == ["mangled", "taken"]
    assert sorted(p.name for p in (paths["results"] / "taken").iterdir()) == ["split.csv", "tune"]
    assert [p.name for p in (paths["results"] / "mangled").iterdir()] == ["search.json"]
    assert (paths["results"] / "mangled" / "search.json").read_text() == '{"space": 3}'
    default = paths["base"] / "default-results"
    assert not default.exists() or not any(default.iterdir())
