"""Image files -> batches of uint8 images at the model's size, a few batches in memory at a time.

Prediction over an archive must not hold the archive: a DataLoader over the file paths decodes in
worker processes and keeps at most `workers x PREFETCH` batches ahead of the model, whatever the number
of files. A file that can't be read travels as a reason, not an image, so the others are still scored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tbray.data import dataset, preprocess
from tbray.data.preprocess import Input

PREFETCH = 2  # batches each loader worker decodes ahead; with the one being scored, the memory bound
DEFAULT_WORKERS = min(8, max(0, (os.cpu_count() or 1) - 1))  # decoding processes; a core stays with the model


@dataclass
class Batch:
    """One batch of files: the readable ones' images, and a reason for each of the others."""

    paths: list[str]  # every file of the batch, in order
    images: torch.Tensor  # uint8 [n_readable, S, S], in the order of the readable files
    readable: list[bool]  # per file: whether its image is in `images`
    errors: list[str | None]  # per file: why it could not be read, None when it was

    def pin_memory(self) -> "Batch":
        """Called by the DataLoader (pin_memory=True) so the copy to a GPU can overlap the next batch."""
        self.images = self.images.pin_memory()
        return self


def read(path: str, size: int | Input) -> tuple[np.ndarray | None, str | None]:
    """A file as the model's uint8 [size, size] input (with the steps an Input names, tbray.data.preprocess),
    or None and the first line of why it can't be read."""
    try:
        return preprocess.to_input(dataset.load_gray(Path(path)), Input.of(size)), None
    except Exception as exc:  # any decoder failure is a reason for this file only
        return None, (str(exc).splitlines() or [type(exc).__name__])[0] or type(exc).__name__


class PathDataset(Dataset):
    """Files decoded one by one, each made the model's input (size, and the steps before it)."""

    def __init__(self, paths: list[str], size: int | Input):
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return (self.paths[i], *read(self.paths[i], self.size))


def collate(items: list) -> Batch:
    """Readable images stacked; the unreadable ones kept as reasons."""
    images = [image for _, image, _ in items if image is not None]
    stacked = torch.from_numpy(np.stack(images)) if images else torch.zeros(0, 0, 0, dtype=torch.uint8)
    return Batch(paths=[p for p, _, _ in items], images=stacked, readable=[image is not None for _, image, _ in items],
                 errors=[error for _, _, error in items])


def batches(paths: list[str], size: int | Input, batch_size: int, workers: int = DEFAULT_WORKERS,
            pin_memory: bool = False) -> DataLoader:
    """Batches in file order; decoding in `workers` processes (0: in this one)."""
    return DataLoader(PathDataset(paths, size), batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=collate, pin_memory=pin_memory, prefetch_factor=PREFETCH if workers else None)
