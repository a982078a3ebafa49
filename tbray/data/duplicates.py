"""Leakage check: exact and near-duplicate images, so copies can be kept in one split.

Exact duplicates share a sha256 of the file bytes (computed by ``tbray.data.dataset``). Near
duplicates have 256-bit perceptual hashes (``imagehash.phash`` with ``hash_size=16``)
within ``NEAR_DUPLICATE_MAX_DISTANCE`` bits of each other. Chest X-rays are a
homogeneous collection (same anatomy, same framing), so unrelated images sit closer
in phash space than photos do: the default 64-bit phash put 46 of 44,850 pairs of
independent synthetic X-rays within 4 bits (as close as 2), merging unrelated images,
across classes too, into duplicate groups. 256 bits separate them; the evidence for
the threshold is next to ``NEAR_DUPLICATE_MAX_DISTANCE``.
"""

from __future__ import annotations

from typing import Sequence

import imagehash
import numpy as np
import pandas as pd
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

# phash side: hash_size**2 bits, the signs of the lowest 16x16 DCT frequencies of a 64x64 thumbnail.
_HASH_SIZE = 16
_HASH_BITS = _HASH_SIZE * _HASH_SIZE  # 256
_HASH_HEX = _HASH_BITS // 4  # 64 hex digits
_HASH_WORDS = _HASH_BITS // 64  # 4 uint64 words

# Largest Hamming distance (bits out of 256) still called a near duplicate.
# Evidence (tbray.data.demo.render synthetic X-rays; phash sets exactly half the bits, so
# distances are even and 16 behaves like 17):
#   Unrelated images, 4,200 (2,100 per class, 8.8M pairs): no pair within 20 bits at
#   256 px or 64 px; closest pair 24 bits at 256 px (1 pair <= 24, 11 <= 28) and
#   28 bits at 64 px (3 <= 28); median 102.
#   Copies of 400 images (max distance at 256 px / 64 px; copies over 16 bits):
#     JPEG q85 8 / 12; JPEG q70 10 / 18 (1 of 400 over 16 at 64 px);
#     resize to 200/256, to half, or by -6 px <= 10 / 10;
#     brighten +5% or +10% of full scale 8 / 6; scale x1.10 or x0.90 8 / 4;
#     darken -5% of full scale 18 / 20 (1 and 3 of 400 over 16: the dark background clips at 0).
#   Not covered: darken -10% (27 and 33 of 400 over 16), resize 0.75 + darken 8% + JPEG q70
#   (14 and 86 of 400 over 16), and crops: phash is not shift-invariant, a 2 px crop-and-resize
#   moves 256 px images by 14 bits on average (max 26) and 64 px images by 56.
# 16 keeps every single re-encode, resize and mild brightness copy (a handful of tails aside)
# while staying 8 bits below the closest of 8.8M unrelated pairs, so chance
# similarity does not chain unrelated images into groups. Re-measure if the hash size changes.
NEAR_DUPLICATE_MAX_DISTANCE = 16

# Rows per block of the pairwise XOR: 512 x 4,200 uint64 per word is ~17 MB, bounded memory.
_BLOCK_ROWS = 512

PAIR_COLUMNS = ["path_a", "split_a", "path_b", "split_b", "kind", "distance"]


def perceptual_hash(gray: np.ndarray) -> str:
    """256-bit DCT perceptual hash of a grayscale uint8 image, as 64 hex digits.

    phash keeps only the signs of the lowest 16x16 DCT frequencies of a 64x64
    thumbnail relative to their median, so it survives lossy re-encoding
    (JPEG), resizing and small brightness/contrast changes that alter every
    byte of the file (and so its sha256) but not the picture.
    """
    if not isinstance(gray, np.ndarray) or gray.dtype != np.uint8 or gray.ndim != 2:
        raise ValueError(
            f"perceptual_hash needs a 2-D uint8 array, got {type(gray).__name__} "
            f"{getattr(gray, 'dtype', '')} with shape {getattr(gray, 'shape', '?')}"
        )
    return str(imagehash.phash(Image.fromarray(gray), hash_size=_HASH_SIZE))


def _hashes_to_words(phash: Sequence[str]) -> np.ndarray:
    """Parse 64-hex-digit phash strings to an (n, 4) uint64 array; ValueError naming the bad entry."""
    out = np.empty((len(phash), _HASH_WORDS), dtype=np.uint64)
    for i, h in enumerate(phash):
        try:
            if not isinstance(h, str) or len(h) != _HASH_HEX:
                raise ValueError
            out[i] = np.frombuffer(bytes.fromhex(h), dtype=">u8")
        except ValueError:
            raise ValueError(
                f"phash #{i} is {h!r}, expected {_HASH_HEX} hex digits ({_HASH_BITS}-bit imagehash.phash)"
            ) from None
    return out


def _hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit distances between (..., 4) uint64 hashes, broadcast over the leading axes."""
    dist = np.bitwise_count(a[..., 0] ^ b[..., 0]).astype(np.uint16)  # up to 256: wider than uint8
    for k in range(1, _HASH_WORDS):
        dist += np.bitwise_count(a[..., k] ^ b[..., k])
    return dist


def near_pairs(
    phash: Sequence[str], max_distance: int = NEAR_DUPLICATE_MAX_DISTANCE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index pairs (i < j) whose phash Hamming distance is <= max_distance, and the distances."""
    h = _hashes_to_words(phash)
    n = len(h)
    ii, jj, dd = [], [], []
    for start in range(0, n, _BLOCK_ROWS):
        block = h[start:start + _BLOCK_ROWS]
        # Only columns from `start` on: pairs with earlier rows were found by earlier blocks.
        dist = _hamming(block[:, None, :], h[None, start:, :])
        rows, cols = np.nonzero(dist <= max_distance)
        keep = cols > rows  # upper triangle: each unordered pair once, no self-pairs
        rows, cols = rows[keep], cols[keep]
        ii.append(rows + start)
        jj.append(cols + start)
        dd.append(dist[rows, cols])
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
    h = _hashes_to_words(df["phash"].tolist())
    exact_distance = _hamming(h[ei], h[ej]).astype(np.int64)
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


def matches(
    sha256_a: Sequence[str], phash_a: Sequence[str], sha256_b: Sequence[str], phash_b: Sequence[str],
    max_distance: int = NEAR_DUPLICATE_MAX_DISTANCE,
) -> pd.DataFrame:
    """Pairs (i in a, j in b) that are exact or near duplicates: columns i, j, kind, distance.

    For two separate collections (an external set against a search's split), so only pairs across
    them are compared; blocks of `a` keep memory bounded as in `near_pairs`.
    """
    ha, hb = _hashes_to_words(phash_a), _hashes_to_words(phash_b)
    frames = []
    for start in range(0, len(ha), _BLOCK_ROWS):
        dist = _hamming(ha[start:start + _BLOCK_ROWS, None, :], hb[None, :, :])
        rows, cols = np.nonzero(dist <= max_distance)
        frames.append(pd.DataFrame({"i": rows + start, "j": cols, "kind": "near", "distance": dist[rows, cols]}))
    exact = pd.DataFrame({"sha": list(sha256_a), "i": np.arange(len(sha256_a))}).merge(
        pd.DataFrame({"sha": list(sha256_b), "j": np.arange(len(sha256_b))}), on="sha")
    if len(exact):
        exact_distance = _hamming(ha[exact["i"].to_numpy()], hb[exact["j"].to_numpy()]).astype(np.int64)
        frames.insert(0, pd.DataFrame({"i": exact["i"], "j": exact["j"], "kind": "exact", "distance": exact_distance}))
    if not frames:
        return pd.DataFrame(columns=["i", "j", "kind", "distance"])
    # Exact first, so a pair that is both stays "exact".
    return pd.concat(frames, ignore_index=True).drop_duplicates(["i", "j"]).astype({"i": np.int64, "j": np.int64,
                                                                                   "distance": np.int64})


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
