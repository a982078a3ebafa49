"""Saved models in and out: model files (best_model.pt, a site-calibrated copy) and training checkpoints.

Every saved model goes through `save_atomic` and `load_model_file`, so a threshold or a field means the
same thing everywhere, and a damaged or doctored file fails in one line.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from tbray import outputs
from tbray.errors import UserError
from tbray.model import factory as tbmodel
from tbray.model import facts

MODEL_FIELDS = ("model", "model_name", "image_size", "mean", "std", "threshold")  # what every model file has


def save_atomic(payload: dict, path: Path) -> Path:
    """Write then rename, so a kill mid-write never leaves a truncated file that a later load would trust."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return outputs.write_atomic(path, buffer.getvalue())


def load_model_file(path: Path) -> dict:
    """A model file written by tbray (best_model.pt, or a site-calibrated copy), its fields checked.

    Never runs pickled code (weights_only=True). Every field is checked against what tbray writes,
    so a damaged or doctored file fails here in one line, not later with a traceback or a 24 GB tensor.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: model file not found (a search writes results/<name>/best_model.pt)")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad file
        raise UserError(f"{path}: not a tbray model file ({type(exc).__name__})")
    if not isinstance(saved, dict) or (missing := [k for k in MODEL_FIELDS if k not in saved]):
        raise UserError(f"{path}: not a tbray model file (missing {', '.join(missing) if isinstance(saved, dict) else 'everything'})")
    problem = _field_problem(saved)
    if problem:
        raise UserError(f"{path}: damaged model file: {problem}")
    return saved


def _field_problem(saved: dict) -> str | None:
    """What is wrong with a model file's facts (the check ONNX metadata gets too) or its weights, or None."""
    if found := facts.problem(saved):
        return found
    try:
        tbmodel.check_name(saved["model_name"])
    except UserError as exc:
        return str(exc)
    if not isinstance(saved["model"], dict):
        return "the weights are not a state dict"
    expected = tbmodel.create(saved["model_name"]).state_dict()
    if not all(isinstance(v, torch.Tensor) for v in saved["model"].values()):
        return "the weights are not all tensors"
    wrong = [k for k, v in expected.items() if k not in saved["model"] or saved["model"][k].shape != v.shape]
    if wrong or len(saved["model"]) != len(expected):
        first = wrong[0] if wrong else sorted(set(saved["model"]) - set(expected))[0]
        return f"the saved weights don't fit {saved['model_name']!r} ({len(wrong)} tensor(s) missing or of another shape, first {first!r})"
    return None


def synthetic_warning(saved: dict) -> str | None:
    """The line predict, evaluate and calibrate print before scoring with a model trained on the demo's
    synthetic images (its provenance says so); None for any other model."""
    if ((saved.get("provenance") or {}).get("synthetic")):
        return ("tbray: WARNING this model was trained on SYNTHETIC demo images (its provenance says so): its "
                "scores say nothing about tuberculosis on real X-rays")
    return None


CHECKPOINT_FILE = "model.pt"  # inside each Ray Train checkpoint folder


def save_checkpoint(directory: Path, payload: dict) -> Path:
    """A training checkpoint (model, optimiser, epoch, model facts) into a Ray Train checkpoint folder."""
    return save_atomic(payload, Path(directory) / CHECKPOINT_FILE)


def load_checkpoint(directory: Path) -> dict:
    """A checkpoint written by `save_checkpoint`; never runs pickled code."""
    return torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
