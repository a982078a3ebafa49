"""Finding the chest X-rays, reading them as 8-bit grayscale, and the stratified split.

Intensity range: every image leaves `load_gray` as a uint8 array, 0 (black) to 255 (white),
whatever its PNG/JPEG mode; 16-bit images are scaled by the bit depth they use (see `to_gray8`). Files that can't be used are returned with a reason, never dropped.
"""

from __future__ import annotations

import errno
import hashlib
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

from tbray.data import duplicates, progress
from tbray.errors import UserError

CLASSES = {"normal": 0, "tuberculosis": 1}  # folder name (any case) -> label
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
FRACTIONS = {"train": 0.7, "test": 0.2, "val": 0.1}
SPLIT_COLUMNS = ["path", "label", "split", "sha256"]
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I")  # PIL modes of 16-bit (and 32-bit integer) gray
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DECODING = "gray3"  # bump when load_gray reads any file differently: caches of decoded images are keyed by it


@dataclass
class Discovery:
    """What a data folder holds: usable files, skipped files with reasons, folders ignored."""

    root: Path
    files: pd.DataFrame  # path (relative, posix), label, sha256, phash
    skipped: pd.DataFrame  # path, reason
    ignored: list[str]  # entries at the root that are neither class folder


def find_root(path: Path) -> Path:
    """The folder holding Normal/ and Tuberculosis/: `path` itself or one folder below it."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: data folder not found")
    try:
        below = sorted(p for p in path.iterdir() if p.is_dir())
    except OSError as exc:
        raise UserError(f"{path}: data folder can't be read ({exc.strerror or exc})")
    for candidate in [path, *below]:
        try:
            names = {p.name.lower() for p in candidate.iterdir() if p.is_dir()}
        except OSError:  # an unreadable folder beside the data set is not the data set
            continue
        if set(CLASSES) <= names:
            return candidate
    names = {p.name.lower() for p in path.iterdir() if p.is_dir()}
    if names & set(CLASSES):
        missing = (set(CLASSES) - names).pop()
        raise UserError(f"{path}: only one class present; no {missing.capitalize()}/ folder beside it")
    raise UserError(f"{path}: not a TB chest X-ray data set (expected folders Normal/ and Tuberculosis/)")


def png_significant_bits(path: Path) -> int | None:
    """The gray sample's bit count a PNG's sBIT chunk states, or None when it states none.

    A 12-bit X-ray saved as a 16-bit PNG may say so in sBIT; Pillow reads past that chunk without
    exposing it (13.0: not in `image.info`), so the few chunks before the image data are walked here.
    """
    with open(path, "rb") as f:
        if f.read(8) != PNG_SIGNATURE:
            return None
        while len(header := f.read(8)) == 8:
            length, kind = struct.unpack(">I4s", header)
            if kind in (b"IDAT", b"IEND"):  # sBIT must come before the image data
                return None
            if kind == b"sBIT":
                stated = f.read(length)[:1]  # gray, or gray then alpha
                return stated[0] if stated and 1 <= stated[0] <= 16 else None
            f.seek(length + 4, os.SEEK_CUR)  # the chunk's data and its CRC
    return None


def to_gray8(image: Image.Image, significant_bits: int | None = None) -> np.ndarray:
    """Any PIL mode as uint8 grayscale 0-255; wide (16-bit) samples scaled by the range they use.

    Many 16-bit PNGs exported from DICOM hold 12-bit values (0-4095); dividing by 257 as if they
    spanned 0-65535 makes them near black. So the full scale is 2**bits - 1, where bits is
    `significant_bits` (the PNG's sBIT) when every sample fits in it, else the bit length of the
    image's own maximum, at least 8: max 3000 -> 12 bits -> divided by 4095; max 65535 -> 16 bits.
    (A writer that follows the PNG spec scales sBIT data up to the full 16 bits; the samples then
    don't fit the stated bits and the maximum rule reads them as 16-bit, which is right.) Without
    sBIT, a 12-bit image whose brightest pixel is below 2048 is read as 11-bit, twice as bright.
    """
    if image.mode in WIDE_MODES:
        wide = np.asarray(image, dtype=np.float64)
        top = int(wide.max()) if wide.size else 0
        fits = significant_bits is not None and top < 2**significant_bits
        bits = significant_bits if fits else max(8, top.bit_length())
        return np.clip(wide * (255.0 / (2**bits - 1)) + 0.5, 0, 255).astype(np.uint8)
    if image.mode == "F":
        return np.clip(np.asarray(image), 0, 255).astype(np.uint8)
    if image.mode in ("CMYK", "P", "PA"):
        image = image.convert("RGB")  # palette and ink spaces go through RGB for the right luminance
    return np.asarray(image.convert("L"), dtype=np.uint8)  # L, LA, RGB, RGBA: alpha is dropped


def load_gray(path: Path) -> np.ndarray:
    """Decode one image fully (a truncated file fails here, not mid-training) as uint8 grayscale."""
    with Image.open(path) as image:
        # Pillow raises above twice its limit but only warns between; refuse every bomb the same way.
        # Checked here, not with a warnings filter: catch_warnings is process-wide and not thread-safe,
        # and discover() and cache.build() decode in threads.
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and image.width * image.height > limit:
            raise Image.DecompressionBombError(
                f"{image.width}x{image.height} = {image.width * image.height} pixels exceeds the limit of {limit}")
        image.load()
        wide_png = image.mode in WIDE_MODES and image.format == "PNG"
        # A JPEG (or PNG) stored rotated with an EXIF Orientation tag is shown upright by every viewer;
        # read it upright too, or it trains and scores sideways.
        upright = ImageOps.exif_transpose(image)
        return to_gray8(upright, png_significant_bits(path) if wide_png else None)


def resize(gray: np.ndarray, size: int) -> np.ndarray:
    """Square uint8 image of `size` pixels: Pillow's antialiased bilinear resize."""
    return np.asarray(Image.fromarray(gray).resize((size, size), Image.BILINEAR), dtype=np.uint8)


def _check_file(path: Path, min_side: int) -> tuple[str, str] | str:
    """(sha256, phash) of a usable image, or the reason it can't be used."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop"
        return f"unreadable: {exc.strerror or exc}"
    if not data:
        return "empty file (0 bytes)"
    try:
        gray = load_gray(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # the warning if run with -W error
        return f"larger than Pillow's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS} pixels"
    except UnidentifiedImageError:
        return "not an image Pillow can identify"
    except (OSError, SyntaxError, ValueError) as exc:
        return f"truncated or corrupt image ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    if min(gray.shape) < min_side:
        return f"too small for a chest X-ray: {gray.shape[1]}x{gray.shape[0]} px, minimum {min_side} px a side"
    return hashlib.sha256(data).hexdigest(), duplicates.perceptual_hash(gray)


def _class_entries(folder: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Every file under a class folder, subfolders and linked folders included (each real folder once, so a
    link loop ends), and each folder that could not be listed, with the reason."""
    found, unreadable, seen = [], [], set()

    def refused(error: OSError) -> None:
        unreadable.append((Path(error.filename), f"folder not readable: {error.strerror or error}"))

    for dirpath, dirnames, filenames in os.walk(folder, onerror=refused, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a link back to a folder already listed (a loop, or two links to one folder)
            dirnames[:] = []
            unreadable.append((Path(dirpath), "link to a folder already listed (skipped, so no image counts twice)"))
            continue
        seen.add(real)
        dirnames.sort()
        found += [Path(dirpath) / name for name in sorted(filenames)]
    return found, unreadable


def _utf8_name(path: Path) -> bool:
    """Whether a path's name is text: os.walk hands back undecodable bytes as lone surrogates."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(path: Path) -> str:
    """A relative path as text that any UTF-8 file or terminal takes: undecodable bytes become U+FFFD."""
    return path.as_posix().encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def discover(path: Path, min_side: int = 64, threads: int | None = None) -> Discovery:
    """List and check every file under the class folders; stop only when a class has no usable image."""
    root = find_root(path)
    class_dirs = {p.name.lower(): p for p in sorted(root.iterdir()) if p.is_dir() and p.name.lower() in CLASSES}
    ignored = sorted(shown(Path(p.name)) for p in root.iterdir() if p.name.lower() not in CLASSES)
    listed = {name: _class_entries(folder) for name, folder in class_dirs.items()}
    entries = [(f, CLASSES[name]) for name, (files, _) in listed.items() for f in files]
    folders_skipped = [item for _, problems in listed.values() for item in problems]
    # split.csv names each file so a resume, predict or a colleague finds it again; a name that is not
    # UTF-8 can't be written there (or to a UTF-8 terminal) and read back, so such a file is skipped.
    skipped = folders_skipped + [(f, "file name is not valid UTF-8") for f, y in entries
                                 if not _utf8_name(f.relative_to(root))]
    entries = [(f, y) for f, y in entries if _utf8_name(f.relative_to(root))]
    candidates = [(f, y) for f, y in entries if f.suffix.lower() in IMAGE_SUFFIXES]
    skipped += [(f, f"not an image file (extension {f.suffix or 'none'!r})") for f, y in entries
                if f.suffix.lower() not in IMAGE_SUFFIXES]
    with ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool:  # Pillow decodes without the GIL
        checks = list(progress.track(pool.map(lambda item: _check_file(item[0], min_side), candidates),
                                     len(candidates), "checked and hashed", f"under {root}"))
    rows = []
    for (f, label), check in zip(candidates, checks):
        if isinstance(check, str):
            skipped.append((f, check))
        else:
            rows.append((f.relative_to(root).as_posix(), label, *check))
    files = pd.DataFrame(rows, columns=["path", "label", "sha256", "phash"])
    skipped_df = pd.DataFrame([(shown(f.relative_to(root)), r) for f, r in skipped], columns=["path", "reason"])
    for name, label in CLASSES.items():
        if name in class_dirs and not (files["label"] == label).any():
            folder = class_dirs[name]
            try:
                detail = "is empty" if not any(folder.iterdir()) else "has no usable image (see the skipped files)"
            except OSError as exc:
                detail = f"can't be read ({exc.strerror or exc})"
            raise UserError(f"{folder}: class folder {detail}")
    return Discovery(root=root, files=files, skipped=skipped_df, ignored=ignored)


@contextmanager
def named(label: str):
    """For a folder an option other than --data names (--external NAME, a site's data): a refusal inside
    (not a data set, one class, a class with no usable image) starts with `label`."""
    try:
        yield
    except UserError as exc:
        raise UserError(f"{label}: {exc}") from None


def make_split(files: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Seeded 70/20/10 split, stratified by class (and by source, when `files` has a source column), that
    keeps exact and near duplicates in one split, across sources too."""
    groups = duplicates.duplicate_groups(files["sha256"].tolist(), files["phash"].tolist())
    # One row per duplicate group; a group is TB if any member is, so leakage can't hide a TB copy, and
    # belongs to its first member's source.
    members = pd.DataFrame({"group": groups, "label": files["label"].to_numpy(),
                            "source": files["source"].to_numpy() if "source" in files else ""})
    reps = members.groupby("group").agg(label=("label", "max"), source=("source", "first"))
    strata = reps["source"].astype(str) + ":" + reps["label"].map({0: "Normal", 1: "TB"})
    if strata.value_counts().min() < 10:
        shown = {k.lstrip(":"): int(v) for k, v in strata.value_counts().items()}
        raise UserError(f"too few images to split: {shown} (need 10 per class" +
                        (" in each source)" if "source" in files and files["source"].nunique() > 1 else ")"))
    # Imported here, not at the top: each trial's Tune actor and Train controller import this module
    # (through preprocess and the trial settings) but never split; scikit-learn cost each of them ~0.65 s.
    from sklearn.model_selection import train_test_split

    train, rest = train_test_split(reps.index, train_size=FRACTIONS["train"], stratify=strata, random_state=seed)
    test_share = FRACTIONS["test"] / (FRACTIONS["test"] + FRACTIONS["val"])
    test, val = train_test_split(rest, train_size=test_share, stratify=strata[rest], random_state=seed)
    split_of = {**{g: "train" for g in train}, **{g: "test" for g in test}, **{g: "val" for g in val}}
    out = files.copy()
    out["split"] = [split_of[g] for g in groups]
    return out


def write_split(split: pd.DataFrame, path: Path) -> None:
    """split.csv: path relative to the data root, source (the --data it came from), label, split
    (train/val/test), sha256, and the perceptual hash that lets a later external set be checked for copies
    of these images without the data at hand."""
    columns = SPLIT_COLUMNS[:1] + (["source"] if "source" in split else []) + SPLIT_COLUMNS[1:] + ["phash"]
    split[columns].to_csv(path, index=False)


def read_table(csv: Path, needed: list[str], what: str, dtype=None) -> pd.DataFrame:
    """A table tbray wrote (split.csv, test_scores.csv), read back; unreadable, or missing a column tbray
    writes, refused in one line."""
    try:
        table = pd.read_csv(csv, dtype=dtype)
    except (OSError, ValueError) as exc:  # pandas' parser and empty-file errors, bad UTF-8: all ValueErrors
        raise UserError(f"{csv}: unreadable {what} ({type(exc).__name__}: {exc})")
    if missing := set(needed) - set(table.columns):
        raise UserError(f"{csv}: not a {what}, missing column(s) {', '.join(sorted(missing))}")
    return table


def read_split(csv: Path, files: pd.DataFrame) -> pd.DataFrame:
    """Apply a saved split.csv to the files found now; a changed or missing file is refused."""
    saved = read_table(csv, SPLIT_COLUMNS, "split file", {"path": str, "sha256": str})
    saved = saved.drop(columns=["phash"], errors="ignore")
    if bad := set(saved["split"]) - set(FRACTIONS):
        raise UserError(f"{csv}: unknown split value(s) {', '.join(sorted(map(str, bad)))}")
    check_split_rows(csv, saved)
    if "source" in saved and "source" in files:  # a split made before sources had no such column
        sources = set(saved["source"].astype(str))
        if unknown := sources - set(files["source"]):
            raise UserError(f"{csv}: the split names source(s) {', '.join(sorted(unknown))}, not among this "
                            f"search's --data ({', '.join(sorted(set(files['source'])))})")
        saved = saved.drop(columns=["source"])
    now = files[["path", "sha256", "phash"] + (["source"] if "source" in files else [])]
    merged = saved.merge(now, on="path", how="left", suffixes=("", "_now"))
    if merged["sha256_now"].isna().any():
        gone = merged.loc[merged["sha256_now"].isna(), "path"]
        raise UserError(f"{csv}: {len(gone)} file(s) in the split are missing or unusable now, first {gone.iloc[0]}")
    changed = merged["sha256"] != merged["sha256_now"]
    if changed.any():
        raise UserError(f"{csv}: {changed.sum()} file(s) changed since the split was made, first {merged.loc[changed, 'path'].iloc[0]}")
    folder_label = merged["path"].map(dict(zip(files["path"], files["label"])))
    if (wrong := merged["label"] != folder_label).any():
        first = merged.loc[wrong].iloc[0]
        raise UserError(f"{csv}: {int(wrong.sum())} label(s) contradict the class folder, first {first['path']} labelled "
                        f"{first['label']} in a {'Tuberculosis' if folder_label[wrong].iloc[0] else 'Normal'} folder; "
                        "labels are 0 for Normal/ and 1 for Tuberculosis/: fix the file or move the image")
    return merged.drop(columns=["sha256_now"])


def check_split_rows(csv: Path, saved: pd.DataFrame) -> None:
    """A split must never put one image in two splits: refuse repeated rows, a path in two splits and labels
    other than 0 and 1, each in one line that says how to fix it."""
    paths = saved["path"]
    if (repeated := saved.duplicated()).any():
        raise UserError(f"{csv}: {int(repeated.sum())} row(s) repeated, first {paths[repeated].iloc[0]}; keep one row "
                        "per file")
    splits_per_path = saved.groupby("path")["split"].nunique()
    if (twice := splits_per_path[splits_per_path > 1]).size:
        rows = saved[paths == twice.index[0]]
        raise UserError(f"{csv}: {twice.size} file(s) in more than one split, first {twice.index[0]} in "
                        f"{' and '.join(rows['split'])}; a file belongs to one split: delete the other row(s)")
    if paths.duplicated().any():
        raise UserError(f"{csv}: {int(paths.duplicated().sum())} file(s) listed twice with different details, first "
                        f"{paths[paths.duplicated()].iloc[0]}; keep one row per file")
    labels = pd.to_numeric(saved["label"], errors="coerce")
    if (bad := ~labels.isin([0, 1])).any():
        raise UserError(f"{csv}: label {str(saved.loc[bad, 'label'].iloc[0])!r} for {paths[bad].iloc[0]} ({int(bad.sum())} "
                        "such row(s)); labels are 0 (Normal) or 1 (Tuberculosis)")
    saved["label"] = labels.astype(np.int64)


def split_hash(split: pd.DataFrame) -> str:
    """One hash for (files, labels, splits): the key for caches and the resume check."""
    rows = split.sort_values("path")[["path", "label", "split", "sha256"]].astype(str)
    return hashlib.sha256("\n".join(rows.agg(",".join, axis=1)).encode()).hexdigest()[:16]


def images_under(paths: list[Path]) -> list[Path]:
    """The image files named, and those under the folders named, in a stable order."""
    found = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.exists():
            found.append(p)
        else:
            raise UserError(f"{p}: no such file or folder")
    if not found:
        raise UserError(f"{', '.join(map(str, paths))}: no PNG or JPEG image found")
    return found
