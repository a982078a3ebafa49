"""Decode once: every image of a split resized to each image size, kept as one uint8 array per size.

PNG decoding and resizing cost far more than a training step, and a search repeats the same images
through every trial and epoch. The driver builds `<cache>/<split hash>-<size>-<decoding>.npy` once
(reused by later runs and resumes), then hands each array to the trials through Ray's object store, which
keeps one shared copy per node.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from tbray.data import dataset, preprocess, progress
from tbray.data.preprocess import Input
from tbray.errors import UserError


def path_for(cache_dir: Path, key: str, size: int | Input) -> Path:
    """Where the array for one split and input (size and steps) lives; named by the decoding too, so a fix
    there rebuilds it."""
    spec = Input.of(size)
    steps = f"-{spec.steps}" if spec.steps else ""
    return Path(cache_dir) / f"{key}-{spec.size}{steps}-{dataset.DECODING}.npy"


def _decode(file: Path, sizes: list) -> list[np.ndarray]:
    """One decode, every size; a file gone or broken since the data were checked is a UserError naming it."""
    try:
        gray = dataset.load_gray(file)
    except (OSError, ValueError) as exc:
        raise UserError(f"{file}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}; it was "
                        "usable when the data were checked: restore it, or start a new search without it")
    return [preprocess.to_input(gray, Input.of(s)) for s in sizes]


def build(root: Path | list[Path], split: pd.DataFrame, sizes: list, cache_dir: Path,
          threads: int | None = None) -> dict:
    """Make the missing arrays (rows in `split` order) and return the file of each size.

    `root`: the folder split's paths are relative to, or (several sources) each row's file. `sizes`: image
    sizes, or Inputs (a size and the steps before it, tbray.data.preprocess); the result is keyed by them.
    """
    files = root if isinstance(root, list) else [Path(root) / rel for rel in split["path"]]
    key = dataset.split_hash(split)
    paths = {s: path_for(cache_dir, key, s) for s in sorted(set(sizes), key=lambda s: (Input.of(s).size, str(s)))}
    todo = [s for s, p in paths.items() if not p.exists()]
    if todo:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        arrays = {s: np.empty((len(split), Input.of(s).size, Input.of(s).size), dtype=np.uint8) for s in todo}
        with ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool:
            decoded = pool.map(lambda file: _decode(file, todo), files)
            sizes = ", ".join(f"{Input.of(s).size} px" + (f" ({Input.of(s).steps})" if Input.of(s).steps else "")
                              for s in todo)
            for i, images in enumerate(progress.track(decoded, len(split), "decoded for the cache", f"at {sizes}")):
                for s, image in zip(todo, images):
                    arrays[s][i] = image
        for s in todo:
            tmp = paths[s].with_suffix(f".{os.getpid()}.tmp.npy")
            try:
                np.save(tmp, arrays[s])
                os.replace(tmp, paths[s])  # atomic: a killed build never leaves a half-written cache
            finally:
                tmp.unlink(missing_ok=True)  # after a failure (a full disk), no partial array is left
    return paths


def load(path: Path) -> np.ndarray:
    """A cached array, memory-mapped so only the rows used are read."""
    return np.load(path, mmap_mode="r")


def subset(split: pd.DataFrame, images: np.ndarray, which: str) -> dict:
    """The images (uint8 [N, S, S]) and labels (int64 [N]) of one split, copied into RAM."""
    rows = np.flatnonzero(split["split"].to_numpy() == which)
    return {"images": np.ascontiguousarray(images[rows]), "labels": split["label"].to_numpy()[rows].astype(np.int64)}


def subset_by_source(split: pd.DataFrame, images: np.ndarray, which: str, names: list[str]) -> dict:
    """`subset`, plus each image's source as its index in `names` (int64 [N]), for per-source figures."""
    rows = split["split"].to_numpy() == which
    codes = split["source"].map({name: i for i, name in enumerate(names)}).to_numpy(np.int64)
    return {**subset(split, images, which), "sources": codes[rows]}
