"""Arrays in memory -> batches -> P(TB): the one scoring path.

Training (validation each epoch), the final evaluation, external sets, site calibration and
`tune/predict.py` all score images through `score_loader`, so a score means the same thing everywhere.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from tbray.config import EVAL_BATCH_SIZE
from tbray.data.arrays import ArrayDataset, collate_batch
from tbray.errors import UserError
from tbray.model import augment
from tbray.model import factory as tbmodel


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


def score_parts(state: dict, images: dict[str, dict]) -> dict[str, np.ndarray]:
    """P(TB) of each image set with the checkpoint's model, on the device this task was given."""
    return {name: score_images(state, part["images"]) for name, part in images.items()}
