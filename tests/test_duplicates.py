"""Tests for tbray.data.duplicates on tiny synthetic X-ray-like images (no real data)."""

import hashlib
import io
import itertools
import shutil
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFilter

from tbray.data import dataset
from tbray.data import duplicates as dup
from tbray.data.duplicates import NEAR_DUPLICATE_MAX_DISTANCE


def xray(seed: int, size: int = 160) -> np.ndarray:
    """Chest-X-ray-like uint8 image: mediastinum, lungs, ribs, heart, opacities, exposure, positioning."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    img = 0.55 + 0.25 * np.exp(-((x - 0.5) ** 2) / 0.02)
    for cx in (0.5 - rng.uniform(0.15, 0.25), 0.5 + rng.uniform(0.15, 0.25)):
        cy, rx, ry = rng.uniform(0.4, 0.55), rng.uniform(0.1, 0.16), rng.uniform(0.22, 0.32)
        img = np.where(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1, img - rng.uniform(0.3, 0.45), img)
    img = img + 0.08 * np.sin(2 * np.pi * (y * rng.uniform(8, 12) + 0.8 * np.abs(x - 0.5) + rng.uniform()))
    hx, hw, hh = 0.55 + rng.uniform(0, 0.05), rng.uniform(0.12, 0.18), rng.uniform(0.1, 0.15)
    heart = ((x - hx) / hw) ** 2 + ((y - 0.7) / hh) ** 2 < 1
    img = np.where(heart, img + 0.3, img)
    for _ in range(rng.integers(2, 8)):
        bx, by, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.03, 0.1)
        img = img + rng.uniform(0.1, 0.3) * np.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * r * r))
    img = np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1) ** rng.uniform(0.7, 1.4)
    im = Image.fromarray((img * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.5))
    shift = tuple(float(v) for v in rng.uniform(-0.05, 0.05, 2) * size)
    im = im.rotate(rng.uniform(-4, 4), resample=Image.BILINEAR, translate=shift, fillcolor=int(rng.integers(0, 40)))
    return np.asarray(im)


def jpeg_q85(gray: np.ndarray) -> np.ndarray:
    """Round-trip through JPEG at quality 85."""
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, "JPEG", quality=85)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("L"))


def resized(gray: np.ndarray, by: int = 6) -> np.ndarray:
    """Shrink by a few pixels."""
    h, w = gray.shape
    return np.asarray(Image.fromarray(gray).resize((w - by, h - by), Image.BILINEAR))


def hamming(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def test_perceptual_hash_is_64_hex_and_rejects_non_gray():
    h = dup.perceptual_hash(xray(0))
    assert len(h) == 64 and int(h, 16) >= 0
    with pytest.raises(ValueError, match="2-D uint8"):
        dup.perceptual_hash(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="2-D uint8"):
        dup.perceptual_hash(np.zeros((8, 8), np.float32))


@pytest.mark.parametrize("transform", [jpeg_q85, resized], ids=["jpeg85", "resize-6px"])
def test_reencoded_copies_within_threshold(transform):
    for seed in range(8):
        img = xray(seed)
        assert hamming(dup.perceptual_hash(img), dup.perceptual_hash(transform(img))) <= NEAR_DUPLICATE_MAX_DISTANCE


def test_different_images_beyond_threshold():
    hashes = [dup.perceptual_hash(xray(seed)) for seed in range(100, 130)]
    for a, b in itertools.combinations(hashes, 2):
        assert hamming(a, b) > NEAR_DUPLICATE_MAX_DISTANCE


def _write_png(path, gray):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(gray).save(path)
    return path


@pytest.fixture
def tree(tmp_path):
    """Files in three splits: an exact copy and a JPEG re-encode across splits, plus unrelated images."""
    a, b = xray(1), xray(2)
    _write_png(tmp_path / "train/a.png", a)
    (tmp_path / "test").mkdir()
    shutil.copyfile(tmp_path / "train/a.png", tmp_path / "test/a_copy.png")  # same bytes
    _write_png(tmp_path / "train/b.png", b)
    _write_png(tmp_path / "val/b_jpeg.png", jpeg_q85(b))  # same picture, different bytes
    _write_png(tmp_path / "train/b_resized.png", resized(b))  # same split as b: not a cross-split pair
    for i, seed in enumerate((3, 4, 5)):
        _write_png(tmp_path / f"test/other{i}.png", xray(seed))
    rows = []
    for p in sorted(tmp_path.rglob("*.png")):  # hashed the way tbray.data.dataset hashes files
        sha, ph = hashlib.sha256(p.read_bytes()).hexdigest(), dup.perceptual_hash(dataset.load_gray(p))
        rows.append({"path": p.relative_to(tmp_path).as_posix(), "split": p.parent.name, "sha256": sha, "phash": ph})
    return pd.DataFrame(rows)


def test_cross_split_duplicates_finds_exact_and_near(tree):
    pairs = dup.cross_split_duplicates(tree)
    assert list(pairs.columns) == dup.PAIR_COLUMNS
    got = {(frozenset((r.path_a, r.path_b)), r.kind) for r in pairs.itertuples()}
    assert (frozenset(("train/a.png", "test/a_copy.png")), "exact") in got
    assert (frozenset(("train/b.png", "val/b_jpeg.png")), "near") in got
    assert (frozenset(("train/b_resized.png", "val/b_jpeg.png")), "near") in got
    assert len(pairs) == 3  # nothing involving the unrelated images, nothing within a split
    assert (pairs["split_a"] != pairs["split_b"]).all()
    assert (pairs["distance"] <= NEAR_DUPLICATE_MAX_DISTANCE).all()
    assert pairs.loc[pairs["kind"] == "exact", "distance"].eq(0).all()


def test_duplicate_groups_gives_copies_one_id(tree):
    groups = dup.duplicate_groups(tree["sha256"].tolist(), tree["phash"].tolist())
    gid = dict(zip(tree["path"], groups))
    assert gid["train/a.png"] == gid["test/a_copy.png"]
    assert gid["train/b.png"] == gid["val/b_jpeg.png"] == gid["train/b_resized.png"]
    assert gid["train/a.png"] != gid["train/b.png"]
    others = {gid[f"test/other{i}.png"] for i in range(3)}
    assert len(others) == 3 and not others & {gid["train/a.png"], gid["train/b.png"]}
    assert len(set(groups)) == len(tree) - 3
    assert groups[0] == 0 and set(groups) == set(range(groups.max() + 1))  # dense ids


def test_duplicate_groups_is_transitive_and_exact_only():
    base = int("0F" * 32, 16)
    # Bits flipped in different 64-bit words, so distances must add up across words.
    flip1, flip2 = 0b11 << 200, (0b11 << 200) | (0b11 << 3)
    hashes = [f"{base:064x}", f"{base ^ flip1:064x}", f"{base ^ flip2:064x}", f"{~base & (2**256 - 1):064x}"]
    # 0-1 and 1-2 are within 2 bits; 0-2 is 4 bits apart but joined through 1.
    groups = dup.duplicate_groups(["s0", "s1", "s2", "s3"], hashes, max_distance=2)
    assert groups.tolist() == [0, 0, 0, 1]
    assert dup.duplicate_groups(["s0", "s2"], [hashes[0], hashes[2]], max_distance=3).tolist() == [0, 1]
    i, j, d = dup.near_pairs(hashes, max_distance=256)
    assert d[(i == 0) & (j == 3)].tolist() == [256] and d[(i == 0) & (j == 2)].tolist() == [4]
    # Same sha256 joins files even when their phash strings are 256 bits apart.
    assert dup.duplicate_groups(["x", "x"], [hashes[0], hashes[3]]).tolist() == [0, 0]
    assert dup.duplicate_groups(["x", "y"], [hashes[0], hashes[3]]).tolist() == [0, 1]
    assert dup.duplicate_groups([], []).shape == (0,)


def test_duplicate_groups_scales_to_4200_random_hashes():
    rng = np.random.default_rng(0)
    phash = [rng.bytes(32).hex() for _ in range(4200)]
    phash[10] = phash[4000]  # one planted near duplicate (distance 0)
    near = int(phash[600], 16) ^ (2**NEAR_DUPLICATE_MAX_DISTANCE - 1)  # exactly at the threshold
    phash[3000] = f"{near:064x}"
    start = time.perf_counter()
    groups = dup.duplicate_groups([f"s{i}" for i in range(4200)], phash)
    assert time.perf_counter() - start < 2.0
    assert groups.shape == (4200,)
    assert groups[10] == groups[4000] and groups[600] == groups[3000]
    assert len(set(groups)) == 4200 - 2  # random 256-bit hashes are ~128 bits apart


def test_bad_inputs_raise_one_line_value_errors():
    for bad in ("xyz", "0" * 16, "g" * 64, None):  # not hex, an old 64-bit hash, bad digit, not a string
        with pytest.raises(ValueError, match=r"phash #1 .*expected 64 hex digits"):
            dup.duplicate_groups(["a", "b"], ["0" * 64, bad])
    with pytest.raises(ValueError, match="lacks column"):
        dup.cross_split_duplicates(pd.DataFrame({"path": [], "split": []}))


def test_summary_is_json_able(tree):
    import json

    s = dup.summary(dup.cross_split_duplicates(tree))
    json.dumps(s)
    by = {(d["splits"], d["kind"]): d for d in s}
    assert by[("test/train", "exact")]["pairs"] == 1
    assert by[("train/val", "near")]["pairs"] == 2
    assert by[("train/val", "near")]["files"] == 3
    assert dup.summary(dup.cross_split_duplicates(tree.iloc[:0])) == []
