"""tune/predict.py streams batches: more images than a batch, unreadable files skipped with a reason,
ONNX Runtime and a Ray cluster (Ray Data) giving the scores of the single-process PyTorch path."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

from tbray.data import dataset, demo
from tbray.model import modelfile, scoring

N_IMAGES = 30  # PNGs, plus 2 unreadable files; batches of 8, so 4 full batches and a short one


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = demo.make(tmp_path_factory.mktemp("stream") / "set", n_images=N_IMAGES, size=48, seed=5)
    (root / "Normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "Tuberculosis" / "empty.jpg").write_bytes(b"")
    return root


def _predict(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tune" / "predict.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def _expected(model_file, files) -> np.ndarray:
    """The scores of the in-memory path (all images decoded into one array), per file."""
    saved = modelfile.load_model_file(model_file)
    return scoring.score_images(saved, np.stack([dataset.resize(dataset.load_gray(f), 32) for f in files]))


@pytest.fixture(scope="module")
def streamed(tiny_model_file, folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "pred.csv"
    done = _predict(tiny_model_file, folder, "--batch-size", "8", "--workers", "1", "--out", out)
    assert done.returncode == 0, done.stderr[-3000:]
    return pd.read_csv(out), done


def test_streaming_scores_every_image_in_order_and_skips_unreadable_ones(tiny_model_file, folder, streamed):
    table, done = streamed
    files = sorted(f for f in folder.rglob("*") if f.suffix in (".png", ".jpg"))
    assert table["path"].tolist() == [str(f) for f in files] and len(files) == N_IMAGES + 2
    bad = table[table["error"].notna()]
    assert sorted(bad["path"].map(lambda p: p.rsplit("/", 1)[1])) == ["broken.png", "empty.jpg"]
    assert bad["p_tb"].isna().all() and bad["prediction"].isna().all()
    good = table[table["error"].isna()]
    expected = _expected(tiny_model_file, good["path"])
    assert expected.std() > 0.05 and np.abs(good["p_tb"].to_numpy() - expected).max() < 1e-5
    assert (good["prediction"] == np.where(good["p_tb"] >= 0.4375, "Tuberculosis", "Normal")).all()
    assert "2 of 32 file(s) could not be read" in done.stderr and "site calibration on /site" in done.stderr
    assert "\r" not in done.stderr  # no progress bar when stderr is not a terminal


def test_onnx_runtime_scores_match_and_parquet_is_written(tiny_model_file, folder, streamed, tmp_path):
    out = tmp_path / "pred.parquet"
    done = _predict(tiny_model_file, folder, "--onnx", "--batch-size", "8", "--workers", "0", "--out", out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "onnxruntime CPUExecutionProvider" in done.stderr
    onnx, torch_rows = pd.read_parquet(out), streamed[0]
    assert onnx["path"].tolist() == torch_rows["path"].tolist()
    assert np.nanmax(np.abs(onnx["p_tb"].to_numpy() - torch_rows["p_tb"].to_numpy())) < 1e-4
    assert onnx["error"].notna().sum() == 2


def test_ray_data_gives_the_single_process_scores(ray_address, tiny_model_file, folder, streamed, tmp_path):
    out = tmp_path / "ray.csv"
    done = _predict(tiny_model_file, folder, "--address", ray_address, "--batch-size", "8", "--out", out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on Ray (1-1 CPU actor(s), torch)" in done.stderr
    ray_rows = pd.read_csv(out).set_index("path").sort_index()
    local = streamed[0].set_index("path").sort_index()
    assert ray_rows.index.tolist() == local.index.tolist()
    assert np.nanmax(np.abs(ray_rows["p_tb"] - local["p_tb"])) < 1e-5
    assert ray_rows["p_tb"].isna().tolist() == local["p_tb"].isna().tolist()
    assert (ray_rows["prediction"].fillna("") == local["prediction"].fillna("")).all()
    assert (ray_rows["error"].notna() == local["error"].notna()).all()
