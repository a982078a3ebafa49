"""Use a published train/val/test split (TB-Net, Wong et al.) instead of our own.

What was confirmed in the public repository darwinai/TuberculosisNet:
  * Three files, ``train_split.csv``, ``val_split.csv``, ``test_split.csv``, side by
    side (repo root; ``dsi.py`` reads them by those names, docs/train_eval_inference.md).
  * No header row. Each line is ``filename,label``; the label is the integer 0
    (normal) or 1 (tuberculosis): ``dsi.py`` does ``row[0], int(row[1])``.
  * Current file names look like ``Normal-971.png`` and ``TB-2563.png``; an older
    version of the same files used ``Normal (81).png`` and ``TB (3392).png``, and
    ``create_tb_dataset_baked.py`` writes paths with a ``data/`` prefix and every
    extension rewritten to ``.png``.
  * TB numbers run up to ~3,500 (e.g. ``TB-3499.png``); the README's test set is 348
    normal + 345 TB and ``exclude_images.csv`` drops 22 normal and 50 TB images.
    So TB-Net used a release with ~3,500 TB images, whereas the public release
    this project targets has ``Tuberculosis-1.png``..``Tuberculosis-700.png``.

What is assumed, not confirmed:
  * ``TB-N`` / ``TB (N)`` is the same image as the public ``Tuberculosis-N.png``
    (for N <= 700) and ``Normal-N`` / ``Normal (N)`` the same as ``Normal-N.png``.
    Names are matched, pixels are not compared. ``TB-N`` with N > 700 has no public
    counterpart and is reported as missing, so the protocol is reproduced only in
    part; report the matched and missing counts with any result.

Matching ignores case, directory prefixes and the extension (TB-Net rewrote
every extension to ``.png``). ``match`` returns a ``MatchResult`` named tuple
``(matched, missing, unused)``; ``unused`` counts files on disk that the split
does not name (they are simply left out).
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import pandas as pd

SPLIT_FILES = {"train": "train_split.csv", "val": "val_split.csv", "test": "test_split.csv"}

# Published files use 0/1; class names are accepted too so hand-made splits work.
_LABELS = {"0": 0, "1": 1, "normal": 0, "tuberculosis": 1, "tb": 1}

# "TB-12", "tb (12)", "Tuberculosis_0012", "Normal-3" -> class word + number.
_NAME_RE = re.compile(r"^(normal|tb|tuberculosis)[\s_-]*\(?\s*0*(\d+)\s*\)?$")


class MatchResult(NamedTuple):
    """Result of ``match``: matched rows, external names missing on disk, count of unnamed disk files."""

    matched: pd.DataFrame
    missing: list[str]
    unused: int


def is_external_split(path: Path) -> bool:
    """True for a directory holding all three TB-Net split files, or a path to one of them."""
    path = Path(path)
    if path.is_dir():
        return all((path / name).is_file() for name in SPLIT_FILES.values())
    return path.is_file() and path.name in SPLIT_FILES.values()


def name_key(filename: str) -> str:
    """Case-, folder- and extension-insensitive key; TB-N and TB (N) alias Tuberculosis-N."""
    base = PurePosixPath(str(filename).strip().replace("\\", "/")).name.lower()
    stem = base.rsplit(".", 1)[0] if "." in base else base
    m = _NAME_RE.match(stem)
    if not m:
        return stem
    cls = "normal" if m.group(1) == "normal" else "tuberculosis"
    return f"{cls}-{int(m.group(2))}"


def _read_one(file: Path, split: str) -> pd.DataFrame:
    """Read one headerless ``filename,label`` file; ValueError naming the file on any problem."""
    if not file.is_file():
        raise ValueError(f"{file}: missing (a TB-Net split needs {', '.join(SPLIT_FILES.values())} side by side)")
    try:
        raw = pd.read_csv(file, header=None, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{file}: empty, expected lines of filename,label") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: not a filename,label CSV ({str(e).splitlines()[0]})") from None
    if raw.shape[1] != 2:
        raise ValueError(f"{file}: expected 2 columns filename,label, found {raw.shape[1]}")
    raw.columns = ["filename", "label"]
    # The published files have no header; tolerate one in hand-made files.
    if raw.iloc[0]["label"].strip().lower() == "label":
        raw = raw.iloc[1:]
    if raw.empty:
        raise ValueError(f"{file}: no rows")
    text = raw["label"].str.strip().str.lower()
    bad = ~text.isin(list(_LABELS))
    if bad.any():
        row = raw[bad].iloc[0]
        raise ValueError(f"{file}: unknown label {row['label']!r} for {row['filename']!r} (expected 0 or 1)")
    names = raw["filename"].str.strip()
    if (names == "").any():
        raise ValueError(f"{file}: a row has an empty filename")
    labels = text.map(_LABELS).astype(int).to_numpy()
    return pd.DataFrame({"filename": names.to_numpy(), "label": labels, "split": split})


def read(path: Path) -> pd.DataFrame:
    """Read the three TB-Net split files (directory or one of the files) into filename, label, split."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    df = pd.concat([_read_one(folder / name, split) for split, name in SPLIT_FILES.items()], ignore_index=True)
    df = df.drop_duplicates(ignore_index=True)  # a repeated identical line is harmless
    key = df["filename"].map(name_key)
    clash = key.duplicated(keep=False)
    if clash.any():
        # The same image in two splits (or with two labels) would leak or be ambiguous.
        rows = df[clash & (key == key[clash].iloc[0])]
        where = ", ".join(f"{s} (label {lab})" for s, lab in zip(rows["split"], rows["label"]))
        first = folder / SPLIT_FILES[rows["split"].iloc[0]]
        raise ValueError(f"{first}: {rows['filename'].iloc[0]!r} is listed more than once: {where}")
    return df


def match(external: pd.DataFrame, files: pd.DataFrame) -> MatchResult:
    """Attach the external split to files on disk by file name; returns (matched, missing, unused)."""
    needs = (("external split", external, ("filename", "label", "split")), ("files", files, ("path", "label")))
    for name, table, cols in needs:
        lacking = [c for c in cols if c not in table.columns]
        if lacking:
            raise ValueError(f"match: {name} table lacks column(s) {', '.join(lacking)}")
    # A split column already on disk (e.g. our own split) is replaced by the external one.
    disk = files.reset_index(drop=True).drop(columns=["split"], errors="ignore")
    disk_key = disk["path"].map(name_key)
    dup = disk_key.duplicated(keep=False)
    if dup.any():
        paths = disk.loc[dup & (disk_key == disk_key[dup].iloc[0]), "path"].tolist()
        others = ", ".join(map(str, paths[1:]))
        raise ValueError(f"{paths[0]}: same file name as {others}, cannot match a split by name")
    ext = external.assign(_key=external["filename"].map(name_key))[["_key", "filename", "label", "split"]]
    ext = ext.rename(columns={"label": "_ext_label", "filename": "_ext_name"})
    joined = disk.assign(_key=disk_key.to_numpy()).merge(ext, on="_key", how="inner", sort=False)
    conflict = joined["label"].astype(int) != joined["_ext_label"].astype(int)
    if conflict.any():
        row = joined[conflict].iloc[0]
        more = f" (and {int(conflict.sum()) - 1} more)" if conflict.sum() > 1 else ""
        raise ValueError(
            f"{row['_ext_name']}: external {row['split']} split says label {int(row['_ext_label'])} "
            f"but {row['path']} has label {int(row['label'])}{more}"
        )
    missing = external.loc[~ext["_key"].isin(set(disk_key)), "filename"].tolist()
    matched = joined.drop(columns=["_key", "_ext_name", "_ext_label"]).reset_index(drop=True)
    return MatchResult(matched=matched, missing=missing, unused=int(len(disk) - len(matched)))
