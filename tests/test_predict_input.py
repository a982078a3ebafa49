"""tune/predict.py does not trust the model file or the folder it is given: one line and exit 2 for each."""

from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import REPO
from PIL import Image

from tbray.errors import UserError
from tbray.model import factory as tbmodel
from tbray.model import modelfile


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    base = tmp_path_factory.mktemp("predict")
    net = tbmodel.create("test_efficientnet")
    good = {"model": net.state_dict(), "model_name": "test_efficientnet", "image_size": 32, "mean": 0.5,
            "std": 0.5, "threshold": 0.5}
    other = tbmodel.create("efficientnet_b0").state_dict()
    doctored = {
        "huge_image_size": {**good, "image_size": 100000},
        "no_model_name": {k: v for k, v in good.items() if k != "model_name"},
        "unknown_model_name": {**good, "model_name": "resnet_nope"},
        "other_architecture": {**good, "model": other},
        "threshold_not_a_probability": {**good, "threshold": 7.0},
        "mean_not_a_number": {**good, "mean": "abc"},
        "std_zero": {**good, "std": 0.0},
        "weights_not_tensors": {**good, "model": {k: 1 for k in good["model"]}},
        "threshold_source_not_a_record": {**good, "threshold_source": "junk"},
        "threshold_source_without_n": {**good, "threshold_source": {"kind": "validation split", "n_tb": 3,
                                                                    "target_sensitivity": 0.9}},
        "calibration_without_site": {**good, "calibration": {"n": 9, "n_tb": 2, "date": "2026-01-01",
                                                             "sensitivity": 1.0, "specificity": 0.5}},
        "std_tiny": {**good, "std": 1e-308},
    }
    paths = {}
    synthetic = {**good, "provenance": {"synthetic": True, "sources": {"demo": {"folder": "/demo", "images": 300,
                                                                               "split_sha256": "ab" * 8}}}}
    for name, payload in {"good": good, "synthetic": synthetic, **doctored}.items():
        paths[name] = base / f"{name}.pt"
        torch.save(payload, paths[name])
    (base / "empty").mkdir()
    (base / "unreadable").mkdir()
    (base / "unreadable" / "x.png").write_text("not a png")
    (base / "images").mkdir()
    Image.new("L", (40, 40), 100).save(base / "images" / "a.png")
    return base, paths


def _predict(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tune" / "predict.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=300)


DOCTORED = ["huge_image_size", "no_model_name", "unknown_model_name", "other_architecture",
            "threshold_not_a_probability", "mean_not_a_number", "std_zero", "weights_not_tensors",
            "threshold_source_not_a_record", "threshold_source_without_n", "calibration_without_site", "std_tiny"]
SLIPS = ["out_is_a_folder", "out_is_the_model", "out_is_an_image", "cam_is_a_file", "threshold_above_one"]


def _slip(case: str, base, paths) -> list:
    return {"out_is_a_folder": ["--out", base / "empty"], "out_is_the_model": ["--out", paths["good"]],
            "out_is_an_image": ["--out", base / "images" / "a.png"],
            "cam_is_a_file": ["--out", base / "p.csv", "--cam", paths["good"]],
            "threshold_above_one": ["--threshold", "7"]}[case]


@pytest.fixture(scope="module")
def predicted(files) -> dict[str, subprocess.CompletedProcess]:
    """Every run of tune/predict.py below, two at a time (each spends seconds importing torch and timm)."""
    base, paths = files
    runs = {name: [paths[name], base / "images"] for name in DOCTORED[:2]}  # the rest in-process, below
    runs |= {folder: [paths["good"], base / folder] for folder in ("empty", "unreadable")}
    runs["good"] = [paths["good"], base / "images"]
    runs["synthetic"] = [paths["synthetic"], base / "images"]
    runs |= {case: [paths["good"], base / "images", *_slip(case, base, paths)] for case in SLIPS}
    before = {p: p.read_bytes() for p in (paths["good"], base / "images" / "a.png")}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(_predict, *args) for name, args in runs.items()}
        done = {name: future.result() for name, future in futures.items()}
    # Refused before scoring: nothing they read was changed, nothing they were told to write was written.
    assert {p: p.read_bytes() for p in before} == before and not (base / "p.csv").exists()
    return done


@pytest.mark.parametrize("name, message", [
    ("huge_image_size", "image_size 100000 is not a whole number of pixels between 16 and 2048"),
    ("no_model_name", "not a tbray model file (missing model_name)"),
    ("unknown_model_name", "unknown model 'resnet_nope'"),
    ("other_architecture", "the saved weights don't fit 'test_efficientnet'"),
    ("threshold_not_a_probability", "threshold 7.0 is not a probability"),
    ("mean_not_a_number", "mean 'abc' is not a number between 0 and 1"),
    ("std_zero", "std 0.0 is not a number between 0.001 and 10"),
    ("weights_not_tensors", "the weights are not all tensors"),
    ("threshold_source_not_a_record", "threshold_source is not a record (a dict), but str"),
    ("threshold_source_without_n", "threshold_source has no 'n' (a tbray-written record always has it)"),
    ("calibration_without_site", "calibration has no 'site_data'"),
    ("std_tiny", "std 1e-308 is not a number between 0.001 and 10"),
])
def test_doctored_model_file_is_refused_in_one_line(files, predicted, name, message):
    """Every doctored file refused by the model-file check; the first two through tune/predict.py too (each
    command-line run costs seconds of imports), where the refusal must be the one line on stderr."""
    _, paths = files
    with pytest.raises(UserError, match=re.escape(message)):
        modelfile.load_model_file(paths[name])
    if name not in predicted:
        return
    done = predicted[name]
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tbray: error: ") and message in lines[0], lines


@pytest.mark.parametrize("folder, message", [("empty", "no PNG or JPEG image found"),
                                             ("unreadable", "none of the 1 image(s) could be read")])
def test_folder_without_a_readable_image_is_refused(predicted, folder, message):
    done = predicted[folder]
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_model_without_any_threshold_record_still_predicts(predicted):
    done = predicted["good"]
    assert done.returncode == 0, done.stderr
    assert "no record of how the threshold was chosen" in done.stderr
    assert "SYNTHETIC" not in done.stderr
    demo_model = predicted["synthetic"]  # provenance: trained on the demo's synthetic images
    assert demo_model.returncode == 0 and "WARNING this model was trained on SYNTHETIC demo images" in demo_model.stderr
    assert done.stdout.splitlines()[0] == "path,p_tb,prediction,error,threshold"


@pytest.mark.parametrize("case, message", [
    ("out_is_a_folder", "{base}/empty: is a folder; --out takes a file name"),
    ("out_is_the_model", "{base}/good.pt: --out would overwrite {base}/good.pt, which this command reads"),
    ("out_is_an_image", "{base}/images/a.png: --out would overwrite {base}/images/a.png, which this command reads"),
    ("cam_is_a_file", "{base}/good.pt: is a file; --cam takes a folder"),
    ("threshold_above_one", "--threshold is a P(TB) cut-off in [0, 1], got 7.0"),
])
def test_a_slip_in_an_option_is_refused_before_scoring_and_destroys_nothing(files, predicted, case, message):
    base, _ = files
    done = predicted[case]
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    # One line, and the first: refused before the threshold line and before any image was scored (the
    # fixture checks that the model, the image and --out are as they were).
    assert len(lines) == 1 and lines[0].startswith(f"tbray: error: {message.format(base=base)}"), lines
