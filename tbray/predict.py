"""Scoring new images with a saved best model, at the operating threshold saved with it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tbray import data
from tbray import model as tbmodel
from tbray.errors import UserError
from tbray.train import ArrayDataset, collate_batch, predict as predict_scores


def load(path: Path) -> dict:
    """A best_model.pt written by a search (weights, model name, image size, mean/std, threshold)."""
    if not Path(path).is_file():
        raise UserError(f"{path}: model file not found (a search writes results/<name>/best_model.pt)")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad file
        raise UserError(f"{path}: not a tbray model file ({type(exc).__name__})")
    if not isinstance(saved, dict) or "threshold" not in saved or "model" not in saved:
        raise UserError(f"{path}: not a tbray model file (no weights or threshold in it)")
    return saved


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


def run(model_file: Path, paths: list[Path], threshold: float | None = None) -> pd.DataFrame:
    """P(TB) and the call (Tuberculosis when P(TB) >= threshold) for each image; unreadable ones say why."""
    saved = load(model_file)
    threshold = saved["threshold"] if threshold is None else threshold
    net = tbmodel.create(saved["model_name"])
    net.load_state_dict(saved["model"])
    rows, good, images = [], [], []
    for f in images_under(paths):
        try:
            images.append(data.resize(data.load_gray(f), saved["image_size"]))
            good.append(f)
        except Exception as exc:  # reported per file, the others are still scored
            rows.append({"path": str(f), "p_tb": None, "prediction": None, "error": str(exc).splitlines()[0]})
    if images:
        loader = torch.utils.data.DataLoader(ArrayDataset(np.stack(images), np.zeros(len(images), dtype=np.int64)),
                                             batch_size=64, collate_fn=collate_batch)
        scores = predict_scores(net, loader, torch.device("cpu"), saved["mean"], saved["std"])[0]
        rows += [{"path": str(f), "p_tb": float(s), "prediction": "Tuberculosis" if s >= threshold else "Normal",
                  "error": None} for f, s in zip(good, scores)]
    return pd.DataFrame(rows, columns=["path", "p_tb", "prediction", "error"]).assign(threshold=threshold)
