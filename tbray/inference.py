"""One home for inference: arrays in memory -> batches -> P(TB); saved models in and out.

Training (validation each epoch), the final evaluation, external sets, site calibration and
`tune/predict.py` all score images through `score_loader`, and every saved model goes through
`save_atomic` and `load_model_file`, so a threshold or a field means the same thing everywhere.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from tbray import augment, outputs
from tbray import model as tbmodel
from tbray.config import EVAL_BATCH_SIZE
from tbray.errors import UserError

MODEL_FIELDS = ("model", "model_name", "image_size", "mean", "std", "threshold")  # what every model file has
MAX_IMAGE_SIZE = 2048  # larger than any EfficientNet input; a bigger value in a file is a doctored file


class ArrayDataset(Dataset):
    """uint8 images and labels already in memory; batches come out as one slice, not N items."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.__getitems__([i])

    def __getitems__(self, idx: list[int]):
        idx = np.sort(np.asarray(idx))  # sorted reads are kinder to a memory-mapped array
        return torch.from_numpy(self.images[idx].copy()), torch.from_numpy(self.labels[idx].copy())


def collate_batch(batch):
    """The dataset already returns a whole batch."""
    return batch


def loader(images: np.ndarray, labels: np.ndarray | None = None, batch_size: int = EVAL_BATCH_SIZE) -> DataLoader:
    """Batches in order, for scoring; unlabelled images get label 0, which only the loss reads."""
    labels = np.zeros(len(images), dtype=np.int64) if labels is None else labels
    return DataLoader(ArrayDataset(images, labels), batch_size=batch_size, collate_fn=collate_batch)


@torch.no_grad()
def score_loader(model: torch.nn.Module, batches, device, mean: float, std: float) -> tuple[np.ndarray, np.ndarray, float]:
    """P(TB) for every image, the labels, and the mean unweighted loss."""
    model.eval()
    scores, labels, loss_sum = [], [], 0.0
    for x, y in batches:
        out, y = logits(model, x, device, mean, std), y.to(device, non_blocking=True)
        loss_sum += F.binary_cross_entropy_with_logits(out, y.float(), reduction="sum").item()
        scores.append(torch.sigmoid(out).cpu())
        labels.append(y.cpu())
    return torch.cat(scores).numpy(), torch.cat(labels).numpy(), loss_sum / max(1, sum(len(s) for s in scores))


def logits(model: torch.nn.Module, batch_u8: torch.Tensor, device, mean: float, std: float) -> torch.Tensor:
    """The TB logits [N] of a uint8 batch [N, S, S] (call under no_grad); bfloat16 autocast on a GPU."""
    x = batch_u8.to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        return model(augment.prepare(x, mean, std, train=False)).float().squeeze(1)


def device() -> torch.device:
    """A GPU when this process has one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build(saved: dict, on: torch.device | None = None) -> torch.nn.Module:
    """The network of a saved model or checkpoint, weights loaded, ready to score."""
    net = tbmodel.create(saved["model_name"])
    try:
        net.load_state_dict(saved["model"])
    except RuntimeError as exc:
        raise UserError(f"the saved weights don't fit {saved['model_name']!r}: {str(exc).splitlines()[0]}")
    return net.to(on or device(), memory_format=torch.channels_last)


def score_images(saved: dict, images: np.ndarray, batch_size: int = EVAL_BATCH_SIZE) -> np.ndarray:
    """P(TB) of uint8 images [N, S, S] (S the model's image size) with a saved model."""
    on = device()
    return score_loader(build(saved, on), loader(images, batch_size=batch_size), on, saved["mean"], saved["std"])[0]


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
    """What is wrong with a model file's fields, or None."""
    size, threshold = saved["image_size"], saved["threshold"]
    if not isinstance(size, int) or not 16 <= size <= MAX_IMAGE_SIZE:
        return f"image_size {size!r} is not a whole number of pixels between 16 and {MAX_IMAGE_SIZE}"
    if not isinstance(threshold, float) or not 0 <= threshold <= 1:
        return f"threshold {threshold!r} is not a probability"
    for key in ("mean", "std"):  # the intensity normalisation every image gets: (x / 255 - mean) / std
        value = saved[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
                or (key == "std" and value <= 0):
            return f"{key} {value!r} is not a {'positive ' if key == 'std' else ''}number"
    for key in ("threshold_source", "calibration"):  # records that predict and the report read, when present
        if saved.get(key) is not None and not isinstance(saved[key], dict):
            return f"{key} is not a record (a dict), but {type(saved[key]).__name__}"
    if not isinstance(saved["model_name"], str):
        return "model_name is not a text"
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


CHECKPOINT_FILE = "model.pt"  # inside each Ray Train checkpoint folder


def save_checkpoint(directory: Path, payload: dict) -> Path:
    """A training checkpoint (model, optimiser, epoch, model facts) into a Ray Train checkpoint folder."""
    return save_atomic(payload, Path(directory) / CHECKPOINT_FILE)


def load_checkpoint(directory: Path) -> dict:
    """A checkpoint written by `save_checkpoint`; never runs pickled code."""
    return torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
