"""Scoring new images with a saved model, at the operating threshold saved with it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tbray import data, inference
from tbray.errors import UserError


def images_under(paths: list[Path]) -> list[Path]:
    """The image files named, and those under the folders named, in a stable order."""
    found = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.suffix.lower() in data.IMAGE_SUFFIXES)
        elif p.exists():
            found.append(p)
        else:
            raise UserError(f"{p}: no such file or folder")
    return found


def threshold_origin(saved: dict) -> str:
    """Where the saved threshold came from, in words, for the user to see before trusting the calls."""
    if cal := saved.get("calibration"):
        return (f"site calibration on {cal['site_data']} ({cal['n']} images, {cal['n_tb']} TB, {cal['date']}; "
                f"there sensitivity {cal['sensitivity']:.3f}, specificity {cal['specificity']:.3f})")
    if src := saved.get("threshold_source"):
        return (f"the search's {src['kind']} ({src['n']} images, {src['n_tb']} TB; target sensitivity "
                f"{src['target_sensitivity']:.2f}); not calibrated for this site: see tune/calibrate.py")
    return "the model file (it has no record of how the threshold was chosen)"


def run(saved: dict, paths: list[Path], threshold: float | None = None) -> pd.DataFrame:
    """P(TB) and the call (Tuberculosis when P(TB) >= threshold) for each image of a loaded model file
    (inference.load_model_file); unreadable images say why."""
    threshold = saved["threshold"] if threshold is None else threshold
    rows, good, images = [], [], []
    files = images_under(paths)
    if not files:
        raise UserError(f"{', '.join(map(str, paths))}: no PNG or JPEG image found")
    for f in files:
        try:
            images.append(data.resize(data.load_gray(f), saved["image_size"]))
            good.append(f)
        except Exception as exc:  # reported per file, the others are still scored
            rows.append({"path": str(f), "p_tb": None, "prediction": None, "error": str(exc).splitlines()[0]})
    if not images:
        raise UserError(f"{', '.join(map(str, paths))}: none of the {len(files)} image(s) could be read, "
                        f"first {rows[0]['path']}: {rows[0]['error']}")
    if images:
        scores = inference.score_images(saved, np.stack(images))
        rows += [{"path": str(f), "p_tb": float(s), "prediction": "Tuberculosis" if s >= threshold else "Normal",
                  "error": None} for f, s in zip(good, scores)]
    return pd.DataFrame(rows, columns=["path", "p_tb", "prediction", "error"]).assign(threshold=threshold)
