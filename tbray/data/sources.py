"""Several data sets in one search: each `--data NAME=PATH` is a source, and every file knows its source.

A file's `path` in split.csv is relative to its source's folder, as with one `--data`; with two or more
sources it is prefixed with the source's name (`tbdb-dev/Normal/a.png`), so a path still names exactly
one file. `locate` turns a row back into the file on disk.

Public chest X-ray sets copy each other (the TB Chest X-ray Database holds Shenzhen and Montgomery,
resized), so duplicates are found across sources with the perceptual hash of tbray.data.duplicates and
kept in one split (dataset.make_split groups them over all sources).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tbray.data import duplicates
from tbray.data.dataset import Discovery
from tbray.errors import UserError

CLASS_NAMES = {0: "Normal", 1: "TB"}


def prefixed(name: str, path: str, several: bool) -> str:
    """The split.csv path of a file under one source: itself with one source, `name/path` with several."""
    return f"{name}/{path}" if several else path


def locate(roots: dict[str, Path], source: str, path: str) -> Path:
    """The file on disk behind one split.csv row."""
    if source not in roots:
        raise UserError(f"split names source {source!r}, which is not among this search's --data "
                        f"({', '.join(roots)})")
    rel = path[len(source) + 1:] if len(roots) > 1 else path
    return roots[source] / rel


def files_of(split: pd.DataFrame, roots: dict[str, Path]) -> list[Path]:
    """Every row's file on disk, in the split's order."""
    return [locate(roots, s, p) for s, p in zip(split["source"], split["path"])]


def combine(found: dict[str, Discovery]) -> Discovery:
    """One Discovery over every source: files and skipped files carry a `source` column and unique paths."""
    several = len(found) > 1
    files, skipped, ignored = [], [], []
    for name, d in found.items():
        files.append(d.files.assign(source=name, path=[prefixed(name, p, several) for p in d.files["path"]]))
        skipped.append(d.skipped.assign(source=name, path=[prefixed(name, p, several) for p in d.skipped["path"]]))
        ignored += [prefixed(name, p, several) for p in d.ignored]
    root = next(iter(found.values())).root
    return Discovery(root=root, files=pd.concat(files, ignore_index=True),
                     skipped=pd.concat(skipped, ignore_index=True), ignored=ignored)


def cross_source_duplicates(files: pd.DataFrame) -> pd.DataFrame:
    """Exact or near duplicate pairs whose files come from different sources: source_a, path_a, source_b,
    path_b, kind, distance. Each pair sits in one split, as make_split keeps duplicate groups together."""
    table = files.reset_index(drop=True)
    if table["source"].nunique() < 2:
        return pd.DataFrame(columns=["path_a", "source_a", "path_b", "source_b", "kind", "distance"])
    pairs = duplicates.cross_split_duplicates(table.assign(split=table["source"]))
    return pairs.rename(columns={"split_a": "source_a", "split_b": "source_b"})


def duplicate_summary(pairs: pd.DataFrame) -> list[dict]:
    """Pairs per (source, source, kind), for the console and report.json."""
    if pairs.empty:
        return []
    pairs = pairs.assign(first=np.minimum(pairs["source_a"], pairs["source_b"]),
                         second=np.maximum(pairs["source_a"], pairs["source_b"]))
    out = []
    for (a, b, kind), g in pairs.groupby(["first", "second", "kind"], sort=True):
        out.append({"sources": [str(a), str(b)], "kind": str(kind), "pairs": int(len(g)),
                    "examples": [[str(x), str(y)] for x, y in zip(g["path_a"][:3], g["path_b"][:3])]})
    return out


def counts(split: pd.DataFrame) -> pd.DataFrame:
    """Images per source x class (rows) and split (columns: train, val, test, all)."""
    table = (split.assign(cls=split["label"].map(CLASS_NAMES))
             .groupby(["source", "cls", "split"]).size().unstack("split", fill_value=0))
    table = table.reindex(columns=[s for s in ("train", "val", "test") if s in table.columns], fill_value=0)
    table["all"] = table.sum(axis=1)
    return table


def counts_text(split: pd.DataFrame) -> str:
    """The source x class x split table as aligned text, for the console."""
    return counts(split).rename_axis(index=["source", "class"], columns=None).to_string()
