"""Leakage check: exact and near-duplicate images, so copies can be kept in one split.

Exact duplicates share a sha256 of the file bytes. Near duplicates have 64-bit
perceptual hashes (``imagehash.phash``) within ``NEAR_DUPLICATE_MAX_DISTANCE``
bits of each other. Chest X-rays are a homogeneous collection (same anatomy,
same framing), so unrelated images sit closer in phash space than photos do;
the threshold is therefore deliberately tight, see ``NEAR_DUPLICATE_MAX_DISTANCE``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import imagehash
import numpy as np
import pandas as pd
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

# Largest Hamming distance (bits out of 64) still called a near duplicate.
# Evidence (synthetic X-ray-like images with lungs, ribs, heart, opacities,
# exposure and positioning variation; 500 copies per transform, 4,200 images):
#   JPEG q=85 re-encode <= 2 bits in 100%; resize by 6 px or to half size <= 4
#   in 100%; darken 10% <= 2; brighten 5% <= 4 in 91% (max 6).
#   Unrelated images: 0.002% of pairs <= 4 (largest transitive group 40 of 4,200),
#   but 0.017% <= 6, which chains 501 of 4,200 images into ONE group.
# phash sets exactly 32 of 64 bits (bits above the median), so distances are
# even: 4 and 5 behave the same, as do 6 and 7. We take 4: it keeps every
# re-encode/resize copy while not letting chance similarity merge the dataset.
NEAR_DUPLICATE_MAX_DISTANCE = 4

# Rows per block of the pairwise XOR: 512 x 4,200 uint64 is ~17 MB, bounded memory.
_BLOCK_ROWS = 512

PAIR_COLUMNS = ["path_a", "split_a", "path_b", "split_b", "kind", "distance"]


def perceptual_hash(gray: np.ndarray) -> str:
    """64-bit DCT perceptual hash of a grayscale uint8 image, as 16 hex digits.

    phash keeps only the signs of the lowest 8x8 DCT frequencies of a 32x32
    thumbnail relative to their median, so it survives lossy re-encoding
    (JPEG), resizing and small brightness/contrast changes that alter every
    byte of the file (and so its sha256) but not the picture.
    """
    if not isinstance(gray, np.ndarray) or gray.dtype != np.uint8 or gray.ndim != 2:
        raise ValueError(
            f"perceptual_hash needs a 2-D uint8 array, got {type(gray).__name__} "
            f"{getattr(gray, 'dtype', '')} with shape {getattr(gray, 'shape', '?')}"
        )
    return str(imagehash.phash(Image.fromarray(gray)))


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of raw file bytes (exact-duplicate key)."""
    return hashlib.sha256(data).hexdigest()


def file_hashes(path: Path) -> tuple[str, str]:
    """(sha256, phash) of one image file; ValueError naming the file if unreadable."""
    path = Path(path)
    try:
        data = path.read_bytes()
        with Image.open(path) as im:
            im.load()
            gray = _to_gray_uint8(im)
    except (OSError, ValueError) as e:  # PIL raises OSError subclasses for bad images
        raise ValueError(f"{path}: cannot read image ({e})") from None
    return sha256_bytes(data), perceptual_hash(gray)


def _to_gray_uint8(im: Image.Image) -> np.ndarray:
    """Grayscale uint8 pixels; 16-bit/int images are scaled, not clipped, to 0..255."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # PIL's convert("L") clips values above 255, which would whiten 16-bit X-rays.
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        return np.zeros(a.shape, np.uint8) if hi <= lo else ((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    return np.asarray(im.convert("L"))


def _hashes_to_uint64(phash: Sequence[str]) -> np.ndarray:
    """Parse 16-hex-digit phash strings to uint64; ValueError naming the bad entry."""
    out = np.empty(len(phash), dtype=np.uint64)
    for i, h in enumerate(phash):
        try:
            if not isinstance(h, str) or len(h) != 16:
                raise ValueError
            out[i] = int(h, 16)
        except ValueError:
            raise ValueError(f"phash #{i} is {h!r}, expected 16 hex digits (64-bit imagehash.phash)") from None
    return out


def near_pairs(
    phash: Sequence[str], max_distance: int = NEAR_DUPLICATE_MAX_DISTANCE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index pairs (i < j) whose phash Hamming distance is <= max_distance, and the distances."""
    h = _hashes_to_uint64(phash)
    n = len(h)
    ii, jj, dd = [], [], []
    for start in range(0, n, _BLOCK_ROWS):
        block = h[start:start + _BLOCK_ROWS]
        # XOR then popcount gives all Hamming distances of the block vs everything at once.
        dist = np.bitwise_count(block[:, None] ^ h[None, :])
        rows, cols = np.nonzero(dist <= max_distance)
        rows = rows + start
        keep = cols > rows  # upper triangle: each unordered pair once, no self-pairs
        ii.append(rows[keep])
        jj.append(cols[keep])
        dd.append(dist[rows[keep] - start, cols[keep]])
    if not ii:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, empty
    return np.concatenate(ii).astype(np.int64), np.concatenate(jj).astype(np.int64), np.concatenate(dd).astype(np.int64)


def _exact_pairs(sha256: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) with identical sha256."""
    s = pd.DataFrame({"sha": list(sha256), "i": np.arange(len(sha256))})
    m = s.merge(s, on="sha", suffixes=("_a", "_b"))
    m = m[m["i_a"] < m["i_b"]]
    return m["i_a"].to_numpy(np.int64), m["i_b"].to_numpy(np.int64)


def duplicate_groups(
    sha256: Sequence[str], phash: Sequence[str], max_distance: int = NEAR_DUPLICATE_MAX_DISTANCE
) -> np.ndarray:
    """Group id per file: exact or near duplicates (transitively) share an id, numbered by first appearance."""
    if len(sha256) != len(phash):
        raise ValueError(f"duplicate_groups: {len(sha256)} sha256 values but {len(phash)} phash values")
    n = len(sha256)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    ni, nj, _ = near_pairs(phash, max_distance)
    ei, ej = _exact_pairs(sha256)
    i, j = np.concatenate([ni, ei]), np.concatenate([nj, ej])
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    # Renumber so ids are 0, 1, 2... in file order, independent of scipy's labelling.
    return pd.factorize(labels)[0].astype(np.int64)


def cross_split_duplicates(df: pd.DataFrame, max_distance: int = NEAR_DUPLICATE_MAX_DISTANCE) -> pd.DataFrame:
    """One row per pair of files in DIFFERENT splits that are exact or near duplicates."""
    missing = [c for c in ("path", "split", "sha256", "phash") if c not in df.columns]
    if missing:
        raise ValueError(f"cross_split_duplicates: table lacks column(s) {', '.join(missing)}")
    df = df.reset_index(drop=True)
    ni, nj, nd = near_pairs(df["phash"].tolist(), max_distance)
    ei, ej = _exact_pairs(df["sha256"].tolist())
    h = _hashes_to_uint64(df["phash"].tolist())
    exact_distance = np.bitwise_count(h[ei] ^ h[ej]).astype(np.int64)
    pairs = pd.concat(
        [
            # Exact first so drop_duplicates keeps "exact" when a pair is both.
            pd.DataFrame({"i": ei, "j": ej, "kind": "exact", "distance": exact_distance}),
            pd.DataFrame({"i": ni, "j": nj, "kind": "near", "distance": nd}),
        ],
        ignore_index=True,
    ).drop_duplicates(subset=["i", "j"], keep="first")
    split = df["split"].to_numpy()
    pairs = pairs[split[pairs["i"].to_numpy()] != split[pairs["j"].to_numpy()]]
    pairs = pairs.sort_values(["i", "j"]).reset_index(drop=True)
    path = df["path"].to_numpy()
    return pd.DataFrame(
        {
            "path_a": path[pairs["i"].to_numpy()],
            "split_a": split[pairs["i"].to_numpy()],
            "path_b": path[pairs["j"].to_numpy()],
            "split_b": split[pairs["j"].to_numpy()],
            "kind": pairs["kind"].to_numpy(dtype=object),
            "distance": pairs["distance"].to_numpy(np.int64),
        },
        columns=PAIR_COLUMNS,
    )


def summary(pairs: pd.DataFrame, examples: int = 3) -> list[dict]:
    """JSON-able counts of cross-split duplicate pairs per (split pair, kind), with a few example pairs."""
    if pairs.empty:
        return []
    p = pairs.copy()
    # train/test and test/train are the same leak; order the split names.
    lo = np.where(p["split_a"].astype(str) <= p["split_b"].astype(str), p["split_a"], p["split_b"])
    hi = np.where(p["split_a"].astype(str) <= p["split_b"].astype(str), p["split_b"], p["split_a"])
    p["splits"] = [f"{a}/{b}" for a, b in zip(lo, hi)]
    out = []
    for (splits, kind), g in p.groupby(["splits", "kind"], sort=True):
        out.append(
            {
                "splits": str(splits),
                "kind": str(kind),
                "pairs": int(len(g)),
                "files": int(pd.concat([g["path_a"], g["path_b"]]).nunique()),
                "max_distance": int(g["distance"].max()),
                "examples": [[str(a), str(b)] for a, b in zip(g["path_a"][:examples], g["path_b"][:examples])],
            }
        )
    return out
