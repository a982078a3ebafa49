"""Tests for the synthetic demo data generator (tbray.data.demo)."""

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from threadpoolctl import threadpool_limits

from tbray.data.demo import make
from tbray.errors import UserError


def _digests(root: Path) -> dict[str, str]:
    """sha256 of every file under root, keyed by relative path."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _load(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """All images as float arrays in [0, 1] and their labels (Normal 0, TB 1)."""
    paths = sorted((root / "Normal").glob("*.png")) + sorted((root / "Tuberculosis").glob("*.png"))
    x = np.stack([np.asarray(Image.open(p).convert("L"), dtype=np.float64) / 255 for p in paths])
    return x, np.array([p.parent.name == "Tuberculosis" for p in paths], dtype=int)


def test_make_is_deterministic_with_real_layout(tmp_path):
    a, b = make(tmp_path / "a", n_images=60, size=96), make(tmp_path / "b", n_images=60, size=96)
    assert a == tmp_path / "a"
    assert _digests(a) == _digests(b)
    normal, tb = sorted((a / "Normal").glob("*.png")), sorted((a / "Tuberculosis").glob("*.png"))
    assert len(normal) == 50 and len(tb) == 10
    assert (a / "Normal" / "Normal-50.png").is_file()
    assert (a / "Tuberculosis" / "Tuberculosis-10.png").is_file()
    for p in normal:
        im = Image.open(p)
        assert im.mode == "RGB" and im.size == (96, 96)
        px = np.asarray(im)
        assert (px[..., 0] == px[..., 1]).all() and (px[..., 1] == px[..., 2]).all()
    assert all(Image.open(p).mode == "L" for p in tb)
    readme = (a / "README.txt").read_text()
    assert "SYNTHETIC" in readme and "NOT MEDICAL IMAGES" in readme and "clinical" in readme
    # Each image is seeded by itself, so a smaller set shares its files with a larger one.
    small, big = _digests(make(tmp_path / "c", n_images=30, size=96)), _digests(a)
    for name in ("Normal/Normal-7.png", "Tuberculosis/Tuberculosis-3.png"):
        assert small[name] == big[name]


def test_classes_learnable_but_not_by_global_brightness(tmp_path):
    x, y = _load(make(tmp_path / "d", n_images=240, tb_fraction=0.5, size=64))
    assert y.sum() == 120
    small = x.reshape(len(x), 32, 2, 32, 2).mean((2, 4)).reshape(len(x), -1)
    small = (small - small.mean(1, keepdims=True)) / small.std(1, keepdims=True)
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    with threadpool_limits(1):  # threaded BLAS on tiny fits is many times slower on busy cores
        p = cross_val_predict(LogisticRegression(C=0.1, max_iter=2000), small, y, cv=cv,
                              method="predict_proba")[:, 1]
    assert roc_auc_score(y, p) > 0.6  # measured 0.77: the lesions carry real signal
    for stat in (x.mean((1, 2)), x.std((1, 2))):
        auc = roc_auc_score(y, stat)
        assert max(auc, 1 - auc) < 0.85  # measured 0.53 (mean), 0.51 (std)


def test_make_reuses_a_complete_set_and_regenerates_on_change(tmp_path):
    root = make(tmp_path / "e", n_images=12, size=32)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    time.sleep(0.01)
    t = time.perf_counter()
    assert make(root, n_images=12, size=32) == root
    assert time.perf_counter() - t < 0.5
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == stamps
    make(root, n_images=6, size=32)  # new parameters: old images must not linger
    assert len(list(root.rglob("*.png"))) == 6
    assert json.loads((root / "demo.json").read_text())["n_images"] == 6


def test_make_refuses_foreign_folders_and_bad_arguments(tmp_path):
    real = tmp_path / "real"
    (real / "Normal").mkdir(parents=True)
    Image.new("L", (8, 8)).save(real / "Normal" / "Normal-1.png")
    with pytest.raises(UserError):
        make(real, n_images=6, size=32)
    with pytest.raises(UserError):
        make(tmp_path / "f", n_images=10, tb_fraction=0.0)
    with pytest.raises(UserError):
        make(tmp_path / "g", n_images=2, tb_fraction=0.1)  # would give no TB image
