"""External validation: labelled X-rays from elsewhere, scored by the best model, never used for a choice.

An external set follows the same folder rules and bad-file handling as `--data`. Images that are exact
or near copies of a training, validation or test image are listed and left out: a copy of a training
image would flatter the model exactly where it must show how far its figures travel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tbray.data import cache, dataset, duplicates
from tbray.data.preprocess import Input
from tbray.errors import UserError
from tbray.model import scoring
from tbray.stats import assess

OVERLAP_COLUMNS = ["path", "label", "matches", "split", "kind", "distance"]


@dataclass(frozen=True)
class ExternalSet:
    """One external data set, checked, with its copies of the search's images removed."""

    name: str
    root: Path
    files: pd.DataFrame  # path, label, sha256, phash: the images that will be scored
    skipped: pd.DataFrame  # path, reason: unusable files, as for --data
    overlap: pd.DataFrame  # OVERLAP_COLUMNS: images left out as copies of the search's own images


def without_copies(name: str, found: dataset.Discovery, internal: pd.DataFrame | None) -> ExternalSet:
    """The set minus exact and near copies of `internal` images (path, split, sha256, phash)."""
    overlap = copies_of(found.files, internal) if internal is not None else pd.DataFrame(columns=OVERLAP_COLUMNS)
    files = found.files[~found.files["path"].isin(overlap["path"])].reset_index(drop=True)
    for label, cls in ((0, "Normal"), (1, "Tuberculosis")):
        if not (files["label"] == label).any():
            raise UserError(f"external set {name}: {found.root}: no usable {cls} image left "
                            f"({int((overlap['label'] == label).sum())} were copies of the search's images)")
    counts = files["label"].value_counts()
    print(f"tbray: external set {name!r} {found.root}: {counts.get(0, 0)} Normal + {counts.get(1, 0)} TB to score; "
          f"{len(found.skipped)} file(s) skipped, {len(overlap)} left out as copies of the search's images")
    return ExternalSet(name, found.root, files, found.skipped, overlap)


def copies_of(files: pd.DataFrame, internal: pd.DataFrame) -> pd.DataFrame:
    """External files that duplicate an internal image, exactly or nearly, with the closest match."""
    pairs = duplicates.matches(files["sha256"].tolist(), files["phash"].tolist(),
                               internal["sha256"].tolist(), internal["phash"].tolist())
    if not len(pairs):
        return pd.DataFrame(columns=OVERLAP_COLUMNS)
    closest = pairs.sort_values(["i", "distance"]).drop_duplicates("i")
    own, other = files.iloc[closest["i"].to_numpy()], internal.iloc[closest["j"].to_numpy()]
    return pd.DataFrame({"path": own["path"].to_numpy(), "label": own["label"].to_numpy(),
                         "matches": other["path"].to_numpy(), "split": other["split"].to_numpy(),
                         "kind": closest["kind"].to_numpy(), "distance": closest["distance"].to_numpy()},
                        columns=OVERLAP_COLUMNS)


def decode(ext: ExternalSet, size: int | Input, cache_dir: Path) -> tuple:
    """uint8 images [N, size, size] (after the model's steps, when an Input) and labels of the set, decoded
    once and cached like the search's."""
    frame = ext.files.assign(split="external")
    images = cache.subset(frame, cache.load(cache.build(ext.root, frame, [size], cache_dir)[size]), "external")
    return images["images"], images["labels"]


def evaluate(ext: ExternalSet, saved: dict, target_sensitivity: float, cache_dir: Path,
             seed: int = 0) -> tuple[dict, pd.DataFrame]:
    """The set scored once at the model's threshold: the record for report.json and every image's score."""
    images, labels = decode(ext, Input.of_model(saved), cache_dir)
    scores = scoring.score_images(saved, images)
    record = assess.site(labels, scores, float(saved["threshold"]), target_sensitivity, seed=seed,
                         split_name=f"external set {ext.name!r}")
    record |= {"data_root": str(ext.root), "skipped": int(len(ext.skipped)), "left_out_as_copies": int(len(ext.overlap)),
               "copies": ext.overlap.head(20).to_dict("records")}
    table = pd.DataFrame({"set": ext.name, "path": ext.files["path"], "label": labels, "score": scores})
    return record, table
